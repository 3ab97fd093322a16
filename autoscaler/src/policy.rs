//! Scaling policies: each a pure function of its own state and the signals
//! of one evaluation (no I/O, no clock), so the simulator and the live
//! autoscaler run the same code and tests need no fleet.
//!
//! [`Hpa`] is the Kubernetes HorizontalPodAutoscaler's rule, exactly, as
//! the baseline; [`Scheduled`] time-aware thresholds; [`Spike`] scales out
//! at once on a sharp rise above the rate's noise; [`Layered`] takes the
//! highest proposal of its layers, and scales in only through its reactive
//! layer's stabilisation window. Utilisation is `rate / (ready ×
//! capacity)`: what the edges served, which cannot exceed what is ready.

mod forecast;

pub use forecast::{Forecast, ForecastModel};

use std::collections::VecDeque;

/// What a policy sees at one evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Signals {
    /// Seconds since the start of the trace (or the Unix epoch, live).
    pub now: u64,
    /// Seconds east of UTC of the fleet's local time (for schedules).
    pub utc_offset: i64,
    /// Requests per second the fleet served over the last scrape interval.
    pub rate: f64,
    /// Replicas running (ready or starting): what the policy last asked for.
    pub replicas: u32,
    /// Replicas ready to serve.
    pub ready: u32,
    /// Requests per second one replica serves at 100% utilisation.
    pub capacity: f64,
}

impl Signals {
    /// Load over ready capacity (0 with nothing ready).
    pub fn utilisation(&self) -> f64 {
        if self.ready == 0 {
            return if self.rate > 0.0 { 1.0 } else { 0.0 };
        }
        self.rate / (f64::from(self.ready) * self.capacity)
    }
}

/// A policy's proposal and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    pub replicas: u32,
    pub layer: &'static str,
    pub reason: String,
}

/// A scaling policy. `None`: it abstains this time.
pub trait Policy {
    fn name(&self) -> &'static str;
    fn propose(&mut self, s: &Signals) -> Option<Proposal>;

    /// The per-minute rate history a forecast layer keeps, if any (the
    /// live autoscaler stores it across restarts).
    fn history(&self) -> Option<&[f64]> {
        None
    }

    /// Gives a forecast layer its stored history back.
    fn preload(&mut self, _minutes: Vec<f64>) {}

    /// The forecast layer's last forecast, requests per second.
    fn last_forecast(&self) -> Option<f64> {
        None
    }
}

/// The HPA's replica rule and its behaviour defaults
/// (<https://kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale/>):
/// `desired = ceil(current × metric / target)`, no change within a 0.1
/// tolerance of the ratio; scale-up at most `max(100%, 4 pods)` per 15 s;
/// scale-down to the highest recommendation of the last 300 s.
#[derive(Debug, Clone)]
pub struct Hpa {
    /// Target utilisation, 0..1.
    pub target: f64,
    pub tolerance: f64,
    pub stabilisation_secs: u64,
    pub min: u32,
    pub max: u32,
    /// The recommendations of the stabilisation window.
    history: VecDeque<Recommendation>,
    /// The current scale-up period.
    period: Option<ScaleUpPeriod>,
}

/// One of the HPA's raw recommendations, and when it was made.
#[derive(Debug, Clone, Copy)]
struct Recommendation {
    at: u64,
    replicas: u32,
}

/// A 15-second scale-up period: when it began and the replicas then.
#[derive(Debug, Clone, Copy)]
struct ScaleUpPeriod {
    start: u64,
    base: u32,
}

impl Hpa {
    pub fn new(target: f64, min: u32, max: u32) -> Hpa {
        Hpa {
            target,
            tolerance: 0.1,
            stabilisation_secs: 300,
            min,
            max,
            history: VecDeque::new(),
            period: None,
        }
    }

