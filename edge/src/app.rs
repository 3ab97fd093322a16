//! The edge's shared state ([`App`]) and where a public request goes
//! ([`Target`]); each path a request takes from there is a file of its own
//! (`hit`, `serve`, `api`, `ready`, `reload`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use edgelink_core::config::Config;
use edgelink_core::net::BodyLimits;
use edgelink_core::shutdown::CancellationToken;
use edgelink_core::{is_valid_code, Stores};
use http::{Method, Request, Response};

use crate::domain::{Click, Tier};
use crate::live::Live;
use crate::metrics::{status_index, EdgeMetrics};
use crate::mounts::Route;
use crate::proxy::Proxy;
use crate::resolve::Resolver;
use crate::respond::{Body, LogThrottle};
use crate::tls::Certificates;
use crate::{access, clicks, EdgeError};

/// Shared state of one edge.
pub(crate) struct App {
    pub(crate) resolver: Resolver,
    pub(crate) metrics: Arc<EdgeMetrics>,
    pub(crate) draining: AtomicBool,
    pub(crate) backend_log: LogThrottle,
    pub(crate) api: Option<Route>,
    pub(crate) live: ArcSwap<Live>,
    pub(crate) certs: Option<Arc<Certificates>>,
    pub(crate) bots: clicks::Bots,
    /// Set when `tracing.otlp_endpoint` is.
    pub(crate) tracer: Option<Arc<edgelink_core::trace::Tracer>>,
    /// Set when `access_log.path` is.
    pub(crate) access: Option<access::AccessLog>,
    /// `analytics.enabled` (reloadable).
    pub(crate) counting: Arc<AtomicBool>,
    /// `server.ready_needs_source`.
    pub(crate) ready_needs_source: bool,
    /// How the bodies of mounted routes are read: `origin.max_body_bytes`
    /// under the server's body timeouts (`origin.max_batch_body_bytes`
    /// for a batch).
    pub(crate) route_body: BodyLimits,
    pub(crate) batch_body_bytes: usize,
    /// `origin.max_batch_links`: the most a batch is charged.
    pub(crate) max_batch_links: u32,
}

impl App {
    /// The edge `config` describes, over `stores`, with the creation API
    /// mounted from this process (`api`) if any.
    pub(crate) fn new(
        config: &Config,
        stores: &Stores,
        api: Option<Route>,
        metrics: Arc<EdgeMetrics>,
        certs: Option<Arc<Certificates>>,
        shutdown: &CancellationToken,
    ) -> Result<App, EdgeError> {
        Ok(App {
            resolver: Resolver::new(stores, config, metrics.clone()),
            metrics: metrics.clone(),
            draining: AtomicBool::new(false),
            backend_log: LogThrottle::default(),
            api,
            live: ArcSwap::from_pointee(Live::new(config, None, &metrics, shutdown)),
            certs,
            bots: clicks::Bots::new().map_err(EdgeError::Bots)?,
            tracer: edgelink_core::trace::Tracer::start(&config.tracing, "edgelink-edge"),
            access: access::AccessLog::open(&config.access_log, metrics.access_log_dropped.clone())
                .map_err(EdgeError::AccessLog)?,
            counting: Arc::new(AtomicBool::new(config.analytics.enabled)),
            ready_needs_source: config.server.ready_needs_source,
            route_body: BodyLimits::new(&config.server, config.origin.max_body_bytes),
            batch_body_bytes: config.origin.max_batch_body_bytes,
            max_batch_links: u32::try_from(config.origin.max_batch_links).unwrap_or(u32::MAX),
        })
    }

    /// Whether requests are traced or logged, which only [`App::observe`]
    /// does: the hit path and the express lane step aside.
    #[inline]
    pub(crate) fn observed(&self) -> bool {
        self.tracer.is_some() || self.access.is_some()
    }

    #[inline]
    pub(crate) fn target<'r, B>(&self, req: &'r Request<B>) -> Target<'r> {
        let readable = req.method() == Method::GET || req.method() == Method::HEAD;
        let target_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
        self.route(readable, req.uri().path(), target_len)
    }

    /// Where a request for `path` goes; `readable`: its method is GET or
    /// HEAD; `target_len`: its request target's length, query included.
    #[inline]
    pub(crate) fn route<'r>(&self, readable: bool, path: &'r str, target_len: usize) -> Target<'r> {
        let (max_uri, proxy) = {
            let live = self.live.load();
            let proxy = match &live.proxy {
                Some(p) if p.owns(path) => Some(p.clone()),
                _ => None,
            };
            (live.limits.max_uri_bytes, proxy)
        };
        if target_len > max_uri {
            return Target::TooLong;
        }
        let local = self.api.is_some() && path.starts_with("/api/");
        if proxy.is_some() || local {
            return Target::Api { proxy, local };
        }
        match path {
            "/healthz" if readable => Target::Health,
            "/readyz" if readable => Target::Ready,
            _ => match path.strip_prefix('/').filter(|c| is_valid_code(c)) {
                None => Target::NotCode,
                Some(_) if !readable => Target::NotReadable,
                Some(code) => Target::Code(code),
            },
        }
    }

    /// How a redirect answered now is counted: by its `User-Agent`, or
    /// `None` while counting is off.
    #[inline]
    pub(crate) fn click<B>(&self, req: &Request<B>) -> Option<Click> {
        self.counting.load(Ordering::Relaxed).then(|| {
            self.bots
                .classify(req.headers().get(http::header::USER_AGENT))
        })
    }

    /// A response to GET or HEAD, counted; HEAD gets its headers only,
    /// `Content-Length` included (the one GET would get).
    #[inline]
    pub(crate) fn finish(
        &self,
        mut resp: Response<Body>,
        head: bool,
        tier: Tier,
    ) -> Response<Body> {
        if head {
            if let Some(len) = resp.body().as_full().map(<[u8]>::len) {
                resp.headers_mut()
                    .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
                *resp.body_mut() = Body::default();
            }
        }
        self.count(resp, tier)
    }

    #[inline]
    pub(crate) fn count(&self, resp: Response<Body>, tier: Tier) -> Response<Body> {
        self.metrics
            .request(status_index(resp.status().as_u16()), tier);
        resp
    }
}

/// Where a request to the public listener goes, read off its method, its
/// target and the live configuration.
pub(crate) enum Target<'r> {
    /// The request target is longer than `limits.max_uri_bytes`.
    TooLong,
    /// The creation API: proxied to origin (`proxy`), or served by the
    /// origin mounted in this process (`local`).
    Api {
        proxy: Option<Arc<Proxy>>,
        local: bool,
    },
    Health,
    Ready,
    /// A path that is not a valid code.
    NotCode,
    /// A valid code asked with a method other than GET and HEAD.
    NotReadable,
    /// A valid code, asked with GET or HEAD.
    Code(&'r str),
}
