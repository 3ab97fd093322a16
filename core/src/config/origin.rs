use serde::{Deserialize, Serialize};

use super::Problems;

/// The creation API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OriginConfig {
    /// The public base URL of short links, e.g. `https://sho.rt`; links may
    /// not point at its host.
    pub public_url: String,
    /// Domains (and their subdomains) no link may point at. In the
    /// environment: comma-separated.
    pub blocked_domains: Vec<String>,
    pub alias_min_len: usize,
    pub alias_max_len: usize,
    /// The longest lifetime a link may be given.
    pub max_ttl_secs: u64,
    /// Largest request body of a single-link call.
    pub max_body_bytes: usize,
    /// Largest request body of `POST /api/v1/links/batch`.
    pub max_batch_body_bytes: usize,
    /// Most links one batch may create.
    pub max_batch_links: usize,
    /// Refuse targets whose host is a loopback, private, link-local or
    /// otherwise non-public address, or a `localhost` name.
    pub block_private_targets: bool,
}

impl Default for OriginConfig {
    fn default() -> Self {
        OriginConfig {
            public_url: "http://127.0.0.1:8080".to_owned(),
            blocked_domains: Vec::new(),
            alias_min_len: 3,
            alias_max_len: 64,
            max_ttl_secs: 10 * 365 * 86_400,
            max_body_bytes: 16 * 1024,
            max_batch_body_bytes: 1024 * 1024,
            max_batch_links: 100,
            block_private_targets: true,
        }
    }
}

impl OriginConfig {
    pub(super) fn validate(&self, problems: &mut Problems) {
        match url::Url::parse(&self.public_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
            _ => problems.push("origin.public_url must be an http(s) URL with a host"),
        }
        problems.need(
            1 <= self.alias_min_len
                && self.alias_min_len <= self.alias_max_len
                && self.alias_max_len <= 64,
            "origin.alias_min_len and alias_max_len must satisfy 1 <= min <= max <= 64",
        );
        problems.need(self.max_ttl_secs > 0, "origin.max_ttl_secs must be > 0");
        problems.need(
            (1024..=1024 * 1024).contains(&self.max_body_bytes),
            "origin.max_body_bytes must be 1024..=1048576",
        );
        problems.need(
            (1024..=16 * 1024 * 1024).contains(&self.max_batch_body_bytes),
            "origin.max_batch_body_bytes must be 1024..=16777216",
        );
        problems.need(
            (1..=1_000).contains(&self.max_batch_links),
            "origin.max_batch_links must be 1..=1000",
        );
    }
}