    /// The raw recommendation (Kubernetes' replica calculator,
    /// `GetResourceReplicas`), before limits and stabilisation: the ratio
    /// of the `ready` pods' `utilisation` to the target, applied to the
    /// ready pods. The `current - ready` starting pods count as 0 usage
    /// when scaling up and are left out when scaling down; a recommendation
    /// within the tolerance, or that the starting pods turn around, keeps
    /// `current`. No ready pod, no metric: `current`.
    pub fn recommend(&self, current: u32, ready: u32, utilisation: f64) -> u32 {
        if ready == 0 {
            return current;
        }
        let ratio = utilisation / self.target;
        let unready = current.saturating_sub(ready);
        if unready == 0 {
            if (ratio - 1.0).abs() <= self.tolerance {
                return current;
            }
            return (f64::from(ready) * ratio).ceil() as u32;
        }
        let counted = if ratio > 1.0 { ready + unready } else { ready };
        let rebalanced = ratio * f64::from(ready) / f64::from(counted);
        if (rebalanced - 1.0).abs() <= self.tolerance
            || (ratio < 1.0 && rebalanced > 1.0)
            || (ratio > 1.0 && rebalanced < 1.0)
        {
            return current;
        }
        let replicas = (rebalanced * f64::from(counted)).ceil() as u32;
        if (rebalanced < 1.0 && replicas > current) || (rebalanced > 1.0 && replicas < current) {
            return current;
        }
        replicas
    }

    /// Applies the HPA's limits and stabilisation to `recommended` at `now`
    /// with `current` replicas.
    pub fn behave(&mut self, now: u64, current: u32, recommended: u32) -> u32 {
        self.history.push_back(Recommendation {
            at: now,
            replicas: recommended,
        });
        while self
            .history
            .front()
            .is_some_and(|r| now.saturating_sub(r.at) > self.stabilisation_secs)
        {
            self.history.pop_front();
        }
        let mut desired = recommended;
        if desired < current {
            // Scale down only to the highest recommendation of the window.
            let highest = self
                .history
                .iter()
                .map(|r| r.replicas)
                .max()
                .unwrap_or(desired);
            desired = highest.min(current);
        } else if desired > current {
            // At most max(100%, 4 pods) more per 15 s period.
            let period = match self.period {
                Some(p) if now.saturating_sub(p.start) < 15 => p,
                _ => ScaleUpPeriod {
                    start: now,
                    base: current,
                },
            };
            self.period = Some(period);
            let base = period.base;
            let limit = base.saturating_mul(2).max(base.saturating_add(4));
            desired = desired.min(limit);
        }
        desired.clamp(self.min, self.max)
    }
}

impl Policy for Hpa {
    fn name(&self) -> &'static str {
        "hpa"
    }

    fn propose(&mut self, s: &Signals) -> Option<Proposal> {
        let current = s.replicas.max(1);
        let util = s.utilisation();
        let recommended = self.recommend(current, s.ready, util);
        let replicas = self.behave(s.now, current, recommended);
        Some(Proposal {
            replicas,
            layer: "hpa",
            reason: format!(
                "utilisation {:.0}% against a {:.0}% target",
                util * 100.0,
                self.target * 100.0
            ),
        })
    }
}

/// Local hours `from` (inclusive) to `to` (exclusive); `from > to` wraps
/// past midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeakHours {
    pub from: u32,
    pub to: u32,
}

impl From<(u32, u32)> for PeakHours {
    fn from((from, to): (u32, u32)) -> PeakHours {
        PeakHours { from, to }
    }
}

/// Peak and off-peak thresholds by local hour: above `up` the fleet is
/// sized to `up`'s midpoint with `down`; below `down` it may shrink (through
/// the HPA's stabilisation); between, it holds.
#[derive(Debug, Clone)]
pub struct Thresholds {
    pub up: f64,
    pub down: f64,
}

#[derive(Debug, Clone)]
pub struct Scheduled {
    /// Local hours `[from, to)` that are peak.
    pub peak_hours: PeakHours,
    pub peak: Thresholds,
    pub off_peak: Thresholds,
    /// Rate limits and stabilisation are the HPA's.
    pub hpa: Hpa,
}

