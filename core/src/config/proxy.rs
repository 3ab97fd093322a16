use serde::{Deserialize, Serialize};

use super::Problems;

/// The edge's reverse proxy to origin upstreams.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Origin base URLs (`http://host:port`); empty turns the proxy off.
    pub upstreams: Vec<String>,
    /// Path prefixes sent to the upstreams.
    pub prefixes: Vec<String>,
    /// How a request picks its upstream.
    pub balance: Balance,
    /// Whole-request budget from arrival to the upstream's response head,
    /// retries included; beyond it the client gets 504.
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// Further attempts after the first, where a retry is allowed.
    pub max_retries: u32,
    /// Retries in flight may be at most this share of requests in flight
    /// (at least 3), so retries cannot multiply an overload.
    pub retry_budget_percent: u32,
    /// First retry backoff; each next one doubles, all fully jittered.
    pub retry_backoff_ms: u64,
    /// Largest request body sent upstream (413 beyond).
    pub max_body_bytes: usize,
    /// Request bodies up to this size with a known length are kept so a
    /// failed attempt can be replayed; larger ones are streamed and are
    /// retried only when no byte was sent (connect failures).
    pub replay_body_bytes: usize,
    /// Idle upstream connections kept per host.
    pub pool_max_idle_per_host: usize,
    pub pool_idle_timeout_ms: u64,
    /// Consecutive 5xx answers or connect failures that eject a host.
    pub eject_consecutive_failures: u32,
    /// An ejection lasts this long times the number of times the host has
    /// been ejected, up to `eject_max_ms`.
    pub eject_base_ms: u64,
    pub eject_max_ms: u64,
    /// At most this share of hosts is ejected at once (one host always may).
    pub max_ejection_percent: u32,
    /// Path of the active health check; empty turns it off.
    pub health_check_path: String,
    pub health_check_interval_ms: u64,
    pub health_check_timeout_ms: u64,
    /// Failed checks in a row that mark a host unhealthy.
    pub unhealthy_threshold: u32,
    /// Passed checks in a row that bring it back.
    pub healthy_threshold: u32,
}

/// How the proxy picks an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// The fewer requests in flight of two hosts drawn at random.
    LeastOutstanding,
    RoundRobin,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            upstreams: Vec::new(),
            prefixes: vec!["/api/".to_owned()],
            balance: Balance::LeastOutstanding,
            timeout_ms: 15_000,
            connect_timeout_ms: 1_000,
            max_retries: 2,
            retry_budget_percent: 20,
            retry_backoff_ms: 25,
            max_body_bytes: 1024 * 1024,
            replay_body_bytes: 64 * 1024,
            pool_max_idle_per_host: 64,
            pool_idle_timeout_ms: 90_000,
            eject_consecutive_failures: 5,
            eject_base_ms: 30_000,
            eject_max_ms: 300_000,
            max_ejection_percent: 50,
            health_check_path: "/healthz".to_owned(),
            health_check_interval_ms: 5_000,
            health_check_timeout_ms: 1_000,
            unhealthy_threshold: 2,
            healthy_threshold: 1,
        }
    }
}

impl ProxyConfig {
    pub(super) fn validate(&self, problems: &mut Problems) {
        for u in &self.upstreams {
            problems.need(
                upstream_base(u).is_some(),
                format!("proxy.upstreams: {u:?} is not an http://host:port base URL"),
            );
        }
        for prefix in &self.prefixes {
            problems.need(
                prefix.starts_with('/') && prefix.len() > 1,
                format!("proxy.prefixes: {prefix:?} must start with / and name a path"),
            );
        }
        problems.need(
            (1..=600_000).contains(&self.timeout_ms),
            "proxy.timeout_ms must be 1..=600000",
        );
        problems.need(
            (1..=60_000).contains(&self.connect_timeout_ms),
            "proxy.connect_timeout_ms must be 1..=60000",
        );
        problems.need(self.max_retries <= 10, "proxy.max_retries must be <= 10");
        problems.need(
            self.retry_budget_percent <= 100,
            "proxy.retry_budget_percent must be <= 100",
        );
        problems.need(
            self.replay_body_bytes <= self.max_body_bytes,
            "proxy.replay_body_bytes must be <= proxy.max_body_bytes",
        );
        problems.need(
            self.eject_consecutive_failures > 0,
            "proxy.eject_consecutive_failures must be > 0",
        );
        problems.need(
            self.eject_base_ms > 0 && self.eject_base_ms <= self.eject_max_ms,
            "proxy.eject_base_ms must be > 0 and <= proxy.eject_max_ms",
        );
        problems.need(
            self.max_ejection_percent <= 100,
            "proxy.max_ejection_percent must be <= 100",
        );
        problems.need(
            self.health_check_path.is_empty() || self.health_check_path.starts_with('/'),
            "proxy.health_check_path must be empty or start with /",
        );
        problems.need(
            self.health_check_interval_ms >= 100 && self.health_check_timeout_ms > 0,
            "proxy.health_check_interval_ms must be >= 100 and proxy.health_check_timeout_ms > 0",
        );
        problems.need(
            self.unhealthy_threshold > 0 && self.healthy_threshold > 0,
            "proxy.unhealthy_threshold and proxy.healthy_threshold must be > 0",
        );
    }
}

/// `http://host:port` (a trailing `/` allowed) as a URI with no path, or
/// `None` when `s` is something else.
pub fn upstream_base(s: &str) -> Option<http::Uri> {
    let uri: http::Uri = s.trim_end_matches('/').parse().ok()?;
    let plain = uri.scheme_str() == Some("http")
        && uri.authority().is_some()
        && matches!(uri.path(), "" | "/")
        && uri.query().is_none();
    plain.then_some(uri)
}
