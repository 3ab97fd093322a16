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
//!   decides what it holds).
//! - [`invalidate`]: codes to drop from tier 0, from an in-process origin or
//!   the shared cache's pub/sub channel.
//! - [`respond`]: the one place outcomes become HTTP responses.
//! - [`metrics`]: metric names, bounded labels, handles registered once.
//! - this file: [`run`], the routes of the public and admin listeners, and
//!   background loops (cache gauge, metrics upkeep).
//!
//! Public listener: `GET|HEAD /{code}`, `/healthz`, `/readyz`. Admin
//! listener: `/metrics` (Prometheus text), `/healthz`.

pub mod index;
pub mod invalidate;
pub mod metrics;
pub mod resolve;
pub mod respond;

/// The listeners and accept loop every role shares (from edgelink-core).
pub use edgelink_core::net::{listener, server};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edgelink_core::config::Config;
use edgelink_core::shutdown::CancellationToken;
use edgelink_core::{is_valid_code, Stores};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::metrics::{status_index, EdgeMetrics, InFlight, Tier};
use crate::resolve::{Answer, Resolver};
use crate::respond::{failure, Body, Failure, LogThrottle};

/// The bound sockets `run` serves.
#[derive(Debug)]
pub struct Listeners {
    /// One or more listeners on the same address (`SO_REUSEPORT`); each is
    /// served by its own thread when there are several.
    pub public: Vec<std::net::TcpListener>,
    pub admin: std::net::TcpListener,
}

impl Listeners {
    /// Binds the addresses of `config.server`: one public listener per
    /// worker in per-core mode, one in work-stealing mode.
    pub fn bind(config: &Config) -> std::io::Result<Listeners> {
        let s = &config.server;
        Ok(Listeners {
            public: listener::bind_many(s.listen, s.public_listeners(), s.backlog)?,
            admin: listener::bind(s.admin_listen, s.backlog)?,
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
}

/// A route served by another component of the same process.
pub type Route = Arc<
    dyn Fn(
            Request<Incoming>,
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
}

/// Shared state of one edge.
struct App {
    resolver: Resolver,
    metrics: Arc<EdgeMetrics>,
    draining: AtomicBool,
    backend_log: LogThrottle,
    api: Option<Route>,
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
    } = mounts;
    let cache_name = stores.cache.as_ref().map(|c| c.name());
    let (edge_metrics, prometheus) = EdgeMetrics::new(cache_name, stores.source.name());
    let metrics = Arc::new(edge_metrics);
    let app = Arc::new(App {
        resolver: Resolver::new(&stores, &config.cache, &config.redirect, metrics.clone()),
        metrics: metrics.clone(),
        draining: AtomicBool::new(false),
        backend_log: LogThrottle::default(),
        api,
    });
    let mut publics = listeners.public.into_iter();
    let first = publics
        .next()
        .ok_or_else(|| std::io::Error::other("no public listener"))?;
    let public = tokio::net::TcpListener::from_std(first)?;
    let admin = tokio::net::TcpListener::from_std(listeners.admin)?;
    let drain = Duration::from_millis(config.server.drain_timeout_ms);
    let builder = server::builder(&config.server);
    let limits = server::ConnLimits::new(
        config.server.max_connections,
        metrics.connections_open.clone(),
        metrics.connections_rejected.clone(),
    );
    let handler = {
        let app = app.clone();
        move |req| {
            let app = app.clone();
            async move { app.handle(req).await }
        }
    };

    let mut threads = Vec::new();
    for (i, listener) in publics.enumerate() {
        let (builder, handler, limits, shutdown) = (
            builder.clone(),
            handler.clone(),
            limits.clone(),
            shutdown.clone(),
        );
        let thread = std::thread::Builder::new()
            .name(format!("edgelink-io-{}", i + 1))
            .spawn(move || -> std::io::Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    server::serve(listener, builder, handler, limits, shutdown, drain).await;
                    Ok(())
                })
            })?;
        threads.push(thread);
    }
    tracing::info!(
        public = %public.local_addr()?,
        threads = threads.len() + 1,
        admin = %admin.local_addr()?,
        stores = ?stores,
        "edge listening"
    );

    let public_task = server::serve(
        public,
        builder.clone(),
        handler,
        limits,
        shutdown.clone(),
        drain,
    );
    let mut renderers = vec![prometheus.clone()];
    renderers.extend(extra_metrics);
    let renderers = Arc::new(renderers);
    let admin_task = server::serve(
        admin,
        builder,
        move |req: Request<Incoming>| {
            let renderers = renderers.clone();
            let mount = admin_mount.clone();
            async move {
                match mount {
                    Some(route) if req.uri().path().starts_with("/admin/") => route(req).await,
                    _ => admin_route(&renderers, &req),
                }
            }
        },
        server::ConnLimits::new(256, ::metrics::Gauge::noop(), ::metrics::Counter::noop()),
        shutdown.clone(),
        drain,
    );
    let draining_app = app.clone();
    let draining_token = shutdown.clone();
    let mark_draining = async move {
        draining_token.cancelled().await;
        draining_app.draining.store(true, Ordering::Relaxed);
    };
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
    tokio::join!(
        public_task,
        admin_task,
        mark_draining,
        invalidating,
        background(app, prometheus, shutdown)
    );
    for thread in threads {
        let joined = tokio::task::spawn_blocking(move || thread.join()).await;
        match joined {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "a listener thread failed"),
            _ => tracing::error!("a listener thread panicked"),
        }
    }
    tracing::info!("edge stopped");
    Ok(())
}

