//! The express lane: HTTP/1.1 requests simple enough to answer without
//! hyper, answered from bytes the role writes itself.
//!
//! A connection starts here when its listener has an [`Express`] (the
//! edge's public listeners). Each request head is parsed in place with
//! `httparse`; a [`Simple`] one (`GET` or `HEAD`, HTTP/1.1, no body and no
//! connection-management headers) is offered to the role, which either
//! writes the whole response into the connection's output buffer at once
//! ([`Express::answer`]: the edge's tier-0 hit), or gives a future of the
//! response to wait for ([`Express::respond`]: the edge's cache miss, whose
//! response is then written as hyper would write it), or declines without
//! counting anything. The first request that is not simple, or that the
//! role declines (the API, a path that is not a code), hands the
//! connection to hyper for good: with the bytes read so far replayed in
//! front of the socket ([`Replay`]), so hyper reads that request as if it
//! came first. Responses already written have been flushed by then, so
//! answers stay in request order. Bad heads (malformed, too long, HTTP/2's
//! preface, `HTTP/1.0`) are handed over the same way, and hyper answers
//! them as it always has.
//!
//! The lane keeps the listener's limits: a head must be whole within the
//! header timeout of its first byte, an idle connection is closed after the
//! keep-alive timeout, a head longer than the limit and one without exactly
//! one valid `Host` are handed to hyper (whose framing guard refuses them).
//! On shutdown, the requests read are answered, the last with
//! `connection: close`, and an idle connection closes after a short wait
//! for a request already on its way.
//!
//! Why: over a warm cache, hyper's request and response objects, its
//! header map and the framing guard's copy were most of the edge's
//! user-space time per redirect (`bench/RESULTS.md`); here a hit is one
//! parse and one `write` of bytes copied from the cache.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method, Request, Response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::sync::CancellationToken;

use super::framing::is_host_value;
use super::server::Peer;
use super::Body;

/// A request head the express lane may answer.
#[derive(Debug, Clone, Copy)]
pub struct Simple<'a> {
    /// `HEAD` (headers only), else `GET`.
    pub head: bool,
    /// The request target: origin-form, as sent (query included).
    pub target: &'a str,
    /// The first `User-Agent` value.
    pub user_agent: Option<&'a [u8]>,
}

/// A response the express lane waits for ([`Express::respond`]).
pub type Responding<'a> = Pin<Box<dyn Future<Output = Response<Body>> + Send + 'a>>;

/// A role's answers in the express lane.
pub trait Express: Send + Sync {
    /// Appends the whole response to `req` to `out` (see [`write_head`])
    /// and returns `true` (the hot path: nothing to wait for); or returns
    /// `false`, having written and counted nothing.
    fn answer(&self, req: &Simple<'_>, peer: Peer, out: &mut Vec<u8>) -> bool;

    /// The response to a request [`Express::answer`] declined, when the
    /// role answers it in the lane all the same (a cache miss, say); it
    /// must have a whole body ([`Body::as_full`]). `None`, with nothing
    /// counted: hyper answers it, and the rest of the connection.
    fn respond(&self, req: Request<()>, peer: Peer) -> Option<Responding<'_>>;
}

/// The lane's limits, those hyper applies to the same listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request head must be whole within this of its first byte (of the
    /// accept, for a connection's first request).
    pub head_timeout: Duration,
    /// How long a connection may wait for its next request after an answer.
    pub keepalive: Duration,
    /// Longer heads go to hyper (whose framing guard answers `431`).
    pub max_head: usize,
    /// An answer the client does not take within this closes the
    /// connection (a client that stops reading).
    pub write_timeout: Duration,
}

/// How the lane left a connection.
pub enum Outcome<IO> {
    /// Closed (by the peer, a timeout, an error or shutdown).
    Closed,
    /// hyper serves the rest, starting with the replayed bytes.
    Handoff(Replay<IO>),
}

