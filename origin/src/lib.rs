//! EdgeLink origin: the creation API.
//!
//! # Layout
//!
//! - [`api`]: the routes under `/api/v1` (create, read, change, delete,
//!   list), write order, and the [`api::Invalidator`] seam through which
//!   changes reach every cache; `api/create.rs` creation (one, a batch,
//!   Idempotency-Key), `api/manage.rs` change, list and stats.
//! - [`validate`]: request bodies and the rules they must pass.
//! - [`apikey`]: API keys (generated, hashed, checked, cached briefly).
//! - [`store`]: API keys and Idempotency-Key bindings on PostgreSQL and SQLite.
//! - [`error`]: the one JSON error shape and its statuses.
//! - this file: [`build`] (the API from config and stores) and [`run`], the
//!   `edgelink origin` role ([`Listeners`], [`Deps`], [`OriginError`]).

pub mod api;
pub mod apikey;
pub mod error;
pub mod store;
pub mod validate;

use std::sync::Arc;

use async_trait::async_trait;
use edgelink_core::config::Config;
use edgelink_core::net::{self, server, Body};
use edgelink_core::shutdown::CancellationToken;
use edgelink_core::{LinkCache, LinkStore};
use edgelink_keypool::lease::Leaser;
use http::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::api::{Api, Invalidator};
use crate::apikey::Keys;
use crate::store::OriginStore;
use crate::validate::Policy;

/// Invalidates through the shared cache: deletes the key and publishes the
/// code on the invalidation channel every edge subscribes to.
pub struct CacheInvalidator(pub Arc<dyn LinkCache>);

#[async_trait]
impl Invalidator for CacheInvalidator {
    async fn invalidate(&self, code: &str) {
        if let Err(e) = self.0.forget(code).await {
            tracing::warn!(error = %e, code, "invalidation not published; edges keep the old answer until their cache TTL");
        }
    }
}

/// No shared cache to tell: edges see a change when their tier-0 TTL ends.
pub struct TtlOnly;

#[async_trait]
impl Invalidator for TtlOnly {
    async fn invalidate(&self, _code: &str) {}
}

/// The API from the config and the stores; registers the bootstrap API key
/// when one is configured.
pub async fn build(
    config: &Config,
    links: Arc<dyn LinkStore>,
    cache: Option<Arc<dyn LinkCache>>,
    store: Arc<dyn OriginStore>,
    leaser: Arc<Leaser>,
    invalidator: Arc<dyn Invalidator>,
) -> Result<Api, String> {
    let o = &config.origin;
    let public_url = o.public_url.trim_end_matches('/').to_owned();
    let own_host = url::Url::parse(&public_url)
        .ok()
        .as_ref()
        .and_then(validate::Host::of);
    let keys = Keys::new(store.clone());
    if let Some(key) = &config.bootstrap.api_key {
        keys.register("bootstrap", key).await?;
    }
    Ok(Api {
        cache,
        store,
        keys,
        leaser,
        policy: Policy {
            own_host,
            block_private: o.block_private_targets,
            blocked_domains: o
                .blocked_domains
                .iter()
                .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
                .collect(),
            alias_min_len: o.alias_min_len,
            alias_max_len: o.alias_max_len,
            max_ttl_secs: o.max_ttl_secs,
            default_redirect: config.redirect.default_status,
        },
        public_url,
        storage: Arc::new(edgelink_core::breaker::Breaker::new(
            links.name(),
            &config.breaker,
            edgelink_core::breaker::BreakerMetrics::default(),
        )),
        invalidator,
        body: edgelink_core::net::BodyLimits::new(&config.server, o.max_body_bytes),
        batch_body_bytes: o.max_batch_body_bytes,
        max_batch_links: o.max_batch_links,
        faults: Default::default(),
        links,
        tracer: None,
    })
}

