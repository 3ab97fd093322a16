//! What the process reports about itself: spans and the access log.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{upstream_base, Problems};

/// Distributed tracing ([`crate::trace`]): off unless an endpoint is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracingConfig {
    /// OTLP/HTTP base URL (`http://collector:4318`); spans go to
    /// `<endpoint>/v1/traces` as JSON. None: tracing is off.
    pub otlp_endpoint: Option<String>,
    /// Share of requests traced when the caller sent no B3 sampling
    /// decision (a decision it sent is followed).
    pub sample_ratio: f64,
    /// `service.name` of the spans; default: `edgelink-<role>`.
    pub service_name: Option<String>,
    /// Finished spans waiting for export at most; more are dropped.
    pub max_queue: usize,
    pub export_timeout_ms: u64,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            otlp_endpoint: None,
            sample_ratio: 0.01,
            service_name: None,
            max_queue: 4_096,
            export_timeout_ms: 2_000,
        }
    }
}

impl TracingConfig {
    pub(super) fn validate(&self, problems: &mut Problems) {
        if let Some(endpoint) = &self.otlp_endpoint {
            problems.need(
                upstream_base(endpoint).is_some(),
                format!("tracing.otlp_endpoint: {endpoint:?} is not an http://host:port base URL"),
            );
        }
        problems.need(
            self.sample_ratio.is_finite() && (0.0..=1.0).contains(&self.sample_ratio),
            "tracing.sample_ratio must be 0..=1",
        );
        problems.need(
            (1..=1_000_000).contains(&self.max_queue)
                && (1..=60_000).contains(&self.export_timeout_ms),
            "tracing.max_queue must be 1..=1000000 and tracing.export_timeout_ms 1..=60000",
        );
    }
}

/// The edge's access log: JSON lines, written by a task of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessLogConfig {
    /// File appended to (`-`: standard output). None: no access log.
    pub path: Option<PathBuf>,
    /// Lines waiting to be written at most; more are dropped and counted.
    pub max_queue: usize,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            path: None,
            max_queue: 8_192,
        }
    }
}

impl AccessLogConfig {
    pub(super) fn validate(&self, problems: &mut Problems) {
        problems.need(
            (1..=1_000_000).contains(&self.max_queue),
            "access_log.max_queue must be 1..=1000000",
        );
    }
}
