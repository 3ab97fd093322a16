//! The reverse proxy: `/api/` (and the other configured prefixes) to the
//! origin upstreams.
//!
//! - **Balancing:** least outstanding requests (the better of two hosts drawn
//!   at random) or round robin, over the hosts that are neither ejected nor
//!   failing their health checks.
//! - **Passive outlier ejection** (Envoy's model): `eject_consecutive_failures`
//!   5xx answers or connect failures in a row eject a host for
//!   `eject_base_ms` × the times it has been ejected, capped at
//!   `eject_max_ms`; at most `max_ejection_percent` of the hosts are out at
//!   once (one host always may be). This is each host's circuit breaker:
//!   ejected is open; when the span ends the host is half-open, on
//!   probation: it takes one request at a time, and one failure ejects it
//!   again, for longer, while one success readmits it (closed, and its
//!   ejection count starts over).
//! - **Active health checks:** `GET health_check_path` on every host each
//!   interval; `unhealthy_threshold` failures in a row take it out,
//!   `healthy_threshold` passes bring it back.
//! - **Timeouts and retries:** `timeout_ms` bounds the whole request up to
//!   the upstream's response head, retries included. A failed attempt is
//!   retried on another host when the request is idempotent (GET, HEAD,
//!   PUT, DELETE, OPTIONS) and its body can be replayed, or when it failed
//!   before anything was sent (a connect failure) and the body can be
//!   replayed. Backoff is fully jittered and exponential; retries in flight
//!   stay under `retry_budget_percent` of requests in flight (at least 3).
//! - **Headers:** hop-by-hop headers are dropped both ways;
//!   `X-Forwarded-For` (the chain is kept only from a trusted proxy),
//!   `X-Forwarded-Proto` and `X-Forwarded-Host` are set; `X-Real-IP` and
//!   `Forwarded` are dropped unless the peer is a trusted proxy;
//!   `X-Request-Id` is passed on when sane, else generated, and returned.
//! - **Bodies:** at most `max_body_bytes` (413), under the server's body
//!   timeouts; bodies up to `replay_body_bytes` with a known length are read
//!   whole first (so they can be replayed), larger ones stream; responses
//!   always stream.
//! - **Who pays:** a body the client fails (malformed, aborted, too large,
//!   too slow, or still owed when the time runs out) is the client's
//!   400/413/408 and counts against no host. Only connect failures, 5xx
//!   answers and response timeouts count against a host.
//! - **Failures** are JSON: 502 (the upstream failed), 503 (no host can take
//!   the request), 504 (the timeout passed).

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::metrics::ProxyMetrics;
use bytes::Bytes;
use edgelink_core::config::{upstream_base, Balance, ProxyConfig};
use edgelink_core::net::{
    json_error, server::Peer, Body, BodyLimits, BodyWatch, ClientFault, ClientFaults, LimitedBody,
};
use edgelink_core::shutdown::CancellationToken;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// One origin host and what the proxy knows of it.
#[derive(Debug)]
pub struct Upstream {
    base: Uri,
    outstanding: AtomicUsize,
    consecutive_failures: AtomicU32,
    /// Milliseconds since the proxy started until which the host is out.
    ejected_until: AtomicU64,
    times_ejected: AtomicU32,
    /// Half-open: ejected before, and not yet answered well since.
    probation: AtomicBool,
    /// A probe (a request to a host on probation) is in flight.
    probing: AtomicBool,
    check_failures: AtomicU32,
    check_passes: AtomicU32,
    unhealthy: AtomicBool,
}

/// What the proxy reports of a host (tests, logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamState {
    pub base: String,
    pub ejected: bool,
    pub times_ejected: u32,
    pub healthy: bool,
    pub outstanding: usize,
}

