//! The cache-hit path, in both front ends: the express lane's answers
//! ([`Express`] for [`App`]: a tier-0 redirect written as bytes) and
//! hyper's ([`App::call`]: the same hit as a response, the rest boxed).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use edgelink_core::net::server::Peer;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::app::{App, Target};
use crate::domain::Tier;
use crate::lane::{self, Express, Simple};
use crate::metrics::{status_index, InFlight};
use crate::respond::Body;

/// The future a public request is answered with: ready at once for a
/// tier-0 hit, else [`App::serve`] boxed. A hit thus builds no future of
/// its own, and hyper moves a few words per request instead of the whole
/// state machine of the miss, proxy and readiness paths.
pub(crate) type Answering = futures_util::future::Either<
    std::future::Ready<Response<Body>>,
    std::pin::Pin<Box<dyn std::future::Future<Output = Response<Body>> + Send>>,
>;

/// The express lane ([`lane`]): a redirect the
/// tier-0 index holds, written straight from the index; any other valid
/// code (a miss, a 404 or 410) after its lookup; everything else (other
/// paths, and every request while tracing or the access log is on) is
/// declined and goes to hyper and [`App::call`].
impl Express for App {
    #[inline]
    fn answer_now(&self, req: &Simple<'_>, _peer: Peer, out: &mut Vec<u8>) -> bool {
        if self.observed() {
            return false;
        }
        let path = req
            .target
            .split_once('?')
            .map_or(req.target, |(path, _)| path);
        let Target::Code(code) = self.route(true, path, req.target.len()) else {
            return false;
        };
        let click = self
            .counting
            .load(Ordering::Relaxed)
            .then(|| self.bots.classify_bytes(req.user_agent));
        let written =
            self.resolver
                .with_redirect(code, click, |status, location, cache_control| {
                    let reason = StatusCode::from_u16(status)
                        .ok()
                        .and_then(|s| s.canonical_reason())
                        .unwrap_or("");
                    lane::write_head(
                        out,
                        status,
                        reason,
                        &[
                            ("location", location),
                            ("cache-control", cache_control.as_bytes()),
                        ],
                    );
                    status
                });
        match written {
            Some(status) => {
                self.metrics.request(status_index(status), Tier::Memory);
                true
            }
            None => false,
        }
    }

    /// A valid code the index cannot answer at once (a miss, an unknown,
    /// expired or disabled link) is looked up and answered in the lane, as
    /// [`App::dispatch`] would; everything else goes to hyper.
    fn answer_later(&self, req: Request<()>, peer: Peer) -> Option<lane::Responding<'_>> {
        if self.observed() {
            return None;
        }
        let Target::Code(_) = self.target(&req) else {
            return None;
        };
        Some(Box::pin(async move {
            let _in_flight = InFlight::enter(&self.metrics.in_flight);
            let code = req.uri().path().strip_prefix('/').unwrap_or_default();
            let (resp, tier) = self.redirect(code, &req, peer).await;
            self.finish(resp, req.method() == Method::HEAD, tier)
        }))
    }
}

impl App {
    /// Answers a public request: a tier-0 hit here and now, the rest
    /// through [`App::serve`].
    #[inline]
    pub(crate) fn call(self: &Arc<Self>, req: Request<Incoming>, peer: Peer) -> Answering {
        use futures_util::future::Either;
        match self.hit(&req, peer) {
            Some(resp) => Either::Left(std::future::ready(resp)),
            None => {
                let app = self.clone();
                Either::Right(Box::pin(async move { app.serve(req, peer).await }))
            }
        }
    }

    /// The redirect hot path: the response to a valid code the tier-0
    /// index holds, without waiting on anything. `None` for everything
    /// else (other paths, misses, and every request while tracing or the
    /// access log is on), which [`App::serve`] answers. Such a request is
    /// over when this returns, so it never shows in
    /// `edgelink_http_requests_in_flight`.
    #[inline]
    pub(crate) fn hit(&self, req: &Request<Incoming>, peer: Peer) -> Option<Response<Body>> {
        if self.observed() {
            return None;
        }
        let Target::Code(code) = self.target(req) else {
            return None;
        };
        let answer = self.resolver.hit(code, self.click(req))?;
        let resp = self.response_for(answer, false, req, peer);
        Some(self.finish(resp, req.method() == Method::HEAD, Tier::Memory))
    }
}
