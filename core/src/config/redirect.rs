use serde::{Deserialize, Serialize};

use super::Problems;
use crate::link::RedirectStatus;

/// How redirects are answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedirectConfig {
    /// Status for links that do not name one (imports without a status).
    pub default_status: RedirectStatus,
    /// `Cache-Control: max-age` for permanent (301/308) redirects.
    pub permanent_max_age_secs: u64,
}

impl Default for RedirectConfig {
    fn default() -> Self {
        RedirectConfig {
            default_status: RedirectStatus::Found,
            permanent_max_age_secs: 3_600,
        }
    }
}

impl RedirectConfig {
    pub(super) fn validate(&self, problems: &mut Problems) {
        problems.need(
            self.permanent_max_age_secs <= 31_536_000,
            "redirect.permanent_max_age_secs must be <= 31536000 (one year)",
        );
    }
}