pub struct Proxy {
    config: ProxyConfig,
    /// `proxy.max_body_bytes` under the server's body timeouts.
    body: BodyLimits,
    faults: ClientFaults,
    upstreams: Vec<Upstream>,
    client: Client<HttpConnector, ReqBody>,
    started: Instant,
    next: AtomicUsize,
    in_flight: AtomicUsize,
    retries_in_flight: AtomicUsize,
    metrics: ProxyMetrics,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("upstreams", &self.upstreams.len())
            .finish()
    }
}

/// How one attempt ended.
enum Attempt {
    Answered(Response<Incoming>),
    /// Nothing reached the upstream (connect failure): safe to retry.
    NotSent(String),
    /// The exchange failed after the request may have been sent.
    Failed(String),
}

impl Proxy {
    /// A proxy over `config.upstreams` (validated), with its health checks
    /// running until `shutdown` or until the proxy is dropped (a reload
    /// replaces it).
    pub fn start(
        config: &ProxyConfig,
        body: BodyLimits,
        metrics: ProxyMetrics,
        faults: ClientFaults,
        shutdown: CancellationToken,
    ) -> Option<Arc<Proxy>> {
        if config.upstreams.is_empty() {
            return None;
        }
        let upstreams = config
            .upstreams
            .iter()
            .filter_map(|u| upstream_base(u))
            .map(|base| Upstream {
                base,
                outstanding: AtomicUsize::new(0),
                consecutive_failures: AtomicU32::new(0),
                ejected_until: AtomicU64::new(0),
                times_ejected: AtomicU32::new(0),
                probation: AtomicBool::new(false),
                probing: AtomicBool::new(false),
                check_failures: AtomicU32::new(0),
                check_passes: AtomicU32::new(0),
                unhealthy: AtomicBool::new(false),
            })
            .collect();
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_millis(config.connect_timeout_ms)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_millis(config.pool_idle_timeout_ms))
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .build(connector);
        let proxy = Arc::new(Proxy {
            config: config.clone(),
            body: BodyLimits {
                max_bytes: config.max_body_bytes,
                ..body
            },
            faults,
            upstreams,
            client,
            started: Instant::now(),
            next: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            retries_in_flight: AtomicUsize::new(0),
            metrics,
        });
        if !config.health_check_path.is_empty() {
            tokio::spawn(health_checks(Arc::downgrade(&proxy), shutdown));
        }
        Some(proxy)
    }

    /// Same settings: a reload may keep this proxy (and its host state).
    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// Whether `path` is one of the proxied prefixes.
    pub fn owns(&self, path: &str) -> bool {
        self.config
            .prefixes
            .iter()
            .any(|p| path.starts_with(p.as_str()))
    }

    pub fn upstream_states(&self) -> Vec<UpstreamState> {
        let now = self.now_ms();
        self.upstreams
            .iter()
            .map(|u| UpstreamState {
                base: u.base.to_string(),
                ejected: u.ejected_until.load(Ordering::Relaxed) > now,
                times_ejected: u.times_ejected.load(Ordering::Relaxed),
                healthy: !u.unhealthy.load(Ordering::Relaxed),
                outstanding: u.outstanding.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Upstreams by breaker state: closed (in rotation), open (ejected),
    /// half-open (on probation after an ejection).
    pub fn breaker_counts(&self) -> [usize; 3] {
        let now = self.now_ms();
        let mut counts = [0; 3];
        for u in self.upstreams.iter() {
            let state = if u.ejected_until.load(Ordering::Relaxed) > now {
                1
            } else if u.probation.load(Ordering::Relaxed) {
                2
            } else {
                0
            };
            counts[state] += 1;
        }
        counts
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The largest body this proxy forwards, under the client's timeouts.
    pub fn body_limits(&self) -> BodyLimits {
        self.body
    }

    /// Forwards `req` from `client_ip` (already decided by the caller) and
    /// returns the upstream's answer, or a JSON failure.
    pub async fn forward(
        &self,
        req: Request<Incoming>,
        peer: Peer,
        client_ip: IpAddr,
        trusted_peer: bool,
    ) -> Response<Body> {
        let (parts, incoming) = req.into_parts();
        let to = self.outbound(&parts.headers, peer, client_ip, trusted_peer);
        let (body, watch) = match self.take_body(incoming, &parts.headers, to.deadline).await {
            Ok(b) => b,
            Err(resp) => return with_request_id(resp, &to.request_id),
        };
        self.send(parts, body, watch, to).await
    }

    /// [`Proxy::forward`] of a request whose body the caller has read
    /// whole (under [`Proxy::body_limits`]).
    pub async fn forward_read(
        &self,
        parts: http::request::Parts,
        body: Bytes,
        peer: Peer,
        client_ip: IpAddr,
        trusted_peer: bool,
    ) -> Response<Body> {
        let to = self.outbound(&parts.headers, peer, client_ip, trusted_peer);
        let body = if body.is_empty() {
            ReqBody::Empty
        } else {
            ReqBody::Full(body)
        };
        self.send(parts, body, BodyWatch::default(), to).await
    }

    /// Where a request goes from now: its deadline starts here.
    fn outbound(
        &self,
        headers: &HeaderMap,
        peer: Peer,
        client_ip: IpAddr,
        trusted_peer: bool,
    ) -> Outbound {
        Outbound {
            peer,
            client_ip,
            trusted_peer,
            deadline: tokio::time::Instant::now() + Duration::from_millis(self.config.timeout_ms),
            request_id: request_id(headers),
        }
    }

    /// Sends a request to the upstreams, retrying where allowed. `watch`
    /// follows a body still streaming from the client: when the client
    /// fails it, the answer is the client's 4xx and no host is blamed.
    async fn send(
        &self,
        mut parts: http::request::Parts,
        mut body: ReqBody,
        watch: BodyWatch,
        to: Outbound,
    ) -> Response<Body> {
        let Outbound {
            peer,
            client_ip,
            trusted_peer,
            deadline,
            request_id,
        } = to;
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let _in_flight = Decrement(&self.in_flight);
        self.metrics.forwarded.increment(1);
        prepare_headers(
            &mut parts.headers,
            peer,
            client_ip,
            trusted_peer,
            &parts.uri,
            &request_id,
        );
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        let idempotent = matches!(
            parts.method,
            Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS
        );
        let mut tried: Vec<usize> = Vec::new();
        let mut last_failure = String::new();
        let mut attempt = 0u32;
        loop {
            let Some(index) = self.pick(&tried) else {
                let resp = if tried.is_empty() {
                    self.metrics.failed[1].increment(1);
                    let mut r = json_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no_upstream",
                        "no origin host is available",
                    );
                    r.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    r
                } else {
                    self.bad_gateway(&last_failure)
                };
                return with_request_id(resp, &request_id);
            };
            tried.push(index);
            let upstream = &self.upstreams[index];
            let _probe = Probe::claim(upstream);
            // A sampled request's attempt is a client span, named to the
            // origin as its parent (B3, both forms).
            let mut span =
                edgelink_core::trace::child("proxy.forward", edgelink_core::trace::CLIENT);
            if let Some(s) = span.as_mut() {
                s.set("server.address", &upstream.base);
                s.set("edgelink.attempt", attempt + 1);
                edgelink_core::trace::inject(&mut parts.headers, &s.context(), s.parent());
            }
            let replayable = body.replay();
            let mut builder = Request::builder()
                .method(parts.method.clone())
                .uri(format!(
                    "{}{}",
                    upstream.base.to_string().trim_end_matches('/'),
                    path
                ))
                .version(http::Version::HTTP_11);
            if let Some(h) = builder.headers_mut() {
                h.clone_from(&parts.headers);
            }
            let Ok(request) = builder.body(std::mem::take(&mut body)) else {
                return with_request_id(
                    json_error(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        "the request cannot be forwarded",
                    ),
                    &request_id,
                );
            };
            let outcome = {
                upstream.outstanding.fetch_add(1, Ordering::Relaxed);
                let _out = Decrement(&upstream.outstanding);
                match tokio::time::timeout_at(deadline, self.client.request(request)).await {
                    Err(_) => None,
                    Ok(Ok(resp)) => Some(Attempt::Answered(resp)),
                    Ok(Err(e)) if e.is_connect() => Some(Attempt::NotSent(e.to_string())),
                    Ok(Err(e)) => Some(Attempt::Failed(e.to_string())),
                }
            };
            // The client's body failed it, or the time ran out while the
            // client still owed body bytes: the client's fault, whatever
            // the upstream did meanwhile.
            let client_fault = watch.fault().or_else(|| {
                (outcome.is_none() && watch.waiting_on_client()).then(|| {
                    self.faults.count(ClientFault::BodySlow);
                    ClientFault::BodySlow
                })
            });
            if let Some(fault) = client_fault {
                if let Some(s) = span.as_mut() {
                    s.set("error.type", fault.label());
                }
                tracing::debug!(
                    reason = fault.label(),
                    "proxied request failed by its client"
                );
                let e = edgelink_core::net::BodyError {
                    fault,
                    limit: self.body.max_bytes,
                };
                return with_request_id(e.response(), &request_id);
            }
            let failed_before_send = matches!(outcome, Some(Attempt::NotSent(_)));
            let (resp, failure) = match outcome {
                None => {
                    self.record(index, false);
                    if let Some(s) = span.as_mut() {
                        s.fail();
                    }
                    return with_request_id(self.timed_out(), &request_id);
                }
                Some(Attempt::Answered(resp)) if resp.status().is_server_error() => {
                    let why = format!("{} answered {}", upstream.base, resp.status());
                    (Some(resp), why)
                }
                Some(Attempt::Answered(resp)) => {
                    self.record(index, true);
                    return with_request_id(relay(resp), &request_id);
                }
                Some(Attempt::NotSent(why)) => (None, format!("{}: {why}", upstream.base)),
                Some(Attempt::Failed(why)) => (None, format!("{}: {why}", upstream.base)),
            };
            self.record(index, false);
            if let Some(s) = span.as_mut() {
                s.fail();
                s.set("error.type", &failure);
            }
            attempt += 1;
            let may_retry = match replayable {
                Some(again)
                    if attempt <= self.config.max_retries && (idempotent || failed_before_send) =>
                {
                    body = again;
                    true
                }
                _ => false,
            };
            if !may_retry || !self.retry_budget_allows() {
                return with_request_id(
                    match resp {
                        Some(resp) => relay(resp),
                        None => self.bad_gateway(&failure),
                    },
                    &request_id,
                );
            }
            drop(resp);
            last_failure = failure;
            self.metrics.retries.increment(1);
            self.retries_in_flight.fetch_add(1, Ordering::Relaxed);
            let _retrying = Decrement(&self.retries_in_flight);
            let pause = edgelink_core::retry::backoff_from(
                Duration::from_millis(self.config.retry_backoff_ms),
                Duration::from_millis(self.config.timeout_ms),
                attempt,
            );
            if tokio::time::timeout_at(deadline, tokio::time::sleep(pause))
                .await
                .is_err()
            {
                return with_request_id(self.timed_out(), &request_id);
            }
        }
    }

    fn timed_out(&self) -> Response<Body> {
        self.metrics.failed[2].increment(1);
        json_error(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            "the origin did not answer in time",
        )
    }

    fn bad_gateway(&self, why: &str) -> Response<Body> {
        self.metrics.failed[0].increment(1);
        tracing::debug!(why, "proxy answering 502");
        json_error(
            StatusCode::BAD_GATEWAY,
            "bad_gateway",
            "the origin could not answer",
        )
    }

    /// The request body as it will be sent, under the client's limits:
    /// read whole when small enough to replay, streamed otherwise (its
    /// [`BodyWatch`] then tells whether the client failed it).
    async fn take_body(
        &self,
        incoming: Incoming,
        headers: &HeaderMap,
        deadline: tokio::time::Instant,
    ) -> Result<(ReqBody, BodyWatch), Response<Body>> {
        if http_body::Body::is_end_stream(&incoming) {
            return Ok((ReqBody::Empty, BodyWatch::default()));
        }
        let length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let client_fault = |fault| {
            self.faults.count(fault);
            edgelink_core::net::BodyError {
                fault,
                limit: self.body.max_bytes,
            }
            .response()
        };
        if length.is_some_and(|n| n > self.body.max_bytes as u64) {
            return Err(client_fault(ClientFault::BodyTooLarge));
        }
        let guarded = LimitedBody::new(incoming, self.body, self.faults.clone());
        let watch = guarded.watch();
        match length {
            Some(n) if n <= self.config.replay_body_bytes as u64 => {
                match tokio::time::timeout_at(deadline, guarded.collect()).await {
                    Ok(Ok(b)) => Ok((ReqBody::Full(b.to_bytes()), watch)),
                    Ok(Err(e)) => Err(e.response()),
                    Err(_) => Err(client_fault(ClientFault::BodySlow)),
                }
            }
            _ => Ok((ReqBody::Stream(guarded), watch)),
        }
    }

    /// A host for the next attempt, not one already tried.
    fn pick(&self, tried: &[usize]) -> Option<usize> {
        let now = self.now_ms();
        let usable = |i: usize| {
            let u = &self.upstreams[i];
            // Half-open: one probe at a time.
            let probe_in_flight =
                u.probation.load(Ordering::Relaxed) && u.probing.load(Ordering::Relaxed);
            !tried.contains(&i)
                && !u.unhealthy.load(Ordering::Relaxed)
                && u.ejected_until.load(Ordering::Relaxed) <= now
                && !probe_in_flight
        };
        let n = self.upstreams.len();
        match self.config.balance {
            Balance::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n).map(|k| (start + k) % n).find(|&i| usable(i))
            }
            Balance::LeastOutstanding => {
                let candidates: Vec<usize> = (0..n).filter(|&i| usable(i)).collect();
                match candidates.len() {
                    0 => None,
                    1 => Some(candidates[0]),
                    len => {
                        let a = rand::random_range(0..len);
                        let b = (a + rand::random_range(1..len)) % len;
                        let load = |i: usize| {
                            self.upstreams[candidates[i]]
                                .outstanding
                                .load(Ordering::Relaxed)
                        };
                        Some(candidates[if load(b) < load(a) { b } else { a }])
                    }
                }
            }
        }
    }

    /// Outlier detection: a success resets the count, a failure may eject.
    fn record(&self, index: usize, ok: bool) {
        let u = &self.upstreams[index];
        if ok {
            u.consecutive_failures.store(0, Ordering::Relaxed);
            if u.probation.swap(false, Ordering::Relaxed) {
                u.times_ejected.store(0, Ordering::Relaxed);
                self.metrics.readmitted.increment(1);
                tracing::info!(upstream = %u.base, "upstream readmitted: its probe succeeded");
            }
            return;
        }
        let failures = u.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let probe_failed = u.probation.load(Ordering::Relaxed);
        if failures < self.config.eject_consecutive_failures && !probe_failed {
            return;
        }
        let now = self.now_ms();
        let ejected_now = self
            .upstreams
            .iter()
            .filter(|u| u.ejected_until.load(Ordering::Relaxed) > now)
            .count();
        let cap = (self.upstreams.len() * self.config.max_ejection_percent as usize / 100).max(1);
        if ejected_now >= cap || u.ejected_until.load(Ordering::Relaxed) > now {
            return;
        }
        let times = u.times_ejected.fetch_add(1, Ordering::Relaxed) + 1;
        let span = self
            .config
            .eject_base_ms
            .saturating_mul(u64::from(times))
            .min(self.config.eject_max_ms);
        u.ejected_until.store(now + span, Ordering::Relaxed);
        u.consecutive_failures.store(0, Ordering::Relaxed);
        u.probation.store(true, Ordering::Relaxed);
        self.metrics.ejections.increment(1);
        tracing::warn!(upstream = %u.base, times, ms = span, "upstream ejected");
    }

    fn retry_budget_allows(&self) -> bool {
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        let budget = (in_flight * self.config.retry_budget_percent as usize / 100).max(3);
        self.retries_in_flight.load(Ordering::Relaxed) < budget
    }
}

