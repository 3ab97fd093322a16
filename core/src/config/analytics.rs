use serde::{Deserialize, Serialize};

use super::Problems;

/// Click counting at the edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnalyticsConfig {
    /// Count redirects per link and UTC day, human and bot.
    pub enabled: bool,
    /// How often counts are flushed to the source of truth.
    pub flush_interval_ms: u64,
    /// (code, day) pairs held between flushes at most, counting those of a
    /// flush being retried; clicks for new pairs beyond it are dropped
    /// (`edgelink_clicks_dropped_total`).
    pub max_pending: usize,
    /// (code, day) pairs per write at most: a flush is written in pieces
    /// this size, spread over the first half of the interval.
    pub flush_batch: usize,
    /// The flush thread's CPU priority (read at start).
    pub flush_priority: FlushPriority,
}

/// How the click-flush thread competes for CPU with the threads that serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlushPriority {
    /// Linux `SCHED_IDLE`: it runs when a CPU has nothing else to do, and a
    /// serving thread that wakes takes the CPU from it at once. A flush
    /// (tens of milliseconds a second under uniform traffic) then never
    /// stands in front of requests on a shared CPU. On a machine kept
    /// entirely busy it gets only a sliver of CPU, its counts wait, and
    /// beyond `max_pending` clicks are dropped (counted): serving wins.
    Idle,
    /// The scheduler's default: it takes its turn beside the serving
    /// threads, and requests wait behind it on a shared CPU.
    Normal,
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        AnalyticsConfig {
            enabled: true,
            flush_interval_ms: 1_000,
            max_pending: 100_000,
            flush_batch: 500,
            flush_priority: FlushPriority::Idle,
        }
    }
}

impl AnalyticsConfig {
    pub(super) fn validate(&self, problems: &mut Problems) {
        problems.need(
            (10..=600_000).contains(&self.flush_interval_ms),
            "analytics.flush_interval_ms must be 10..=600000",
        );
        problems.need(
            (1..=100_000_000).contains(&self.max_pending),
            "analytics.max_pending must be 1..=100000000",
        );
        problems.need(
            (1..=1_000_000).contains(&self.flush_batch),
            "analytics.flush_batch must be 1..=1000000",
        );
    }
}
