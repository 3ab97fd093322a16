//! A discrete-time fleet: replays a request-rate trace through a policy
//! and reports what it cost and what it failed to serve.
//!
//! The model, per second: demand comes from the trace; replicas are paid
//! from the moment they are asked for, serve only after `startup_secs`,
//! and each serves up to `capacity` requests/s; the policy is asked every
//! `scrape_secs` with the rate the fleet served over that interval (never
//! more than its ready capacity: a saturated fleet cannot see the demand it
//! drops); scale-in removes the newest replicas first (LIFO).
//!
//! Reported over the evaluation period (after `train_secs`, which the
//! policies still see): replica-hours (cost), SLO-violation minutes
//! (minutes with any second whose demand exceeds ready capacity), the share
//! of requests unserved, scaling actions, and reversals (an action in the
//! other direction from the one before, within 5 minutes of it).

use std::io::Read;
use std::path::Path;

use serde::Serialize;

use crate::policy::{Policy, Signals};

/// A trace's demand, as a rate per minute (requests/s, constant within
/// the minute).
#[derive(Debug, Clone)]
pub struct Trace {
    pub per_minute: Vec<f64>,
}

impl Trace {
    /// Reads a per-second trace (integers separated by whitespace; gzip
    /// when the file ends in `.gz`), averages each minute and scales the
    /// rate so the busiest minute is `peak` requests/s. Scaling the rate,
    /// not the per-second counts, keeps the Poisson noise of a small trace
    /// from being multiplied into fake bursts (`../shared/traces/README.md`).
    pub fn load(path: &Path, peak: f64) -> std::io::Result<Trace> {
        let file = std::fs::File::open(path)?;
        let mut text = String::new();
        if path.extension().is_some_and(|e| e == "gz") {
            flate2::read::GzDecoder::new(file).read_to_string(&mut text)?;
        } else {
            std::io::BufReader::new(file).read_to_string(&mut text)?;
        }
        let mut seconds = Vec::new();
        for (i, word) in text.split_whitespace().enumerate() {
            let n: f64 = word.parse().map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("second {i}: {word:?}: {e}"),
                )
            })?;
            seconds.push(n);
        }
        Ok(Trace::from_seconds(&seconds, peak))
    }

    /// From per-second counts, scaled as [`Trace::load`] does.
    pub fn from_seconds(seconds: &[f64], peak: f64) -> Trace {
        let mut per_minute: Vec<f64> = seconds
            .chunks(60)
            .map(|c| c.iter().sum::<f64>() / c.len() as f64)
            .collect();
        let max = per_minute.iter().copied().fold(0.0, f64::max);
        if max > 0.0 {
            for m in &mut per_minute {
                *m *= peak / max;
            }
        }
        Trace { per_minute }
    }

    pub fn seconds(&self) -> u64 {
        self.per_minute.len() as u64 * 60
    }

    #[inline]
    pub fn demand(&self, t: u64) -> f64 {
        self.per_minute
            .get((t / 60) as usize)
            .copied()
            .unwrap_or(0.0)
    }
}

/// The fleet's parameters.
#[derive(Debug, Clone, Copy)]
pub struct Model {
    /// Requests/s one replica serves.
    pub capacity: f64,
    pub startup_secs: u64,
    pub scrape_secs: u64,
    /// Results count from here on (the policies see everything).
    pub train_secs: u64,
    pub min: u32,
    pub max: u32,
    /// Seconds east of UTC of the trace's local time at its first second.
    pub utc_offset: i64,
}

/// One policy's results.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub policy: String,
    pub replica_hours: f64,
    pub violation_minutes: u64,
    pub unserved_fraction: f64,
    pub actions: u64,
    pub reversals: u64,
}

