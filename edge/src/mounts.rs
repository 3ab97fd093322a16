//! What other components of the same process hang on the edge (the
//! embedded `serve`: the creation API and the key pool in one process).

use std::sync::Arc;

use edgelink_core::config::Config;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::invalidate;
use crate::respond::Body;

/// How the edge reloads its settings: `load` reads and validates the
/// configuration again; each message on `requests` (SIGHUP) asks for it.
pub struct Reload {
    pub load: Box<dyn Fn() -> Result<Config, String> + Send + Sync>,
    pub requests: tokio::sync::mpsc::Receiver<()>,
}

/// A route served by another component of the same process. It gets the
/// request with its body already read, under the client's limits (a body
/// the client fails never reaches it).
pub type Route = Arc<
    dyn Fn(
            Request<Full<Bytes>>,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<Body>> + Send>>
        + Send
        + Sync,
>;

/// What other components of the same process hang on the edge (the
/// embedded `serve`: the creation API and the key pool in one process).
#[derive(Default)]
pub struct Mounts {
    /// Answers `/api/...` on the public listener.
    pub api: Option<Route>,
    /// Answers `/admin/...` on the admin listener.
    pub admin: Option<Route>,
    /// More metrics for `/metrics`, rendered after the edge's own.
    pub metrics: Vec<PrometheusHandle>,
    /// The other roles this process serves (`serve`: origin, keypool), for
    /// `edgelink_build_info` beside the edge's (one family, one registry).
    pub roles: Vec<&'static str>,
    /// Codes to drop from tier 0 (links changed or deleted) from an origin
    /// in the same process. Without it, an edge with Redis follows the
    /// shared invalidation channel.
    pub invalidations: Option<tokio::sync::mpsc::Receiver<invalidate::Invalidation>>,
    /// Configuration reloads (SIGHUP).
    pub reload: Option<Reload>,
}
