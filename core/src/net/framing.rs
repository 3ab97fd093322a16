//! Request framing checks hyper leaves to the application.
//!
//! hyper takes some ambiguous framings (`Content-Length` with
//! `Transfer-Encoding`, repeated lengths, HTTP/1.1 without `Host`) that a
//! proxy must refuse, or a server behind it may frame them otherwise
//! (request smuggling). [`FramingGuard`] follows the HTTP/1 byte stream
//! under hyper, heads judged whole with `httparse` (hyper's own parser) and
//! bodies by length or chunks (hyper's grammar), and hands hyper a head only
//! once it is judged: a refused head is answered by the guard with a 4xx
//! and `Connection: close`, and hyper never sees it. HTTP/2 passes through.
//!
//! Every rule: `docs/design/framing-guard.md`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::fault::{ClientFault, ClientFaults};

mod scan;

pub use scan::is_host_value;
use scan::{Scanner, State, Verdict};

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
    /// A guard for a connection a lane has answered requests on:
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

#[cfg(test)]
mod tests;