/// The origin's sockets: the API and the admin listener (`/metrics`,
/// `/healthz`).
#[derive(Debug)]
pub struct Listeners {
    pub public: std::net::TcpListener,
    pub admin: std::net::TcpListener,
}

/// What the origin serves with: the API (its stores, key leaser and
/// invalidator, assembled by [`build`]) and the metrics `/metrics` renders.
pub struct Deps {
    pub api: Arc<Api>,
    pub prometheus: PrometheusHandle,
}

/// Why the origin could not serve.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    #[error("listener: {0}")]
    Listener(#[source] std::io::Error),
}

/// The `edgelink origin` role: the API on the public listener, `/metrics`
/// and `/healthz` on the admin one, until `shutdown`; then reports the keys
/// it used to the pool.
pub async fn run(
    listeners: Listeners,
    config: Arc<Config>,
    deps: Deps,
    shutdown: CancellationToken,
) -> Result<(), OriginError> {
    let Deps { api, prometheus } = deps;
    let listen = |l| tokio::net::TcpListener::from_std(l).map_err(OriginError::Listener);
    let public = listen(listeners.public)?;
    let admin = listen(listeners.admin)?;
    tracing::info!(
        public = %public.local_addr().map_err(OriginError::Listener)?,
        admin = %admin.local_addr().map_err(OriginError::Listener)?,
        "origin listening"
    );
    let routes = api.clone();
    let mut options = server::Options::plain(
        &config.server,
        server::ConnLimits::new(
            config.server.max_connections,
            ::metrics::Gauge::noop(),
            ::metrics::Counter::noop(),
        ),
    );
    options.faults = api.faults.clone();
    let public_task = server::serve(
        public,
        options,
        move |req, _peer| {
            let api = routes.clone();
            async move { route(&api, req).await }
        },
        shutdown.clone(),
    );
    let admin_task = server::serve(
        admin,
        server::Options::internal(&config.server),
        move |req: Request<hyper::body::Incoming>, _peer| {
            let prometheus = prometheus.clone();
            async move {
                net::admin_basics(req.method(), req.uri().path(), || prometheus.render())
                    .unwrap_or_else(|| {
                        net::json_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
                    })
            }
        },
        shutdown.clone(),
    );
    tokio::join!(public_task, admin_task);
    api.leaser.report().await;
    tracing::info!("origin stopped");
    Ok(())
}

/// The origin's public routes: `/api/v1/...`, `/healthz` (the process
/// answers) and `/readyz` (its source of truth answers too).
pub async fn route<B>(api: &Api, req: Request<B>) -> Response<Body>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    if path.starts_with(api::PREFIX) {
        let handled = api.handle(&parts.method, path, parts.uri.query(), &parts.headers, body);
        let Some(tracer) = &api.tracer else {
            return handled.await;
        };
        let incoming = edgelink_core::trace::extract(&parts.headers);
        let Some(mut span) = tracer.server_span("origin.request", &incoming) else {
            return handled.await;
        };
        span.set("http.request.method", &parts.method);
        span.set("url.path", path);
        let resp = edgelink_core::trace::scope(tracer.clone(), span.context(), handled).await;
        span.set("http.response.status_code", resp.status().as_u16());
        if resp.status().is_server_error() {
            span.fail();
        }
        return resp;
    }
    match (&parts.method, path) {
        (&Method::GET, "/healthz") => net::text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => ready(api).await,
        _ => error::ApiError::new(StatusCode::NOT_FOUND, "no_route", "no such endpoint")
            .into_response(),
    }
}

/// `/readyz`: 200 while the source of truth answers a ping (through the
/// storage breaker, so an open one answers at once), else 503: every API
/// call needs it, so an origin without it should get no traffic.
async fn ready(api: &Api) -> Response<Body> {
    match api.storage.call(api.links.ping()).await {
        Ok(()) => net::json(StatusCode::OK, &serde_json::json!({ "status": "ready" })),
        Err(e) => net::json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "status": "unavailable", "error": e.to_string() }),
        ),
    }
}
