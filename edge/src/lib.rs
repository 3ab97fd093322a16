//! EdgeLink edge: the redirect data plane.
//!
//! # Layout
//!
//! A cache hit from `main`: `src/cmd/edge.rs` calls [`run`] (this file),
//! which serves the public listeners through `edgelink_core::net::server`
//! with the express lane in front ([`lane`]); the lane parses a head and
//! asks the hit path (`hit.rs`, [`Express`](lane::Express) for the app),
//! which writes the redirect from the tier-0 [`index`].
//!
//! - this file: [`run`], which wires the rest together.
//! - `app.rs`: the shared state (`App`) and where a request goes
//!   (`Target`); `hit.rs` the tier-0 hit in both front ends; `serve.rs`
//!   hyper's path for the rest (access log, tracing, lookups through the
//!   tiers); `api.rs` the creation API's checks and budgets; `ready.rs`
//!   `/readyz`; `reload.rs` and `live.rs` the settings a reload swaps;
//!   `tasks.rs` the background loops; [`listeners`] the sockets and the
//!   admin and plain-HTTP listeners' answers; [`mounts`] what an in-process
//!   origin hangs on the edge.
//! - [`lane`]: the HTTP/1 express lane (bytes in, bytes out), the edge's
//!   alone; the accept loop, TLS and the framing guard under hyper are
//!   `edgelink_core::net`, which every role serves with.
//! - [`domain`]: what the modules tell each other (`Answer`, `Click`,
//!   `Tier`, `Cache-Control` values); everything depends down on it.
//! - [`resolve`]: lookups through tier 0 (moka, single-flight, negative
//!   caching), tier 1 (Redis) and tier 2 (PostgreSQL or SQLite); [`index`]:
//!   tier 0's read index, what hits are served from, with per-link click
//!   counters.
//! - [`clicks`]: bot detection and the click flusher; [`access`]: the
//!   access log; [`invalidate`]: codes to drop from tier 0.
//! - [`tls`] (rustls, certificates by SNI, reloads), [`proxy`] (`/api/` to
//!   the origins), [`limit`] (per-client rate limits, the client IP),
//!   [`respond`] (outcomes to HTTP), [`metrics`] (names, handles).

pub mod access;
mod api;
mod app;
pub mod clicks;
pub mod domain;
mod hit;
pub mod index;
pub mod invalidate;
pub mod lane;
pub mod limit;
pub mod listeners;
mod live;
pub mod metrics;
pub mod mounts;
pub mod proxy;
mod ready;
mod reload;
pub mod resolve;
pub mod respond;
mod serve;
mod tasks;
pub mod tls;

pub use listeners::Listeners;
pub use mounts::{Mounts, Reload, Route};

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use edgelink_core::config::Config;
use edgelink_core::net::server;
use edgelink_core::shutdown::CancellationToken;
use edgelink_core::Stores;
use http::Request;
use hyper::body::Incoming;

use crate::app::App;
use crate::lane::ExpressLane;
use crate::metrics::EdgeMetrics;
use crate::tls::Certificates;

/// What the edge serves with besides its sockets and settings: the storage
/// tiers, and what other components of the same process mount on it.
pub struct Deps {
    pub stores: Stores,
    pub mounts: Mounts,
}

/// Why the edge could not start (or went on without a part it needs).
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("TLS certificates: {0}")]
    Tls(String),
    #[error("access log: {0}")]
    AccessLog(#[source] std::io::Error),
    #[error("bot list: {0}")]
    Bots(String),
    #[error("listener: {0}")]
    Listener(#[source] std::io::Error),
    #[error("click flusher thread: {0}")]
    Flusher(#[source] std::io::Error),
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
    deps: Deps,
    shutdown: CancellationToken,
) -> Result<(), EdgeError> {
    let Deps { stores, mounts } = deps;
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
        files => Some(Certificates::load(files).map_err(EdgeError::Tls)?),
    };
    let tls = match &certs {
        Some(c) => Some(tokio_rustls::TlsAcceptor::from(
            c.server_config().map_err(EdgeError::Tls)?,
        )),
        None => None,
    };
    if let (Some(c), true) = (&certs, config.tls.watch) {
        tls::watch(c.clone(), shutdown.clone()).map_err(EdgeError::Tls)?;
    }
    let cache_name = stores.cache.as_ref().map(|c| c.name());
    let (edge_metrics, prometheus) = EdgeMetrics::new(cache_name, stores.source.name());
    let metrics = Arc::new(edge_metrics);
    let app = Arc::new(App::new(
        &config,
        &stores,
        api,
        metrics.clone(),
        certs,
        &shutdown,
    )?);
    let flusher = tasks::flusher(&config, &stores, &app).await;
    let mut publics = listeners.public.into_iter();
    let first = publics
        .next()
        .ok_or_else(|| EdgeError::Listener(std::io::Error::other("no public listener")))?;
    let listen = |l| tokio::net::TcpListener::from_std(l).map_err(EdgeError::Listener);
    let public = listen(first)?;
    let admin = listen(listeners.admin)?;
    let redirect = match listeners.redirect {
        Some(l) => Some(listen(l)?),
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
    options.faults = metrics.client_faults.clone();
    let lane = ExpressLane::new(app.clone(), &options, metrics.express_handoffs.clone());
    let options = options.with_lane(lane);
    let handler = {
        let app = app.clone();
        move |req, peer| app.call(req, peer)
    };
    let threads = listeners::serve_on_threads(publics, &options, &handler, &shutdown)
        .map_err(EdgeError::Listener)?;
    tracing::info!(
        public = %public.local_addr().map_err(EdgeError::Listener)?,
        threads = threads.len() + 1,
        admin = %admin.local_addr().map_err(EdgeError::Listener)?,
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
                    "/healthz" | "/readyz" => app.serve(req, peer).await,
                    _ => listeners::to_https(&req, https_port),
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
            async move { listeners::admin(req, &renderers, mount.as_ref(), admin_body).await }
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
    let reloading = reload::follow_reloads(app.clone(), reload, shutdown.clone());
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
    let invalidating = tasks::apply_invalidations(app.clone(), invalidations, shutdown.clone());
    let flusher = flusher
        .spawn(
            Duration::from_millis(config.analytics.flush_interval_ms),
            config.analytics.flush_priority,
            app.counting.clone(),
            shutdown.clone(),
        )
        .map_err(EdgeError::Flusher)?;
    tokio::join!(
        public_task,
        redirect_task,
        admin_task,
        mark_draining,
        invalidating,
        reloading,
        tasks::background(app, prometheus, shutdown),
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