/// `reports` as the markdown table `edgelink autoscale simulate` prints.
pub fn markdown_table(reports: &[Report]) -> String {
    let mut out = String::from(
        "| policy | replica-hours | SLO-violation minutes | unserved | actions | reversals |\n|---|---|---|---|---|---|\n",
    );
    for r in reports {
        out.push_str(&format!(
            "| {} | {:.0} | {} | {:.4}% | {} | {} |\n",
            r.policy,
            r.replica_hours,
            r.violation_minutes,
            r.unserved_fraction * 100.0,
            r.actions,
            r.reversals
        ));
    }
    out
}

#[derive(Default)]
struct Tally {
    replica_secs: f64,
    violating_minutes: std::collections::BTreeSet<u64>,
    demand: f64,
    unserved: f64,
    actions: u64,
    reversals: u64,
    last_action: Option<Action>,
}

/// A scaling action: when, and whether it was up.
#[derive(Clone, Copy)]
struct Action {
    at: u64,
    up: bool,
}

impl Tally {
    fn second(&mut self, t: u64, paid: u32, ready_capacity: f64, demand: f64) {
        self.replica_secs += f64::from(paid);
        self.demand += demand;
        if demand > ready_capacity {
            self.unserved += demand - ready_capacity;
            self.violating_minutes.insert(t / 60);
        }
    }

    fn action(&mut self, t: u64, up: bool) {
        self.actions += 1;
        if let Some(last) = self.last_action {
            if last.up != up && t.saturating_sub(last.at) <= 300 {
                self.reversals += 1;
            }
        }
        self.last_action = Some(Action { at: t, up });
    }

    fn report(self, policy: &str) -> Report {
        Report {
            policy: policy.to_owned(),
            replica_hours: self.replica_secs / 3_600.0,
            violation_minutes: self.violating_minutes.len() as u64,
            unserved_fraction: if self.demand > 0.0 {
                self.unserved / self.demand
            } else {
                0.0
            },
            actions: self.actions,
            reversals: self.reversals,
        }
    }
}

/// Replays `trace` through `policy`.
pub fn simulate(trace: &Trace, model: &Model, name: &str, policy: &mut dyn Policy) -> Report {
    let required = |rate: f64| (rate / model.capacity).ceil() as u32;
    // Start with what the first minute needs, ready (a running fleet).
    let first = required(trace.demand(0)).clamp(model.min, model.max);
    // Each replica's ready time, oldest first (so ready ones are a prefix).
    let mut nodes: Vec<u64> = vec![0; first as usize];
    let mut tally = Tally::default();
    let mut served_sum = 0.0;
    let mut served_n = 0u32;
    for t in 0..trace.seconds() {
        let ready = nodes.partition_point(|&r| r <= t) as u32;
        let capacity = f64::from(ready) * model.capacity;
        let demand = trace.demand(t);
        served_sum += demand.min(capacity);
        served_n += 1;
        if t >= model.train_secs {
            tally.second(t, nodes.len() as u32, capacity, demand);
        }
        if t % model.scrape_secs == model.scrape_secs - 1 {
            let signals = Signals {
                now: t + 1,
                utc_offset: model.utc_offset,
                rate: served_sum / f64::from(served_n.max(1)),
                replicas: nodes.len() as u32,
                ready,
                capacity: model.capacity,
            };
            served_sum = 0.0;
            served_n = 0;
            let Some(p) = policy.propose(&signals) else {
                continue;
            };
            let want = p.replicas.clamp(model.min, model.max) as usize;
            if want != nodes.len() {
                let up = want > nodes.len();
                if up {
                    nodes.resize(want, t + 1 + model.startup_secs);
                } else {
                    nodes.truncate(want);
                }
                if t >= model.train_secs {
                    tally.action(t, up);
                }
            }
        }
    }
    tally.report(name)
}

/// Enough replicas for the busiest minute, all the time.
pub fn static_peak(trace: &Trace, model: &Model) -> Report {
    let peak = trace.per_minute.iter().copied().fold(0.0, f64::max);
    let n = ((peak / model.capacity).ceil() as u32).clamp(model.min, model.max);
    let mut tally = Tally::default();
    for t in model.train_secs..trace.seconds() {
        let demand = trace.demand(t);
        tally.second(t, n, f64::from(n) * model.capacity, demand);
    }
    tally.report("static-peak")
}

