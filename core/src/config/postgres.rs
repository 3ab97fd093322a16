use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::Problems;

/// The distributed source of truth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://user@host:port/db`; required by the distributed roles.
    pub url: Option<String>,
    pub pool_size: u32,
    /// Budget of one query, including pool checkout.
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: None,
            pool_size: 16,
            timeout_ms: 500,
            connect_timeout_ms: 2_000,
        }
    }
}

impl PostgresConfig {
    pub(super) fn validate(&self, problems: &mut Problems) {
        match &self.url {
            None => {
                problems.push("postgres.url is required (--postgres-url or EDGELINK_POSTGRES_URL)")
            }
            Some(url) => {
                if let Err(e) = tokio_postgres::Config::from_str(url) {
                    problems.push(format!("postgres.url is not a PostgreSQL URL: {e}"));
                }
            }
        }
        problems.need(
            (1..=1024).contains(&self.pool_size),
            "postgres.pool_size must be 1..=1024",
        );
        problems.need(
            (1..=60_000).contains(&self.timeout_ms),
            "postgres.timeout_ms must be 1..=60000",
        );
        problems.need(
            (1..=60_000).contains(&self.connect_timeout_ms),
            "postgres.connect_timeout_ms must be 1..=60000",
        );
    }
}
