//! EdgeLink edge: the redirect data plane.
//!
//! # Layout
//!
//! - [`listener`], [`server`] (re-exported from `edgelink_core::net`, which
//!   every role shares): socket2-built listeners (`SO_REUSEPORT`,
//!   `TCP_NODELAY`, backlog) and the accept loop (connection cap, hyper
//!   HTTP/1.1 + h2c with header-read timeout and header-size limit, graceful
//!   drain).
//! - [`resolve`]: redirect resolution through tier 0 (moka, pre-built
//!   answers, single-flight, negative caching), tier 1 (Redis) and tier 2
//!   (PostgreSQL or SQLite).
//! - [`index`]: the read index of tier 0 (what hits are served from; moka
//!   decides what it holds), and the per-link click counters in its slots.
//! - [`access`]: the JSON-lines access log, written by a thread of its own.
//! - [`clicks`]: bot detection and the flusher that writes click counts to
//!   the source of truth.
//! - [`invalidate`]: codes to drop from tier 0, from an in-process origin or
//!   the shared cache's pub/sub channel.
//! - [`tls`]: rustls termination, certificates by SNI, reloads.
//! - [`proxy`]: the reverse proxy of `/api/` to the origin upstreams.
//! - [`limit`]: per-client-IP rate limits and the client IP.
//! - [`respond`]: the one place outcomes become HTTP responses.
//! - [`metrics`]: metric names, bounded labels, handles registered once.
//! - this file: [`run`], the routes of the public, admin and plain-HTTP
//!   redirect listeners, the settings a reload swaps ([`Live`]), shutdown
//!   and background loops (cache gauge, metrics upkeep).
//!
//! Public listener: `GET|HEAD /{code}`, `/healthz`, `/readyz`, and the
//! proxied prefixes. Admin listener: `/metrics` (Prometheus text),
//! `/healthz`.

pub mod access;
pub mod clicks;
pub mod index;
pub mod invalidate;
pub mod limit;
pub mod metrics;
pub mod proxy;
pub mod resolve;
pub mod respond;
pub mod tls;

/// The listeners and accept loop every role shares (from edgelink-core).
pub use edgelink_core::net::{listener, server};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use edgelink_core::config::{Config, LimitsConfig};
use edgelink_core::net::express::{self, Express, Simple};
use edgelink_core::net::server::Peer;
use edgelink_core::net::{read_body, BodyLimits, IpNet};
use edgelink_core::shutdown::CancellationToken;
use edgelink_core::{is_valid_code, Stores};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::limit::RateLimit;
use crate::metrics::{status_index, EdgeMetrics, InFlight, Tier};
use crate::proxy::Proxy;
use crate::resolve::{Answer, Resolver};
use crate::respond::{failure, Body, Failure, LogThrottle};
use crate::tls::Certificates;

/// The bound sockets `run` serves.
#[derive(Debug)]
pub struct Listeners {
    /// One or more listeners on the same address (`SO_REUSEPORT`); each is
    /// served by its own thread when there are several.
    pub public: Vec<std::net::TcpListener>,
    pub admin: std::net::TcpListener,
    /// The plain-HTTP listener that redirects to HTTPS (`tls.redirect_listen`).
    pub redirect: Option<std::net::TcpListener>,
}

impl Listeners {
    /// Binds the addresses of `config.server`: one public listener per
    /// worker in per-core mode, one in work-stealing mode.
    pub fn bind(config: &Config) -> std::io::Result<Listeners> {
        let s = &config.server;
        Ok(Listeners {
            public: listener::bind_many(s.listen, s.public_listeners(), s.backlog)?,
            admin: listener::bind(s.admin_listen, s.backlog)?,
            redirect: match config.tls.redirect_listen {
                Some(addr) => Some(listener::bind(addr, s.backlog)?),
                None => None,
            },
        })
    }

