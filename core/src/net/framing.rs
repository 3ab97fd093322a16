//! Request framing checks hyper leaves to the application.
//!
//! hyper reads a request with both `Content-Length` and `Transfer-Encoding`
//! as chunked (dropping the length), folds repeated or listed equal
//! `Content-Length` values into one and serves HTTP/1.1 without `Host`;
//! RFC 9112 allows some of that, but a proxy that forwards such a request
//! to a server that frames it the other way is how request smuggling
//! happens. EdgeLink refuses them outright, as a front door should:
//! [`FramingGuard`] follows the HTTP/1 byte stream under hyper (request
//! heads, then each body by its length or its chunks) and hands hyper a
//! request head only once the head is whole and judged, so hyper has seen
//! none of a refused head: the guard ends the stream there and answers the
//! 4xx with `Connection: close` itself, at once when hyper has seen nothing
//! of the connection, else after hyper has finished the requests before it
//! (when it shuts the connection down).
//!
//! A head is judged whole with `httparse` (hyper's own parser), so the
//! guard and hyper never disagree on where it ends; it may hold at most
//! `server.max_header_bytes` of one (431 beyond). Chunked bodies are
//! followed byte by byte with hyper's own grammar; at a byte hyper will
//! refuse, the guard hands it over (hyper then fails the body: the
//! client's 400) and ends the stream. HTTP/2 (the connection preface) is
//! passed through untouched.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::fault::{ClientFault, ClientFaults};

/// An HTTP/1 connection's IO, refusing ambiguous request framing.
#[derive(Debug)]
pub struct FramingGuard<IO> {
    io: IO,
    scanner: Scanner,
    refusal: Option<Refusal>,
    /// A body's framing failed: hyper gets what is ready, then the end.
    cut: bool,
    /// Bytes handed to hyper so far.
    passed: u64,
    /// Read from the socket, not yet handed to hyper: `pending[start..ready]`
    /// may go, `pending[ready..]` is an unfinished head.
    pending: Vec<u8>,
    start: usize,
    ready: usize,
    scratch: Box<[u8]>,
    /// An unfinished head must be whole by then (hyper's own header timer
    /// does not run while the guard holds the head back); a new
    /// connection's first head, from the accept.
    head_timeout: Duration,
    head_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A write the client does not take within `write_timeout` ends the
    /// connection.
    write_timeout: Duration,
    write_stall: Option<Pin<Box<tokio::time::Sleep>>>,
    faults: ClientFaults,
    shared: Arc<GuardState>,
}

/// What the connection's server loop may know of the guard.
#[derive(Debug, Default)]
pub struct GuardState {
    /// Request heads judged and handed over (or ready to be).
    heads: AtomicU64,
    /// Holding an unfinished head.
    holding: AtomicBool,
    /// The connection speaks HTTP/2 (it opened with the preface).
    h2: AtomicBool,
}

impl GuardState {
    /// Whether the connection has a request beyond the first `started`
    /// ones: a whole head handed over, or one arriving.
    pub fn more_than(&self, started: u64) -> bool {
        self.heads.load(Ordering::Acquire) > started || self.holding.load(Ordering::Acquire)
    }

    pub fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Acquire)
    }
}

/// What the guard allows a request head.
#[derive(Debug, Clone, Copy)]
pub struct GuardLimits {
    /// A head must be whole within this of its first byte (a connection's
    /// first, of the guard's start).
    pub head_timeout: Duration,
    /// Bytes of one head at most (431 beyond).
    pub max_head: usize,
    /// A response write must make progress within this.
    pub write_timeout: Duration,
}

#[derive(Debug)]
struct Refusal {
    bytes: Vec<u8>,
    written: usize,
}