/// Headers per request head the lane parses; a head with more is handed
/// over (hyper allows 100).
const MAX_HEADERS: usize = 32;

/// Serves `io` in the express lane until it closes or needs hyper.
/// `closing`: the listener has closed; from then on the connection's last
/// answer carries `connection: close`, and an idle connection waits
/// [`super::server::SETTLE`] for a request on its way before it closes.
pub async fn serve<IO>(
    mut io: IO,
    express: &dyn Express,
    peer: Peer,
    limits: Limits,
    closing: &CancellationToken,
) -> Outcome<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(4096);
    let mut out = Vec::with_capacity(512);
    // The connection is closed at `deadline`: its first head must be whole
    // a head timeout after the accept; after an answer it may idle for the
    // keep-alive timeout, and a head it then starts must be whole a head
    // timeout after its first byte was seen. The timer is armed once and
    // moved on only when it fires early (at most once a timeout), not
    // re-armed for every request: a timer-wheel insert and removal per
    // request was ~1% of the edge's time (`perf`).
    let mut deadline = tokio::time::Instant::now() + limits.head_timeout;
    let timer = tokio::time::sleep_until(deadline);
    tokio::pin!(timer);
    // When the timer fires; moved earlier at once (a keep-alive shorter
    // than the head timeout, a head started late in a long keep-alive).
    let mut armed = deadline;
    // Registered once, so that shutdown wakes an idle connection.
    let cancelled = closing.cancelled();
    tokio::pin!(cancelled);
    let mut host = KnownHost::default();
    // Whether any request was answered here (for the handover).
    let mut answered = false;
    loop {
        // Every whole head read so far, in order.
        let mut handoff = false;
        let mut waited = None;
        let mut served = false;
        // Where the last answer written begins in `out`.
        let mut last = None;
        // Checked once per read, not per pipelined request (it is a lock).
        let stopping = !buf.is_empty() && closing.is_cancelled();
        while !buf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            let at = out.len();
            let step = match req.parse(&buf) {
                Ok(httparse::Status::Complete(len)) => match simple(&req, &mut host) {
                    Some(s) if express.answer(&s, peer, &mut out) => Step::Answered(len),
                    Some(s) => match owned(&s, req.headers) {
                        Some(owned) => Step::Wait(len, Box::new(owned)),
                        None => Step::Handoff,
                    },
                    None => Step::Handoff,
                },
                Ok(httparse::Status::Partial) => {
                    handoff = buf.len() >= limits.max_head;
                    break;
                }
                Err(_) => Step::Handoff,
            };
            match step {
                Step::Answered(len) => {
                    buf.advance(len);
                    served = true;
                    last = Some(at);
                }
                Step::Wait(len, req) => {
                    let Some(responding) = express.respond(*req, peer) else {
                        handoff = true;
                        break;
                    };
                    buf.advance(len);
                    waited = Some(responding);
                    break;
                }
                Step::Handoff => {
                    handoff = true;
                    break;
                }
            }
        }
        if let Some(responding) = waited {
            // The answers before it go out now, not after its wait; the
            // lane reads nothing meanwhile (nor does hyper's HTTP/1).
            if flush(&mut io, &mut out, limits.write_timeout)
                .await
                .is_err()
            {
                return Outcome::Closed;
            }
            let resp = responding.await;
            last = Some(out.len());
            if !write_response(&mut out, &resp) {
                debug_assert!(false, "a response in the lane must have a whole body");
                return Outcome::Closed;
            }
            served = true;
            answered = true;
            if !buf.is_empty() {
                // Pipelined requests after it: write, then take them next.
                deadline = tokio::time::Instant::now() + limits.keepalive;
                if flush(&mut io, &mut out, limits.write_timeout)
                    .await
                    .is_err()
                {
                    return Outcome::Closed;
                }
                continue;
            }
        }
        if served {
            deadline = tokio::time::Instant::now() + limits.keepalive;
            answered = true;
        }
        if !buf.is_empty() && !handoff {
            // An unfinished head: whole a head timeout after it was seen.
            deadline = deadline.min(tokio::time::Instant::now() + limits.head_timeout);
        }
        if deadline < armed {
            armed = deadline;
            timer.as_mut().reset(deadline);
        }
        if stopping && !handoff && buf.is_empty() {
            // Draining, and every request read is answered: the last
            // answer says so, and the connection closes after it.
            if let Some(at) = last {
                close_after(&mut out, at);
            }
            let _ = flush(&mut io, &mut out, limits.write_timeout).await;
            let _ = io.shutdown().await;
            return Outcome::Closed;
        }
        if flush(&mut io, &mut out, limits.write_timeout)
            .await
            .is_err()
        {
            return Outcome::Closed;
        }
        if handoff {
            return Outcome::Handoff(Replay {
                prefix: buf.freeze(),
                io,
                answered,
            });
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        tokio::select! {
            // The read first: when it is ready, nothing else is polled.
            biased;
            read = io.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => return Outcome::Closed,
                Ok(_) => {}
            },
            () = &mut timer => {
                if tokio::time::Instant::now() >= deadline {
                    return Outcome::Closed;
                }
                armed = deadline;
                timer.as_mut().reset(deadline);
            }
            () = &mut cancelled, if buf.is_empty() => {
                // Nothing under way: a request already on its way still
                // gets its answer; else the connection closes.
                let settle = super::server::SETTLE;
                match tokio::time::timeout(settle, io.read_buf(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return Outcome::Closed,
                }
            }
        }
    }
}

