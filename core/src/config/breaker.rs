use serde::{Deserialize, Serialize};

use super::Problems;

/// The circuit breakers in front of every backend ([`crate::breaker`]);
/// one set of thresholds, one breaker per backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    pub enabled: bool,
    /// Failures in a row that open a breaker.
    pub consecutive_failures: u32,
    /// Or: this share of the calls in one window failed...
    pub failure_rate_percent: u32,
    /// ...over a fixed window of this length...
    pub window_ms: u64,
    /// ...that held at least this many calls.
    pub min_calls: u32,
    /// First open span; it doubles per failed probe up to `max_open_ms`
    /// and is jittered down to half. The cap bounds how long a recovered
    /// backend waits to be used again.
    pub open_ms: u64,
    pub max_open_ms: u64,
    /// Calls let through at once to probe a half-open backend.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            enabled: true,
            consecutive_failures: 5,
            failure_rate_percent: 50,
            window_ms: 10_000,
            min_calls: 20,
            open_ms: 500,
            max_open_ms: 4_000,
            half_open_probes: 1,
        }
    }
}

impl BreakerConfig {
    pub(super) fn validate(&self, problems: &mut Problems) {
        problems.need(
            self.consecutive_failures > 0 && self.min_calls > 0 && self.half_open_probes > 0,
            "breaker.consecutive_failures, breaker.min_calls and breaker.half_open_probes must be > 0",
        );
        problems.need(
            (1..=100).contains(&self.failure_rate_percent),
            "breaker.failure_rate_percent must be 1..=100",
        );
        problems.need(
            self.window_ms > 0 && self.open_ms > 0 && self.open_ms <= self.max_open_ms,
            "breaker.window_ms and breaker.open_ms must be > 0, with breaker.open_ms <= breaker.max_open_ms",
        );
    }
}
