//! hyper's path for every public request that is not a tier-0 hit: the
//! access log and tracing when on, then the request's [`Target`]; a code
//! looked up through the tiers under the client's 404 budget.

use std::sync::Arc;

use edgelink_core::net::server::Peer;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::access;
use crate::app::{App, Target};
use crate::domain::{Answer, Tier};
use crate::limit::RateLimit;
use crate::metrics::InFlight;
use crate::respond::{self, failure, Body, Failure};

/// The tracing decision a request was served under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decided {
    /// Tracing is off.
    Untraced,
    Sampled,
    /// Not sampled; `true` when the caller made no decision (the origin
    /// is then told `b3: 0`).
    Unsampled(bool),
}

impl App {
    /// Answers a public request hyper reads that is not a tier-0 hit (and
    /// every request while tracing or the access log is on).
    pub(crate) async fn serve(&self, req: Request<Incoming>, peer: Peer) -> Response<Body> {
        if !self.observed() {
            return self.dispatch(req, peer, Decided::Untraced).await;
        }
        self.observe(req, peer).await
    }

    /// [`App::dispatch`] with tracing and the access log, as configured.
    pub(crate) async fn observe(&self, req: Request<Incoming>, peer: Peer) -> Response<Body> {
        // The access log's record, its answer filled in once there is one.
        let noted = self.access.as_ref().map(|_| {
            let record = access::Record {
                at: std::time::SystemTime::now(),
                client: self.live.load().client_ip(peer, req.headers()),
                method: req.method().clone(),
                path: req.uri().path().to_owned(),
                status: 0,
                duration: std::time::Duration::ZERO,
                user_agent: req.headers().get(http::header::USER_AGENT).cloned(),
            };
            (std::time::Instant::now(), record)
        });
        let resp = match &self.tracer {
            Some(tracer) => self.trace(tracer, req, peer).await,
            None => self.dispatch(req, peer, Decided::Untraced).await,
        };
        if let (Some(log), Some((started, mut record))) = (&self.access, noted) {
            record.status = resp.status().as_u16();
            record.duration = started.elapsed();
            log.log(record);
        }
        resp
    }

    /// [`App::dispatch`] under a server span when the request is sampled (a
    /// caller's B3 decision, else `tracing.sample_ratio`); the span is the
    /// task's current one, so the proxy and the stores hang theirs under it.
    pub(crate) async fn trace(
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
            return self.dispatch(req, peer, decided).await;
        };
        span.set("http.request.method", req.method());
        span.set("url.path", req.uri().path());
        span.set("client.address", peer.addr.ip());
        let served = self.dispatch(req, peer, Decided::Sampled);
        let resp = trace::scope(tracer.clone(), span.context(), served).await;
        span.set("http.response.status_code", resp.status().as_u16());
        if resp.status().is_server_error() {
            span.fail();
        }
        resp
    }

    /// Answers `req` by where it goes ([`Target`]), counted.
    pub(crate) async fn dispatch(
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

    /// A 404 for a path that is not a code, counted against the client's
    /// 404 budget like any other.
    pub(crate) fn not_found<B>(&self, req: &Request<B>, peer: Peer) -> Response<Body> {
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
    pub(crate) async fn redirect<B: Sync>(
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
                    self.response_for(answer, charged.is_some(), req, peer),
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
    pub(crate) fn response_for<B>(
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
}