impl Scheduled {
    pub fn new(peak_hours: impl Into<PeakHours>, min: u32, max: u32) -> Scheduled {
        Scheduled {
            peak_hours: peak_hours.into(),
            peak: Thresholds {
                up: 0.85,
                down: 0.60,
            },
            off_peak: Thresholds {
                up: 0.60,
                down: 0.40,
            },
            hpa: Hpa::new(0.7, min, max),
        }
    }

    fn thresholds(&self, s: &Signals) -> (&Thresholds, bool) {
        let local = (s.now as i64 + s.utc_offset).rem_euclid(86_400);
        let hour = (local / 3_600) as u32;
        let PeakHours { from, to } = self.peak_hours;
        let peak = if from <= to {
            (from..to).contains(&hour)
        } else {
            hour >= from || hour < to
        };
        if peak {
            (&self.peak, true)
        } else {
            (&self.off_peak, false)
        }
    }
}

impl Policy for Scheduled {
    fn name(&self) -> &'static str {
        "scheduled"
    }

    fn propose(&mut self, s: &Signals) -> Option<Proposal> {
        let current = s.replicas.max(1);
        let util = s.utilisation();
        let (t, peak) = self.thresholds(s);
        let (up, down) = (t.up, t.down);
        // Size for the middle of the band when outside it.
        let aim = (up + down) / 2.0;
        let recommended = if util > up || util < down {
            (f64::from(current) * util / aim).ceil().max(1.0) as u32
        } else {
            current
        };
        let replicas = self.hpa.behave(s.now, current, recommended);
        Some(Proposal {
            replicas,
            layer: "scheduled",
            reason: format!(
                "utilisation {:.0}%, {} band {:.0}%..{:.0}%",
                util * 100.0,
                if peak { "peak" } else { "off-peak" },
                down * 100.0,
                up * 100.0
            ),
        })
    }
}

/// Scales out at once on a sharp rise of the smoothed rate.
///
/// The rate is smoothed with an exponential moving average (time constant
/// `smoothing_secs`). A spike is a rise of more than `rise` (30%) over the
/// lowest smoothed rate of the last `window_secs` (120 s) that also stands
/// `noise_sigmas` standard deviations above the rate's noise: the larger of
/// Poisson noise (a rate r averaged over T seconds varies by about
/// sqrt(r / T), so at low rates a 30% wobble is not a spike) and the
/// spread the rate has shown around its smoothed value over the last ten
/// minutes (a scaled-up small trace, or bursty traffic, is noisier than
/// Poisson at its level). The proposal is the capacity for the current
/// rate grown by the rise once more (the rise is assumed to go on for as
/// long again), at `target` utilisation.
#[derive(Debug, Clone)]
pub struct Spike {
    pub rise: f64,
    pub window_secs: u64,
    pub smoothing_secs: f64,
    pub noise_sigmas: f64,
    pub target: f64,
    /// The last smoothed rate.
    smoothed: Option<Smoothed>,
    /// Running variance of the raw rate around the smoothed one (10-minute
    /// time constant): the noise the rate really has.
    variance: f64,
    /// The smoothed rates of the last `window_secs`.
    recent: VecDeque<Smoothed>,
}

/// A smoothed rate and when it was read.
#[derive(Debug, Clone, Copy)]
struct Smoothed {
    at: u64,
    rate: f64,
}

/// A spike [`Spike::observe`] found: the rise as a fraction of the
/// window's low, and the smoothed rate now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rise {
    pub fraction: f64,
    pub smoothed: f64,
}

impl Spike {
    pub fn new(target: f64) -> Spike {
        Spike {
            rise: 0.30,
            window_secs: 120,
            smoothing_secs: 30.0,
            noise_sigmas: 4.0,
            target,
            smoothed: None,
            variance: 0.0,
            recent: VecDeque::new(),
        }
    }

