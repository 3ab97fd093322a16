//! Logging set-up and the build-info gauge, shared by every role.

use tracing_subscriber::EnvFilter;

/// Logs to stderr; `RUST_LOG` filters (default `info`).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // A second init (tests starting several roles) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// `edgelink_build_info`: 1, labelled with the role and the version.
pub const BUILD_INFO: &str = "edgelink_build_info";

/// Registers [`BUILD_INFO`] for `role` with the recorder in force (wrap the
/// call in `metrics::with_local_recorder` for a role's own). Alerts and
/// dashboards find a role's instances by it, whatever the scrape job is
/// called.
pub fn build_info(role: &'static str) {
    metrics::describe_gauge!(
        BUILD_INFO,
        "1, labelled with the role this process serves and its version."
    );
    metrics::gauge!(BUILD_INFO, "role" => role, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}
