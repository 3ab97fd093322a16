use serde::{Deserialize, Serialize};

use super::Problems;

/// The shared cache tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port/db`; without it the edge goes from tier 0 to the source of truth.
    pub url: Option<String>,
    pub pool_size: u32,
    /// Budget of one command, including pool checkout.
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// TTL of every key written.
    pub ttl_secs: u64,
    /// Prefix of every key, so several deployments or tests share one server.
    pub key_prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: None,
            pool_size: 8,
            timeout_ms: 100,
            connect_timeout_ms: 1_000,
            ttl_secs: 86_400,
            key_prefix: "el:".to_owned(),
        }
    }
}

impl RedisConfig {
    pub(super) fn validate(&self, problems: &mut Problems) {
        if let Some(url) = &self.url {
            if let Err(e) = bb8_redis::redis::Client::open(url.as_str()) {
                problems.push(format!("redis.url is not a Redis URL: {e}"));
            }
        }
        problems.need(
            (1..=1024).contains(&self.pool_size),
            "redis.pool_size must be 1..=1024",
        );
        problems.need(
            (1..=60_000).contains(&self.timeout_ms),
            "redis.timeout_ms must be 1..=60000",
        );
        problems.need(
            (1..=60_000).contains(&self.connect_timeout_ms),
            "redis.connect_timeout_ms must be 1..=60000",
        );
        problems.need(self.ttl_secs > 0, "redis.ttl_secs must be > 0");
        problems.need(
            self.key_prefix.len() <= 64,
            "redis.key_prefix must be at most 64 bytes",
        );
    }
}
