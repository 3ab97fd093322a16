//! The express lane: HTTP/1.1 requests simple enough to answer without
//! hyper, answered from bytes the edge writes itself.
//!
//! A public connection starts here ([`ExpressLane`], the listener's
//! [`Lane`]). Each head is parsed in place with `httparse`; a [`Simple`]
//! one (`GET`/`HEAD`, HTTP/1.1, no body, no connection-management headers)
//! is offered to the [`Express`] answers: written at once (a tier-0 hit),
//! answered after a wait (a miss), or declined. The first request declined
//! or not simple hands the connection to hyper for good, with the bytes
//! read replayed in front ([`Replay`]), so answers stay in request order.
//! The lane keeps the listener's limits (head and keep-alive timeouts, head
//! size, exactly one valid `Host`) and its drain. Why it exists (hyper's
//! request and response objects dominate a warm hit): the design page,
//! `docs/design/express-lane.md`.

mod wire;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use edgelink_core::net::framing::is_host_value;
use edgelink_core::net::server::{Lane, Options, Outcome, Peer, SETTLE};
use edgelink_core::net::{Body, Replay};
use edgelink_core::shutdown::CancellationToken;
use http::{HeaderName, HeaderValue, Method, Request, Response};
use metrics::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub use wire::{write_head, write_response};

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

/// A response the express lane waits for ([`Express::answer_later`]).
pub type Responding<'a> = Pin<Box<dyn Future<Output = Response<Body>> + Send + 'a>>;

/// A role's answers in the express lane.
pub trait Express: Send + Sync {
    /// Appends the whole response to `req` to `out` (see [`write_head`])
    /// and returns `true` (the hot path: nothing to wait for); or returns
    /// `false`, having written and counted nothing.
    fn answer_now(&self, req: &Simple<'_>, peer: Peer, out: &mut Vec<u8>) -> bool;

    /// The response to a request [`Express::answer_now`] declined, when the
    /// role answers it in the lane all the same (a cache miss, say); it
    /// must have a whole body ([`Body::as_full`]). `None`, with nothing
    /// counted: hyper answers it, and the rest of the connection.
    fn answer_later(&self, req: Request<()>, peer: Peer) -> Option<Responding<'_>>;
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

/// The lane as a listener runs it: the edge's [`Express`] answers under
/// the listener's limits, counting the connections handed to hyper.
#[derive(Clone)]
pub struct ExpressLane {
    express: Arc<dyn Express>,
    limits: Limits,
    handoffs: Counter,
}

impl ExpressLane {
    /// `express` under the limits of the listener `options` serves.
    pub fn new<L>(express: Arc<dyn Express>, options: &Options<L>, handoffs: Counter) -> Self {
        ExpressLane {
            express,
            limits: Limits {
                head_timeout: options.handshake_timeout,
                keepalive: options.keepalive,
                max_head: options.max_head,
                write_timeout: options.write_timeout,
            },
            handoffs,
        }
    }
}

impl Lane for ExpressLane {
    async fn serve<IO>(&self, io: IO, peer: Peer, closing: &CancellationToken) -> Outcome<IO>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let outcome = drive(io, &*self.express, peer, self.limits, closing).await;
        if let Outcome::Handoff(_) = outcome {
            self.handoffs.increment(1);
        }
        outcome
    }
}

/// Headers per request head the lane parses; a head with more is handed
/// over (hyper allows 100).
const MAX_HEADERS: usize = 32;

/// Serves `io` in the express lane until it closes or needs hyper.
/// `closing`: the listener has closed; from then on the connection's last
/// answer carries `connection: close`, and an idle connection waits
/// [`SETTLE`] for a request on its way before it closes.
async fn drive<IO>(
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
    // request costs the hit path (docs/design/express-lane.md).
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
                    Some(s) if express.answer_now(&s, peer, &mut out) => Step::Answered(len),
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
                    let Some(responding) = express.answer_later(*req, peer) else {
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
            return Outcome::Handoff(Replay::after(io, buf.freeze(), answered));
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
                let settle = SETTLE;
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

/// `req` as an owned request for [`Express::answer_later`]; `None` when a
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

/// The last `Host` value found valid on a connection: a client sends the
/// same one on every request, and comparing it is cheaper than checking
/// it again (docs/design/express-lane.md has the cost).
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

#[cfg(test)]
mod tests;
