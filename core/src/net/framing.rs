//! Request framing checks hyper leaves to the application.
//!
//! hyper reads a request with both `Content-Length` and `Transfer-Encoding`
//! as chunked (dropping the length) and folds repeated equal
//! `Content-Length` lines into one; RFC 9112 allows that, but a proxy that
//! forwards such a request to a server that frames it the other way is how
//! request smuggling happens. EdgeLink refuses both outright, the way a
//! front door should: [`FramingGuard`] follows the HTTP/1 byte stream under
//! hyper (request heads, then each body by its length or its chunks) and,
//! on an ambiguous head, cuts the stream before that head, lets hyper finish
//! what came before, and answers `400` with `Connection: close` itself.
//!
//! It scans lines with `memchr` and keeps at most 64 bytes of the current
//! line; HTTP/2 (the connection preface) is passed through untouched.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// An HTTP/1 connection's IO, refusing ambiguous request framing.
#[derive(Debug)]
pub struct FramingGuard<IO> {
    io: IO,
    scanner: Scanner,
    refusal: Option<Refusal>,
}

#[derive(Debug)]
struct Refusal {
    bytes: Vec<u8>,
    written: usize,
}

impl<IO> FramingGuard<IO> {
    pub fn new(io: IO) -> FramingGuard<IO> {
        FramingGuard {
            io,
            scanner: Scanner::default(),
            refusal: None,
        }
    }

    pub fn get_ref(&self) -> &IO {
        &self.io
    }
}

