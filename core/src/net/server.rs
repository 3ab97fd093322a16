//! The accept loop shared by every listener: a connection cap, optional
//! TLS (rustls), a [`Lane`] for a listener that has one (a connection
//! leaves it for hyper at its first request the lane does not answer), the
//! request-framing guard, hyper's HTTP/1.1 + HTTP/2 auto builder, and a
//! drain that loses no request.
//!
//! Every phase has a timeout: a head is bounded from its first byte (the
//! guard, the lane), an idle HTTP/1 connection by hyper's header-read timer,
//! an HTTP/2 connection without a new request by `server.h2_idle_timeout_ms`
//! (PINGs are no requests), a write the client takes nothing of by
//! `server.write_timeout_ms`. On drain, every request read is answered (the
//! last HTTP/1 one with `connection: close`), an idle connection gets
//! [`SETTLE`] for a request on its way, HTTP/2 gets GOAWAY. The rules in
//! full: `docs/design/server.md`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::ServerConfig;
use http::{HeaderValue, Request, Response, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use metrics::{Counter, Gauge};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::fault::ClientFaults;
use super::framing::{FramingGuard, GuardLimits, GuardState};
use super::{Body, Replay};

/// Who is on the other end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub addr: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// What a listener runs on each connection before hyper (the edge has
/// one: its express lane). It serves the connection until it closes, or hands it to
/// hyper with the bytes it read put back.
pub trait Lane: Clone + Send + Sync + 'static {
    /// Serves `io`; `closing` is cancelled when the listener closes.
    fn serve<IO>(
        &self,
        io: IO,
        peer: Peer,
        closing: &CancellationToken,
    ) -> impl Future<Output = Outcome<IO>> + Send
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send;
}

/// How a [`Lane`] left a connection.
pub enum Outcome<IO> {
    /// Closed (by the peer, a timeout, an error or shutdown).
    Closed,
    /// hyper serves the rest, starting with the replayed bytes.
    Handoff(Replay<IO>),
}

/// No lane: every connection goes to hyper at once.
#[derive(Debug, Clone, Copy)]
pub enum NoLane {}

impl Lane for NoLane {
    async fn serve<IO>(&self, _: IO, _: Peer, _: &CancellationToken) -> Outcome<IO>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send,
    {
        match *self {}
    }
}

/// hyper's connection builder with EdgeLink's limits.
pub fn builder(config: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        // Runs while hyper waits for the next request head: the keep-alive
        // idle timeout (the framing guard holds a head back until it is
        // whole, and times it itself).
        .header_read_timeout(Duration::from_millis(config.keepalive_timeout_ms))
        .max_buf_size(max_buf_size(config))
        // A client may shut its side after its last request and still get
        // the answers; the framing guard relies on it (it ends the read
        // side before a refused request, then answers on shutdown).
        .half_close(true)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        // Pings find dead peers; an idle connection is closed by the
        // connection loop (`h2_idle_timeout_ms`), answered pings or not.
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(config.h2_max_concurrent_streams);
    b
}

/// hyper's read buffer, which bounds a request head.
fn max_buf_size(config: &ServerConfig) -> usize {
    config.max_header_bytes.max(8192)
}

/// Connection accounting, shared by every listener of one role.
#[derive(Clone)]
pub struct ConnLimits {
    pub permits: Arc<Semaphore>,
    pub open: Gauge,
    pub rejected: Counter,
}

impl ConnLimits {
    pub fn new(max: usize, open: Gauge, rejected: Counter) -> ConnLimits {
        ConnLimits {
            permits: Arc::new(Semaphore::new(max)),
            open,
            rejected,
        }
    }
}

