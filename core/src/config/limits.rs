use serde::{Deserialize, Serialize};

use super::Problems;

/// Request limits and abuse control on the public listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Longest request target (path and query) accepted; 414 beyond.
    pub max_uri_bytes: usize,
    /// Peers (addresses or CIDR blocks) whose `X-Forwarded-For` is believed;
    /// from anyone else the socket's address is the client.
    pub trusted_proxies: Vec<String>,
    /// Creation API requests per second per client IP (0: unlimited) and
    /// the burst above that rate.
    pub create_per_sec: f64,
    pub create_burst: u32,
    /// 404 answers per second per client IP (0: unlimited) and burst. A
    /// client over it gets 429 for any code not already in tier 0, so a
    /// scan of random codes cannot reach the database at full speed.
    pub not_found_per_sec: f64,
    pub not_found_burst: u32,
    /// API answers of 401 per second per client (0: unlimited) and burst.
    /// A client over it gets 429 for every API call before it reaches an
    /// origin, so a flood of made-up keys cannot reach the key store.
    pub unauthorized_per_sec: f64,
    pub unauthorized_burst: u32,
    /// IPv6 clients share a bucket per prefix of this length (an IPv6
    /// host usually has a whole /64); IPv4 clients have one each.
    pub ipv6_prefix_len: u8,
    /// Client IPs tracked at once per limit; the idle ones are dropped
    /// first, and beyond this new clients share one bucket.
    pub max_tracked_clients: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_uri_bytes: 2048,
            trusted_proxies: Vec::new(),
            create_per_sec: 10.0,
            create_burst: 50,
            not_found_per_sec: 20.0,
            not_found_burst: 100,
            unauthorized_per_sec: 1.0,
            unauthorized_burst: 20,
            ipv6_prefix_len: 64,
            max_tracked_clients: 100_000,
        }
    }
}

impl LimitsConfig {
    pub(super) fn validate(&self, problems: &mut Problems) {
        problems.need(
            (16..=65_536).contains(&self.max_uri_bytes),
            "limits.max_uri_bytes must be 16..=65536",
        );
        for cidr in &self.trusted_proxies {
            problems.need(
                cidr.parse::<crate::ipnet::IpNet>().is_ok(),
                format!("limits.trusted_proxies: {cidr:?} is not an address or CIDR block"),
            );
        }
        for (name, rate, burst) in [
            ("create", self.create_per_sec, self.create_burst),
            ("not_found", self.not_found_per_sec, self.not_found_burst),
            (
                "unauthorized",
                self.unauthorized_per_sec,
                self.unauthorized_burst,
            ),
        ] {
            problems.need(
                rate.is_finite() && rate >= 0.0 && (rate == 0.0 || burst >= 1),
                format!("limits.{name}_per_sec must be >= 0, with limits.{name}_burst >= 1"),
            );
        }
        problems.need(
            (1..=128).contains(&self.ipv6_prefix_len),
            "limits.ipv6_prefix_len must be 1..=128",
        );
        problems.need(
            (1..=10_000_000).contains(&self.max_tracked_clients),
            "limits.max_tracked_clients must be 1..=10000000",
        );
    }
}
