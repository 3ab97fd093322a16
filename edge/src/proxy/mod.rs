//! The reverse proxy: `/api/` (and the other configured prefixes) to the
//! origin upstreams.
//!
//! Least-outstanding (or round-robin) balancing over hosts that are neither
//! ejected (passive outlier ejection, Envoy's model, which is each host's
//! circuit breaker) nor failing active health checks; one timeout over the
//! whole request, retries on another host only when the request can be
//! replayed, under a retry budget; hop-by-hop headers dropped and the
//! `X-Forwarded-*` set. A body the client fails is the client's 4xx and
//! counts against no host: only connect failures, 5xx answers and response
//! timeouts do.
//!
//! Every rule, with its setting: `docs/design/proxy.md`.

mod balance;
mod body;
mod headers;

pub use body::ReqBody;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::ProxyMetrics;
use balance::{health_checks, Decrement, Probe};
use bytes::Bytes;
use edgelink_core::config::{upstream_base, ProxyConfig};
use edgelink_core::net::{
    json_error, server::Peer, Body, BodyLimits, BodyWatch, ClientFault, ClientFaults, LimitedBody,
};
use edgelink_core::shutdown::CancellationToken;
use headers::{prepare_headers, relay, request_id, with_request_id};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

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

    /// Upstreams by breaker state: closed (in rotation), open (ejected, or
    /// failing its active health check: the balancer skips it either way),
    /// half-open (on probation after an ejection).
    pub fn breaker_counts(&self) -> [usize; 3] {
        let now = self.now_ms();
        let mut counts = [0; 3];
        for u in self.upstreams.iter() {
            let state = if u.ejected_until.load(Ordering::Relaxed) > now
                || u.unhealthy.load(Ordering::Relaxed)
            {
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
}

/// Where an attempt goes and what it carries besides the request.
struct Outbound {
    peer: Peer,
    client_ip: IpAddr,
    trusted_peer: bool,
    deadline: tokio::time::Instant,
    request_id: HeaderValue,
}

#[cfg(test)]
mod tests;
