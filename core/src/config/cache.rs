use serde::{Deserialize, Serialize};

use super::Problems;

/// Tier 0: the in-process cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Entries held at most (found, gone and unknown codes alike).
    pub max_entries: u64,
    /// Lifetime of a found link; the backstop for updates made elsewhere.
    pub ttl_secs: u64,
    /// Lifetime of an "unknown code" answer.
    pub negative_ttl_secs: u64,
    /// How long past its TTL a link (or a 410) may still be served while
    /// the backends cannot be asked (stale-if-error); 0 turns it off.
    /// Unknown codes are never served stale.
    pub stale_if_error_secs: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_entries: 1_000_000,
            ttl_secs: 300,
            negative_ttl_secs: 5,
            stale_if_error_secs: 3_600,
        }
    }
}

impl CacheConfig {
    pub(super) fn validate(&self, problems: &mut Problems) {
        problems.need(self.max_entries > 0, "cache.max_entries must be > 0");
        problems.need(self.ttl_secs > 0, "cache.ttl_secs must be > 0");
        problems.need(
            self.negative_ttl_secs > 0 && self.negative_ttl_secs <= self.ttl_secs,
            "cache.negative_ttl_secs must be > 0 and <= cache.ttl_secs",
        );
    }
}
