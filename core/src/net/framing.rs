//! Request framing checks hyper leaves to the application.
//!
//! hyper reads a request with both `Content-Length` and `Transfer-Encoding`
//! as chunked (dropping the length) and folds repeated equal
//! `Content-Length` lines into one; RFC 9112 allows that, but a proxy that
//! forwards such a request to a server that frames it the other way is how
//! request smuggling happens. EdgeLink refuses both outright, the way a
//! front door should: [`FramingGuard`] follows the HTTP/1 byte stream under
//! hyper (request heads, then each body by its length or its chunks). It
//! hands hyper a request head only once the head is whole, so on an
//! ambiguous head hyper has seen none of it: the guard ends the stream
//! there and answers `400` with `Connection: close` itself, at once when
//! hyper has seen nothing of the connection, else after hyper has finished
//! the requests before it (when it shuts the connection down).
//!
//! Bytes pass through one buffer of the guard (one copy; a request head is
//! a few hundred bytes). It scans lines with `memchr` and keeps at most 64
//! bytes of the current line; a head longer than [`MAX_HELD`] is passed on
//! unchecked (hyper refuses it with 431); HTTP/2 (the connection preface) is
//! passed through untouched.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// An HTTP/1 connection's IO, refusing ambiguous request framing.
#[derive(Debug)]
pub struct FramingGuard<IO> {
    io: IO,
    scanner: Scanner,
    refusal: Option<Refusal>,
    /// Bytes handed to hyper so far.
    passed: u64,
    /// Read from the socket, not yet handed to hyper: `pending[start..ready]`
    /// may go, `pending[ready..]` is an unfinished head.
    pending: Vec<u8>,
    start: usize,
    ready: usize,
    /// The stream offset of `pending[0]`.
    base: u64,
    scratch: Box<[u8]>,
    /// An unfinished head must be whole by then (hyper's own header timer
    /// does not run while the guard holds the head back).
    head_timeout: Duration,
    head_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// A head still unfinished after this many bytes is passed on unchecked.
pub const MAX_HELD: usize = 64 * 1024;

#[derive(Debug)]
struct Refusal {
    bytes: Vec<u8>,
    written: usize,
}

impl<IO> FramingGuard<IO> {
    /// A guard whose held heads must be whole within `head_timeout`.
    pub fn with_timeout(io: IO, head_timeout: Duration) -> FramingGuard<IO> {
        FramingGuard {
            head_timeout,
            ..FramingGuard::new(io)
        }
    }

    pub fn new(io: IO) -> FramingGuard<IO> {
        FramingGuard {
            io,
            scanner: Scanner::default(),
            refusal: None,
            passed: 0,
            pending: Vec::new(),
            start: 0,
            ready: 0,
            base: 0,
            scratch: vec![0; 8192].into_boxed_slice(),
            head_timeout: Duration::from_secs(30),
            head_deadline: None,
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
                    // so the 400 goes out now.
                    ready!(write_refusal(&mut this.io, r, cx))?;
                }
                // End of stream for hyper: it finishes the requests before
                // the refused one, then shuts the connection down (our 400).
                return Poll::Ready(Ok(()));
            }
            // Everything handed over: drop it, then read more.
            this.pending.drain(..this.start);
            this.base += this.start as u64;
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
                continue;
            }
            this.pending.extend_from_slice(new);
            let scanned = this.pending.len() - new.len();
            match this.scanner.scan(&this.pending[scanned..]) {
                Some((head, reason)) => {
                    let cut = usize::try_from(head.saturating_sub(this.base)).unwrap_or(0);
                    this.pending.truncate(cut);
                    this.ready = this.pending.len();
                    this.refusal = Some(Refusal {
                        bytes: refusal(reason),
                        written: 0,
                    });
                }
                None => {
                    this.ready = match this.scanner.holding_from() {
                        Some(head) => usize::try_from(head.saturating_sub(this.base))
                            .unwrap_or(0)
                            .min(this.pending.len()),
                        None => this.pending.len(),
                    };
                    if this.pending.len() - this.ready > MAX_HELD {
                        this.scanner.state = State::Off;
                        this.ready = this.pending.len();
                    }
                    if this.ready < this.pending.len() {
                        if this.head_deadline.is_none() {
                            this.head_deadline =
                                Some(Box::pin(tokio::time::sleep(this.head_timeout)));
                        }
                    } else {
                        this.head_deadline = None;
                    }
                }
            }
        }
    }
}

/// Writes what is left of the 400 and flushes it.
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
            ready!(write_refusal(&mut this.io, r, cx))?;
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
    /// Bytes scanned since the connection began.
    pos: u64,
    /// The stream offset where the current head began.
    head_start: u64,
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
            pos: 0,
            head_start: 0,
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
    /// Where an unfinished head began (a stream offset), if one is open.
    fn holding_from(&self) -> Option<u64> {
        (self.state == State::Head && (self.in_head || self.line_len > 0))
            .then_some(self.head_start)
    }

    /// Follows `buf`, the next bytes of the stream; on an ambiguous head,
    /// the stream offset where that head began and why.
    fn scan(&mut self, buf: &[u8]) -> Option<(u64, &'static str)> {
        let at = self.pos;
        let found = self.scan_inner(buf, at);
        self.pos = at + buf.len() as u64;
        found
    }

    fn scan_inner(&mut self, buf: &[u8], at: u64) -> Option<(u64, &'static str)> {
        let mut i = 0;
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
                        self.head_start = at + i as u64;
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
                        return Some((self.head_start, reason));
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

    fn scan_all(pieces: &[&[u8]]) -> Option<(usize, u64, &'static str)> {
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
                first.len() as u64,
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

    #[tokio::test]
    async fn a_refused_first_request_is_answered_400_before_end_of_stream() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(4096);
        let mut guard = FramingGuard::new(server);
        client
            .write_all(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx")
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
        let mut guard = FramingGuard::new(server);
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
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi";
        let (handed, reply) = dribble(good).await;
        assert_eq!(handed, good);
        assert_eq!(reply, "");
        let bad: &[u8] =
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let (handed, reply) = dribble(bad).await;
        assert!(handed.is_empty(), "{:?}", String::from_utf8_lossy(&handed));
        assert!(reply.starts_with("HTTP/1.1 400"), "{reply:?}");
    }

    #[test]
    fn http2_is_left_alone() {
        let preface: &[u8] =
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(scan_all(&[preface]), None);
    }
}