/// How a listener's connections are served, with lane `L` in front of
/// hyper ([`NoLane`]: none).
#[derive(Clone)]
pub struct Options<L = NoLane> {
    pub builder: auto::Builder<TokioExecutor>,
    pub limits: ConnLimits,
    /// TLS for every connection; `None` for plain HTTP.
    pub tls: Option<TlsAcceptor>,
    /// A TLS handshake, and a request head, must end within this
    /// (`server.header_read_timeout_ms`).
    pub handshake_timeout: Duration,
    /// A connection on which no request starts for this long is shut down
    /// (`server.h2_idle_timeout_ms`).
    pub idle_timeout: Duration,
    /// How long an idle HTTP/1 connection is kept between requests in the
    /// lane (`server.keepalive_timeout_ms`).
    pub keepalive: Duration,
    /// A response write must make progress within this
    /// (`server.write_timeout_ms`).
    pub write_timeout: Duration,
    /// In-flight requests get this long after `shutdown`.
    pub drain: Duration,
    /// Serves each connection first ([`Lane`]); `None`: hyper does.
    pub lane: Option<L>,
    /// hyper's read buffer, which bounds a request head (the
    /// lane's and the framing guard's too).
    pub max_head: usize,
    /// Counts the heads the framing guard refuses.
    pub faults: ClientFaults,
}

impl Options {
    /// Plain HTTP with the limits of `config`.
    pub fn plain(config: &ServerConfig, limits: ConnLimits) -> Options {
        Options {
            builder: builder(config),
            limits,
            tls: None,
            handshake_timeout: Duration::from_millis(config.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(config.h2_idle_timeout_ms),
            keepalive: Duration::from_millis(config.keepalive_timeout_ms),
            write_timeout: Duration::from_millis(config.write_timeout_ms),
            drain: Duration::from_millis(config.drain_timeout_ms),
            lane: None,
            max_head: max_buf_size(config),
            faults: ClientFaults::default(),
        }
    }

    /// A small internal listener (admin, metrics): 256 connections.
    pub fn internal(config: &ServerConfig) -> Options {
        Options::plain(
            config,
            ConnLimits::new(256, metrics::Gauge::noop(), metrics::Counter::noop()),
        )
    }
}

impl<L> Options<L> {
    /// These options with `lane` in front of hyper.
    pub fn with_lane<M: Lane>(self, lane: M) -> Options<M> {
        Options {
            builder: self.builder,
            limits: self.limits,
            tls: self.tls,
            handshake_timeout: self.handshake_timeout,
            idle_timeout: self.idle_timeout,
            keepalive: self.keepalive,
            write_timeout: self.write_timeout,
            drain: self.drain,
            lane: Some(lane),
            max_head: self.max_head,
            faults: self.faults,
        }
    }
}

/// How long a connection with nothing under way is kept once the drain
/// begins, for a request already on its way (a closed-loop client sends
/// its next request right after an answer; closing in between would
/// reset it).
pub const SETTLE: Duration = Duration::from_millis(100);

/// The drain as every connection of one listener sees it.
#[derive(Default)]
struct Drain {
    /// Set when the listener closes (a load per request, no lock).
    closing: AtomicBool,
    /// Woken with it (idle connections wait on it).
    started: CancellationToken,
    /// Connections still open, and a wake-up when one ends.
    open: AtomicUsize,
    ended: Notify,
}

impl Drain {
    fn begin(&self) {
        self.closing.store(true, Ordering::Release);
        self.started.cancel();
    }

    fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Until every connection has ended.
    async fn all_ended(&self) {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if self.open.load(Ordering::Acquire) == 0 {
                return;
            }
            ended.await;
        }
    }
}

/// Counts one connection open for as long as it lives.
struct Tracked(Arc<Drain>);

impl Tracked {
    fn new(drain: &Arc<Drain>) -> Tracked {
        drain.open.fetch_add(1, Ordering::AcqRel);
        Tracked(drain.clone())
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.ended.notify_waiters();
    }
}

