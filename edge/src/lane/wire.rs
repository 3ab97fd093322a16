//! Response bytes as hyper writes them: status line, headers,
//! `content-length`, a `date` rendered once a second per thread.

use std::time::SystemTime;

use edgelink_core::net::Body;
use http::Response;

/// Appends `resp` as hyper writes it: the status line, its headers,
/// `content-length` (unless it has one), `date`, then the body. `false`
/// (nothing written) when its body streams.
pub fn write_response(out: &mut Vec<u8>, resp: &Response<Body>) -> bool {
    let Some(body) = resp.body().as_full() else {
        return false;
    };
    status_line(
        out,
        resp.status().as_u16(),
        resp.status().canonical_reason().unwrap_or(""),
    );
    for (name, value) in resp.headers() {
        header(out, name.as_str(), value.as_bytes());
    }
    if !resp.headers().contains_key(http::header::CONTENT_LENGTH) {
        header(out, "content-length", body.len().to_string().as_bytes());
    }
    date(out);
    out.extend_from_slice(body);
    true
}

/// Appends a bodiless response head: the status line, `headers`,
/// `content-length: 0` and `date`, as hyper writes them.
pub fn write_head(out: &mut Vec<u8>, status: u16, reason: &str, headers: &[(&str, &[u8])]) {
    status_line(out, status, reason);
    for (name, value) in headers {
        header(out, name, value);
    }
    out.extend_from_slice(b"content-length: 0\r\n");
    date(out);
}

fn status_line(out: &mut Vec<u8>, status: u16, reason: &str) {
    out.extend_from_slice(b"HTTP/1.1 ");
    let status = status.clamp(100, 999);
    out.extend_from_slice(&[
        b'0' + (status / 100) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
        b' ',
    ]);
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

#[inline]
fn header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The `date` header and the blank line that ends the head.
fn date(out: &mut Vec<u8>) {
    out.extend_from_slice(b"date: ");
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        d.refresh();
        out.extend_from_slice(&d.text);
    });
    out.extend_from_slice(b"\r\n\r\n");
}

/// An IMF-fixdate, rendered once a second per thread.
struct Date {
    second: u64,
    text: [u8; 29],
}

impl Date {
    fn refresh(&mut self) {
        let now = SystemTime::now();
        let second = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if second != self.second {
            let text = httpdate::fmt_http_date(now);
            if let Ok(text) = <[u8; 29]>::try_from(text.as_bytes()) {
                self.text = text;
                self.second = second;
            }
        }
    }
}

thread_local! {
    static DATE: std::cell::RefCell<Date> = const {
        std::cell::RefCell::new(Date { second: 0, text: *b"Thu, 01 Jan 1970 00:00:00 GMT" })
    };
}