    pub fn public_addr(&self) -> std::io::Result<SocketAddr> {
        match self.public.first() {
            Some(l) => l.local_addr(),
            None => Err(std::io::Error::other("no public listener")),
        }
    }

    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    pub fn redirect_addr(&self) -> Option<SocketAddr> {
        self.redirect.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// How the edge reloads its settings: `load` reads and validates the
/// configuration again; each message on `requests` (SIGHUP) asks for it.
pub struct Reload {
    pub load: Box<dyn Fn() -> Result<Config, String> + Send + Sync>,
    pub requests: tokio::sync::mpsc::Receiver<()>,
}

/// A route served by another component of the same process. It gets the
/// request with its body already read, under the client's limits (a body
/// the client fails never reaches it).
pub type Route = Arc<
    dyn Fn(
            Request<Full<Bytes>>,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<Body>> + Send>>
        + Send
        + Sync,
>;

/// What other components of the same process hang on the edge (the
/// embedded `serve`: the creation API and the key pool in one process).
#[derive(Default)]
pub struct Mounts {
    /// Answers `/api/...` on the public listener.
    pub api: Option<Route>,
    /// Answers `/admin/...` on the admin listener.
    pub admin: Option<Route>,
    /// More metrics for `/metrics`, rendered after the edge's own.
    pub metrics: Vec<PrometheusHandle>,
    /// Codes to drop from tier 0 (links changed or deleted) from an origin
    /// in the same process. Without it, an edge with Redis follows the
    /// shared invalidation channel.
    pub invalidations: Option<tokio::sync::mpsc::Receiver<invalidate::Invalidation>>,
    /// Configuration reloads (SIGHUP).
    pub reload: Option<Reload>,
}

/// The settings a reload swaps in whole: limits, rate limits, the proxy.
/// Requests read them through an `ArcSwap` (no lock, no reference count).
struct Live {
    limits: LimitsConfig,
    trusted: Vec<IpNet>,
    create: Option<Arc<RateLimit>>,
    not_found: Option<Arc<RateLimit>>,
    unauthorized: Option<Arc<RateLimit>>,
    proxy: Option<Arc<Proxy>>,
}

impl Live {
    /// From a validated `config`, keeping the rate-limit state and the
    /// proxy (its pools, ejections) of `old` where their settings are
    /// unchanged.
    fn new(
        config: &Config,
        old: Option<&Live>,
        metrics: &EdgeMetrics,
        shutdown: &CancellationToken,
    ) -> Live {
        let l = &config.limits;
        let same_limits = old.filter(|o| o.limits == *l);
        let proxy = match old.and_then(|o| o.proxy.as_ref()) {
            Some(p) if *p.config() == config.proxy => Some(p.clone()),
            _ => Proxy::start(
                &config.proxy,
                BodyLimits::new(&config.server, config.proxy.max_body_bytes),
                metrics.proxy.clone(),
                metrics.client_faults.clone(),
                shutdown.clone(),
            ),
        };
        let limit = |per_sec, burst| {
            RateLimit::new(per_sec, burst, l.max_tracked_clients, l.ipv6_prefix_len).map(Arc::new)
        };
        Live {
            limits: l.clone(),
            trusted: l
                .trusted_proxies
                .iter()
                .filter_map(|c| c.parse().ok())
                .collect(),
            create: match same_limits {
                Some(o) => o.create.clone(),
                None => limit(l.create_per_sec, l.create_burst),
            },
            not_found: match same_limits {
                Some(o) => o.not_found.clone(),
                None => limit(l.not_found_per_sec, l.not_found_burst),
            },
            unauthorized: match same_limits {
                Some(o) => o.unauthorized.clone(),
                None => limit(l.unauthorized_per_sec, l.unauthorized_burst),
            },
            proxy,
        }
    }

    fn client_ip(&self, peer: Peer, headers: &http::HeaderMap) -> std::net::IpAddr {
        limit::client_ip(peer.addr, headers, &self.trusted)
    }
}

/// Shared state of one edge.
struct App {
    resolver: Resolver,
    metrics: Arc<EdgeMetrics>,
    draining: AtomicBool,
    backend_log: LogThrottle,
    api: Option<Route>,
    live: ArcSwap<Live>,
    certs: Option<Arc<Certificates>>,
    bots: clicks::Bots,
    /// Set when `tracing.otlp_endpoint` is.
    tracer: Option<Arc<edgelink_core::trace::Tracer>>,
    /// Set when `access_log.path` is.
    access: Option<access::AccessLog>,
    /// `analytics.enabled` (reloadable).
    counting: Arc<AtomicBool>,
    /// `server.ready_needs_source`.
    ready_needs_source: bool,
    /// How the bodies of mounted routes are read: `origin.max_body_bytes`
    /// under the server's body timeouts (`origin.max_batch_body_bytes`
    /// for a batch).
    route_body: BodyLimits,
    batch_body_bytes: usize,
    /// `origin.max_batch_links`: the most a batch is charged.
    max_batch_links: u32,
}

/// Serves the edge on `listeners` until `shutdown` is cancelled, then drains
/// in-flight requests for at most `server.drain_timeout_ms`.
///
/// The first public listener, the admin listener and the background loops
/// run on the caller's runtime; every further public listener gets a thread
/// of its own with a single-threaded runtime (per-core mode). Connections
/// never move between threads; the cache, the pools and the metrics are
/// shared.
pub async fn run(
    listeners: Listeners,
    config: Arc<Config>,
    stores: Stores,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    run_with(listeners, config, stores, Mounts::default(), shutdown).await
}

/// [`run`], with other components' routes and invalidations mounted.
pub async fn run_with(
    listeners: Listeners,
    config: Arc<Config>,
    stores: Stores,
    mounts: Mounts,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let Mounts {
        api,
        admin: admin_mount,
        metrics: extra_metrics,
        invalidations,
        reload,
    } = mounts;
    // SIGTERM marks the edge draining at once (`/readyz` 503); the
    // listeners stop accepting `server.shutdown_grace_ms` later.
    let signalled = shutdown;
    let shutdown = CancellationToken::new();
    let certs = match config.tls.certificates.as_slice() {
        [] => None,
        files => Some(Certificates::load(files).map_err(std::io::Error::other)?),
    };
    let tls = match &certs {
        Some(c) => Some(tokio_rustls::TlsAcceptor::from(
            c.server_config().map_err(std::io::Error::other)?,
        )),
        None => None,
    };
    if let (Some(c), true) = (&certs, config.tls.watch) {
        tls::watch(c.clone(), shutdown.clone()).map_err(std::io::Error::other)?;
    }
    let cache_name = stores.cache.as_ref().map(|c| c.name());
    let (edge_metrics, prometheus) = EdgeMetrics::new(cache_name, stores.source.name());
    let metrics = Arc::new(edge_metrics);
    let app = Arc::new(App {
        resolver: Resolver::new(&stores, &config, metrics.clone()),
        metrics: metrics.clone(),
        draining: AtomicBool::new(false),
        backend_log: LogThrottle::default(),
        api,
        live: ArcSwap::from_pointee(Live::new(&config, None, &metrics, &shutdown)),
        certs,
        bots: clicks::Bots::new().map_err(std::io::Error::other)?,
        tracer: edgelink_core::trace::Tracer::start(&config.tracing, "edgelink-edge"),
        access: access::AccessLog::open(&config.access_log, metrics.access_log_dropped.clone())?,
        counting: Arc::new(AtomicBool::new(config.analytics.enabled)),
        ready_needs_source: config.server.ready_needs_source,
        route_body: BodyLimits::new(&config.server, config.origin.max_body_bytes),
        batch_body_bytes: config.origin.max_batch_body_bytes,
        max_batch_links: u32::try_from(config.origin.max_batch_links).unwrap_or(u32::MAX),
    });
    let (click_store, own_pool) = click_store(&config, &stores).await;
    let mut flusher = clicks::Flusher::new(
        app.resolver.index().clone(),
        click_store,
        config.analytics.max_pending,
        config.analytics.flush_batch,
        metrics.clicks.clone(),
    );
    if !own_pool {
        // SQLite (or a PostgreSQL pool shared with lookups): its writes
        // run at the serving threads' priority, never the flusher's.
        flusher = flusher.write_on(tokio::runtime::Handle::current());
    }
    let mut publics = listeners.public.into_iter();
    let first = publics
        .next()
        .ok_or_else(|| std::io::Error::other("no public listener"))?;
    let public = tokio::net::TcpListener::from_std(first)?;
    let admin = tokio::net::TcpListener::from_std(listeners.admin)?;
    let redirect = match listeners.redirect {
        Some(l) => Some(tokio::net::TcpListener::from_std(l)?),
        None => None,
    };
    let mut options = server::Options::plain(
        &config.server,
        server::ConnLimits::new(
            config.server.max_connections,
            metrics.connections_open.clone(),
            metrics.connections_rejected.clone(),
        ),
    );
    let mut plain = options.clone();
    plain.faults = metrics.client_faults.clone();
    options.tls = tls;
    options.express = Some(app.clone());
    options.express_handoffs = metrics.express_handoffs.clone();
    options.faults = metrics.client_faults.clone();
    let handler = {
        let app = app.clone();
        move |req, peer| app.answer(req, peer)
    };

    let mut threads = Vec::new();
    for (i, listener) in publics.enumerate() {
        let (options, handler, shutdown) = (options.clone(), handler.clone(), shutdown.clone());
        let thread = std::thread::Builder::new()
            .name(format!("edgelink-io-{}", i + 1))
            .spawn(move || -> std::io::Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    server::serve(listener, options, handler, shutdown).await;
                    Ok(())
                })
            })?;
        threads.push(thread);
    }
    tracing::info!(
        public = %public.local_addr()?,
        threads = threads.len() + 1,
        admin = %admin.local_addr()?,
        tls = app.certs.is_some(),
        stores = ?stores,
        "edge listening"
    );