/// Runs the active health checks while the proxy lives.
async fn health_checks(proxy: Weak<Proxy>, shutdown: CancellationToken) {
    let Some(interval) = proxy
        .upgrade()
        .map(|p| Duration::from_millis(p.config.health_check_interval_ms))
    else {
        return;
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(proxy) = proxy.upgrade() else { return };
        let checks = proxy.upstreams.iter().map(|u| check(&proxy, u));
        futures_util::future::join_all(checks).await;
    }
}

async fn check(proxy: &Proxy, u: &Upstream) {
    let c = &proxy.config;
    let uri = format!(
        "{}{}",
        u.base.to_string().trim_end_matches('/'),
        c.health_check_path
    );
    let Ok(req) = Request::get(uri).body(ReqBody::Empty) else {
        return;
    };
    let timeout = Duration::from_millis(c.health_check_timeout_ms);
    let passed = matches!(
        tokio::time::timeout(timeout, proxy.client.request(req)).await,
        Ok(Ok(resp)) if resp.status().is_success()
    );
    if passed {
        u.check_failures.store(0, Ordering::Relaxed);
        let passes = u.check_passes.fetch_add(1, Ordering::Relaxed) + 1;
        if passes >= c.healthy_threshold && u.unhealthy.swap(false, Ordering::Relaxed) {
            tracing::info!(upstream = %u.base, "upstream healthy again");
        }
    } else {
        u.check_passes.store(0, Ordering::Relaxed);
        let failures = u.check_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= c.unhealthy_threshold && !u.unhealthy.swap(true, Ordering::Relaxed) {
            tracing::warn!(upstream = %u.base, "upstream failing its health check");
        }
    }
}