/// Periodic work: the cache-size gauge and the histogram upkeep the
/// Prometheus recorder needs.
async fn background(app: Arc<App>, prometheus: PrometheusHandle, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
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
        }
    }
}

fn admin_route(renderers: &[PrometheusHandle], req: &Request<Incoming>) -> Response<Body> {
    edgelink_core::net::admin_basics(req.method(), req.uri().path(), || {
        renderers.iter().map(PrometheusHandle::render).collect()
    })
    .unwrap_or_else(|| failure(Failure::NotFound))
}

// === impl App ===

impl App {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let _in_flight = InFlight::enter(&self.metrics.in_flight);
        let head = req.method() == Method::HEAD;
        let readable = head || req.method() == Method::GET;
        let path = req.uri().path();
        if let Some(api) = self.api.as_ref().filter(|_| path.starts_with("/api/")) {
            let resp = api(req).await;
            self.metrics
                .request(status_index(resp.status().as_u16()), Tier::None);
            return resp;
        }
        let (mut resp, tier) = match path {
            "/healthz" if readable => (respond::text(StatusCode::OK, "ok\n"), Tier::None),
            "/readyz" if readable => (self.ready().await, Tier::None),
            _ => match path.strip_prefix('/').filter(|c| is_valid_code(c)) {
                None => (failure(Failure::NotFound), Tier::None),
                Some(_) if !readable => (failure(Failure::MethodNotAllowed), Tier::None),
                Some(code) => self.redirect(code).await,
            },
        };
        self.metrics
            .request(status_index(resp.status().as_u16()), tier);
        if head {
            *resp.body_mut() = Body::default();
        }
        resp
    }

    #[inline]
    async fn redirect(&self, code: &str) -> (Response<Body>, Tier) {
        match self.resolver.resolve(code).await {
            Ok((answer, tier)) => {
                let resp = match answer {
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
                    Answer::NotFound => failure(Failure::NotFound),
                    Answer::Broken => failure(Failure::Internal),
                };
                (resp, tier)
            }
            Err(e) => {
                if self.backend_log.allow() {
                    tracing::warn!(error = %e, "lookup failed; answering 503");
                }
                (failure(Failure::Unavailable), Tier::Store)
            }
        }
    }

    /// 200 when the source of truth answers (`degraded` in the body when the
    /// shared cache does not), 503 when it does not or while draining.
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
        let (status, word) = match (&tier2, &tier1) {
            (Err(_), _) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            (Ok(()), Some(Err(_))) => (StatusCode::OK, "degraded"),
            (Ok(()), _) => (StatusCode::OK, "ready"),
        };
        respond::json(
            status,
            &serde_json::json!({ "status": word, "backends": backends }),
        )
    }
}
