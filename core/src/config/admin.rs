//! The admin token and the bootstrap API key: the two sections that hold a
//! secret, so their `Debug` never shows it.

use serde::{Deserialize, Serialize};

use super::Problems;

/// The admin endpoints (`/admin/...` on the admin listener).
#[derive(Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Bearer token the admin endpoints require (`EDGELINK_ADMIN_TOKEN`);
    /// without one they are off (404).
    pub token: Option<String>,
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl AdminConfig {
    pub(super) fn validate(&self, problems: &mut Problems) {
        if let Some(token) = &self.token {
            problems.need(
                token.len() >= 16 && token.bytes().all(|b| b.is_ascii_graphic()),
                "admin.token must be at least 16 visible ASCII characters",
            );
        }
    }
}

/// Start-up helpers for automation.
#[derive(Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BootstrapConfig {
    /// An API key to register at start-up (`EDGELINK_BOOTSTRAP_API_KEY`),
    /// in the form `edgelink apikey create` prints.
    pub api_key: Option<String>,
}

impl std::fmt::Debug for BootstrapConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapConfig")
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}