/// Serves `listener` until `shutdown`, then drains for at most `drain`.
pub async fn serve<L, H, F>(
    listener: TcpListener,
    options: Options<L>,
    handler: H,
    shutdown: CancellationToken,
) where
    L: Lane,
    H: Fn(Request<Incoming>, Peer) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let drain = Arc::new(Drain::default());
    let limits = &options.limits;
    let mut closing = false;
    loop {
        // Several processes may share this port (SO_REUSEPORT), and a
        // closed listener's queued connections are reset, not handed to
        // its siblings: at shutdown, take what is queued, then close. The
        // backlog of 0 set then keeps all but one new connection out
        // meanwhile (their SYNs are dropped and retried, and reach a
        // sibling once this listener is closed).
        let (stream, addr) = if closing {
            match try_accept(&listener) {
                Some(pair) => pair,
                None => break,
            }
        } else {
            tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                let _ = socket2::SockRef::from(&listener).listen(0);
                closing = true;
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            }
        };
        let Ok(permit) = limits.permits.clone().try_acquire_owned() else {
            // Over the cap: close now rather than queue without bound.
            limits.rejected.increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let peer = Peer {
            addr,
            tls: options.tls.is_some(),
        };
        let open = limits.open.clone();
        open.increment(1.0);
        let (options, handler) = (options.clone(), handler.clone());
        let tracked = Tracked::new(&drain);
        tokio::spawn(async move {
            let conn = Conn {
                options: &options,
                peer,
                drain: &tracked.0,
            };
            match &options.tls {
                None => conn.serve(stream, handler).await,
                Some(acceptor) => {
                    let accepted =
                        tokio::time::timeout(options.handshake_timeout, acceptor.accept(stream))
                            .await;
                    match accepted {
                        Ok(Ok(tls)) => conn.serve(tls, handler).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, %addr, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                    }
                }
            }
            open.decrement(1.0);
            drop(tracked);
            drop(permit);
        });
    }
    drop(listener);
    drain.begin();
    if tokio::time::timeout(options.drain, drain.all_ended())
        .await
        .is_err()
    {
        tracing::warn!(drain = ?options.drain, "drain deadline passed; closing the remaining connections");
    }
}

/// A connection already queued on `listener`, without waiting: a direct
/// `accept` (tokio's own would trust its cached readiness, which may not
/// have seen the latest arrivals yet).
fn try_accept(listener: &TcpListener) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    let (socket, addr) = socket2::SockRef::from(listener).accept().ok()?;
    let addr = addr.as_socket()?;
    socket.set_nonblocking(true).ok()?;
    let stream = tokio::net::TcpStream::from_std(socket.into()).ok()?;
    Some((stream, addr))
}

/// One accepted connection and what serving it needs.
struct Conn<'o, L> {
    options: &'o Options<L>,
    peer: Peer,
    drain: &'o Arc<Drain>,
}

/// Requests started and answered on one connection, and how far their
/// bodies have gone (its idle timer and its drain read them).
#[derive(Default)]
struct Activity {
    requests: AtomicU64,
    /// Answers whose head is ready.
    answered: AtomicU64,
    /// Answer bodies hyper has dropped (sent, or abandoned).
    sent: AtomicU64,
    /// Heads ready and body frames taken by hyper: an answer moving.
    moved: AtomicU64,
}

impl Activity {
    /// Nothing under way and nothing arriving on an HTTP/1 connection.
    fn idle(&self, guard: &GuardState) -> bool {
        let started = self.requests.load(Ordering::Acquire);
        self.answered.load(Ordering::Acquire) == started && !guard.more_than(started)
    }
}

const CLOSE: HeaderValue = HeaderValue::from_static("close");