    /// Feeds one observation; returns the rise when it is a spike.
    pub fn observe(&mut self, now: u64, rate: f64) -> Option<Rise> {
        let smoothed = match self.smoothed {
            None => rate,
            Some(Smoothed { at, rate: prev }) => {
                let dt = now.saturating_sub(at) as f64;
                let alpha = 1.0 - (-dt / self.smoothing_secs).exp();
                let beta = 1.0 - (-dt / 600.0).exp();
                self.variance += beta * ((rate - prev).powi(2) - self.variance);
                prev + alpha * (rate - prev)
            }
        };
        let sample = Smoothed {
            at: now,
            rate: smoothed,
        };
        self.smoothed = Some(sample);
        self.recent.push_back(sample);
        while self
            .recent
            .front()
            .is_some_and(|s| now.saturating_sub(s.at) > self.window_secs)
        {
            self.recent.pop_front();
        }
        let low = self
            .recent
            .iter()
            .map(|s| s.rate)
            .fold(f64::INFINITY, f64::min);
        if !low.is_finite() {
            return None;
        }
        let rise = smoothed - low;
        // The larger of Poisson noise at this rate and the noise measured.
        let noise = (low.max(1.0) / self.smoothing_secs)
            .sqrt()
            .max(self.variance.sqrt());
        let relative = if low > 0.0 { rise / low } else { f64::INFINITY };
        (relative > self.rise && rise > self.noise_sigmas * noise).then_some(Rise {
            fraction: relative,
            smoothed,
        })
    }
}

impl Policy for Spike {
    fn name(&self) -> &'static str {
        "spike"
    }

    fn propose(&mut self, s: &Signals) -> Option<Proposal> {
        let Rise {
            fraction: rise,
            smoothed,
        } = self.observe(s.now, s.rate)?;
        // While the fleet is saturated the served rate understates demand;
        // the rise is applied to the larger of the two readings.
        let rate = s.rate.max(smoothed) * (1.0 + rise.min(4.0));
        let replicas = (rate / (s.capacity * self.target)).ceil() as u32;
        (replicas > s.replicas).then(|| Proposal {
            replicas,
            layer: "spike",
            reason: if rise.is_finite() {
                format!("rate up {:.0}% within {} s", rise * 100.0, self.window_secs)
            } else {
                format!("rate up from 0 within {} s", self.window_secs)
            },
        })
    }
}

/// The highest proposal of its layers. Scale-in comes only from the
/// reactive layer (the first), whose stabilisation window it already
/// passed: a forecast or spike layer can hold capacity up, never take it
/// down.
pub struct Layered {
    pub layers: Vec<Box<dyn Policy + Send>>,
    pub min: u32,
    pub max: u32,
}

impl std::fmt::Debug for Layered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.layers.iter().map(|l| l.name()).collect();
        f.debug_struct("Layered").field("layers", &names).finish()
    }
}

impl Policy for Layered {
    fn name(&self) -> &'static str {
        "layered"
    }

    fn history(&self) -> Option<&[f64]> {
        self.layers.iter().find_map(|l| l.history())
    }

    fn preload(&mut self, minutes: Vec<f64>) {
        if let Some(l) = self.layers.iter_mut().find(|l| l.history().is_some()) {
            l.preload(minutes);
        }
    }

    fn last_forecast(&self) -> Option<f64> {
        self.layers.iter().find_map(|l| l.last_forecast())
    }

    fn propose(&mut self, s: &Signals) -> Option<Proposal> {
        let mut best: Option<Proposal> = None;
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let Some(p) = layer.propose(s) else { continue };
            // Only the reactive layer may go below the current count.
            let p = if i > 0 && p.replicas < s.replicas {
                continue;
            } else {
                p
            };
            if best.as_ref().is_none_or(|b| p.replicas > b.replicas) {
                best = Some(p);
            }
        }
        best.map(|mut p| {
            p.replicas = p.replicas.clamp(self.min, self.max);
            p
        })
    }
}

#[cfg(test)]
mod tests;