/// Marks a request to a host on probation as its probe while it is in
/// flight, however the request ends.
struct Probe<'a>(Option<&'a AtomicBool>);

impl<'a> Probe<'a> {
    fn claim(u: &'a Upstream) -> Probe<'a> {
        if !u.probation.load(Ordering::Relaxed) {
            return Probe(None);
        }
        u.probing.store(true, Ordering::Relaxed);
        Probe(Some(&u.probing))
    }
}

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        if let Some(probing) = self.0 {
            probing.store(false, Ordering::Relaxed);
        }
    }
}

struct Decrement<'a>(&'a AtomicUsize);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A sane incoming `X-Request-Id` (1..=128 visible ASCII), else a new one.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(&X_REQUEST_ID)
        .filter(|v| {
            (1..=128).contains(&v.len()) && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
        })
        .cloned()
        .unwrap_or_else(|| {
            let id = format!("{:032x}", rand::random::<u128>());
            HeaderValue::from_str(&id).unwrap_or(HeaderValue::from_static("0"))
        })
}

/// The headers that belong to one connection, not to the message.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove("proxy-connection");
}

fn prepare_headers(
    headers: &mut HeaderMap,
    peer: Peer,
    client_ip: IpAddr,
    trusted_peer: bool,
    uri: &Uri,
    request_id: &HeaderValue,
) {
    // The host the client asked for: an absolute-form target's authority
    // (or HTTP/2's), else `Host` (RFC 9112 §3.2.2); read before the
    // hop-by-hop headers go, which a client may name `Host` among.
    let host = uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        .or_else(|| headers.get(header::HOST).cloned());
    strip_hop_by_hop(headers);
    if !trusted_peer {
        // Claims about the client only a trusted proxy may make.
        headers.remove(&X_REAL_IP);
        headers.remove(header::FORWARDED);
    }
    // The chain is believed only from a trusted proxy; otherwise it starts here.
    let chain = if trusted_peer {
        let earlier: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if earlier.is_empty() {
            peer.addr.ip().to_string()
        } else {
            format!("{}, {}", earlier.join(", "), peer.addr.ip())
        }
    } else {
        client_ip.to_string()
    };
    if let Ok(v) = HeaderValue::from_str(&chain) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if peer.tls { "https" } else { "http" }),
    );
    match host {
        Some(h) => {
            headers.insert(X_FORWARDED_HOST, h.clone());
            headers.insert(header::HOST, h);
        }
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
    headers.insert(X_REQUEST_ID, request_id.clone());
}

