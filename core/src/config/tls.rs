use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Problems;

/// TLS on the public listener (rustls). With no certificate the public
/// listener speaks plain HTTP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chains and keys (PEM files), chosen by SNI among the DNS
    /// names of each certificate; the first answers clients that send no
    /// name or an unknown one. File only (`[[tls.certificates]]`).
    pub certificates: Vec<CertificateFiles>,
    /// A plain-HTTP listener that answers every request with a 308 to the
    /// same path over HTTPS (`/healthz` and `/readyz` are answered as is).
    pub redirect_listen: Option<SocketAddr>,
    /// The port written in those redirects (443 is left out of the URL).
    pub https_port: u16,
    /// Reload the certificates when a file in their directories changes
    /// (SIGHUP always reloads them).
    pub watch: bool,
}

/// One certificate chain and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            certificates: Vec::new(),
            redirect_listen: None,
            https_port: 443,
            watch: true,
        }
    }
}

impl TlsConfig {
    /// The checks of this section alone; that `redirect_listen` differs
    /// from the server's listeners is checked in `Config::validate_for`.
    pub(super) fn validate(&self, problems: &mut Problems) {
        problems.need(self.https_port > 0, "tls.https_port must be > 0");
        if self.redirect_listen.is_some() {
            problems.need(
                !self.certificates.is_empty(),
                "tls.redirect_listen needs tls.certificates",
            );
        }
    }
}
