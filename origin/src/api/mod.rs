//! The creation API under `/api/v1`: create, read, change, delete and list
//! links, JSON in and out, every request authenticated by an API key.
//!
//! Write order: the source of truth commits first, then the shared cache is
//! written through (or, for a change or delete, the code is dropped from it
//! and every edge's tier 0 — [`Invalidator`]). A 201 is sent only after the
//! commit, so a link answered 201 is never lost; a cache step that fails is
//! logged and left to the cache TTLs.

mod create;
mod manage;

use create::{idempotency_key, request_digest, BatchCreate, Idem};

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use edgelink_core::breaker::{Breaker, BreakerMetrics};
use edgelink_core::config::BreakerConfig;
use edgelink_core::net::{
    json as json_response, json_bytes, read_body, Body, BodyLimits, ClientFaults,
};

/// `YYYY-MM-DD`, the dates of the stats API.
const DATE: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]");
use edgelink_core::{Link, LinkCache, LinkStore};
use edgelink_keypool::lease::Leaser;
use http::header::LOCATION;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::apikey::Keys;
use crate::error::ApiError;
use crate::store::OriginStore;
use crate::validate::{CreateLink, Policy, UpdateLink};

/// The prefix every route of this module lives under.
pub const PREFIX: &str = "/api/v1/";

/// How long a creation waits for keys when the in-memory lease is empty.
const KEY_WAIT: Duration = Duration::from_secs(2);

/// The OpenAPI 3 document of these routes (checked against them by a test).
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// Every route this module answers, as (method, path template), for the
/// OpenAPI test.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/v1/links"),
    ("GET", "/api/v1/links"),
    ("POST", edgelink_core::link::BATCH_PATH),
    ("GET", "/api/v1/links/{code}"),
    ("PATCH", "/api/v1/links/{code}"),
    ("DELETE", "/api/v1/links/{code}"),
    ("GET", "/api/v1/links/{code}/stats"),
    ("GET", "/api/v1/openapi.json"),
];

/// Age after which an Idempotency-Key binding without its link is taken to
/// belong to a request that died (twice the longest storage budget).
const ORPHANED_AFTER_SECS: i64 = 120;

/// Pool keys tried per creation when a key turns out to be taken already
/// (by an alias or an import that happened to spell it).
const KEY_ATTEMPTS: usize = 3;

/// Drops a changed or deleted code from every cache in front of the source
/// of truth: the shared cache and every edge's tier 0.
#[async_trait]
pub trait Invalidator: Send + Sync + 'static {
    async fn invalidate(&self, code: &str);
}

/// Everything the API needs.
pub struct Api {
    pub links: Arc<dyn LinkStore>,
    pub cache: Option<Arc<dyn LinkCache>>,
    pub store: Arc<dyn OriginStore>,
    pub keys: Keys,
    pub leaser: Arc<Leaser>,
    pub policy: Policy,
    /// `https://sho.rt` (no trailing slash): short URLs are `<public_url>/<code>`.
    pub public_url: String,
    pub invalidator: Arc<dyn Invalidator>,
    /// How a request body is read: `origin.max_body_bytes` under the
    /// server's body timeouts.
    pub body: BodyLimits,
    /// `origin.max_batch_body_bytes`, `origin.max_batch_links`.
    pub batch_body_bytes: usize,
    pub max_batch_links: usize,
    /// Where bodies the client fails are counted.
    pub faults: ClientFaults,
    /// The storage's circuit breaker: while it is open every API call
    /// (they all need storage) fails at once with 503, instead of each
    /// waiting out a timeout.
    pub storage: Arc<Breaker>,
    /// Set by [`Api::with_tracer`] (the `origin` role with
    /// `tracing.otlp_endpoint`).
    pub tracer: Option<Arc<edgelink_core::trace::Tracer>>,
}

