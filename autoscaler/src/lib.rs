//! EdgeLink autoscaler: how many edge replicas to run.
//!
//! # Layout
//!
//! - [`policy`]: the scaling policies, each a pure function of its state
//!   and the signals of one evaluation: the Kubernetes HPA rule (the
//!   baseline), time-aware thresholds, spike detection, a seasonal
//!   forecast (`policy/forecast.rs`), and the layered policies that take
//!   the highest proposal.
//! - [`sim`]: the discrete-time fleet that replays a request-rate trace
//!   through a policy (`edgelink autoscale simulate`), and the references:
//!   static peak provisioning and the oracle.
//! - [`live`]: the sidecar (`edgelink autoscale run`): signals, actuators,
//!   lease, write-ahead log, decision log and metrics; `live::run`.
//! - this file: [`policies`], the named policies the simulator runs.

pub mod live;
pub mod policy;
pub mod sim;

use policy::{Forecast, ForecastModel, Hpa, Layered, PeakHours, Policy, Scheduled, Spike};
use sim::Model;

/// HPA-style target utilisation of the reactive layers.
pub const TARGET: f64 = 0.7;

/// The policy names the simulator knows, in report order (the references
/// `static-peak` and `oracle` come with `all`).
pub const NAMES: [&str; 7] = [
    "hpa",
    "scheduled",
    "hpa+spike",
    "hpa+forecast",
    "layered",
    "layered-naive",
    "layered+scheduled",
];

/// Local peak hours `FROM-TO` (`9-18`), hours 0..24 and 0..=24.
pub fn parse_peak_hours(text: &str) -> Option<PeakHours> {
    text.split_once('-')
        .and_then(|(a, b)| Some((a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?)))
        .filter(|(a, b)| *a < 24 && *b <= 24)
        .map(PeakHours::from)
}

/// A fresh policy by name, for `model` (local peak hours `peak_hours`).
pub fn policies(
    name: &str,
    model: &Model,
    peak_hours: PeakHours,
) -> Option<Box<dyn Policy + Send>> {
    let (min, max) = (model.min, model.max);
    let horizon = 900 + model.startup_secs;
    Some(match name {
        "hpa" => Box::new(Hpa::new(TARGET, min, max)),
        "scheduled" => Box::new(Scheduled::new(peak_hours, min, max)),
        "hpa+spike" => Box::new(Layered {
            layers: vec![
                Box::new(Hpa::new(TARGET, min, max)),
                Box::new(Spike::new(TARGET)),
            ],
            min,
            max,
        }),
        "hpa+forecast" => Box::new(Layered {
            layers: vec![
                Box::new(Hpa::new(TARGET, min, max)),
                Box::new(Forecast::new(horizon, TARGET)),
            ],
            min,
            max,
        }),
        "layered" => Box::new(Layered {
            layers: vec![
                Box::new(Hpa::new(TARGET, min, max)),
                Box::new(Spike::new(TARGET)),
                Box::new(Forecast::new(horizon, TARGET)),
            ],
            min,
            max,
        }),
        "layered-naive" => Box::new(Layered {
            layers: vec![
                Box::new(Hpa::new(TARGET, min, max)),
                Box::new(Spike::new(TARGET)),
                Box::new(Forecast::with_model(
                    horizon,
                    TARGET,
                    ForecastModel::SeasonalNaive,
                )),
            ],
            min,
            max,
        }),
        "layered+scheduled" => Box::new(Layered {
            layers: vec![
                Box::new(Hpa::new(TARGET, min, max)),
                Box::new(Scheduled::new(peak_hours, min, max)),
                Box::new(Spike::new(TARGET)),
                Box::new(Forecast::new(horizon, TARGET)),
            ],
            min,
            max,
        }),
        _ => return None,
    })
}
