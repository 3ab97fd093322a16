//! The settings a reload swaps in whole: limits, rate limits, the proxy.

use std::sync::Arc;

use edgelink_core::config::{Config, LimitsConfig};
use edgelink_core::ipnet::IpNet;
use edgelink_core::net::server::Peer;
use edgelink_core::net::BodyLimits;
use edgelink_core::shutdown::CancellationToken;

use crate::limit::{self, RateLimit};
use crate::metrics::EdgeMetrics;
use crate::proxy::Proxy;

/// The settings a reload swaps in whole: limits, rate limits, the proxy.
/// Requests read them through an `ArcSwap` (no lock, no reference count).
pub(crate) struct Live {
    pub(crate) limits: LimitsConfig,
    pub(crate) trusted: Vec<IpNet>,
    pub(crate) create: Option<Arc<RateLimit>>,
    pub(crate) not_found: Option<Arc<RateLimit>>,
    pub(crate) unauthorized: Option<Arc<RateLimit>>,
    pub(crate) proxy: Option<Arc<Proxy>>,
}

impl Live {
    /// From a validated `config`, keeping the rate-limit state and the
    /// proxy (its pools, ejections) of `old` where their settings are
    /// unchanged.
    pub(crate) fn new(
        config: &Config,
        old: Option<&Live>,
        metrics: &EdgeMetrics,
        shutdown: &CancellationToken,
    ) -> Live {
        let l = &config.limits;
        let same_limits = old.filter(|o| o.limits == *l);
        let proxy = match old.and_then(|o| o.proxy.as_ref()) {
            Some(p) if *p.config() == config.proxy => Some(p.clone()),
            _ => Proxy::start(
                &config.proxy,
                BodyLimits::new(&config.server, config.proxy.max_body_bytes),
                metrics.proxy.clone(),
                metrics.client_faults.clone(),
                shutdown.clone(),
            ),
        };
        let limit = |per_sec, burst| {
            RateLimit::new(per_sec, burst, l.max_tracked_clients, l.ipv6_prefix_len).map(Arc::new)
        };
        Live {
            limits: l.clone(),
            trusted: l
                .trusted_proxies
                .iter()
                .filter_map(|c| c.parse().ok())
                .collect(),
            create: match same_limits {
                Some(o) => o.create.clone(),
                None => limit(l.create_per_sec, l.create_burst),
            },
            not_found: match same_limits {
                Some(o) => o.not_found.clone(),
                None => limit(l.not_found_per_sec, l.not_found_burst),
            },
            unauthorized: match same_limits {
                Some(o) => o.unauthorized.clone(),
                None => limit(l.unauthorized_per_sec, l.unauthorized_burst),
            },
            proxy,
        }
    }

    pub(crate) fn client_ip(&self, peer: Peer, headers: &http::HeaderMap) -> std::net::IpAddr {
        limit::client_ip(peer.addr, headers, &self.trusted)
    }
}