    let public_task = server::serve(public, options, handler, shutdown.clone());
    let https_port = config.tls.https_port;
    let (redirect_app, redirect_shutdown) = (app.clone(), shutdown.clone());
    let redirect_task = async move {
        let Some(listener) = redirect else { return };
        let app = redirect_app;
        let handler = move |req: Request<Incoming>, peer| {
            let app = app.clone();
            async move {
                match req.uri().path() {
                    "/healthz" | "/readyz" => app.handle(req, peer).await,
                    _ => to_https(&req, https_port),
                }
            }
        };
        server::serve(listener, plain, handler, redirect_shutdown).await;
    };
    let mut renderers = vec![prometheus.clone()];
    renderers.extend(extra_metrics);
    let renderers = Arc::new(renderers);
    let admin_body = app.route_body;
    let admin_task = server::serve(
        admin,
        server::Options::internal(&config.server),
        move |req: Request<Incoming>, _peer| {
            let renderers = renderers.clone();
            let mount = admin_mount.clone();
            async move {
                match mount {
                    Some(route) if req.uri().path().starts_with("/admin/") => {
                        let (parts, body) = req.into_parts();
                        match read_body(body, admin_body, &Default::default()).await {
                            Ok(bytes) => route(Request::from_parts(parts, Full::new(bytes))).await,
                            Err(e) => e.response(),
                        }
                    }
                    _ => admin_route(&renderers, &req),
                }
            }
        },
        shutdown.clone(),
    );
    let draining_app = app.clone();
    let closing = app.clone();
    let stop_accepting = shutdown.clone();
    let grace = Duration::from_millis(config.server.shutdown_grace_ms);
    let mark_draining = async move {
        signalled.cancelled().await;
        draining_app.draining.store(true, Ordering::Relaxed);
        if !grace.is_zero() {
            tracing::info!(?grace, "draining: /readyz answers 503; still accepting");
            tokio::time::sleep(grace).await;
        }
        stop_accepting.cancel();
    };
    let reloading = follow_reloads(app.clone(), reload, shutdown.clone());
    let invalidations = match (invalidations, &config.redis.url) {
        (Some(rx), _) => Some(rx),
        (None, Some(url)) if stores.cache.is_some() => {
            let (tx, rx) = tokio::sync::mpsc::channel(10_000);
            tokio::spawn(invalidate::follow_redis(
                url.clone(),
                format!("{}invalidate", config.redis.key_prefix),
                tx,
                shutdown.clone(),
            ));
            Some(rx)
        }
        _ => None,
    };
    let invalidating = apply_invalidations(app.clone(), invalidations, shutdown.clone());
    let flusher = flusher.spawn(
        Duration::from_millis(config.analytics.flush_interval_ms),
        config.analytics.flush_priority,
        app.counting.clone(),
        shutdown.clone(),
    )?;
    tokio::join!(
        public_task,
        redirect_task,
        admin_task,
        mark_draining,
        invalidating,
        reloading,
        background(app, prometheus, shutdown),
    );
    for thread in threads {
        let joined = tokio::task::spawn_blocking(move || thread.join()).await;
        match joined {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "a listener thread failed"),
            _ => tracing::error!("a listener thread panicked"),
        }
    }
    // Every request is answered: the last counts and log lines go out.
    flusher
        .finish(Duration::from_millis(config.server.drain_timeout_ms))
        .await;
    if let Some(log) = &closing.access {
        log.close(Duration::from_secs(2));
    }
    tracing::info!("edge stopped");
    Ok(())
}

