//! The key pool's metrics, registered once against a given recorder.

use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::PrometheusRecorder;

pub const FREE_KEYS: &str = "edgelink_keypool_free_keys";
pub const KEYS_LEASED_TOTAL: &str = "edgelink_keypool_keys_leased_total";
pub const KEYS_GENERATED_TOTAL: &str = "edgelink_keypool_keys_generated_total";
pub const REFILL_DURATION_SECONDS: &str = "edgelink_keypool_refill_duration_seconds";
pub const REFILL_ERRORS_TOTAL: &str = "edgelink_keypool_refill_errors_total";

/// Buckets of a refill: tens of milliseconds to a minute.
pub const REFILL_BUCKETS: [f64; 10] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0];

#[derive(Clone)]
pub struct KeypoolMetrics {
    /// Free keys in the pool, as last counted by the refill worker.
    pub free: Gauge,
    /// Keys this process took out of the pool.
    pub leased: Counter,
    /// Keys this process generated.
    pub generated: Counter,
    pub refill_seconds: Histogram,
    pub refill_errors: Counter,
}

impl KeypoolMetrics {
    /// Registers the handles against `recorder` (give the recorder the
    /// [`REFILL_BUCKETS`] for [`REFILL_DURATION_SECONDS`]).
    pub fn new(recorder: &PrometheusRecorder) -> KeypoolMetrics {
        metrics::with_local_recorder(recorder, || {
            use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
            describe_gauge!(FREE_KEYS, "Keys free in the pool, as last counted.");
            describe_counter!(KEYS_LEASED_TOTAL, "Keys this process leased from the pool.");
            describe_counter!(KEYS_GENERATED_TOTAL, "Keys this process added to the pool.");
            describe_histogram!(
                REFILL_DURATION_SECONDS,
                Unit::Seconds,
                "Time of one refill, from taking the refill lock to its last batch."
            );
            describe_counter!(REFILL_ERRORS_TOTAL, "Refill attempts that failed.");
            KeypoolMetrics {
                free: metrics::gauge!(FREE_KEYS),
                leased: metrics::counter!(KEYS_LEASED_TOTAL),
                generated: metrics::counter!(KEYS_GENERATED_TOTAL),
                refill_seconds: metrics::histogram!(REFILL_DURATION_SECONDS),
                refill_errors: metrics::counter!(REFILL_ERRORS_TOTAL),
            }
        })
    }

    /// Handles that record nothing (tests, callers without metrics).
    pub fn noop() -> KeypoolMetrics {
        KeypoolMetrics {
            free: Gauge::noop(),
            leased: Counter::noop(),
            generated: Counter::noop(),
            refill_seconds: Histogram::noop(),
            refill_errors: Counter::noop(),
        }
    }
}
