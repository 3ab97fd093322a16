//! The creation API under `/api/v1`: create, read, change, delete and list
//! links, JSON in and out, every request authenticated by an API key.
//!
//! Write order: the source of truth commits first, then the shared cache is
//! written through (or, for a change or delete, the code is dropped from it
//! and every edge's tier 0 — [`Invalidator`]). A 201 is sent only after the
//! commit, so a link answered 201 is never lost; a cache step that fails is
//! logged and left to the cache TTLs.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use edgelink_core::breaker::{Breaker, BreakerMetrics};
use edgelink_core::config::BreakerConfig;
use edgelink_core::link::now;
use edgelink_core::net::{
    json as json_response, json_bytes, read_body, Body, BodyLimits, ClientFaults,
};
use edgelink_core::store::{LinkPatch, MAX_LIST, MAX_STATS_DAYS};

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
pub const OPENAPI: &str = include_str!("../openapi.json");

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

    /// Checks a creation request; the link it describes, minus its code.
    fn validate(&self, req: &CreateLink, created_at: OffsetDateTime) -> Result<Link, ApiError> {
        let target = self.policy.target(&req.url)?;
        let expires_at =
            self.policy
                .expiry(req.expires_at.as_deref(), req.ttl_seconds, created_at)?;
        let redirect = self.policy.redirect(req.redirect)?;
        if let Some(alias) = &req.alias {
            self.policy.alias(alias)?;
        }
        Ok(Link {
            code: String::new(),
            target,
            redirect,
            created_at,
            expires_at,
            disabled: false,
        })
    }

    async fn create(
        &self,
        req: CreateLink,
        idem: Option<Idem<'_>>,
    ) -> Result<Response<Body>, ApiError> {
        let Link {
            target,
            redirect,
            created_at,
            expires_at,
            ..
        } = self.validate(&req, now())?;
        let build = |code: &str| Link {
            code: code.to_owned(),
            target: target.clone(),
            redirect,
            created_at,
            expires_at,
            disabled: false,
        };
        for _ in 0..KEY_ATTEMPTS {
            let (code, from_pool) = match &req.alias {
                Some(a) => (a.clone(), false),
                None => (self.key().await?, true),
            };
            // An Idempotency-Key is bound to its code before the link is
            // written, so concurrent retries agree on one link.
            if let Some(idem) = &idem {
                if let Some(earlier) = self
                    .store
                    .bind(idem.api_key_id, idem.key, idem.request, &code)
                    .await?
                {
                    if from_pool {
                        self.leaser.give_back(code);
                    }
                    if earlier.request != idem.request {
                        return Err(ApiError::invalid(
                            "idempotency_key_reused",
                            "this Idempotency-Key was used for a different request",
                        ));
                    }
                    return self.replay(build(&earlier.code), earlier.age_secs).await;
                }
            }
            let link = build(&code);
            let report = match self.links.insert_links(std::slice::from_ref(&link)).await {
                Ok(r) => r,
                Err(e) => {
                    self.undo(idem.as_ref(), code, from_pool).await;
                    return Err(e.into());
                }
            };
            if report.inserted == 1 {
                self.write_through(&link).await;
                return Ok(self.created(&link));
            }
            if let Some(idem) = &idem {
                let _ = self.store.unbind(idem.api_key_id, idem.key).await;
            }
            if !from_pool {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "alias_taken",
                    format!("{code:?} is taken"),
                ));
            }
            // A pool key already spelled by an alias or an import: it stays
            // used; take the next one.
            tracing::info!(code, "pool key already taken; using the next one");
        }
        Err(ApiError::unavailable(
            "could not find a free key; try again",
        ))
    }

    /// The link an earlier request with the same Idempotency-Key created.
    /// While that request may still be running it is the only one that
    /// writes the link (a retry that wrote it too would make the first one
    /// see its code taken and move on to another: two links for one key),
    /// so a retry gets 503 until the link is there. Only a binding older
    /// than [`ORPHANED_AFTER_SECS`], whose request must have died between
    /// binding and writing, is completed by the retry.
    async fn replay(&self, wanted: Link, age_secs: i64) -> Result<Response<Body>, ApiError> {
        if let Some(link) = self.links.find(&wanted.code).await? {
            return Ok(self.created(&link));
        }
        if age_secs < ORPHANED_AFTER_SECS {
            return Err(ApiError {
                retry_after: Some(1),
                ..ApiError::new(
                    StatusCode::CONFLICT,
                    "idempotency_in_progress",
                    "an earlier request with this Idempotency-Key is still being processed",
                )
            });
        }
        let report = self
            .links
            .insert_links(std::slice::from_ref(&wanted))
            .await?;
        if report.inserted == 1 {
            self.write_through(&wanted).await;
            return Ok(self.created(&wanted));
        }
        match self.links.find(&wanted.code).await? {
            Some(link) => Ok(self.created(&link)),
            None => Err(ApiError::not_found()),
        }
    }

    /// After a failed insert, whose outcome is unknown (a timeout may
    /// come after the commit).
    async fn undo(&self, idem: Option<&Idem<'_>>, code: String, from_pool: bool) {
        if idem.is_some() {
            // Keep the binding and its code: if the insert did commit, a
            // retry finds that link; if not, a retry completes it once the
            // binding is orphaned. Unbinding here could give one key two
            // links.
            return;
        }
        if from_pool {
            // Even if the insert did commit, reusing the key is safe:
            // inserts never overwrite, so its next use finds it taken and
            // moves on to another key.
            self.leaser.give_back(code);
        }
    }

    async fn key(&self) -> Result<String, ApiError> {
        self.leaser.next(KEY_WAIT).await.map_err(|_| ApiError {
            retry_after: Some(5),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "keys_exhausted",
                "no short codes are free right now; the key pool is being refilled",
            )
        })
    }

    async fn write_through(&self, link: &Link) {
        if let Some(cache) = &self.cache {
            if let Err(e) = cache.put(link).await {
                tracing::debug!(error = %e, code = %link.code, "write-through to the shared cache failed");
            }
        }
    }

    /// Up to `origin.max_batch_links` creations, written in one transaction; each item
    /// gets its own result (201 with the link, or its error), in order.
    async fn batch(&self, items: Vec<CreateLink>) -> Result<Response<Body>, ApiError> {
        let created_at = now();
        let mut results: Vec<Option<Value>> = vec![None; items.len()];
        let mut pending: Vec<(usize, Link, bool)> = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let mut link = match self.validate(item, created_at) {
                Ok(l) => l,
                Err(e) => {
                    results[i] = Some(item_error(i, &e));
                    continue;
                }
            };
            let from_pool = item.alias.is_none();
            link.code = match &item.alias {
                Some(a) => a.clone(),
                None => match self.key().await {
                    Ok(k) => k,
                    Err(e) => {
                        results[i] = Some(item_error(i, &e));
                        continue;
                    }
                },
            };
            pending.push((i, link, from_pool));
        }
        let links: Vec<Link> = pending.iter().map(|(_, l, _)| l.clone()).collect();
        let report = match self.links.insert_links(&links).await {
            Ok(r) => r,
            Err(e) => {
                for (_, link, from_pool) in pending {
                    if from_pool {
                        self.leaser.give_back(link.code);
                    }
                }
                return Err(e.into());
            }
        };
        let taken: std::collections::HashSet<usize> = report.existing.into_iter().collect();
        for (j, (i, link, from_pool)) in pending.into_iter().enumerate() {
            results[i] = Some(if !taken.contains(&j) {
                self.write_through(&link).await;
                json!({ "index": i, "status": 201, "link": self.view(&link) })
            } else if from_pool {
                // A pool key already spelled by an alias or import: this
                // one item goes through the single-link path's retries.
                match self.create(items[i].clone(), None).await {
                    Ok(resp) => json!({ "index": i, "status": 201, "link": body_json(resp).await }),
                    Err(e) => item_error(i, &e),
                }
            } else {
                let e = ApiError::new(
                    StatusCode::CONFLICT,
                    "alias_taken",
                    format!("{:?} is taken", link.code),
                );
                item_error(i, &e)
            });
        }
        let results: Vec<Value> = results
            .into_iter()
            .map(|r| r.unwrap_or(Value::Null))
            .collect();
        Ok(json_response(
            StatusCode::OK,
            &json!({ "results": results }),
        ))
    }

    async fn update(&self, code: &str, req: UpdateLink) -> Result<Response<Body>, ApiError> {
        let target = req
            .url
            .as_deref()
            .map(|u| self.policy.target(u))
            .transpose()?;
        let expires_at = match (&req.expires_at, req.ttl_seconds) {
            (Some(None), None) => Some(None),
            (None, None) => None,
            (e, ttl) => Some(self.policy.expiry(
                e.as_ref().and_then(|e| e.as_deref()),
                ttl,
                now(),
            )?),
        };
        let redirect = req
            .redirect
            .map(|r| self.policy.redirect(Some(r)))
            .transpose()?;
        let patch = LinkPatch {
            target,
            redirect,
            expires_at,
            disabled: req.disabled,
        };
        let link = self
            .links
            .update(code, &patch)
            .await?
            .ok_or_else(ApiError::not_found)?;
        self.invalidator.invalidate(code).await;
        Ok(json_response(StatusCode::OK, &self.view(&link)))
    }

    async fn list(&self, query: Option<&str>) -> Result<Response<Body>, ApiError> {
        let mut cursor = None;
        let mut limit = 100u32;
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match k.as_ref() {
                "cursor" => cursor = Some(v.into_owned()),
                "limit" => {
                    limit = v
                        .parse()
                        .ok()
                        .filter(|l| (1..=MAX_LIST).contains(l))
                        .ok_or_else(|| {
                            ApiError::invalid(
                                "invalid_limit",
                                format!("limit must be 1..={MAX_LIST}"),
                            )
                        })?;
                }
                other => {
                    return Err(ApiError::bad_request(
                        "unknown_parameter",
                        format!("unknown query parameter {other:?}"),
                    ))
                }
            }
        }
        let links = self.links.list(cursor.as_deref(), limit).await?;
        let next = (links.len() == limit as usize)
            .then(|| links.last().map(|l| l.code.clone()))
            .flatten();
        let items: Vec<Value> = links.iter().map(|l| self.view(l)).collect();
        Ok(json_response(
            StatusCode::OK,
            &json!({ "links": items, "next_cursor": next }),
        ))
    }

    /// Click counts of a link: totals and a daily series (every day of the
    /// range, zeros included), human and bot. `from`/`to` are UTC dates,
    /// inclusive; by default the last 30 days up to today.
    async fn stats(&self, code: &str, query: Option<&str>) -> Result<Response<Body>, ApiError> {
        let date = |v: &str, name: &str| {
            time::Date::parse(v, DATE)
                .ok()
                .filter(|d| (1970..=9999).contains(&d.year()))
                .ok_or_else(|| {
                    ApiError::invalid(
                        "invalid_date",
                        format!("{name} must be a date, YYYY-MM-DD, from 1970 on"),
                    )
                })
        };
        let mut to = time::OffsetDateTime::now_utc().date();
        let mut from = None;
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match k.as_ref() {
                "from" => from = Some(date(&v, "from")?),
                "to" => to = date(&v, "to")?,
                other => {
                    return Err(ApiError::bad_request(
                        "unknown_parameter",
                        format!("unknown query parameter {other:?}"),
                    ))
                }
            }
        }
        // `to` may be any date the format reads, year -9999 included: no
        // arithmetic on it may overflow.
        let from = from.or_else(|| to.checked_sub(time::Duration::days(29)));
        let days = from.map_or(0, |from| (to - from).whole_days() + 1);
        let Some(from) = from.filter(|_| (1..=MAX_STATS_DAYS).contains(&days)) else {
            return Err(ApiError::invalid(
                "invalid_range",
                format!("from must not be after to, and the range at most {MAX_STATS_DAYS} days"),
            ));
        };
        if self.links.find(code).await?.is_none() {
            return Err(ApiError::not_found());
        }
        let counted = self.links.clicks(code, from, to).await?;
        let mut by_day = counted.iter().peekable();
        let (mut human, mut bot) = (0u64, 0u64);
        let mut daily = Vec::with_capacity(usize::try_from(days).unwrap_or(0));
        let mut day = from;
        while day <= to {
            let (h, b) = match by_day.next_if(|c| c.day == day) {
                Some(c) => (c.human, c.bot),
                None => (0, 0),
            };
            human += h;
            bot += b;
            daily.push(json!({
                "date": day.format(DATE).unwrap_or_default(),
                "clicks": h + b,
                "human": h,
                "bot": b,
            }));
            let Some(next) = day.next_day() else { break };
            day = next;
        }
        Ok(json_response(
            StatusCode::OK,
            &json!({
                "code": code,
                "from": from.format(DATE).unwrap_or_default(),
                "to": to.format(DATE).unwrap_or_default(),
                "total": { "clicks": human + bot, "human": human, "bot": bot },
                "daily": daily,
            }),
        ))
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

/// An `Idempotency-Key` of one API key, and the digest of its request.
struct Idem<'a> {
    api_key_id: i64,
    key: &'a str,
    request: [u8; 32],
}

/// `POST /api/v1/links/batch`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchCreate {
    links: Vec<CreateLink>,
}

fn item_error(index: usize, e: &ApiError) -> Value {
    json!({
        "index": index,
        "status": e.status.as_u16(),
        "error": { "code": e.code, "message": e.message },
    })
}

async fn body_json(resp: Response<Body>) -> Value {
    // Our own answers are buffers; reading them cannot fail.
    match resp.into_body().collect().await {
        Ok(b) => serde_json::from_slice(&b.to_bytes()).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

fn route_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no_route", "no such API endpoint")
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))
}

/// The `Idempotency-Key` header, 1..=255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
            .map(Some)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_idempotency_key",
                    "Idempotency-Key must be 1..=255 visible ASCII characters",
                )
            }),
    }
}

/// What makes two requests "the same" for an Idempotency-Key.
fn request_digest(method: &Method, path: &str, body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(method.as_str().as_bytes());
    h.update([0]);
    h.update(path.as_bytes());
    h.update([0]);
    h.update(body);
    h.finalize().into()
}