/// The store the click flusher writes to, and whether it is a pool of the
/// flusher's own. A pooled PostgreSQL connection is driven by the runtime
/// that opened it, and the flusher has a runtime of its own on a thread
/// that may run at idle priority: a connection it opened in the shared
/// pool would go on to carry requests' lookups on that thread. So with
/// PostgreSQL as the source of truth the flusher gets a pool of its own
/// (at most two connections). SQLite's writes hold the one writer that
/// link creation needs, so they are not made from the flusher's thread
/// (see [`clicks::Flusher::write_on`]).
async fn click_store(
    config: &Config,
    stores: &Stores,
) -> (Arc<dyn edgelink_core::LinkStore>, bool) {
    if stores.source.name() != "postgres" {
        return (stores.source.clone(), false);
    }
    let mut pg = config.postgres.clone();
    pg.pool_size = pg.pool_size.min(2);
    match edgelink_core::store::postgres::PgStore::connect(&pg).await {
        Ok(store) => (Arc::new(store), true),
        Err(e) => {
            tracing::warn!(error = %e, "click flushes share the edge's PostgreSQL pool");
            (stores.source.clone(), false)
        }
    }
}

/// Periodic work: the request-rate and cache-size gauges, index sweeps and
/// the histogram upkeep the Prometheus recorder needs.
async fn background(app: Arc<App>, prometheus: PrometheusHandle, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    let mut last = (std::time::Instant::now(), app.metrics.answered.sum());
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = (std::time::Instant::now(), app.metrics.answered.sum());
        let secs = now.0.duration_since(last.0).as_secs_f64();
        if secs > 0.0 {
            app.metrics
                .request_rate
                .set(now.1.saturating_sub(last.1) as f64 / secs);
        }
        last = now;
        let proxy = app.live.load().proxy.clone();
        let counts = proxy.map_or([0; 3], |p| p.breaker_counts());
        for (gauge, count) in app.metrics.proxy.upstreams.iter().zip(counts) {
            gauge.set(count as f64);
        }
        app.resolver.sweep_index(n);
        let entries = app.resolver.cache_entries().await;
        app.metrics.cache_entries.set(entries as f64);
        n += 1;
        if n % 5 == 0 {
            prometheus.run_upkeep();
        }
    }
}

