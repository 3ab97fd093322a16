//! The creation API on the public listener (`/api/...`): the checks made
//! before anything is forwarded (method, dot-segments, authority), the
//! client's `unauthorized` and `create` budgets (a batch charged per
//! link), then the proxy to origin or the API mounted in this process.

use std::sync::Arc;

use edgelink_core::net::server::Peer;
use edgelink_core::net::{read_body, BodyLimits};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::app::App;
use crate::limit::RateLimit;
use crate::mounts::Route;
use crate::proxy::Proxy;
use crate::respond::{self, failure, Body, Failure};

impl App {
    /// The creation API: the proxy, or the origin mounted in this process.
    /// A method that cannot be proxied is 405, a path with dot-segments or
    /// an authority that is not a host 400, before either sees them. Per
    /// client: every call takes one of its `unauthorized` tokens, given back
    /// once it is answered with anything but 401; a creation takes a
    /// `create` token per link (a batch is read whole first, to count them).
    pub(crate) async fn api_call(
        &self,
        req: Request<Incoming>,
        peer: Peer,
        proxy: Option<Arc<Proxy>>,
        api: Option<&Route>,
    ) -> Response<Body> {
        if !forwardable(req.method()) {
            return failure(Failure::ApiMethodNotAllowed);
        }
        if has_dot_segment(req.uri().path()) {
            return failure(Failure::BadPath);
        }
        // The host asked for, when the target names it (absolute form,
        // HTTP/2's :authority), is what the origin is told: a host only.
        if let Some(authority) = req.uri().authority() {
            if !edgelink_core::net::framing::is_host_value(authority.as_str().as_bytes()) {
                return failure(Failure::NoHost);
            }
        }
        let (client, trusted_peer, create, unauthorized) = {
            let live = self.live.load();
            let trusted_peer = live.trusted.iter().any(|n| n.contains(peer.addr.ip()));
            (
                live.client_ip(peer, req.headers()),
                trusted_peer,
                live.create.clone(),
                live.unauthorized.clone(),
            )
        };
        if let Some(limit) = &unauthorized {
            if let Err(wait) = limit.take(client, std::time::Instant::now()) {
                self.metrics.rate_limited.increment(1);
                return respond::rate_limited(wait);
            }
        }
        let resp = self
            .api_forward(req, peer, proxy, api, client, trusted_peer, create)
            .await;
        // Given back for any answer but 401. A call its client abandons
        // (an HTTP/2 stream reset) keeps it: the origin may still be
        // looking its key up.
        if let Some(limit) = &unauthorized {
            if resp.status() != StatusCode::UNAUTHORIZED {
                limit.refund(client, std::time::Instant::now());
            }
        }
        resp
    }

    /// [`App::api_call`] past its checks: the create limit, then the call.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn api_forward(
        &self,
        req: Request<Incoming>,
        peer: Peer,
        proxy: Option<Arc<Proxy>>,
        api: Option<&Route>,
        client: std::net::IpAddr,
        trusted_peer: bool,
        create: Option<Arc<RateLimit>>,
    ) -> Response<Body> {
        let now = std::time::Instant::now;
        let limited = |wait| {
            self.metrics.rate_limited.increment(1);
            respond::rate_limited(wait)
        };
        let creates = req.method() == Method::POST;
        let batch = creates && req.uri().path() == edgelink_core::link::BATCH_PATH;
        if creates && !batch {
            if let Some(limit) = &create {
                if let Err(wait) = limit.take(client, now()) {
                    return limited(wait);
                }
            }
        }
        if let (Some(proxy), false) = (&proxy, batch) {
            return proxy.forward(req, peer, client, trusted_peer).await;
        }
        if proxy.is_none() && api.is_none() {
            return failure(Failure::NotFound);
        }
        if batch {
            if let Some(limit) = &create {
                if let Err(wait) = limit.ready(client, now()) {
                    return limited(wait);
                }
            }
        }
        let limits = match (&proxy, batch) {
            (Some(p), _) => p.body_limits(),
            (None, true) => BodyLimits {
                max_bytes: self.batch_body_bytes,
                ..self.route_body
            },
            (None, false) => self.route_body,
        };
        let (parts, body) = req.into_parts();
        let body = match read_body(body, limits, &self.metrics.client_faults).await {
            Ok(b) => b,
            Err(e) => return e.response(),
        };
        // A batch is charged a token per link (at most what the API
        // takes in one); refused whole, it costs one.
        let charged = match batch {
            true => batch_links(&body).min(self.max_batch_links).max(1),
            false => 1,
        };
        if batch {
            if let Some(limit) = &create {
                if let Err(wait) = limit.take_n(client, charged, now()) {
                    return limited(wait);
                }
            }
        }
        let resp = match (proxy, api) {
            (Some(proxy), _) => {
                proxy
                    .forward_read(parts, body, peer, client, trusted_peer)
                    .await
            }
            (None, Some(api)) => api(Request::from_parts(parts, Full::new(body))).await,
            (None, None) => failure(Failure::NotFound),
        };
        // A batch the API refused whole (4xx) created nothing.
        if let (true, Some(limit)) = (batch && resp.status().is_client_error(), &create) {
            limit.refund_n(client, charged - 1, now());
        }
        resp
    }
}

/// Methods the creation API may be called with; `CONNECT`, `TRACE` and
/// anything unknown are never forwarded.
fn forwardable(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET
            | Method::HEAD
            | Method::POST
            | Method::PUT
            | Method::PATCH
            | Method::DELETE
            | Method::OPTIONS
    )
}

/// Whether `path` has a `.` or `..` segment (plain or percent-encoded),
/// a backslash, or a percent-encoded `/` or backslash: an upstream could
/// resolve any of these out of the prefix the request matched.
fn has_dot_segment(path: &str) -> bool {
    let lower = |b: u8| b.to_ascii_lowercase();
    let bytes = path.as_bytes();
    if bytes.contains(&b'\\') {
        return true;
    }
    let mut i = 0;
    while i + 2 < bytes.len() {
        if bytes[i] == b'%' {
            let pair = [lower(bytes[i + 1]), lower(bytes[i + 2])];
            if pair == *b"2f" || pair == *b"5c" {
                return true;
            }
        }
        i += 1;
    }
    path.split('/').any(|segment| {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        decoded == "." || decoded == ".."
    })
}

/// How many links a batch body holds (1 when it is not a batch the API
/// would take: the API then refuses it, and that takes one token).
fn batch_links(body: &[u8]) -> u32 {
    #[derive(serde::Deserialize)]
    struct Batch {
        links: Vec<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Batch>(body).map_or(1, |b| {
        u32::try_from(b.links.len()).unwrap_or(u32::MAX).max(1)
    })
}