/// Inserts `connection: close` into the response head that starts at `at`.
fn close_after(out: &mut Vec<u8>, at: usize) {
    if let Some(end) = memchr::memmem::find(&out[at..], b"\r\n\r\n") {
        let line_end = at + end + 2;
        out.splice(line_end..line_end, b"connection: close\r\n".iter().copied());
    }
}

/// What to do with one whole request head.
enum Step {
    /// Answered; its head was this long.
    Answered(usize),
    /// The role may answer it after a wait.
    Wait(usize, Box<Request<()>>),
    Handoff,
}

/// Writes what of `out` the socket takes without waiting, and flushes if
/// that was all of it: the bytes written, and whether it was flushed.
fn write_now<IO: AsyncWrite + Unpin>(io: &mut IO, out: &[u8]) -> io::Result<(usize, bool)> {
    let mut now = Context::from_waker(std::task::Waker::noop());
    let mut written = 0;
    while written < out.len() {
        match Pin::new(&mut *io).poll_write(&mut now, &out[written..]) {
            Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(n)) => written += n,
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => return Ok((written, false)),
        }
    }
    match Pin::new(&mut *io).poll_flush(&mut now) {
        Poll::Ready(r) => r.map(|()| (written, true)),
        Poll::Pending => Ok((written, false)),
    }
}

/// Writes `out`, if anything, and empties it; an error when the client
/// takes none of it for `timeout`. A write the socket takes at once (the
/// usual case) arms no timer.
async fn flush<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    out: &mut Vec<u8>,
    timeout: Duration,
) -> io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    let (written, flushed) = write_now(io, out)?;
    let result = match flushed {
        true => Ok(()),
        false => {
            let rest = async {
                io.write_all(&out[written..]).await?;
                io.flush().await
            };
            tokio::time::timeout(timeout, rest)
                .await
                .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
        }
    };
    out.clear();
    result
}

/// `req` as an owned request for [`Express::respond`]; `None` when a
/// part of it is not valid for `http` (hyper then answers it).
fn owned(req: &Simple<'_>, headers: &[httparse::Header<'_>]) -> Option<Request<()>> {
    let mut owned = Request::new(());
    *owned.method_mut() = if req.head { Method::HEAD } else { Method::GET };
    *owned.uri_mut() = req.target.parse().ok()?;
    let map = owned.headers_mut();
    for h in headers {
        map.append(
            HeaderName::from_bytes(h.name.as_bytes()).ok()?,
            HeaderValue::from_bytes(h.value).ok()?,
        );
    }
    Some(owned)
}

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