impl<IO> FramingGuard<IO> {
    /// A guard counting what it refuses in `faults`.
    pub fn new(io: IO, limits: GuardLimits, faults: ClientFaults) -> FramingGuard<IO> {
        FramingGuard {
            io,
            scanner: Scanner::new(limits.max_head),
            refusal: None,
            cut: false,
            passed: 0,
            pending: Vec::new(),
            start: 0,
            ready: 0,
            scratch: vec![0; 8192].into_boxed_slice(),
            head_timeout: limits.head_timeout,
            // The first head is due a head timeout after the accept.
            head_deadline: Some(Box::pin(tokio::time::sleep(limits.head_timeout))),
            write_timeout: limits.write_timeout,
            write_stall: None,
            faults,
            shared: Arc::default(),
        }
    }

    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// What the server loop reads of this connection.
    pub fn state(&self) -> Arc<GuardState> {
        self.shared.clone()
    }
}

impl<IO> FramingGuard<IO> {
    /// A guard for a connection the express lane has answered requests on:
    /// the HTTP/2 preface is no longer where the connection starts.
    pub fn mid_connection(mut self, mid: bool) -> FramingGuard<IO> {
        if mid {
            self.scanner.judged = self.scanner.judged.max(1);
        }
        self
    }
}

impl<IO: AsyncWrite + Unpin> FramingGuard<IO> {
    /// `poll` of a write: a write that stays pending for the write timeout
    /// fails the connection (a client that stopped reading).
    fn stall<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(Pin<&mut IO>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match poll(Pin::new(&mut self.io), cx) {
            Poll::Ready(r) => {
                self.write_stall = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let timeout = self.write_timeout;
                let stall = self
                    .write_stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if stall.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client took no response bytes within the write timeout",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

/// The answer written in place of hyper's, and the connection closed.
fn refusal(fault: ClientFault, message: &str) -> Vec<u8> {
    let body = format!(
        r#"{{"error":{{"code":"{}","message":"{message}"}}}}"#,
        fault.code()
    );
    let status = fault.status();
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes()
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for FramingGuard<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.start < this.ready {
                let n = (this.ready - this.start).min(buf.remaining());
                buf.put_slice(&this.pending[this.start..this.start + n]);
                this.start += n;
                this.passed += n as u64;
                return Poll::Ready(Ok(()));
            }
            if let Some(r) = &mut this.refusal {
                if this.passed == 0 {
                    // hyper has seen nothing: it has nothing to answer and
                    // would not shut down a connection it never read from,
                    // so the refusal goes out now.
                    ready!(write_refusal(&mut this.io, r, cx))?;
                }
                // End of stream for hyper: it finishes the requests before
                // the refused one, then shuts the connection down (our 4xx).
                return Poll::Ready(Ok(()));
            }
            if this.cut {
                return Poll::Ready(Ok(()));
            }
            // Everything handed over: drop it, then read more.
            this.pending.drain(..this.start);
            this.ready -= this.start;
            this.start = 0;
            let mut chunk = ReadBuf::new(&mut this.scratch);
            if Pin::new(&mut this.io)
                .poll_read(cx, &mut chunk)?
                .is_pending()
            {
                if let Some(deadline) = &mut this.head_deadline {
                    if deadline.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "request head not complete within the header timeout",
                        )));
                    }
                }
                return Poll::Pending;
            }
            let new = chunk.filled();
            if new.is_empty() {
                // End of stream: hyper gets what was held (an unfinished
                // head, which it refuses), then the end.
                if this.pending.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.ready = this.pending.len();
                this.cut = true;
                continue;
            }
            this.pending.extend_from_slice(new);
            let heads = this.scanner.heads;
            let verdict = this.scanner.judge(&this.pending[this.ready..]);
            if this.scanner.heads != heads {
                this.shared
                    .heads
                    .store(this.scanner.heads, Ordering::Release);
                // A head is whole: the next one has a timeout of its own,
                // from now.
                this.head_deadline = None;
            }
            if this.scanner.state == State::Off {
                this.shared.h2.store(true, Ordering::Release);
            }
            match verdict {
                Verdict::Pass(n) => this.ready += n,
                Verdict::Refuse { pass, fault, why } => {
                    this.ready += pass;
                    this.pending.truncate(this.ready);
                    this.faults.count(fault);
                    this.refusal = Some(Refusal {
                        bytes: refusal(fault, why),
                        written: 0,
                    });
                }
                Verdict::Cut(n) => {
                    this.ready += n;
                    this.pending.truncate(this.ready);
                    this.cut = true;
                }
            }
            let holding = this.refusal.is_none() && !this.cut && this.ready < this.pending.len();
            this.shared.holding.store(holding, Ordering::Release);
            if !holding {
                this.head_deadline = None;
            } else if this.head_deadline.is_none() {
                this.head_deadline = Some(Box::pin(tokio::time::sleep(this.head_timeout)));
            }
        }
    }
}