/// Drops every code that arrives from tier 0, until shutdown (or until
/// every sender is gone).
async fn apply_invalidations(
    app: Arc<App>,
    invalidations: Option<tokio::sync::mpsc::Receiver<invalidate::Invalidation>>,
    shutdown: CancellationToken,
) {
    let Some(mut rx) = invalidations else { return };
    loop {
        let inv = tokio::select! {
            _ = shutdown.cancelled() => return,
            inv = rx.recv() => inv,
        };
        let Some(inv) = inv else { return };
        match inv {
            invalidate::Invalidation::Code(code) => app.resolver.invalidate(&code).await,
            invalidate::Invalidation::All => app.resolver.invalidate_all().await,
            invalidate::Invalidation::Barrier(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// Applies each reload request until shutdown.
async fn follow_reloads(app: Arc<App>, reload: Option<Reload>, shutdown: CancellationToken) {
    let Some(Reload { load, mut requests }) = reload else {
        return;
    };
    loop {
        let request = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = requests.recv() => r,
        };
        if request.is_none() {
            return;
        }
        match load() {
            Ok(config) => app.apply(&config, &shutdown).await,
            Err(e) => {
                app.metrics.reloads_failed.increment(1);
                tracing::error!(error = %e, "configuration not reloaded; keeping the running one");
            }
        }
    }
}

/// The plain-HTTP listener's answer: 308 to the same target over HTTPS.
fn to_https(req: &Request<Incoming>, port: u16) -> Response<Body> {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .and_then(|h| h.parse::<http::uri::Authority>().ok());
    let Some(host) = host else {
        return failure(Failure::NoHost);
    };
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let location = match port {
        443 => format!("https://{}{target}", host.host()),
        port => format!("https://{}:{port}{target}", host.host()),
    };
    match http::HeaderValue::from_str(&location) {
        Ok(location) => {
            respond::redirect(StatusCode::PERMANENT_REDIRECT, location, respond::NO_STORE)
        }
        Err(_) => failure(Failure::NoHost),
    }
}

/// Methods the creation API may be called with; `CONNECT`, `TRACE` and
/// anything unknown are never forwarded.
fn forwardable(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET
            | Method::HEAD
            | Method::POST
            | Method::PUT
            | Method::PATCH
            | Method::DELETE
            | Method::OPTIONS
    )
}

/// Whether `path` has a `.` or `..` segment (plain or percent-encoded),
/// a backslash, or a percent-encoded `/` or backslash: an upstream could
/// resolve any of these out of the prefix the request matched.
fn has_dot_segment(path: &str) -> bool {
    let lower = |b: u8| b.to_ascii_lowercase();
    let bytes = path.as_bytes();
    if bytes.contains(&b'\\') {
        return true;
    }
    let mut i = 0;
    while i + 2 < bytes.len() {
        if bytes[i] == b'%' {
            let pair = [lower(bytes[i + 1]), lower(bytes[i + 2])];
            if pair == *b"2f" || pair == *b"5c" {
                return true;
            }
        }
        i += 1;
    }
    path.split('/').any(|segment| {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        decoded == "." || decoded == ".."
    })
}

/// How many links a batch body holds (1 when it is not a batch the API
/// would take: the API then refuses it, and that takes one token).
fn batch_links(body: &[u8]) -> u32 {
    #[derive(serde::Deserialize)]
    struct Batch {
        links: Vec<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Batch>(body).map_or(1, |b| {
        u32::try_from(b.links.len()).unwrap_or(u32::MAX).max(1)
    })
}

fn admin_route(renderers: &[PrometheusHandle], req: &Request<Incoming>) -> Response<Body> {
    edgelink_core::net::admin_basics(req.method(), req.uri().path(), || {
        renderers.iter().map(PrometheusHandle::render).collect()
    })
    .unwrap_or_else(|| failure(Failure::NotFound))
}

/// The tracing decision a request was served under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decided {
    /// Tracing is off.
    Untraced,
    Sampled,
    /// Not sampled; `true` when the caller made no decision (the origin
    /// is then told `b3: 0`).
    Unsampled(bool),
}

/// Where a request to the public listener goes, read off its method, its
/// target and the live configuration.
enum Target<'r> {
    /// The request target is longer than `limits.max_uri_bytes`.
    TooLong,
    /// The creation API: proxied to origin (`proxy`), or served by the
    /// origin mounted in this process (`local`).
    Api {
        proxy: Option<Arc<Proxy>>,
        local: bool,
    },
    Health,
    Ready,
    /// A path that is not a valid code.
    NotCode,
    /// A valid code asked with a method other than GET and HEAD.
    NotReadable,
    /// A valid code, asked with GET or HEAD.
    Code(&'r str),
}

/// The future a public request is answered with: ready at once for a
/// tier-0 hit, else [`App::handle`] boxed. A hit thus builds no future of
/// its own, and hyper moves a few words per request instead of the whole
/// state machine of the miss, proxy and readiness paths.
type Answering = futures_util::future::Either<
    std::future::Ready<Response<Body>>,
    std::pin::Pin<Box<dyn std::future::Future<Output = Response<Body>> + Send>>,
>;

// === impl App ===

/// The express lane ([`edgelink_core::net::express`]): a redirect the
/// tier-0 index holds, written straight from the index; any other valid
/// code (a miss, a 404 or 410) after its lookup; everything else (other
/// paths, and every request while tracing or the access log is on) is
/// declined and goes to hyper and [`App::answer`].
impl Express for App {
    #[inline]
    fn answer(&self, req: &Simple<'_>, _peer: Peer, out: &mut Vec<u8>) -> bool {
        if self.observed() {
            return false;
        }
        let path = req
            .target
            .split_once('?')
            .map_or(req.target, |(path, _)| path);
        let Target::Code(code) = self.route(true, path, req.target.len()) else {
            return false;
        };
        let click = self
            .counting
            .load(Ordering::Relaxed)
            .then(|| self.bots.classify_bytes(req.user_agent));
        let written =
            self.resolver
                .with_redirect(code, click, |status, location, cache_control| {
                    let reason = StatusCode::from_u16(status)
                        .ok()
                        .and_then(|s| s.canonical_reason())
                        .unwrap_or("");
                    express::write_head(
                        out,
                        status,
                        reason,
                        &[
                            ("location", location),
                            ("cache-control", cache_control.as_bytes()),
                        ],
                    );
                    status
                });
        match written {
            Some(status) => {
                self.metrics.request(status_index(status), Tier::Memory);
                true
            }
            None => false,
        }
    }

    /// A valid code the index cannot answer at once (a miss, an unknown,
    /// expired or disabled link) is looked up and answered in the lane, as
    /// [`App::serve`] would; everything else goes to hyper.
    fn respond(&self, req: Request<()>, peer: Peer) -> Option<express::Responding<'_>> {
        if self.observed() {
            return None;
        }
        let Target::Code(_) = self.target(&req) else {
            return None;
        };
        Some(Box::pin(async move {
            let _in_flight = InFlight::enter(&self.metrics.in_flight);
            let code = req.uri().path().strip_prefix('/').unwrap_or_default();
            let (resp, tier) = self.redirect(code, &req, peer).await;
            self.finish(resp, req.method() == Method::HEAD, tier)
        }))
    }
}

impl App {
    /// Whether requests are traced or logged, which only [`App::handle`]
    /// does: the hit path and the express lane step aside.
    #[inline]
    fn observed(&self) -> bool {
        self.tracer.is_some() || self.access.is_some()
    }

    /// Answers a public request: a tier-0 hit here and now, the rest
    /// through [`App::handle`].
    #[inline]
    fn answer(self: &Arc<Self>, req: Request<Incoming>, peer: Peer) -> Answering {
        use futures_util::future::Either;
        match self.hit(&req, peer) {
            Some(resp) => Either::Left(std::future::ready(resp)),
            None => {
                let app = self.clone();
                Either::Right(Box::pin(async move { app.handle(req, peer).await }))
            }
        }
    }

    /// The redirect hot path: the response to a valid code the tier-0
    /// index holds, without waiting on anything. `None` for everything
    /// else (other paths, misses, and every request while tracing or the
    /// access log is on), which [`App::serve`] answers. Such a request is
    /// over when this returns, so it never shows in
    /// `edgelink_http_requests_in_flight`.
    #[inline]
    fn hit(&self, req: &Request<Incoming>, peer: Peer) -> Option<Response<Body>> {
        if self.observed() {
            return None;
        }
        let Target::Code(code) = self.target(req) else {
            return None;
        };
        let answer = self.resolver.hit(code, self.click(req))?;
        let resp = self.respond_found(answer, false, req, peer);
        Some(self.finish(resp, req.method() == Method::HEAD, Tier::Memory))
    }

    #[inline]
    fn target<'r, B>(&self, req: &'r Request<B>) -> Target<'r> {
        let readable = req.method() == Method::GET || req.method() == Method::HEAD;
        let target_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
        self.route(readable, req.uri().path(), target_len)
    }

    /// Where a request for `path` goes; `readable`: its method is GET or
    /// HEAD; `target_len`: its request target's length, query included.
    #[inline]
    fn route<'r>(&self, readable: bool, path: &'r str, target_len: usize) -> Target<'r> {
        let (max_uri, proxy) = {
            let live = self.live.load();
            let proxy = match &live.proxy {
                Some(p) if p.owns(path) => Some(p.clone()),
                _ => None,
            };
            (live.limits.max_uri_bytes, proxy)
        };
        if target_len > max_uri {
            return Target::TooLong;
        }
        let local = self.api.is_some() && path.starts_with("/api/");
        if proxy.is_some() || local {
            return Target::Api { proxy, local };
        }
        match path {
            "/healthz" if readable => Target::Health,
            "/readyz" if readable => Target::Ready,
            _ => match path.strip_prefix('/').filter(|c| is_valid_code(c)) {
                None => Target::NotCode,
                Some(_) if !readable => Target::NotReadable,
                Some(code) => Target::Code(code),
            },
        }
    }

    /// How a redirect answered now is counted: by its `User-Agent`, or
    /// `None` while counting is off.
    #[inline]
    fn click<B>(&self, req: &Request<B>) -> Option<clicks::Click> {
        self.counting.load(Ordering::Relaxed).then(|| {
            self.bots
                .classify(req.headers().get(http::header::USER_AGENT))
        })
    }

    async fn handle(&self, req: Request<Incoming>, peer: Peer) -> Response<Body> {
        if !self.observed() {
            return self.serve(req, peer, Decided::Untraced).await;
        }
        self.serve_observed(req, peer).await
    }

    /// [`App::serve`] with tracing and the access log, as configured.
    async fn serve_observed(&self, req: Request<Incoming>, peer: Peer) -> Response<Body> {
        let noted = self.access.as_ref().map(|_| {
            (
                self.live.load().client_ip(peer, req.headers()),
                std::time::SystemTime::now(),
                std::time::Instant::now(),
                req.method().clone(),
                req.uri().path().to_owned(),
                req.headers().get(http::header::USER_AGENT).cloned(),
            )
        });
        let resp = match &self.tracer {
            Some(tracer) => self.serve_traced(tracer, req, peer).await,
            None => self.serve(req, peer, Decided::Untraced).await,
        };
        if let (Some(log), Some((client, at, started, method, path, user_agent))) =
            (&self.access, noted)
        {
            log.log(access::Record {
                at,
                client,
                method,
                path,
                status: resp.status().as_u16(),
                duration: started.elapsed(),
                user_agent,
            });
        }
        resp
    }

    /// [`App::serve`] under a server span when the request is sampled (a
    /// caller's B3 decision, else `tracing.sample_ratio`); the span is the
    /// task's current one, so the proxy and the stores hang theirs under it.
    async fn serve_traced(
        &self,
        tracer: &Arc<edgelink_core::trace::Tracer>,
        req: Request<Incoming>,
        peer: Peer,
    ) -> Response<Body> {
        use edgelink_core::trace;
        let incoming = trace::extract(req.headers());
        let Some(mut span) = tracer.server_span("edge.request", &incoming) else {
            // Not sampled here, and the caller decided nothing: a proxied
            // request tells the origin, so it starts no trace of its own.
            let decided = Decided::Unsampled(incoming.sampled.is_none());
            return self.serve(req, peer, decided).await;
        };
        span.set("http.request.method", req.method());
        span.set("url.path", req.uri().path());
        span.set("client.address", peer.addr.ip());
        let served = self.serve(req, peer, Decided::Sampled);
        let resp = trace::scope(tracer.clone(), span.context(), served).await;
        span.set("http.response.status_code", resp.status().as_u16());
        if resp.status().is_server_error() {
            span.fail();
        }
        resp
    }

    async fn serve(
        &self,
        mut req: Request<Incoming>,
        peer: Peer,
        decided: Decided,
    ) -> Response<Body> {
        let _in_flight = InFlight::enter(&self.metrics.in_flight);
        let head = req.method() == Method::HEAD;
        let (resp, tier) = match self.target(&req) {
            Target::TooLong => return self.count(failure(Failure::UriTooLong), Tier::None),
            Target::Api { proxy, local } => {
                if proxy.is_some() && decided == Decided::Unsampled(true) {
                    req.headers_mut()
                        .insert("b3", http::HeaderValue::from_static("0"));
                }
                let api = self.api.as_ref().filter(|_| local);
                let resp = self.api_call(req, peer, proxy, api).await;
                return self.count(resp, Tier::None);
            }
            Target::Health => (respond::text(StatusCode::OK, "ok\n"), Tier::None),
            Target::Ready => (self.ready().await, Tier::None),
            Target::NotCode => (self.not_found(&req, peer), Tier::None),
            Target::NotReadable => (failure(Failure::MethodNotAllowed), Tier::None),
            Target::Code(code) => self.redirect(code, &req, peer).await,
        };
        self.finish(resp, head, tier)
    }

    /// A response to GET or HEAD, counted; HEAD gets its headers only,
    /// `Content-Length` included (the one GET would get).
    #[inline]
    fn finish(&self, mut resp: Response<Body>, head: bool, tier: Tier) -> Response<Body> {
        if head {
            if let Some(len) = resp.body().as_full().map(<[u8]>::len) {
                resp.headers_mut()
                    .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
                *resp.body_mut() = Body::default();
            }
        }
        self.count(resp, tier)
    }

    #[inline]
    fn count(&self, resp: Response<Body>, tier: Tier) -> Response<Body> {
        self.metrics
            .request(status_index(resp.status().as_u16()), tier);
        resp
    }

    /// The creation API: the proxy, or the origin mounted in this process.
    /// A method that cannot be proxied is 405, a path with dot-segments or
    /// an authority that is not a host 400, before either sees them. Per
    /// client: every call takes one of its `unauthorized` tokens, given back
    /// once it is answered with anything but 401; a creation takes a
    /// `create` token per link (a batch is read whole first, to count them).
    async fn api_call(
        &self,
        req: Request<Incoming>,
        peer: Peer,
        proxy: Option<Arc<Proxy>>,
        api: Option<&Route>,
    ) -> Response<Body> {
        if !forwardable(req.method()) {
            return failure(Failure::ApiMethodNotAllowed);
        }
        if has_dot_segment(req.uri().path()) {
            return failure(Failure::BadPath);
        }
        // The host asked for, when the target names it (absolute form,
        // HTTP/2's :authority), is what the origin is told: a host only.
        if let Some(authority) = req.uri().authority() {
            if !edgelink_core::net::framing::is_host_value(authority.as_str().as_bytes()) {
                return failure(Failure::NoHost);
            }
        }
        let (client, trusted_peer, create, unauthorized) = {
            let live = self.live.load();
            let trusted_peer = live.trusted.iter().any(|n| n.contains(peer.addr.ip()));
            (
                live.client_ip(peer, req.headers()),
                trusted_peer,
                live.create.clone(),
                live.unauthorized.clone(),
            )
        };
        if let Some(limit) = &unauthorized {
            if let Err(wait) = limit.take(client, std::time::Instant::now()) {
                self.metrics.rate_limited.increment(1);
                return respond::rate_limited(wait);
            }
        }
        let resp = self
            .api_forward(req, peer, proxy, api, client, trusted_peer, create)
            .await;
        // Given back for any answer but 401. A call its client abandons
        // (an HTTP/2 stream reset) keeps it: the origin may still be
        // looking its key up.
        if let Some(limit) = &unauthorized {
            if resp.status() != StatusCode::UNAUTHORIZED {
                limit.refund(client, std::time::Instant::now());
            }
        }
        resp
    }

    /// [`App::api_call`] past its checks: the create limit, then the call.
    #[allow(clippy::too_many_arguments)]
    async fn api_forward(
        &self,
        req: Request<Incoming>,
        peer: Peer,
        proxy: Option<Arc<Proxy>>,
        api: Option<&Route>,
        client: std::net::IpAddr,
        trusted_peer: bool,
        create: Option<Arc<RateLimit>>,
    ) -> Response<Body> {
        let now = std::time::Instant::now;
        let limited = |wait| {
            self.metrics.rate_limited.increment(1);
            respond::rate_limited(wait)
        };
        let creates = req.method() == Method::POST;
        let batch = creates && req.uri().path() == edgelink_core::link::BATCH_PATH;
        if creates && !batch {
            if let Some(limit) = &create {
                if let Err(wait) = limit.take(client, now()) {
                    return limited(wait);
                }
            }
        }
        if let (Some(proxy), false) = (&proxy, batch) {
            return proxy.forward(req, peer, client, trusted_peer).await;
        }
        if proxy.is_none() && api.is_none() {
            return failure(Failure::NotFound);
        }
        if batch {
            if let Some(limit) = &create {
                if let Err(wait) = limit.ready(client, now()) {
                    return limited(wait);
                }
            }
        }
        let limits = match (&proxy, batch) {
            (Some(p), _) => p.body_limits(),
            (None, true) => BodyLimits {
                max_bytes: self.batch_body_bytes,
                ..self.route_body
            },
            (None, false) => self.route_body,
        };
        let (parts, body) = req.into_parts();
        let body = match read_body(body, limits, &self.metrics.client_faults).await {
            Ok(b) => b,
            Err(e) => return e.response(),
        };
        // A batch is charged a token per link (at most what the API
        // takes in one); refused whole, it costs one.
        let charged = match batch {
            true => batch_links(&body).min(self.max_batch_links).max(1),
            false => 1,
        };
        if batch {
            if let Some(limit) = &create {
                if let Err(wait) = limit.take_n(client, charged, now()) {
                    return limited(wait);
                }
            }
        }
        let resp = match (proxy, api) {
            (Some(proxy), _) => {
                proxy
                    .forward_read(parts, body, peer, client, trusted_peer)
                    .await
            }
            (None, Some(api)) => api(Request::from_parts(parts, Full::new(body))).await,
            (None, None) => failure(Failure::NotFound),
        };
        // A batch the API refused whole (4xx) created nothing.
        if let (true, Some(limit)) = (batch && resp.status().is_client_error(), &create) {
            limit.refund_n(client, charged - 1, now());
        }
        resp
    }

    /// A 404 for a path that is not a code, counted against the client's
    /// 404 budget like any other.
    fn not_found<B>(&self, req: &Request<B>, peer: Peer) -> Response<Body> {
        let live = self.live.load();
        if let Some(limit) = &live.not_found {
            let client = live.client_ip(peer, req.headers());
            if let Err(wait) = limit.take(client, std::time::Instant::now()) {
                self.metrics.rate_limited.increment(1);
                return respond::rate_limited(wait);
            }
        }
        failure(Failure::NotFound)
    }

    #[inline]
    async fn redirect<B: Sync>(
        &self,
        code: &str,
        req: &Request<B>,
        peer: Peer,
    ) -> (Response<Body>, Tier) {
        // A lookup that misses tier 0 takes a 404 token first, so a client
        // that has spent its budget gets 429 instead of a trip to the
        // backends, however many requests it has in flight; the token is
        // given back when the lookup finds a link (or fails).
        let charged: std::sync::OnceLock<(Arc<RateLimit>, std::net::IpAddr)> =
            std::sync::OnceLock::new();
        let gate = || {
            let live = self.live.load();
            let Some(limit) = live.not_found.as_ref() else {
                return Ok(());
            };
            let client = live.client_ip(peer, req.headers());
            limit.take(client, std::time::Instant::now())?;
            let _ = charged.set((limit.clone(), client));
            Ok(())
        };
        let found = self
            .resolver
            .resolve_gated(code, self.click(req), gate)
            .await;
        let charged = charged.into_inner();
        let refund = || {
            if let Some((limit, client)) = &charged {
                limit.refund(*client, std::time::Instant::now());
            }
        };
        match found {
            Ok(Ok((answer, tier))) => {
                if matches!(answer, Answer::Redirect { .. } | Answer::Gone) {
                    refund();
                }
                (
                    self.respond_found(answer, charged.is_some(), req, peer),
                    tier,
                )
            }
            Ok(Err(wait)) => {
                self.metrics.rate_limited.increment(1);
                (respond::rate_limited(wait), Tier::None)
            }
            Err(e) => {
                refund();
                if self.backend_log.allow() {
                    tracing::warn!(error = %e, "lookup failed; answering 503");
                }
                (failure(Failure::Unavailable), Tier::Store)
            }
        }
    }

    /// The response to `answer`, found for a valid code. `paid`: the lookup
    /// took a 404 token at the gate, so an unknown code takes no other (a
    /// tier-0 answer takes it now).
    #[inline]
    fn respond_found<B>(
        &self,
        answer: Answer,
        paid: bool,
        req: &Request<B>,
        peer: Peer,
    ) -> Response<Body> {
        match answer {
            Answer::Redirect {
                expires_at: Some(exp),
                ..
            } if exp <= edgelink_core::link::now_unix() => failure(Failure::Gone),
            Answer::Redirect {
                status,
                location,
                cache_control,
                ..
            } => respond::redirect(status, location, cache_control),
            Answer::Gone => failure(Failure::Gone),
            Answer::NotFound if paid => failure(Failure::NotFound),
            Answer::NotFound => self.not_found(req, peer),
            Answer::Broken => failure(Failure::Internal),
        }
    }

    /// Swaps in a reloaded configuration (already validated).
    async fn apply(&self, config: &Config, shutdown: &CancellationToken) {
        let live = Live::new(config, Some(&self.live.load()), &self.metrics, shutdown);
        self.live.store(Arc::new(live));
        self.resolver.set_redirect(&config.redirect).await;
        self.counting
            .store(config.analytics.enabled, Ordering::Relaxed);
        if let Some(certs) = &self.certs {
            if let Err(e) = certs.reload_from(&config.tls.certificates) {
                tracing::error!(error = %e, "certificates not reloaded; keeping the old ones");
            }
        }
        self.metrics.reloads.increment(1);
        tracing::info!("configuration reloaded");
    }

    /// 200 when the source of truth answers (`degraded` in the body when the
    /// shared cache does not, or a breaker is not closed), 503 when it does
    /// not (unless `server.ready_needs_source` is off: 200 `degraded`) or
    /// while draining. Each backend's ping goes through its breaker,
    /// so an open one is reported at once (and a half-open one probed).
    async fn ready(&self) -> Response<Body> {
        if self.draining.load(Ordering::Relaxed) {
            return respond::json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({ "status": "draining" }),
            );
        }
        let (tier1, tier2) = self.resolver.ping().await;
        let (tier1_name, tier2_name) = self.resolver.tier_names();
        let state = |r: &Result<(), edgelink_core::StoreError>| match r {
            Ok(()) => "up".to_owned(),
            Err(e) => format!("down: {e}"),
        };
        let mut backends = serde_json::Map::new();
        backends.insert(tier2_name.to_owned(), state(&tier2).into());
        if let (Some(name), Some(r)) = (tier1_name, &tier1) {
            backends.insert(name.to_owned(), state(r).into());
        }
        let mut breakers = serde_json::Map::new();
        let mut any_open = false;
        for (name, state) in self.resolver.breaker_states() {
            any_open |= state != edgelink_core::breaker::State::Closed;
            breakers.insert(name.to_owned(), state.name().into());
        }
        let (status, word) = match (&tier2, &tier1) {
            (Err(_), _) if self.ready_needs_source => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            (Err(_), _) => (StatusCode::OK, "degraded"),
            (Ok(()), Some(Err(_))) => (StatusCode::OK, "degraded"),
            (Ok(()), _) if any_open => (StatusCode::OK, "degraded"),
            (Ok(()), _) => (StatusCode::OK, "ready"),
        };
        respond::json(
            status,
            &serde_json::json!({ "status": word, "backends": backends, "breakers": breakers }),
        )
    }
}