/// The upstream's answer for the client: its body streamed through.
fn relay(resp: Response<Incoming>) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Body::stream(body))
}

fn with_request_id(mut resp: Response<Body>, id: &HeaderValue) -> Response<Body> {
    resp.headers_mut().insert(X_REQUEST_ID, id.clone());
    resp
}

/// Where an attempt goes and what it carries besides the request.
struct Outbound {
    peer: Peer,
    client_ip: IpAddr,
    trusted_peer: bool,
    deadline: tokio::time::Instant,
    request_id: HeaderValue,
}

/// A request body on its way upstream.
#[derive(Default)]
pub enum ReqBody {
    #[default]
    Empty,
    Full(Bytes),
    /// Streamed from the client under its limits.
    Stream(LimitedBody<Incoming>),
}

impl std::fmt::Debug for ReqBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReqBody::Empty => f.write_str("Empty"),
            ReqBody::Full(b) => write!(f, "Full({} bytes)", b.len()),
            ReqBody::Stream(_) => f.write_str("Stream"),
        }
    }
}

impl ReqBody {
    /// A copy to send again, when this body can be replayed.
    fn replay(&self) -> Option<ReqBody> {
        match self {
            ReqBody::Empty => Some(ReqBody::Empty),
            ReqBody::Full(b) => Some(ReqBody::Full(b.clone())),
            ReqBody::Stream(_) => None,
        }
    }
}