/// The last `Host` value found valid on a connection: a client sends the
/// same one on every request, and comparing it is cheaper than checking
/// it again (checking it every time was ~110 of a hit's ~4,100
/// instructions: bench/RESULTS.md, issue 20).
struct KnownHost {
    len: usize,
    bytes: [u8; 64],
}

impl Default for KnownHost {
    fn default() -> KnownHost {
        KnownHost {
            len: 0,
            bytes: [0; 64],
        }
    }
}

impl KnownHost {
    /// Whether `value` is a valid `Host`, remembering it when it is.
    #[inline]
    fn check(&mut self, value: &[u8]) -> bool {
        if self.bytes.get(..self.len) == Some(value) {
            return true;
        }
        if !is_host_value(value) {
            return false;
        }
        if let Some(slot) = self.bytes.get_mut(..value.len()) {
            slot.copy_from_slice(value);
            self.len = value.len();
        }
        true
    }
}

/// `req` as a [`Simple`] request, if it is one.
fn simple<'a>(req: &httparse::Request<'_, 'a>, host: &mut KnownHost) -> Option<Simple<'a>> {
    let head = match req.method? {
        "GET" => false,
        "HEAD" => true,
        _ => return None,
    };
    if req.version? != 1 {
        return None;
    }
    let target = req.path.filter(|t| t.starts_with('/'))?;
    let mut user_agent = None;
    let mut hosts = 0;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"user-agent") {
            user_agent = user_agent.or(Some(h.value));
        } else if name.eq_ignore_ascii_case(b"host") {
            // More than one, or not a host: the framing guard's 400.
            hosts += 1;
            if hosts > 1 || !host.check(h.value) {
                return None;
            }
        } else if [
            &b"content-length"[..],
            b"transfer-encoding",
            b"connection",
            b"upgrade",
            b"expect",
        ]
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n))
        {
            // A body, or a say in how the connection goes on: hyper's.
            return None;
        }
    }
    if hosts == 0 {
        // HTTP/1.1 without Host: the framing guard's 400.
        return None;
    }
    Some(Simple {
        head,
        target,
        user_agent,
    })
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

/// Whether `value` may be sent as a header value as is (the rule of
/// `http::HeaderValue`: visible ASCII, obs-text, space and tab).
#[inline]
pub fn is_header_value(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| (b >= 0x20 && b != 0x7f) || b == b'\t')
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

/// A connection's IO with bytes already read from it put back in front.
#[derive(Debug)]
pub struct Replay<IO> {
    prefix: Bytes,
    io: IO,
    /// The lane answered requests on this connection before it.
    answered: bool,
}

impl<IO> Replay<IO> {
    /// `io` with nothing to replay.
    pub fn new(io: IO) -> Replay<IO> {
        Replay {
            prefix: Bytes::new(),
            io,
            answered: false,
        }
    }

    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// Whether the express lane answered requests before handing over.
    pub fn lane_answered(&self) -> bool {
        self.answered
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Replay<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(out.remaining());
            out.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, out)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Replay<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::DuplexStream;

    /// Answers `GET /a` (and `HEAD /a`) with a 302 to `/x`, and `/slow`
    /// after a wait with a body; declines the rest.
    #[derive(Default)]
    struct OnlyA {
        answered: AtomicUsize,
        /// `/slow` is answered once this is notified.
        gate: tokio::sync::Notify,
    }

    impl Express for OnlyA {
        fn answer(&self, req: &Simple<'_>, _peer: Peer, out: &mut Vec<u8>) -> bool {
            if req.target != "/a" {
                return false;
            }
            self.answered.fetch_add(1, Ordering::Relaxed);
            write_head(out, 302, "Found", &[("location", b"/x")]);
            true
        }

