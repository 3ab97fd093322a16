//! The sidecar's own metrics: fixed names, the layer label's fixed set,
//! handles registered once against its recorder.

use metrics::{Counter, Gauge};
use metrics_exporter_prometheus::PrometheusRecorder;

pub const REPLICAS: &str = "edgelink_autoscaler_replicas";
pub const FLEET_RATE: &str = "edgelink_autoscaler_fleet_rate";
pub const FORECAST_RATE: &str = "edgelink_autoscaler_forecast_rate";
pub const STALE_TARGETS: &str = "edgelink_autoscaler_stale_targets";
pub const ACTIVE: &str = "edgelink_autoscaler_active";
pub const MAX_REPLICAS: &str = "edgelink_autoscaler_max_replicas";
pub const DECISIONS_TOTAL: &str = "edgelink_autoscaler_decisions_total";
pub const ACTIONS_TOTAL: &str = "edgelink_autoscaler_actions_total";
pub const ACTION_FAILURES_TOTAL: &str = "edgelink_autoscaler_action_failures_total";

/// The layers a decision can come from (a fixed label set).
const LAYERS: [&str; 7] = [
    "hpa",
    "scheduled",
    "spike",
    "forecast",
    "forecast-naive",
    "hold",
    "stale-hold",
];

pub(crate) struct Metrics {
    pub(crate) desired: Gauge,
    pub(crate) current: Gauge,
    pub(crate) ready: Gauge,
    pub(crate) rate: Gauge,
    pub(crate) forecast: Gauge,
    pub(crate) stale: Gauge,
    pub(crate) active: Gauge,
    pub(crate) decisions: Vec<(&'static str, Counter)>,
    pub(crate) up: Counter,
    pub(crate) down: Counter,
    pub(crate) failures: Counter,
}

impl Metrics {
    /// Registers the handles against `recorder`; `max_replicas` is exported
    /// once, so an alert can tell a fleet held at its ceiling.
    pub(crate) fn new(recorder: &PrometheusRecorder, max_replicas: u32) -> Metrics {
        metrics::with_local_recorder(recorder, || {
            use metrics::{counter, describe_counter, describe_gauge, gauge};
            edgelink_core::telemetry::build_info("autoscaler");
            describe_gauge!(
                MAX_REPLICAS,
                "autoscaler.max_replicas: the most edges the policy may ask for."
            );
            gauge!(MAX_REPLICAS).set(f64::from(max_replicas));
            describe_gauge!(REPLICAS, "Edge replicas: desired by the policy, current (running or starting), ready (answering).");
            describe_gauge!(
                FLEET_RATE,
                "Requests per second the fleet served, as last read."
            );
            describe_gauge!(
                FORECAST_RATE,
                "The forecast layer's highest rate within its horizon (0 while it abstains)."
            );
            describe_gauge!(
                STALE_TARGETS,
                "Edges expected but not read at the last evaluation."
            );
            describe_gauge!(
                ACTIVE,
                "1 while this autoscaler holds the lease and acts, 0 while passive."
            );
            describe_counter!(
                DECISIONS_TOTAL,
                "Evaluations, by the layer whose proposal won."
            );
            describe_counter!(ACTIONS_TOTAL, "Scaling actions taken, by direction.");
            describe_counter!(
                ACTION_FAILURES_TOTAL,
                "Scaling actions the actuator failed."
            );
            Metrics {
                desired: gauge!(REPLICAS, "kind" => "desired"),
                current: gauge!(REPLICAS, "kind" => "current"),
                ready: gauge!(REPLICAS, "kind" => "ready"),
                rate: gauge!(FLEET_RATE),
                forecast: gauge!(FORECAST_RATE),
                stale: gauge!(STALE_TARGETS),
                active: gauge!(ACTIVE),
                decisions: LAYERS
                    .iter()
                    .map(|l| (*l, counter!(DECISIONS_TOTAL, "layer" => *l)))
                    .collect(),
                up: counter!(ACTIONS_TOTAL, "direction" => "up"),
                down: counter!(ACTIONS_TOTAL, "direction" => "down"),
                failures: counter!(ACTION_FAILURES_TOTAL),
            }
        })
    }

    pub(crate) fn decided(&self, layer: &str) {
        if let Some((_, c)) = self.decisions.iter().find(|(l, _)| *l == layer) {
            c.increment(1);
        }
    }
}