/// The least capacity that never violates, knowing the future: what each
/// minute needs, started `startup_secs` ahead.
pub fn oracle(trace: &Trace, model: &Model) -> Report {
    let need: Vec<u32> = trace
        .per_minute
        .iter()
        .map(|r| ((r / model.capacity).ceil() as u32).clamp(model.min, model.max))
        .collect();
    let ahead = model.startup_secs.div_ceil(60) as usize;
    let mut tally = Tally::default();
    let mut last = None;
    for (m, _) in need.iter().enumerate() {
        // Paid this minute: the most any minute up to `ahead` later needs.
        let paid = need[m..(m + ahead + 1).min(need.len())]
            .iter()
            .copied()
            .max()
            .unwrap_or(0);
        let t = m as u64 * 60;
        if t >= model.train_secs {
            for s in 0..60 {
                let demand = trace.per_minute[m];
                tally.second(t + s, paid, f64::from(paid) * model.capacity, demand);
            }
            if let Some(prev) = last {
                if paid != prev {
                    tally.action(t, paid > prev);
                }
            }
        }
        last = Some(paid);
    }
    tally.report("oracle")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Hpa;

    fn model() -> Model {
        Model {
            capacity: 100.0,
            startup_secs: 120,
            scrape_secs: 15,
            train_secs: 0,
            min: 1,
            max: 1_000,
            utc_offset: 0,
        }
    }

    #[test]
    fn a_trace_is_scaled_by_its_busiest_minute() {
        let mut secs = vec![1.0; 120];
        secs[60..].iter_mut().for_each(|s| *s = 3.0);
        let t = Trace::from_seconds(&secs, 300.0);
        assert_eq!(t.per_minute, vec![100.0, 300.0]);
        assert_eq!(t.demand(59), 100.0);
        assert_eq!(t.demand(60), 300.0);
        assert_eq!(t.demand(120), 0.0);
    }

    #[test]
    fn static_and_oracle_bound_the_cost_and_never_violate() {
        // An hour at 500 requests/s, an hour at 1,000, an hour at 500.
        let secs: Vec<f64> = (0..10_800)
            .map(|s| {
                if (3_600..7_200).contains(&s) {
                    1_000.0
                } else {
                    500.0
                }
            })
            .collect();
        let trace = Trace::from_seconds(&secs, 1_000.0);
        let m = model();
        let fixed = static_peak(&trace, &m);
        assert_eq!(fixed.replica_hours, 30.0);
        assert_eq!(fixed.violation_minutes, 0);
        let best = oracle(&trace, &m);
        assert_eq!(best.violation_minutes, 0);
        // 10 replicas from 2 minutes before the step until its end, else 5.
        let want = 5.0 * (2.0 - 2.0 / 60.0) + 10.0 * (1.0 + 2.0 / 60.0);
        assert!((best.replica_hours - want).abs() < 1e-9, "{best:?}");
        assert_eq!(best.actions, 2);
    }

    #[test]
    fn a_reactive_policy_pays_for_the_startup_delay() {
        let secs: Vec<f64> = (0..7_200)
            .map(|s| if s >= 3_600 { 2_000.0 } else { 500.0 })
            .collect();
        let trace = Trace::from_seconds(&secs, 2_000.0);
        let r = simulate(&trace, &model(), "hpa", &mut Hpa::new(0.7, 1, 1_000));
        assert!(r.violation_minutes >= 2, "startup delay shows: {r:?}");
        assert!(r.violation_minutes < 20, "and it catches up: {r:?}");
        assert!(
            r.unserved_fraction > 0.0 && r.unserved_fraction < 0.05,
            "{r:?}"
        );
        assert!(r.actions >= 2);
    }
}
