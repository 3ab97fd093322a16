//! EdgeLink edge: the redirect data plane.
//!
//! # Layout
//!
//! A cache hit, from `main`: `src/cmd/edge.rs` (and `serve.rs`) calls
//! [`run`] (this file), whose public listeners run the express lane in
//! front of hyper. Then, in the edge:
//!
//! 1. [`lane`] (`lane/mod.rs`): parses the head, offers it to the app;
//! 2. `hit.rs`: the app's answer (`Express::answer_now`), a valid code;
//! 3. [`resolve`] (`Resolver::with_redirect`): the tier-0 hit, counted;
//! 4. [`index`]: the slot, whose `Location` is written as bytes
//!    (`lane/wire.rs`), flushed by the lane.
//!
//! - this file: [`run`], which wires the rest together.
//! - `app.rs`: the shared state (`App`) and where a request goes
//!   (`Target`); `hit.rs` the tier-0 hit in both front ends; `serve.rs`
//!   hyper's path for the rest (access log, tracing, lookups through the
//!   tiers); `api.rs` the creation API's checks and budgets; `ready.rs`
//!   `/readyz` and the drain's start; `live.rs` the settings a reload swaps;
//!   `tasks.rs` the background loops; [`listeners`] the sockets and the
//!   admin and plain-HTTP listeners; [`mounts`] what an in-process origin
//!   hangs on the edge (and the reload hook, `Reload`); `reload.rs` applies
//!   reloads.
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

mod access;
mod api;
mod app;
mod clicks;
pub mod domain;
mod hit;
mod index;
pub mod invalidate;
pub mod lane;
mod limit;
mod listeners;
mod live;
pub mod metrics;
mod mounts;
mod proxy;
mod ready;
mod reload;
pub mod resolve;
pub mod respond;
mod serve;
mod tasks;
pub mod tls;

pub use listeners::Listeners;
pub use mounts::{Mounts, Reload, Route};

use std::sync::Arc;
use std::time::Duration;

use edgelink_core::config::Config;
use edgelink_core::net::server;
use edgelink_core::shutdown::CancellationToken;
use edgelink_core::Stores;

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
    #[error("no public listener")]
    NoPublicListener,
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
        roles,
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
    for role in roles {
        edge_metrics.serves(role);
    }
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
    let first = publics.next().ok_or(EdgeError::NoPublicListener)?;
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
    let redirect_task =
        listeners::serve_redirect(redirect, plain, app.clone(), &config, shutdown.clone());
    let mut renderers = vec![prometheus.clone()];
    renderers.extend(extra_metrics);
    let admin_task = listeners::serve_admin(
        admin,
        &config,
        renderers,
        admin_mount,
        app.route_body,
        shutdown.clone(),
    );
    let closing = app.clone();
    let grace = Duration::from_millis(config.server.shutdown_grace_ms);
    let draining = ready::drain_after(app.clone(), signalled, grace, shutdown.clone());
    let reloading = reload::follow_reloads(app.clone(), reload, shutdown.clone());
    let invalidations = tasks::invalidations(invalidations, &config, &stores, &shutdown);
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
        draining,
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