/// Writes what is left of the refusal and flushes it.
fn write_refusal<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    r: &mut Refusal,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    while r.written < r.bytes.len() {
        let n = ready!(Pin::new(&mut *io).poll_write(cx, &r.bytes[r.written..]))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        r.written += n;
    }
    Pin::new(&mut *io).poll_flush(cx)
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for FramingGuard<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().stall(cx, |io, cx| io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .stall(cx, |io, cx| io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().stall(cx, |io, cx| io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(r) = &mut this.refusal {
            ready!(write_refusal(&mut this.io, r, cx))?;
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

// === the scanner ===

/// hyper's request header limit (httparse is given as many slots).
const MAX_HEADERS: usize = 100;

/// hyper's limit on the chunk extensions of one body.
const MAX_CHUNK_EXTENSIONS: u64 = 16 * 1024;

/// What may be handed to hyper of the bytes judged.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// The first `n` bytes; the rest is an unfinished head, held.
    Pass(usize),
    /// The first `pass` bytes; the head that starts there is refused.
    Refuse {
        pass: usize,
        fault: ClientFault,
        why: &'static str,
    },
    /// The first `n` bytes, the last of which hyper will refuse (a body's
    /// framing), then nothing more.
    Cut(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between requests, or holding an unfinished head.
    Head,
    /// Skipping a body of this many more bytes.
    Body(u64),
    Chunked(Chunk),
    /// Not HTTP/1 (the h2 preface): nothing more to check on this connection.
    Off,
}

/// hyper's chunked decoder, state for state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Start,
    Size(u64),
    SizeLws(u64),
    Extension(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    Trailer,
    TrailerLf,
    EndCr,
    EndLf,
}

#[derive(Debug)]
struct Scanner {
    state: State,
    /// Whole heads judged so far.
    heads: u64,
    /// Bytes judged so far (the HTTP/2 preface only counts at 0).
    judged: u64,
    max_head: usize,
    /// Bytes of the held head already searched for its end.
    searched: usize,
    /// Chunk extension bytes of this body so far.
    extensions: u64,
    /// Trailer bytes of this body so far.
    trailers: usize,
}

impl Scanner {
    fn new(max_head: usize) -> Scanner {
        Scanner {
            state: State::Head,
            heads: 0,
            judged: 0,
            max_head,
            searched: 0,
            extensions: 0,
            trailers: 0,
        }
    }

    /// Judges `buf`, the bytes after those already handed over (an
    /// unfinished head comes again, with more).
    fn judge(&mut self, buf: &[u8]) -> Verdict {
        let verdict = self.judge_from(buf);
        let (Verdict::Pass(n) | Verdict::Refuse { pass: n, .. } | Verdict::Cut(n)) = verdict;
        self.judged += n as u64;
        verdict
    }

    fn judge_from(&mut self, buf: &[u8]) -> Verdict {
        let mut i = 0;
        while i < buf.len() {
            match self.state {
                State::Off => return Verdict::Pass(buf.len()),
                State::Body(n) => {
                    let take = n.min((buf.len() - i) as u64);
                    i += take as usize;
                    self.state = match n - take {
                        0 => State::Head,
                        left => State::Body(left),
                    };
                }
                State::Chunked(chunk) => match self.chunk(chunk, &buf[i..]) {
                    Ok((used, next)) => {
                        i += used;
                        self.state = next;
                    }
                    Err(at) => return Verdict::Cut(i + at + 1),
                },
                State::Head => {
                    // Empty lines before a request line (hyper skips them).
                    match &buf[i..] {
                        [b'\n', ..] => {
                            i += 1;
                            continue;
                        }
                        [b'\r', b'\n', ..] => {
                            i += 2;
                            continue;
                        }
                        [b'\r'] => return Verdict::Pass(i),
                        _ => {}
                    }
                    let at_start = self.judged + i as u64 == 0;
                    match self.head(&buf[i..], at_start) {
                        Ok(Some((len, next))) => {
                            i += len;
                            self.heads += u64::from(next != State::Off);
                            self.searched = 0;
                            self.extensions = 0;
                            self.trailers = 0;
                            self.state = next;
                        }
                        Ok(None) => return Verdict::Pass(i),
                        Err((fault, why)) => {
                            return Verdict::Refuse {
                                pass: i,
                                fault,
                                why,
                            }
                        }
                    }
                }
            }
        }
        Verdict::Pass(i)
    }

    /// A head at the start of `buf`: its length and what follows it, or
    /// `None` while it is unfinished, or why it is refused.
    fn head(
        &mut self,
        buf: &[u8],
        at_start: bool,
    ) -> Result<Option<(usize, State)>, (ClientFault, &'static str)> {
        if at_start && buf.starts_with(b"PRI * HTTP/2.0") {
            return Ok(Some((buf.len(), State::Off)));
        }
        let Some(end) = self.head_end(buf) else {
            if buf.len() > self.max_head {
                return Err((ClientFault::HeadTooLarge, "the request head is too large"));
            }
            return Ok(None);
        };
        if end > self.max_head {
            return Err((ClientFault::HeadTooLarge, "the request head is too large"));
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..end]) {
            Ok(httparse::Status::Complete(len)) => check_head(&req).map(|next| Some((len, next))),
            Ok(httparse::Status::Partial) => {
                Err((ClientFault::BadFraming, "malformed request head"))
            }
            Err(httparse::Error::TooManyHeaders) => {
                Err((ClientFault::HeadTooLarge, "too many header fields"))
            }
            Err(_) => Err((ClientFault::BadFraming, "malformed request head")),
        }
    }

    /// Where the head at the start of `buf` ends (after its empty line),
    /// searching only what was not searched before.
    fn head_end(&mut self, buf: &[u8]) -> Option<usize> {
        let from = self.searched;
        for at in memchr::memchr_iter(b'\n', &buf[from..]).map(|p| from + p) {
            match &buf[at + 1..] {
                [b'\n', ..] => return Some(at + 2),
                [b'\r', b'\n', ..] => return Some(at + 3),
                [] | [b'\r'] => {
                    self.searched = at;
                    return None;
                }
                _ => {}
            }
        }
        self.searched = buf.len();
        None
    }

    /// Follows a chunked body through `buf`: bytes used and the state
    /// after them, or the offset of the first byte hyper refuses.
    fn chunk(&mut self, mut state: Chunk, buf: &[u8]) -> Result<(usize, State), usize> {
        let hex = |b: u8| match b {
            b'0'..=b'9' => Some(u64::from(b - b'0')),
            b'a'..=b'f' => Some(u64::from(b - b'a' + 10)),
            b'A'..=b'F' => Some(u64::from(b - b'A' + 10)),
            _ => None,
        };
        let grow = |size: u64, digit: u64| size.checked_mul(16)?.checked_add(digit);
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            state = match state {
                Chunk::Data(n) => {
                    let take = n.min((buf.len() - i) as u64);
                    i += take as usize;
                    state = match n - take {
                        0 => Chunk::DataCr,
                        left => Chunk::Data(left),
                    };
                    continue;
                }
                Chunk::Start => Chunk::Size(hex(b).ok_or(i)?),
                Chunk::Size(size) => match (hex(b), b) {
                    (Some(d), _) => Chunk::Size(grow(size, d).ok_or(i)?),
                    (None, b'\t' | b' ') => Chunk::SizeLws(size),
                    (None, b';') => Chunk::Extension(size),
                    (None, b'\r') => Chunk::SizeLf(size),
                    _ => return Err(i),
                },
                Chunk::SizeLws(size) => match b {
                    b'\t' | b' ' => Chunk::SizeLws(size),
                    b';' => Chunk::Extension(size),
                    b'\r' => Chunk::SizeLf(size),
                    _ => return Err(i),
                },
                Chunk::Extension(size) => match b {
                    b'\r' => Chunk::SizeLf(size),
                    b'\n' => return Err(i),
                    _ => {
                        self.extensions += 1;
                        if self.extensions >= MAX_CHUNK_EXTENSIONS {
                            return Err(i);
                        }
                        Chunk::Extension(size)
                    }
                },
                Chunk::SizeLf(size) => match (b, size) {
                    (b'\n', 0) => Chunk::EndCr,
                    (b'\n', n) => Chunk::Data(n),
                    _ => return Err(i),
                },
                Chunk::DataCr if b == b'\r' => Chunk::DataLf,
                Chunk::DataLf if b == b'\n' => Chunk::Start,
                Chunk::DataCr | Chunk::DataLf => return Err(i),
                Chunk::Trailer => {
                    self.trailers += 1;
                    if self.trailers > self.max_head {
                        return Err(i);
                    }
                    if b == b'\r' {
                        Chunk::TrailerLf
                    } else {
                        Chunk::Trailer
                    }
                }
                Chunk::TrailerLf if b == b'\n' => Chunk::EndCr,
                Chunk::TrailerLf => return Err(i),
                Chunk::EndCr if b == b'\r' => Chunk::EndLf,
                Chunk::EndCr => {
                    self.trailers += 1;
                    Chunk::Trailer
                }
                Chunk::EndLf if b == b'\n' => return Ok((i + 1, State::Head)),
                Chunk::EndLf => return Err(i),
            };
            i += 1;
        }
        Ok((i, State::Chunked(state)))
    }
}

/// The framing a whole head announces, or why it is refused.
fn check_head(req: &httparse::Request<'_, '_>) -> Result<State, (ClientFault, &'static str)> {
    let framing = |why| Err((ClientFault::BadFraming, why));
    let (mut hosts, mut lengths, mut encodings) = (0, 0, 0);
    let (mut length, mut chunked) = (None, false);
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            if !is_host_value(h.value) {
                return Err((ClientFault::BadHost, "the Host header is not a host"));
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            lengths += 1;
            length = content_length(h.value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            encodings += 1;
            chunked = h.value.trim_ascii().eq_ignore_ascii_case(b"chunked");
        }
    }
    let http11 = req.version == Some(1);
    if let Some(authority) = req.path.and_then(absolute_authority) {
        // An absolute-form target's authority is the host asked for (RFC
        // 9112 §3.2.2): a host, no user info (RFC 9110 §4.2.4).
        if !is_host_value(authority) {
            return Err((
                ClientFault::BadHost,
                "the request target's authority is not a host",
            ));
        }
    }
    if hosts > 1 || (http11 && hosts == 0) {
        return Err((
            ClientFault::BadHost,
            "an HTTP/1.1 request needs exactly one Host",
        ));
    }
    if encodings > 0 && lengths > 0 {
        return framing("Content-Length and Transfer-Encoding together");
    }
    if lengths > 1 {
        return framing("more than one Content-Length");
    }
    if encodings > 1 || (encodings == 1 && (!chunked || !http11)) {
        return framing("Transfer-Encoding other than chunked");
    }
    Ok(match (chunked, lengths, length) {
        (true, _, _) => State::Chunked(Chunk::Start),
        (false, 0, _) | (false, _, Some(0)) => State::Head,
        (false, _, Some(n)) => State::Body(n),
        (false, _, None) => return framing("Content-Length is not one number"),
    })
}

/// The authority of an absolute-form request target (`scheme://authority/...`).
fn absolute_authority(target: &str) -> Option<&[u8]> {
    let (scheme, rest) = target.split_once("://")?;
    let scheme_ok = scheme
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    if scheme.is_empty() || !scheme_ok {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some(&rest.as_bytes()[..end])
}

/// A `Content-Length` value: digits only (around optional whitespace).
fn content_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Whether `value` may be a `Host` header: `host[:port]` of RFC 3986 (a
/// reg-name or IPv4 address, or an IP literal in brackets; the port
/// digits), or empty. No user info, path, space or control byte.
#[inline]
pub fn is_host_value(value: &[u8]) -> bool {
    let reg_name = |b: &u8| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            )
    };
    let (host_ok, rest) = match value.split_first() {
        Some((b'[', inside)) => match inside.iter().position(|&b| b == b']') {
            // An IPv6 address or IPvFuture: hex, dots, colons and the
            // reg-name characters (`v1.x`); at least one character.
            Some(end) => (
                end > 0 && inside[..end].iter().all(|b| *b == b':' || reg_name(b)),
                &inside[end + 1..],
            ),
            None => return false,
        },
        _ => {
            let end = value.iter().position(|&b| b == b':').unwrap_or(value.len());
            (value[..end].iter().all(reg_name), &value[end..])
        }
    };
    host_ok
        && match rest.split_first() {
            None => true,
            Some((b':', port)) => port.iter().all(u8::is_ascii_digit),
            Some(_) => false,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_HEAD: usize = 8192;

    /// Feeds `pieces` to a scanner as the guard does (held bytes come
    /// again with the next piece): the bytes it lets through, and the
    /// verdict that stopped it, if one did.
    fn feed(pieces: &[&[u8]]) -> (Vec<u8>, Option<Verdict>) {
        let mut scanner = Scanner::new(MAX_HEAD);
        let (mut pending, mut passed) = (Vec::new(), Vec::new());
        for piece in pieces {
            pending.extend_from_slice(piece);
            let verdict = scanner.judge(&pending);
            let n = match verdict {
                Verdict::Pass(n) | Verdict::Refuse { pass: n, .. } | Verdict::Cut(n) => n,
            };
            passed.extend(pending.drain(..n));
            if !matches!(verdict, Verdict::Pass(_)) {
                return (passed, Some(verdict));
            }
        }
        (passed, None)
    }

    fn refused(bytes: &[u8]) -> Option<(usize, ClientFault, &'static str)> {
        match feed(&[bytes]).1 {
            Some(Verdict::Refuse { pass, fault, why }) => Some((pass, fault, why)),
            _ => None,
        }
    }

    const GOOD: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloPOST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\nA\r\n0123456789\r\n0\r\nT: 1\r\n\r\nGET /d HTTP/1.0\r\n\r\n";

    #[test]
    fn plain_requests_pass_whole_or_byte_by_byte() {
        assert_eq!(feed(&[GOOD]), (GOOD.to_vec(), None));
        let bytes: Vec<&[u8]> = GOOD.chunks(1).collect();
        assert_eq!(feed(&bytes), (GOOD.to_vec(), None));
    }

    #[test]
    fn an_unfinished_head_is_held_until_it_is_whole() {
        let (passed, verdict) = feed(&[b"GET /a HTTP/1.1\r\nHost: x\r\n", b"X: y\r\n"]);
        assert!(passed.is_empty() && verdict.is_none());
        let (passed, _) = feed(&[b"GET /a HTTP/1.1\r\nHost: x\r\n", b"\r\n"]);
        assert_eq!(passed.len(), 28);
    }

    #[test]
    fn content_length_with_transfer_encoding_is_refused_where_its_head_starts() {
        let first: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        let bad: &[u8] = b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(
            refused(&[first, bad].concat()),
            Some((
                first.len(),
                ClientFault::BadFraming,
                "Content-Length and Transfer-Encoding together"
            ))
        );
        let te_first: &[u8] = b"POST / HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n";
        assert!(refused(te_first).is_some());
    }

    #[test]
    fn repeated_or_listed_or_odd_content_lengths_are_refused() {
        for head in [
            &b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\nabc"[..],
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3 3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
        ] {
            let (pass, fault, _) = refused(head).unwrap_or_else(|| panic!("{head:?}"));
            assert_eq!((pass, fault), (0, ClientFault::BadFraming), "{head:?}");
        }
    }

    #[test]
    fn only_one_final_chunked_transfer_encoding_is_taken() {
        for head in [
            &b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(refused(head).is_some(), "{head:?}");
        }
        assert!(refused(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:  Chunked \r\n\r\n0\r\n\r\n"
        )
        .is_none());
    }

    #[test]
    fn http11_needs_exactly_one_valid_host() {
        for head in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: ]]]:x:y\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x:abc\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a:1:2\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: []\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: [::1]x\r\n\r\n",
        ] {
            let (_, fault, _) = refused(head).unwrap_or_else(|| panic!("{head:?}"));
            assert_eq!(fault, ClientFault::BadHost, "{head:?}");
        }
        for head in [
            &b"GET / HTTP/1.0\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: sho.rt:8443\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: 10.0.0.1:\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost:\r\n\r\n",
        ] {
            assert_eq!(refused(head), None, "{head:?}");
        }
    }

    #[test]
    fn an_absolute_form_target_needs_a_host_for_its_authority() {
        for head in [
            &b"GET http://user:pw@evil.example:99/a HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"GET http://evil.example:abc/a HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            let (_, fault, _) = refused(head).unwrap_or_else(|| panic!("{head:?}"));
            assert_eq!(fault, ClientFault::BadHost, "{head:?}");
        }
        assert_eq!(
            refused(b"GET http://sho.rt:8443/a?b HTTP/1.1\r\nHost: x\r\n\r\n"),
            None
        );
    }

    #[test]
    fn body_bytes_that_look_like_headers_are_not_read_as_headers() {
        let body = b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let head = format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let req = [head.as_bytes(), body, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"].concat();
        assert_eq!(feed(&[&req]), (req.clone(), None));
    }

    /// A long header line used to leave the guard without a length, and it
    /// then let every later request of the connection through unchecked.
    #[test]
    fn no_line_is_too_long_to_be_read_whole() {
        let padded = format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length:{}5\r\n\r\nhello",
            " ".repeat(100)
        );
        let smuggle: &[u8] = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let (pass, fault, _) = refused(&[padded.as_bytes(), smuggle].concat()).unwrap();
        assert_eq!((pass, fault), (padded.len(), ClientFault::BadFraming));
    }

    #[test]
    fn the_hundredth_request_is_checked_like_the_first() {
        let one: &[u8] = b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi";
        let many = one.repeat(99);
        let bad: &[u8] =
            b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi";
        let (pass, _, _) = refused(&[&many[..], bad].concat()).unwrap();
        assert_eq!(pass, many.len());
    }

    #[test]
    fn a_head_over_the_limit_is_431_finished_or_not() {
        let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX: {}", "y".repeat(MAX_HEAD));
        let (_, fault, _) = refused(big.as_bytes()).unwrap();
        assert_eq!(fault, ClientFault::HeadTooLarge);
        let many: String = (0..150).map(|i| format!("X-{i}: 1\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
        let (_, fault, why) = refused(many.as_bytes()).unwrap();
        assert_eq!(
            (fault, why),
            (ClientFault::HeadTooLarge, "too many header fields")
        );
    }

    #[test]
    fn a_chunk_hyper_refuses_is_handed_over_then_the_stream_ends() {
        let head: &[u8] = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
        for (body, bad_at) in [
            (&b"zz\r\n"[..], 0),
            (b"5\r\nhelloX\r\n", 8),
            (b"5\nhello\r\n", 1),
            (b"5;a\nb\r\n", 3),
            (b"11111111111111111\r\n", 16),
            (b"0\r\nT: 1\rX", 8),
        ] {
            let (passed, verdict) = feed(&[&[head, body].concat()]);
            assert_eq!(
                verdict,
                Some(Verdict::Cut(head.len() + bad_at + 1)),
                "{body:?}"
            );
            assert_eq!(passed.len(), head.len() + bad_at + 1);
        }
    }

    #[test]
    fn the_http2_preface_counts_only_where_a_connection_starts() {
        let first: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let pri: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let (pass, fault, _) = refused(&[first, pri].concat()).unwrap();
        assert_eq!((pass, fault), (first.len(), ClientFault::BadFraming));
    }

    #[test]
    fn http2_is_left_alone() {
        let preface: &[u8] =
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(feed(&[preface]), (preface.to_vec(), None));
    }

    fn guard<IO>(io: IO) -> FramingGuard<IO> {
        FramingGuard::new(
            io,
            GuardLimits {
                head_timeout: Duration::from_secs(30),
                max_head: MAX_HEAD,
                write_timeout: Duration::from_secs(30),
            },
            ClientFaults::default(),
        )
    }

    #[tokio::test]
    async fn a_refused_first_request_is_answered_before_end_of_stream() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(4096);
        let mut guard = guard(server);
        client
            .write_all(
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut seen = Vec::new();
        let n = guard
            .read_to_end(&mut seen)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n, 0, "nothing of the refused request reaches hyper");
        drop(guard);
        let mut reply = String::new();
        client
            .read_to_string(&mut reply)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            reply.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{reply:?}"
        );
        assert!(reply.contains("connection: close\r\n"), "{reply:?}");
        assert!(
            reply.ends_with(r#""message":"more than one Content-Length"}}"#),
            "{reply:?}"
        );
    }

    /// Writes `bytes` one at a time (each its own read on the other side),
    /// then ends the stream; returns what the guard hands on and what the
    /// client got back.
    async fn dribble(bytes: &'static [u8]) -> (Vec<u8>, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, server) = tokio::io::duplex(4096);
        let (mut from_server, mut to_server) = tokio::io::split(client);
        let writer = tokio::spawn(async move {
            for b in bytes {
                to_server
                    .write_all(&[*b])
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                tokio::task::yield_now().await;
            }
            to_server.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
        });
        let mut guard = guard(server);
        let mut handed = Vec::new();
        guard
            .read_to_end(&mut handed)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        writer.await.unwrap_or_else(|e| panic!("{e}"));
        drop(guard);
        let mut reply = String::new();
        from_server
            .read_to_string(&mut reply)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        (handed, reply)
    }

    #[tokio::test]
    async fn a_head_that_arrives_byte_by_byte_is_judged_whole() {
        let good: &[u8] =
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi";
        let (handed, reply) = dribble(good).await;
        assert_eq!(handed, good);
        assert_eq!(reply, "");
        let bad: &[u8] =
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let (handed, reply) = dribble(bad).await;
        assert!(handed.is_empty(), "{:?}", String::from_utf8_lossy(&handed));
        assert!(reply.starts_with("HTTP/1.1 400"), "{reply:?}");
    }
}
