//! EdgeLink key pool: short-code keys generated ahead of time, so creating
//! a link never waits on key generation.
//!
//! # Layout
//!
//! - [`keys`]: keys unique by construction (a keyed Feistel permutation of
//!   a sequence, spelled in base62).
//! - [`store`]: the pool's storage seam ([`store::PoolStore`]), with
//!   [`postgres`] (distributed: `FOR UPDATE SKIP LOCKED` leasing, advisory
//!   lock for the refiller) and [`sqlite`] (embedded, one writer).
//! - [`refill`]: the refill worker (watermarks, batches, jittered backoff).
//! - [`lease`]: an origin's in-memory lease buffer, refilled in the
//!   background.
//! - [`admin`]: `GET /admin/keypool`, `POST /admin/keypool/refill`,
//!   token-protected.
//! - [`metrics`]: free keys, keys leased and generated, refill durations.
//! - this file: [`Keypool`], the parts wired together, and [`run`], the
//!   `edgelink keypool` role (refill worker and admin listener; its
//!   [`Listeners`], [`Deps`], [`KeypoolError`]).

pub mod admin;
pub mod keys;
pub mod lease;
pub mod metrics;
pub mod postgres;
pub mod refill;
pub mod sqlite;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use edgelink_core::config::Config;
use edgelink_core::net::{server, Body};
use edgelink_core::shutdown::CancellationToken;
use edgelink_core::StoreError;
use http::{Request, Response, StatusCode};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::admin::Admin;
use crate::lease::Leaser;
use crate::metrics::KeypoolMetrics;
use crate::refill::Refiller;
use crate::store::PoolStore;

/// A key pool ready to use: its store, refill worker and admin endpoints.
pub struct Keypool {
    pub store: Arc<dyn PoolStore>,
    pub refiller: Arc<Refiller>,
    pub admin: Arc<Admin>,
    pub metrics: KeypoolMetrics,
}

impl Keypool {
    /// Loads (or creates) the keyspace of `keypool.key_length` in `store`.
    pub async fn open(
        store: Arc<dyn PoolStore>,
        config: &Config,
        metrics: KeypoolMetrics,
    ) -> Result<Keypool, StoreError> {
        let space = store.keyspace(config.keypool.key_length).await?;
        let refiller = Refiller::new(
            store.clone(),
            space,
            config.keypool.clone(),
            metrics.clone(),
        );
        let admin = Arc::new(Admin::new(
            config.admin.token.clone(),
            store.clone(),
            refiller.clone(),
            &config.server,
        ));
        Ok(Keypool {
            store,
            refiller,
            admin,
            metrics,
        })
    }

    /// An in-memory lease buffer over this pool (one per origin).
    pub fn leaser(&self, batch: u32) -> Arc<Leaser> {
        Leaser::new(self.store.clone(), batch, self.metrics.clone())
    }
}

/// A Prometheus recorder with the key pool's histogram buckets.
pub fn recorder() -> PrometheusRecorder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(metrics::REFILL_DURATION_SECONDS.to_owned()),
            &metrics::REFILL_BUCKETS,
        )
        .map(PrometheusBuilder::build_recorder)
        .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder())
}

/// The key pool role's socket: its admin listener (`/admin/keypool...`,
/// `/metrics`, `/healthz`).
#[derive(Debug)]
pub struct Listeners {
    pub admin: std::net::TcpListener,
}

/// What the key pool role works with: the pool's store.
pub struct Deps {
    pub store: Arc<dyn PoolStore>,
}

/// Why the key pool role could not run.
#[derive(Debug, thiserror::Error)]
pub enum KeypoolError {
    #[error("key pool storage: {0}")]
    Store(#[from] StoreError),
    #[error("listener: {0}")]
    Listener(#[source] std::io::Error),
}

/// The `edgelink keypool` role: runs the refill worker and serves the admin
/// listener until `shutdown`.
pub async fn run(
    listeners: Listeners,
    config: Arc<Config>,
    deps: Deps,
    shutdown: CancellationToken,
) -> Result<(), KeypoolError> {
    let recorder = recorder();
    let prometheus = recorder.handle();
    ::metrics::with_local_recorder(&recorder, || {
        edgelink_core::telemetry::build_info("keypool")
    });
    let pool = Keypool::open(deps.store, &config, KeypoolMetrics::new(&recorder)).await?;
    let listener =
        tokio::net::TcpListener::from_std(listeners.admin).map_err(KeypoolError::Listener)?;
    tracing::info!(
        admin = %listener.local_addr().map_err(KeypoolError::Listener)?,
        backend = pool.store.name(),
        key_length = config.keypool.key_length,
        "key pool running"
    );
    let worker = tokio::spawn(pool.refiller.clone().run(shutdown.clone()));
    let admin = pool.admin.clone();
    let routes_prometheus = prometheus.clone();
    let handler = move |req: Request<hyper::body::Incoming>, _peer| {
        let (admin, prometheus) = (admin.clone(), routes_prometheus.clone());
        async move { route(&admin, &prometheus, req).await }
    };
    let upkeep = async {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => prometheus.run_upkeep(),
            }
        }
    };
    tokio::join!(
        server::serve(
            listener,
            server::Options::internal(&config.server),
            handler,
            shutdown.clone(),
        ),
        upkeep,
    );
    let _ = worker.await;
    tracing::info!("key pool stopped");
    Ok(())
}

/// The admin listener's routes for the key pool role.
pub async fn route(
    admin: &Admin,
    prometheus: &PrometheusHandle,
    req: Request<hyper::body::Incoming>,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    if Admin::owns(path) {
        return admin
            .handle(&parts.method, path, &parts.headers, body)
            .await;
    }
    edgelink_core::net::admin_basics(&parts.method, path, || prometheus.render()).unwrap_or_else(
        || edgelink_core::net::json_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
    )
}