impl Api {
    /// Answers a request whose path starts with [`PREFIX`]. `HEAD` is
    /// answered as `GET` is, headers only (`Content-Length` included).
    pub async fn handle<B>(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: B,
    ) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Unpin,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let head = method == Method::HEAD;
        let method = if head { &Method::GET } else { method };
        let mut resp = match self.route(method, path, query, headers, body).await {
            Ok(resp) => resp,
            Err(e) => e.into_response(),
        };
        if head {
            if let Some(len) = resp.body().as_full().map(<[u8]>::len) {
                resp.headers_mut()
                    .insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
                *resp.body_mut() = Body::default();
            }
        }
        resp
    }

    /// Replaces the storage breaker with one reporting to `metrics`.
    /// Traces this API's requests (a server span each, continuing the
    /// caller's B3 trace) and its storage calls (client spans under it).
    pub fn with_tracer(mut self, tracer: Arc<edgelink_core::trace::Tracer>) -> Api {
        self.links = Arc::new(edgelink_core::trace::Traced(self.links));
        self.tracer = Some(tracer);
        self
    }

    pub fn with_breaker_metrics(mut self, config: &BreakerConfig, metrics: BreakerMetrics) -> Api {
        self.storage = Arc::new(Breaker::new(self.links.name(), config, metrics));
        self
    }

    async fn route<B>(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: B,
    ) -> Result<Response<Body>, ApiError>
    where
        B: http_body::Body<Data = Bytes> + Unpin,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let rest = path.strip_prefix(PREFIX).ok_or_else(route_not_found)?;
        if (method, rest) == (&Method::GET, "openapi.json") {
            return Ok(json_bytes(StatusCode::OK, OPENAPI));
        }
        let Some(permit) = self.storage.try_acquire() else {
            return Err(ApiError::unavailable(
                "storage is failing; retry shortly (with the same Idempotency-Key to make it safe)",
            ));
        };
        let result = self
            .route_stored(method, path, rest, query, headers, body)
            .await;
        permit.record(!matches!(&result, Err(e) if e.storage_failed));
        result
    }

    /// The routes that need storage.
    async fn route_stored<B>(
        &self,
        method: &Method,
        path: &str,
        rest: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: B,
    ) -> Result<Response<Body>, ApiError>
    where
        B: http_body::Body<Data = Bytes> + Unpin,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let segments: Vec<&str> = rest.split('/').collect();
        // Authenticate before reading a body or touching storage.
        let key_id = self.keys.check(headers).await?;
        match (method, segments.as_slice()) {
            (&Method::POST, ["links"]) => {
                let body = self.read(body).await?;
                let req: CreateLink = parse(&body)?;
                let idem = idempotency_key(headers)?.map(|key| Idem {
                    api_key_id: key_id,
                    key,
                    request: request_digest(method, path, &body),
                });
                self.create(req, idem).await
            }
            (&Method::POST, ["links", "batch"]) => {
                if headers.contains_key("idempotency-key") {
                    return Err(ApiError::bad_request(
                        "idempotency_unsupported",
                        "Idempotency-Key is not supported on batches; create the links one by one to use it",
                    ));
                }
                let body = self.read_within(body, self.batch_body_bytes).await?;
                let req: BatchCreate = parse(&body)?;
                let max = self.max_batch_links;
                if req.links.is_empty() || req.links.len() > max {
                    return Err(ApiError::invalid(
                        "invalid_batch",
                        format!("a batch holds 1..={max} links"),
                    ));
                }
                self.batch(req.links).await
            }
            (&Method::GET, ["links"]) => self.list(query).await,
            (&Method::GET, ["links", code, "stats"]) => self.stats(code, query).await,
            (&Method::GET, ["links", code]) => {
                let link = self
                    .links
                    .find(code)
                    .await?
                    .ok_or_else(ApiError::not_found)?;
                Ok(json_response(StatusCode::OK, &self.view(&link)))
            }
            (&Method::PATCH, ["links", code]) => {
                let body = self.read(body).await?;
                self.update(code, parse(&body)?).await
            }
            (&Method::DELETE, ["links", code]) => {
                if !self.links.delete(code).await? {
                    return Err(ApiError::not_found());
                }
                self.invalidator.invalidate(code).await;
                let mut resp = Response::new(Body::default());
                *resp.status_mut() = StatusCode::NO_CONTENT;
                Ok(resp)
            }
            (_, ["links"] | ["links", _]) => Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not allowed here"),
            )),
            _ => Err(route_not_found()),
        }
    }

    async fn read<B>(&self, body: B) -> Result<Bytes, ApiError>
    where
        B: http_body::Body<Data = Bytes> + Unpin,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.read_within(body, self.body.max_bytes).await
    }

    async fn read_within<B>(&self, body: B, limit: usize) -> Result<Bytes, ApiError>
    where
        B: http_body::Body<Data = Bytes> + Unpin,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let limits = BodyLimits {
            max_bytes: limit,
            ..self.body
        };
        read_body(body, limits, &self.faults)
            .await
            .map_err(|e| ApiError::new(e.status(), e.code(), e.message()))
    }

    fn short_url(&self, code: &str) -> String {
        format!("{}/{code}", self.public_url)
    }

    fn view(&self, link: &Link) -> Value {
        let time = |t: time::OffsetDateTime| t.format(&Rfc3339).unwrap_or_default();
        json!({
            "code": link.code,
            "short_url": self.short_url(&link.code),
            "url": link.target,
            "redirect": link.redirect.code(),
            "created_at": time(link.created_at),
            "expires_at": link.expires_at.map(time),
            "disabled": link.disabled,
        })
    }

    fn created(&self, link: &Link) -> Response<Body> {
        let mut resp = json_response(StatusCode::CREATED, &self.view(link));
        if let Ok(v) = HeaderValue::from_str(&self.short_url(&link.code)) {
            resp.headers_mut().insert(LOCATION, v);
        }
        resp
    }
}

fn route_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no_route", "no such API endpoint")
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))
}