impl http_body::Body for ReqBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match this {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Full(_) => match std::mem::take(this) {
                ReqBody::Full(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                _ => Poll::Ready(None),
            },
            ReqBody::Stream(s) => Pin::new(s).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Full(_) => false,
            ReqBody::Stream(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Full(b) => SizeHint::with_exact(b.len() as u64),
            ReqBody::Stream(s) => s.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_including_those_connection_names() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("content-type", "application/json"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["content-type"]);
    }

    #[test]
    fn the_host_asked_for_survives_connection_and_absolute_form() {
        let peer = Peer {
            addr: "127.0.0.1:1".parse().unwrap_or_else(|e| panic!("{e}")),
            tls: false,
        };
        let prepared = |uri: &str, headers: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in headers {
                h.append(
                    HeaderName::from_bytes(k.as_bytes()).unwrap_or_else(|e| panic!("{e}")),
                    HeaderValue::from_str(v).unwrap_or_else(|e| panic!("{e}")),
                );
            }
            let uri: Uri = uri.parse().unwrap_or_else(|e| panic!("{e}"));
            let id = HeaderValue::from_static("id");
            prepare_headers(&mut h, peer, peer.addr.ip(), false, &uri, &id);
            (
                h.get(header::HOST).cloned(),
                h.get(&X_FORWARDED_HOST).cloned(),
            )
        };
        let sho = Some(HeaderValue::from_static("sho.rt"));
        assert_eq!(
            prepared("/api/x", &[("host", "sho.rt"), ("connection", "host")]),
            (sho.clone(), sho.clone())
        );
        assert_eq!(
            prepared("http://sho.rt/api/x", &[("host", "evil.example")]),
            (sho.clone(), sho)
        );
    }

    #[test]
    fn request_ids_are_passed_on_when_sane() {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(X_REQUEST_ID, HeaderValue::from_static("has space"));
        let fresh = request_id(&h);
        assert_eq!(fresh.len(), 32);
        assert_ne!(fresh, request_id(&HeaderMap::new()));
    }
}