impl<L: Lane> Conn<'_, L> {
    /// Serves `io`: in the lane while it can, then with hyper.
    async fn serve<IO, H, F>(self, io: IO, handler: H)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        H: Fn(Request<Incoming>, Peer) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let Conn {
            options,
            peer,
            drain,
        } = self;
        let io = match &options.lane {
            None => Replay::new(io),
            Some(lane) => match lane.serve(io, peer, &drain.started).await {
                Outcome::Closed => return,
                Outcome::Handoff(io) => io,
            },
        };
        let mid = io.lane_answered();
        let guard = FramingGuard::new(
            io,
            GuardLimits {
                head_timeout: options.handshake_timeout,
                max_head: options.max_head,
                write_timeout: options.write_timeout,
            },
            options.faults.clone(),
        )
        .mid_connection(mid);
        let framing = guard.state();
        let activity = Arc::new(Activity::default());
        let service = {
            let (activity, drain, framing) = (activity.clone(), drain.clone(), framing.clone());
            service_fn(move |req: Request<Incoming>| {
                let n = activity.requests.fetch_add(1, Ordering::AcqRel) + 1;
                let http1 = req.version() <= Version::HTTP_11;
                let fut = handler(req, peer);
                let (activity, drain, framing) = (activity.clone(), drain.clone(), framing.clone());
                async move {
                    let mut resp = fut.await;
                    // Draining: the last request read is answered with
                    // close (one read after it is answered first).
                    if http1 && drain.closing() && !framing.more_than(n) {
                        resp.headers_mut().insert(http::header::CONNECTION, CLOSE);
                    }
                    activity.answered.fetch_add(1, Ordering::AcqRel);
                    activity.moved.fetch_add(1, Ordering::Relaxed);
                    Ok::<_, Infallible>(resp.map(|body| Moving { body, activity }))
                }
            })
        };
        let conn = options
            .builder
            .serve_connection(TokioIo::new(guard), service)
            .into_owned();
        tokio::pin!(conn);
        // Checked four times per idle timeout: a connection is shut down
        // after one to one and a quarter timeouts without a request.
        let tick = (options.idle_timeout / 4).max(Duration::from_millis(1));
        let mut idle_check = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
        idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut seen, mut idle_for) = (0, Duration::ZERO);
        // While draining: checked every 10 ms once SETTLE is over (an
        // HTTP/1 connection until it is idle; one found to be HTTP/2 late).
        let mut drain_check: Option<tokio::time::Interval> = None;
        // Once shut down (gracefully): checked every write timeout, and
        // closed when an answer is still being sent but none moved since
        // the last check (a stream the client gives no window: its PINGs
        // and window updates are no answer).
        let mut shut: Option<(tokio::time::Interval, u64)> = None;
        let progress = || {
            let mut check = tokio::time::interval_at(
                tokio::time::Instant::now() + options.write_timeout,
                options.write_timeout,
            );
            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            Some((check, activity.moved.load(Ordering::Relaxed)))
        };
        loop {
            tokio::select! {
                // hyper first: a request already readable is taken before
                // the connection is shut down.
                biased;
                ended = conn.as_mut() => {
                    if let Err(e) = ended {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                () = drain.started.cancelled(), if drain_check.is_none() && shut.is_none() => {
                    let mut check = tokio::time::interval_at(
                        tokio::time::Instant::now() + SETTLE,
                        Duration::from_millis(10),
                    );
                    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    drain_check = Some(check);
                    if framing.is_h2() {
                        conn.as_mut().graceful_shutdown();
                        shut = progress();
                    }
                }
                _ = tick_of(drain_check.as_mut()), if shut.is_none() => {
                    // HTTP/2 (known by now), or HTTP/1 past SETTLE with
                    // nothing under way or arriving: no answer will carry
                    // the close, so close it here.
                    if framing.is_h2() || activity.idle(&framing) {
                        conn.as_mut().graceful_shutdown();
                        shut = progress();
                    }
                }
                _ = idle_check.tick(), if shut.is_none() => {
                    let started = activity.requests.load(Ordering::Acquire);
                    let answered = activity.answered.load(Ordering::Acquire);
                    if started == seen && answered == started {
                        idle_for += tick;
                    } else {
                        (seen, idle_for) = (started, Duration::ZERO);
                    }
                    if idle_for >= options.idle_timeout {
                        conn.as_mut().graceful_shutdown();
                        shut = progress();
                    }
                }
                                _ = tick_of(shut.as_mut().map(|(check, _)| check)), if shut.is_some() => {
                    let moved = activity.moved.load(Ordering::Relaxed);
                    let sending = activity.sent.load(Ordering::Acquire)
                        < activity.answered.load(Ordering::Acquire);
                    match &mut shut {
                        Some((_, last)) if *last != moved || !sending => *last = moved,
                        _ => {
                            // Shut down, and its answers went nowhere for a
                            // write timeout: a client that takes nothing.
                            tracing::debug!("connection closed: its answers were not taken after shutdown");
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// An answer's body, counted as it moves and when hyper is done with it.
struct Moving<B> {
    body: B,
    activity: Arc<Activity>,
}

impl<B: http_body::Body + Unpin> http_body::Body for Moving<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(_))) = &polled {
            self.activity.moved.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl<B> Drop for Moving<B> {
    fn drop(&mut self) {
        self.activity.sent.fetch_add(1, Ordering::Release);
    }
}

/// The next tick of `check` (never while there is none).
async fn tick_of(check: Option<&mut tokio::time::Interval>) -> tokio::time::Instant {
    match check {
        Some(check) => check.tick().await,
        None => std::future::pending().await,
    }
}
