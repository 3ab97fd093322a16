use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Problems;

/// The embedded store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqliteConfig {
    pub path: PathBuf,
    /// Read connections (WAL lets them run beside the one writer).
    pub readers: usize,
    /// Budget of one query, including waiting for a connection.
    pub timeout_ms: u64,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        SqliteConfig {
            path: PathBuf::from("./edgelink.db"),
            readers: 4,
            timeout_ms: 1_000,
        }
    }
}

impl SqliteConfig {
    pub(super) fn validate(&self, problems: &mut Problems) {
        problems.need(
            !self.path.as_os_str().is_empty(),
            "sqlite.path must not be empty",
        );
        problems.need(
            (1..=64).contains(&self.readers),
            "sqlite.readers must be 1..=64",
        );
        problems.need(
            (1..=60_000).contains(&self.timeout_ms),
            "sqlite.timeout_ms must be 1..=60000",
        );
    }
}