        fn respond(&self, req: Request<()>, _peer: Peer) -> Option<Responding<'_>> {
            if req.uri().path() != "/slow" {
                return None;
            }
            Some(Box::pin(async move {
                self.gate.notified().await;
                let mut resp = Response::new(Body::new(Bytes::from_static(b"slow")));
                *resp.status_mut() = http::StatusCode::NOT_FOUND;
                let ua = req.headers().get("user-agent").cloned();
                resp.headers_mut()
                    .insert("x-ua", ua.unwrap_or(HeaderValue::from_static("-")));
                resp
            }))
        }
    }

    fn peer() -> Peer {
        Peer {
            addr: "127.0.0.1:1".parse().unwrap(),
            tls: false,
        }
    }

    const LIMITS: Limits = Limits {
        head_timeout: Duration::from_secs(5),
        keepalive: Duration::from_secs(5),
        max_head: 8192,
        write_timeout: Duration::from_secs(5),
    };

    /// Runs the lane on one end of a pipe; the test holds the other.
    fn lane(
        express: Arc<OnlyA>,
        closing: CancellationToken,
    ) -> (DuplexStream, tokio::task::JoinHandle<Outcome<DuplexStream>>) {
        lane_with(express, closing, LIMITS)
    }

    fn lane_with(
        express: Arc<OnlyA>,
        closing: CancellationToken,
        limits: Limits,
    ) -> (DuplexStream, tokio::task::JoinHandle<Outcome<DuplexStream>>) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let task =
            tokio::spawn(async move { serve(server, &*express, peer(), limits, &closing).await });
        (client, task)
    }

    use std::sync::Arc;

    /// Reads `n` responses (heads only: the lane's have no body).
    async fn responses(client: &mut DuplexStream, n: usize) -> Vec<String> {
        let mut text = Vec::new();
        let mut byte = [0u8; 1];
        while text.windows(4).filter(|w| w == b"\r\n\r\n").count() < n {
            client.read_exact(&mut byte).await.unwrap();
            text.push(byte[0]);
        }
        String::from_utf8(text)
            .unwrap()
            .split_inclusive("\r\n\r\n")
            .map(str::to_owned)
            .collect()
    }

    async fn replayed(outcome: Outcome<DuplexStream>, n: usize) -> Vec<u8> {
        let Outcome::Handoff(mut io) = outcome else {
            panic!("expected a handoff");
        };
        let mut rest = vec![0; n];
        io.read_exact(&mut rest).await.unwrap();
        rest
    }

    fn simple_of(head: &[u8]) -> Option<(bool, String, Option<Vec<u8>>)> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        assert!(req.parse(head).unwrap().is_complete());
        simple(&req, &mut KnownHost::default()).map(|s| {
            (
                s.head,
                s.target.to_owned(),
                s.user_agent.map(<[u8]>::to_vec),
            )
        })
    }

    #[test]
    fn only_bodiless_http11_get_and_head_are_simple() {
        assert_eq!(
            simple_of(
                b"GET /a?q=1 HTTP/1.1\r\nHost: h\r\nUser-Agent: ua/1\r\nuser-agent: two\r\n\r\n"
            ),
            Some((false, "/a?q=1".into(), Some(b"ua/1".to_vec())))
        );
        assert_eq!(
            simple_of(b"HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some((true, "/a".into(), None))
        );
        for head in [
            &b"POST /a HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET http://h/a HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /a HTTP/1.0\r\n\r\n",
            b"GET /a HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            b"GET /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\n",
            b"GET /a HTTP/1.1\r\nconnection: keep-alive\r\n\r\n",
            b"GET /a HTTP/1.1\r\nUpgrade: h2c\r\n\r\n",
            b"GET /a HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            // Without exactly one valid Host: the framing guard refuses it.
            b"GET /a HTTP/1.1\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost: x\r\nHost: x\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost: a b\r\n\r\n",
        ] {
            assert_eq!(simple_of(head), None, "{}", String::from_utf8_lossy(head));
        }
    }

    /// A connection's valid Host is remembered, never an invalid one.
    #[test]
    fn a_remembered_host_lets_only_itself_through() {
        let mut known = KnownHost::default();
        let mut run = |head: &[u8]| {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            assert!(req.parse(head).unwrap().is_complete());
            simple(&req, &mut known).is_some()
        };
        assert!(run(b"GET /a HTTP/1.1\r\nHost: sho.rt:8080\r\n\r\n"));
        assert!(run(b"GET /a HTTP/1.1\r\nHost: sho.rt:8080\r\n\r\n"));
        assert!(!run(b"GET /a HTTP/1.1\r\nHost: sho.rt:80x\r\n\r\n"));
        assert!(!run(b"GET /a HTTP/1.1\r\nHost: sho.rt:8080:1\r\n\r\n"));
        assert!(run(b"GET /a HTTP/1.1\r\nHost: other.example\r\n\r\n"));
        assert!(!run(&[
            &b"GET /a HTTP/1.1\r\nHost: "[..],
            &[b'a'; 100],
            b" b\r\n\r\n"
        ]
        .concat()));
    }

    #[test]
    fn a_head_is_written_as_hyper_writes_it() {
        let mut out = Vec::new();
        write_head(
            &mut out,
            301,
            "Moved Permanently",
            &[
                ("location", b"https://e.com/"),
                ("cache-control", b"max-age=60"),
            ],
        );
        let text = String::from_utf8(out).unwrap();
        let date = text
            .strip_prefix(
                "HTTP/1.1 301 Moved Permanently\r\nlocation: https://e.com/\r\n\
                 cache-control: max-age=60\r\ncontent-length: 0\r\ndate: ",
            )
            .and_then(|rest| rest.strip_suffix("\r\n\r\n"))
            .unwrap_or_else(|| panic!("{text:?}"));
        let parsed = httpdate::parse_http_date(date).unwrap();
        let off = SystemTime::now().duration_since(parsed).unwrap();
        assert!(off < Duration::from_secs(2), "{date}");
    }

    #[test]
    fn header_values_follow_http_rules() {
        assert!(is_header_value(b"https://e.com/a b\t\x80"));
        assert!(!is_header_value(b"a\r\nset-cookie: x"));
        assert!(!is_header_value(b"a\x7f"));
        assert!(!is_header_value(b"a\x00"));
    }

    #[tokio::test]
    async fn answers_in_order_then_hands_the_rest_to_hyper() {
        let express = Arc::new(OnlyA::default());
        let (mut client, task) = lane(express.clone(), CancellationToken::new());
        let rest = b"GET /b HTTP/1.1\r\nHost: x\r\n\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        client
            .write_all(
                &[
                    &b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nHEAD /a HTTP/1.1\r\nHost: x\r\n\r\n"[..],
                    rest,
                ]
                .concat(),
            )
            .await
            .unwrap();
        let answers = responses(&mut client, 2).await;
        assert_eq!(answers.len(), 2);
        assert!(answers
            .iter()
            .all(|a| a.starts_with("HTTP/1.1 302 Found\r\nlocation: /x\r\n")));
        // hyper reads what the lane did not answer, from its first byte.
        assert_eq!(replayed(task.await.unwrap(), rest.len()).await, rest);
        assert_eq!(express.answered.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn an_answer_waited_for_keeps_its_place_and_the_lane() {
        let express = Arc::new(OnlyA::default());
        let (mut client, task) = lane(express.clone(), CancellationToken::new());
        client
            .write_all(
                b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /slow HTTP/1.1\r\nHost: x\r\nUser-Agent: ua/2\r\n\r\n\
                  GET /a HTTP/1.1\r\nHost: x\r\n\r\n",
            )
            .await
            .unwrap();
        // The answer before the wait is sent before the wait ends.
        let first = tokio::time::timeout(Duration::from_secs(10), responses(&mut client, 1))
            .await
            .expect("the first answer waited for the second");
        assert!(first[0].starts_with("HTTP/1.1 302 Found\r\n"), "{first:?}");
        express.gate.notify_one();
        let answers = [first, responses(&mut client, 2).await].concat();
        assert!(
            answers[1]
                .starts_with("HTTP/1.1 404 Not Found\r\nx-ua: ua/2\r\ncontent-length: 4\r\ndate: "),
            "{answers:?}"
        );
        // The body comes before the next answer's head.
        assert!(
            answers[2].starts_with("slowHTTP/1.1 302 Found\r\n"),
            "{answers:?}"
        );
        assert_eq!(express.answered.load(Ordering::Relaxed), 2);
        // Still in the lane: a request after the wait is answered there too.
        client
            .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(responses(&mut client, 1).await.len(), 1);
        assert_eq!(express.answered.load(Ordering::Relaxed), 3);
        drop(client);
        assert!(matches!(task.await.unwrap(), Outcome::Closed));
    }

    #[tokio::test]
    async fn a_head_split_across_reads_is_answered() {
        let (mut client, task) = lane(Arc::default(), CancellationToken::new());
        for part in [&b"GET /a HT"[..], b"TP/1.1\r\nHost: x\r", b"\n\r\n"] {
            client.write_all(part).await.unwrap();
            tokio::task::yield_now().await;
        }
        assert_eq!(responses(&mut client, 1).await.len(), 1);
        drop(client);
        assert!(matches!(task.await.unwrap(), Outcome::Closed));
    }

    #[tokio::test]
    async fn bad_and_oversized_heads_go_to_hyper_whole() {
        for head in [
            b"GET /a HTTP/1.1\r\nBad Header\r\n\r\n".to_vec(),
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            [&b"GET /a HTTP/1.1\r\nX: "[..], &[b'y'; 9000]].concat(),
        ] {
            let (mut client, task) = lane(Arc::default(), CancellationToken::new());
            client.write_all(&head).await.unwrap();
            let got = replayed(task.await.unwrap(), head.len().min(LIMITS.max_head)).await;
            assert_eq!(got, head[..got.len()]);
        }
    }

    #[tokio::test]
    async fn an_idle_or_unfinished_head_times_out() {
        let limits = Limits {
            head_timeout: Duration::from_millis(200),
            ..LIMITS
        };
        for sent in [&b""[..], b"GET /a HTTP/1.1\r\nHost: x\r\n"] {
            let started = tokio::time::Instant::now();
            let (mut client, task) = lane_with(Arc::default(), CancellationToken::new(), limits);
            client.write_all(sent).await.unwrap();
            assert!(matches!(task.await.unwrap(), Outcome::Closed));
            assert!(started.elapsed() >= limits.head_timeout);
        }
    }

    /// The timer is armed once and moved on lazily: a request answered
    /// still gives the connection a whole keep-alive timeout from then.
    #[tokio::test(start_paused = true)]
    async fn each_answer_restarts_the_keepalive_timeout() {
        let limits = Limits {
            keepalive: Duration::from_millis(300),
            ..LIMITS
        };
        let started = tokio::time::Instant::now();
        let (mut client, task) = lane_with(Arc::default(), CancellationToken::new(), limits);
        client
            .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(responses(&mut client, 1).await.len(), 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
        client
            .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(responses(&mut client, 1).await.len(), 1);
        // Past the first deadline (300 ms), before the second (500 ms).
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(!task.is_finished(), "closed at the first deadline");
        let outcome = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the moved deadline must still close the connection")
            .unwrap();
        assert!(matches!(outcome, Outcome::Closed));
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(500), "{took:?}");
        assert!(took < Duration::from_millis(600), "{took:?}");
    }

    /// A long keep-alive does not lengthen the time a started head has.
    #[tokio::test(start_paused = true)]
    async fn a_head_started_while_idle_has_the_head_timeout() {
        let limits = Limits {
            head_timeout: Duration::from_millis(200),
            keepalive: Duration::from_secs(60),
            ..LIMITS
        };
        let (mut client, task) = lane_with(Arc::default(), CancellationToken::new(), limits);
        client
            .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(responses(&mut client, 1).await.len(), 1);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!task.is_finished(), "idle within the keep-alive");
        let started = tokio::time::Instant::now();
        client.write_all(b"GET /a HTTP/1.1\r\n").await.unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the unfinished head must be cut")
            .unwrap();
        assert!(matches!(outcome, Outcome::Closed));
        let took = started.elapsed();
        assert!(
            took >= limits.head_timeout && took < Duration::from_millis(300),
            "{took:?}"
        );
    }

    /// The rest of the connection's bytes once the lane has closed it.
    async fn until_closed(client: &mut DuplexStream) -> String {
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        String::from_utf8(rest).unwrap()
    }

    #[tokio::test]
    async fn on_shutdown_every_request_read_is_answered_the_last_with_close() {
        // Idle when the drain begins: closed after a short wait.
        let closing = CancellationToken::new();
        let (mut client, task) = lane(Arc::default(), closing.clone());
        client
            .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(responses(&mut client, 1).await.len(), 1);
        let began = std::time::Instant::now();
        closing.cancel();
        assert!(matches!(task.await.unwrap(), Outcome::Closed));
        assert!(began.elapsed() >= super::super::server::SETTLE);

        // A head under way when the drain begins is answered, with close.
        let closing = CancellationToken::new();
        let (mut client, task) = lane(Arc::default(), closing.clone());
        client.write_all(b"GET /a HT").await.unwrap();
        tokio::task::yield_now().await;
        closing.cancel();
        tokio::task::yield_now().await;
        client
            .write_all(b"TP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(matches!(task.await.unwrap(), Outcome::Closed));
        let reply = until_closed(&mut client).await;
        assert!(reply.starts_with("HTTP/1.1 302 Found\r\n"), "{reply:?}");
        assert!(reply.contains("\r\nconnection: close\r\n"), "{reply:?}");

        // A request sent just after, on an idle connection: answered too.
        let closing = CancellationToken::new();
        let (mut client, task) = lane(Arc::default(), closing.clone());
        closing.cancel();
        tokio::task::yield_now().await;
        client
            .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(matches!(task.await.unwrap(), Outcome::Closed));
        assert!(until_closed(&mut client)
            .await
            .contains("connection: close"));

        // Pipelined requests: all answered, only the last says close.
        let closing = CancellationToken::new();
        closing.cancel();
        let (mut client, task) = lane(Arc::default(), closing.clone());
        client
            .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nHEAD /a HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(matches!(task.await.unwrap(), Outcome::Closed));
        let reply = until_closed(&mut client).await;
        assert_eq!(reply.matches("HTTP/1.1 302").count(), 2, "{reply:?}");
        assert_eq!(reply.matches("connection: close").count(), 1, "{reply:?}");
        assert!(reply
            .rsplit("HTTP/1.1")
            .next()
            .unwrap()
            .contains("connection: close"));
    }

    #[tokio::test]
    async fn a_peer_that_closes_ends_the_lane() {
        let (mut client, task) = lane(Arc::default(), CancellationToken::new());
        client
            .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        client.shutdown().await.unwrap();
        // Its request is still answered (a half-close is not an abort).
        assert_eq!(responses(&mut client, 1).await.len(), 1);
        assert!(matches!(task.await.unwrap(), Outcome::Closed));
    }
}