/// The 400 written in place of hyper's answer.
fn refusal(reason: &str) -> Vec<u8> {
    let body = format!(r#"{{"error":{{"code":"bad_framing","message":"{reason}"}}}}"#);
    format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl<IO: AsyncRead + Unpin> AsyncRead for FramingGuard<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.refusal.is_some() {
            // End of stream for hyper: it finishes the requests before the
            // refused one, then shuts the connection down (our 400).
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        if let Some((at, reason)) = this.scanner.scan(&buf.filled()[before..]) {
            buf.set_filled(before + at);
            this.refusal = Some(Refusal {
                bytes: refusal(reason),
                written: 0,
            });
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for FramingGuard<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(r) = &mut this.refusal {
            while r.written < r.bytes.len() {
                let n = ready!(Pin::new(&mut this.io).poll_write(cx, &r.bytes[r.written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                r.written += n;
            }
            ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

// === the scanner ===

const LINE_KEEP: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a request head, line by line.
    Head,
    /// Skipping a body of this many more bytes.
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    Trailers,
    /// Not HTTP/1 (the h2 preface), or framing hyper will refuse itself:
    /// nothing more to check on this connection.
    Off,
}

#[derive(Debug)]
struct Scanner {
    state: State,
    line: [u8; LINE_KEEP],
    /// Bytes of the current line seen so far (may exceed what is kept).
    line_len: usize,
    /// Where the current head began in the buffer being scanned, if there.
    head_start: Option<usize>,
    in_head: bool,
    content_lengths: u8,
    content_length: Option<u64>,
    transfer_encoding: bool,
}

impl Default for Scanner {
    fn default() -> Scanner {
        Scanner {
            state: State::Head,
            line: [0; LINE_KEEP],
            line_len: 0,
            head_start: None,
            in_head: false,
            content_lengths: 0,
            content_length: None,
            transfer_encoding: false,
        }
    }
}

fn starts_with_ignore_case(line: &[u8], prefix: &[u8]) -> bool {
    line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix)
}

impl Scanner {
    /// Follows `buf`; on an ambiguous head, the offset in `buf` where that
    /// head began (0 when it began in an earlier read) and why.
    fn scan(&mut self, buf: &[u8]) -> Option<(usize, &'static str)> {
        let mut i = 0;
        self.head_start = None;
        while i < buf.len() {
            match self.state {
                State::Off => return None,
                State::Body(n) | State::ChunkData(n) => {
                    let take = n.min((buf.len() - i) as u64);
                    i += take as usize;
                    let left = n - take;
                    self.state = match (self.state, left) {
                        (State::Body(_), 0) => State::Head,
                        (State::Body(_), left) => State::Body(left),
                        (_, 0) => State::ChunkEnd,
                        (_, left) => State::ChunkData(left),
                    };
                }
                State::Head | State::ChunkSize | State::ChunkEnd | State::Trailers => {
                    if self.state == State::Head && !self.in_head && self.line_len == 0 {
                        self.head_start = Some(i);
                    }
                    let rest = &buf[i..];
                    let end = memchr::memchr(b'\n', rest);
                    let piece = &rest[..end.unwrap_or(rest.len())];
                    let keep = piece.len().min(LINE_KEEP.saturating_sub(self.line_len));
                    if keep > 0 {
                        self.line[self.line_len..self.line_len + keep]
                            .copy_from_slice(&piece[..keep]);
                    }
                    self.line_len += piece.len();
                    match end {
                        None => return None,
                        Some(end) => i += end + 1,
                    }
                    if let Some(reason) = self.line_done() {
                        return Some((self.head_start.unwrap_or(0), reason));
                    }
                }
            }
        }
        None
    }

    /// One line has ended; what it means for the state.
    fn line_done(&mut self) -> Option<&'static str> {
        let kept = self.line_len.min(LINE_KEEP);
        let whole = self.line_len <= LINE_KEEP;
        let mut line = &self.line[..kept];
        if whole {
            line = line.strip_suffix(b"\r").unwrap_or(line);
        }
        let empty = self.line_len == 0 || (whole && line.is_empty());
        self.line_len = 0;
        match self.state {
            State::Head if empty && !self.in_head => None, // CRLF before a request line
            State::Head if empty => self.head_done(),
            State::Head if !self.in_head => {
                self.in_head = true;
                if line.starts_with(b"PRI * HTTP/2.0") {
                    self.state = State::Off;
                }
                None
            }
            State::Head => {
                if starts_with_ignore_case(line, b"content-length:") {
                    self.content_lengths = self.content_lengths.saturating_add(1);
                    self.content_length = whole
                        .then(|| std::str::from_utf8(&line[15..]).ok())
                        .flatten()
                        .and_then(|v| v.trim().parse().ok());
                } else if starts_with_ignore_case(line, b"transfer-encoding:") {
                    self.transfer_encoding = true;
                }
                None
            }
            State::ChunkSize => {
                let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
                let size = std::str::from_utf8(&line[..digits])
                    .ok()
                    .and_then(|d| u64::from_str_radix(d, 16).ok());
                self.state = match size {
                    Some(0) => State::Trailers,
                    Some(n) => State::ChunkData(n),
                    None => State::Off,
                };
                None
            }
            State::ChunkEnd => {
                self.state = if empty { State::ChunkSize } else { State::Off };
                None
            }
            State::Trailers => {
                if empty {
                    self.state = State::Head;
                }
                None
            }
            State::Body(_) | State::ChunkData(_) | State::Off => None,
        }
    }

    fn head_done(&mut self) -> Option<&'static str> {
        let (te, cls, cl) = (
            self.transfer_encoding,
            self.content_lengths,
            self.content_length,
        );
        self.in_head = false;
        self.transfer_encoding = false;
        self.content_lengths = 0;
        self.content_length = None;
        if te && cls > 0 {
            return Some("Content-Length and Transfer-Encoding together");
        }
        if cls > 1 {
            return Some("more than one Content-Length");
        }
        self.state = match (te, cls, cl) {
            (true, _, _) => State::ChunkSize,
            (false, 1, Some(0)) | (false, 0, _) => State::Head,
            (false, _, Some(n)) => State::Body(n),
            // A length hyper cannot read either: it answers 400 itself.
            (false, _, None) => State::Off,
        };
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(pieces: &[&[u8]]) -> Option<(usize, usize, &'static str)> {
        let mut s = Scanner::default();
        for (n, p) in pieces.iter().enumerate() {
            if let Some((at, why)) = s.scan(p) {
                return Some((n, at, why));
            }
        }
        None
    }

    #[test]
    fn plain_requests_pass() {
        let reqs: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloPOST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\nGET /d HTTP/1.1\r\n\r\n";
        assert_eq!(scan_all(&[reqs]), None);
        // The same, one byte at a time.
        let bytes: Vec<&[u8]> = reqs.chunks(1).collect();
        assert_eq!(scan_all(&bytes), None);
    }

    #[test]
    fn content_length_with_transfer_encoding_is_refused_where_its_head_starts() {
        let first: &[u8] = b"GET /a HTTP/1.1\r\n\r\n";
        let bad: &[u8] =
            b"POST /b HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let both = [first, bad].concat();
        assert_eq!(
            scan_all(&[&both]),
            Some((
                0,
                first.len(),
                "Content-Length and Transfer-Encoding together"
            ))
        );
        let te_first: &[u8] =
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n";
        assert!(scan_all(&[te_first]).is_some());
    }

    #[test]
    fn a_second_content_length_is_refused_even_when_equal() {
        let bad: &[u8] = b"POST / HTTP/1.1\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\nabc";
        assert_eq!(
            scan_all(&[bad]),
            Some((0, 0, "more than one Content-Length"))
        );
    }

    #[test]
    fn body_bytes_that_look_like_headers_are_not_read_as_headers() {
        let body = b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let head = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len());
        let req = [head.as_bytes(), body, b"GET / HTTP/1.1\r\n\r\n"].concat();
        assert_eq!(scan_all(&[&req]), None);
    }

    #[test]
    fn http2_is_left_alone() {
        let preface: &[u8] =
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(scan_all(&[preface]), None);
    }
}
