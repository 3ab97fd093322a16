//! The accept loop shared by the public and admin listeners: a connection
//! cap, optional TLS (rustls), the express lane for a role that has one
//! ([`super::express`]; a connection leaves it for hyper at its first
//! request the lane does not answer), the request-framing guard, hyper's
//! HTTP/1.1 + HTTP/2 auto builder with a timer (so the header-read timeout
//! applies), and a graceful drain bounded by a deadline.
//!
//! The header-read timeout also bounds an idle keep-alive connection: hyper
//! starts it whenever it waits for the next request head.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::ServerConfig;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use metrics::{Counter, Gauge};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::express::{self, Express, Outcome, Replay};
use super::framing::FramingGuard;
use super::Body;

/// Who is on the other end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub addr: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// hyper's connection builder with EdgeLink's limits.
pub fn builder(config: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(config.header_read_timeout_ms))
        .max_buf_size(max_buf_size(config))
        // A client may shut its side after its last request and still get
        // the answers; the framing guard relies on it (it ends the read
        // side before a refused request, then answers 400 on shutdown).
        .half_close(true)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        // Pings find dead peers; an idle HTTP/2 connection is otherwise
        // kept (the connection cap bounds how many).
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

/// How a listener's connections are served.
#[derive(Clone)]
pub struct Options {
    pub builder: auto::Builder<TokioExecutor>,
    pub limits: ConnLimits,
    /// TLS for every connection; `None` for plain HTTP.
    pub tls: Option<TlsAcceptor>,
    /// A TLS handshake, and a request head the framing guard holds back,
    /// must end within this (`server.header_read_timeout_ms`).
    pub handshake_timeout: Duration,
    /// In-flight requests get this long after `shutdown`.
    pub drain: Duration,
    /// Simple requests answered without hyper ([`express`]); `None`: every
    /// request goes to hyper.
    pub express: Option<Arc<dyn Express>>,
    /// hyper's read buffer, which bounds a request head (the express
    /// lane's too).
    pub max_head: usize,
    /// Counts the connections the express lane hands to hyper.
    pub express_handoffs: Counter,
}

impl Options {
    /// Plain HTTP with the limits of `config`.
    pub fn plain(config: &ServerConfig, limits: ConnLimits) -> Options {
        Options {
            builder: builder(config),
            limits,
            tls: None,
            handshake_timeout: Duration::from_millis(config.header_read_timeout_ms),
            drain: Duration::from_millis(config.drain_timeout_ms),
            express: None,
            max_head: max_buf_size(config),
            express_handoffs: Counter::noop(),
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

/// Serves `listener` until `shutdown`, then drains for at most `drain`.
pub async fn serve<H, F>(
    listener: TcpListener,
    options: Options,
    handler: H,
    shutdown: CancellationToken,
) where
    H: Fn(Request<Incoming>, Peer) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    // What the express lane sees of the graceful shutdown (hyper's
    // connections see it through their watchers).
    let winding_down = CancellationToken::new();
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
        let (options, handler, watcher) = (options.clone(), handler.clone(), graceful.watcher());
        let closing = winding_down.clone();
        tokio::spawn(async move {
            // The watcher lives as long as the connection, so the drain
            // below waits for express-lane connections too.
            let conn = Conn {
                options: &options,
                peer,
                watcher,
                closing,
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
            drop(permit);
        });
    }
    drop(listener);
    // hyper closes a connection at once on graceful shutdown when it has
    // not read a request yet, and one accepted a moment ago may have its
    // request still unread in the socket (closing then resets it): let
    // those requests be read first.
    tokio::time::sleep(SETTLE.min(options.drain)).await;
    winding_down.cancel();
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(options.drain) => {
            tracing::warn!(drain = ?options.drain, "drain deadline passed; closing the remaining connections");
        }
    }
}

/// How long connections accepted just before shutdown get to deliver their
/// first request before graceful shutdown closes idle connections.
const SETTLE: Duration = Duration::from_millis(100);

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
struct Conn<'o> {
    options: &'o Options,
    peer: Peer,
    watcher: Watcher,
    closing: CancellationToken,
}

impl Conn<'_> {
    /// Serves `io`: in the express lane while it can, then with hyper.
    async fn serve<IO, H, F>(self, io: IO, handler: H)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        H: Fn(Request<Incoming>, Peer) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let Conn {
            options,
            peer,
            watcher,
            closing,
        } = self;
        let io = match &options.express {
            None => Replay::new(io),
            Some(lane) => {
                let limits = express::Limits {
                    head_timeout: options.handshake_timeout,
                    max_head: options.max_head,
                };
                match express::serve(io, &**lane, peer, limits, &closing).await {
                    Outcome::Closed => return,
                    Outcome::Handoff(io) => {
                        options.express_handoffs.increment(1);
                        io
                    }
                }
            }
        };
        let service = service_fn(move |req| {
            let fut = handler(req, peer);
            async move { Ok::<_, Infallible>(fut.await) }
        });
        let conn = options
            .builder
            .serve_connection(
                TokioIo::new(FramingGuard::with_timeout(io, options.handshake_timeout)),
                service,
            )
            .into_owned();
        if let Err(e) = watcher.watch(conn).await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}
