//! Scaling policies: each a pure function of its own state and the signals
//! of one evaluation (no I/O, no clock), so the simulator and the live
//! autoscaler run the same code and tests need no fleet.
//!
//! - [`Hpa`]: the Kubernetes HorizontalPodAutoscaler's rule, exactly, as
//!   the baseline.
//! - [`Scheduled`]: time-aware thresholds (peak and off-peak hours with
//!   their own scale-up and scale-down utilisation).
//! - [`Spike`]: scales out at once when the smoothed rate rises more than
//!   30% within 2 minutes and the rise stands well above the rate's noise.
//! - [`Layered`]: the highest proposal of its layers; scale-in only through
//!   its reactive layer and that layer's stabilisation window.
//!
//! Utilisation is load over ready capacity: `rate / (ready × capacity)`,
//! where `rate` is what the edges served (it cannot exceed what is ready,
//! which is why a purely reactive policy climbs out of an overload only as
//! fast as its per-step limit lets it).

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
    /// (time, recommendation) over the stabilisation window.
    history: VecDeque<(u64, u32)>,
    /// Start of the current scale-up period and the replicas at its start.
    period: Option<(u64, u32)>,
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

    /// The raw recommendation for `utilisation` (the HPA's formula, with
    /// its tolerance), before limits and stabilisation.
    pub fn recommend(&self, current: u32, utilisation: f64) -> u32 {
        let ratio = utilisation / self.target;
        if (ratio - 1.0).abs() <= self.tolerance {
            return current;
        }
        (f64::from(current) * ratio).ceil() as u32
    }

    /// Applies the HPA's limits and stabilisation to `recommended` at `now`
    /// with `current` replicas.
    pub fn behave(&mut self, now: u64, current: u32, recommended: u32) -> u32 {
        self.history.push_back((now, recommended));
        while self
            .history
            .front()
            .is_some_and(|(t, _)| now.saturating_sub(*t) > self.stabilisation_secs)
        {
            self.history.pop_front();
        }
        let mut desired = recommended;
        if desired < current {
            // Scale down only to the highest recommendation of the window.
            let highest = self
                .history
                .iter()
                .map(|(_, r)| *r)
                .max()
                .unwrap_or(desired);
            desired = highest.min(current);
        } else if desired > current {
            // At most max(100%, 4 pods) more per 15 s period.
            let (start, base) = match self.period {
                Some((t, base)) if now.saturating_sub(t) < 15 => (t, base),
                _ => (now, current),
            };
            self.period = Some((start, base));
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
        let recommended = self.recommend(current, util);
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
    pub peak_hours: (u32, u32),
    pub peak: Thresholds,
    pub off_peak: Thresholds,
    /// Rate limits and stabilisation are the HPA's.
    pub hpa: Hpa,
}

impl Scheduled {
    pub fn new(peak_hours: (u32, u32), min: u32, max: u32) -> Scheduled {
        Scheduled {
            peak_hours,
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
        let (from, to) = self.peak_hours;
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
    smoothed: Option<(u64, f64)>,
    /// Running variance of the raw rate around the smoothed one (10-minute
    /// time constant): the noise the rate really has.
    variance: f64,
    recent: VecDeque<(u64, f64)>,
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

    /// Feeds one observation; returns (rise as a fraction, smoothed rate)
    /// when it is a spike.
    pub fn observe(&mut self, now: u64, rate: f64) -> Option<(f64, f64)> {
        let smoothed = match self.smoothed {
            None => rate,
            Some((t, prev)) => {
                let dt = now.saturating_sub(t) as f64;
                let alpha = 1.0 - (-dt / self.smoothing_secs).exp();
                let beta = 1.0 - (-dt / 600.0).exp();
                self.variance += beta * ((rate - prev).powi(2) - self.variance);
                prev + alpha * (rate - prev)
            }
        };
        self.smoothed = Some((now, smoothed));
        self.recent.push_back((now, smoothed));
        while self
            .recent
            .front()
            .is_some_and(|(t, _)| now.saturating_sub(*t) > self.window_secs)
        {
            self.recent.pop_front();
        }
        let low = self
            .recent
            .iter()
            .map(|(_, r)| *r)
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
        (relative > self.rise && rise > self.noise_sigmas * noise).then_some((relative, smoothed))
    }
}

impl Policy for Spike {
    fn name(&self) -> &'static str {
        "spike"
    }

    fn propose(&mut self, s: &Signals) -> Option<Proposal> {
        let (rise, smoothed) = self.observe(s.now, s.rate)?;
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

/// Which model the [`Forecast`] layer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForecastModel {
    /// MSTL decomposition (daily, and weekly once two weeks are known)
    /// with an AutoETS trend, from the `augurs` crates: the default.
    Mstl,
    /// The same minute one season ago, scaled by how the last hour
    /// compares with the same hour then (kept as a cheap reference).
    SeasonalNaive,
}

/// The fleet rate forecast `horizon_secs` ahead from daily and weekly
/// seasonality. The MSTL model works on 5-minute means of the last four
/// weeks at most, is retrained every `retrain_secs`, and abstains until it
/// has two days of history (two whole daily seasons); the weekly season
/// joins once two weeks are known.
#[derive(Debug, Clone)]
pub struct Forecast {
    pub horizon_secs: u64,
    pub target: f64,
    pub model: ForecastModel,
    pub retrain_secs: u64,
    /// Mean served rate per minute since the start.
    minutes: Vec<f64>,
    current: (u64, f64, u32),
    /// The last fit: the minute its history ended, the minute it was
    /// made, and its 5-minute point forecasts from the end of its history.
    fitted: Option<(usize, usize, Vec<f64>)>,
    last: Option<f64>,
}

const DAY_MINUTES: usize = 1_440;
const BUCKET_MINUTES: usize = 5;
const DAY_BUCKETS: usize = DAY_MINUTES / BUCKET_MINUTES;
const WEEK_BUCKETS: usize = 7 * DAY_BUCKETS;
const MAX_TRAIN_BUCKETS: usize = 4 * WEEK_BUCKETS;

impl Forecast {
    pub fn new(horizon_secs: u64, target: f64) -> Forecast {
        Forecast::with_model(horizon_secs, target, ForecastModel::Mstl)
    }

    pub fn with_model(horizon_secs: u64, target: f64, model: ForecastModel) -> Forecast {
        Forecast {
            horizon_secs,
            target,
            model,
            retrain_secs: 3_600,
            minutes: Vec::new(),
            current: (0, 0.0, 0),
            fitted: None,
            last: None,
        }
    }

    /// Starts from stored history: `minutes[i]` is the mean rate of minute
    /// `i`, counted from the same origin as [`Signals::now`].
    pub fn preload(&mut self, minutes: Vec<f64>) {
        self.minutes = minutes;
        self.current = (self.minutes.len() as u64, 0.0, 0);
        self.fitted = None;
    }

    fn record(&mut self, now: u64, rate: f64) {
        let minute = now / 60;
        let (m, sum, n) = self.current;
        if minute != m && n > 0 {
            let mean = sum / f64::from(n);
            while (self.minutes.len() as u64) < m {
                // Minutes without a scrape repeat the last mean.
                let last = self.minutes.last().copied().unwrap_or(mean);
                self.minutes.push(last);
            }
            if (self.minutes.len() as u64) == m {
                self.minutes.push(mean);
            }
            self.current = (minute, 0.0, 0);
        }
        if self.current.2 == 0 {
            self.current.0 = minute;
        }
        self.current.1 += rate;
        self.current.2 += 1;
    }

    /// The highest rate forecast over the next `horizon_secs`, or `None`
    /// while the model has too little history.
    pub fn forecast(&mut self) -> Option<f64> {
        match self.model {
            ForecastModel::Mstl => self.mstl(),
            ForecastModel::SeasonalNaive => self.seasonal_naive(),
        }
    }

    fn mstl(&mut self) -> Option<f64> {
        use augurs::mstl::MSTLModel;
        use augurs::prelude::*;
        let n = self.minutes.len();
        let buckets = n / BUCKET_MINUTES;
        if buckets < 2 * DAY_BUCKETS {
            return None;
        }
        let now = (self.current.0 as usize).max(n);
        let retrain = (self.retrain_secs / 60) as usize;
        let stale = self
            .fitted
            .as_ref()
            .is_none_or(|(_, at, _)| now >= at + retrain.max(1));
        if stale {
            let used = buckets.min(MAX_TRAIN_BUCKETS);
            let from = (buckets - used) * BUCKET_MINUTES;
            let y: Vec<f64> = self.minutes[from..buckets * BUCKET_MINUTES]
                .chunks_exact(BUCKET_MINUTES)
                .map(|c| c.iter().sum::<f64>() / BUCKET_MINUTES as f64)
                .collect();
            let mut periods = vec![DAY_BUCKETS];
            if used >= 2 * WEEK_BUCKETS {
                periods.push(WEEK_BUCKETS);
            }
            // Far enough to cover a gap in the history (a restart) and
            // the time until the next retraining.
            let gap = (now - buckets * BUCKET_MINUTES) as u64 * 60;
            let ahead = (gap + self.retrain_secs + self.horizon_secs).div_ceil(300) as usize + 2;
            let trend = augurs::ets::AutoETS::non_seasonal().into_trend_model();
            let points = MSTLModel::new(periods, trend)
                .fit(&y)
                .ok()
                .and_then(|m| m.predict(ahead, None).ok())
                .map(|f| f.point)
                .filter(|p| p.iter().all(|x| x.is_finite()));
            // A failed fit abstains until the next retraining.
            self.fitted = Some((buckets * BUCKET_MINUTES, now, points.unwrap_or_default()));
        }
        let (end, _, points) = self.fitted.as_ref()?;
        let from = (now - end) / BUCKET_MINUTES;
        let to = from + (self.horizon_secs / 300).max(1) as usize;
        points
            .get(from..=to.min(points.len().checked_sub(1)?))
            .and_then(|p| p.iter().copied().reduce(f64::max))
            .map(|r| r.max(0.0))
    }

    fn seasonal_naive(&self) -> Option<f64> {
        let n = self.minutes.len();
        if n < DAY_MINUTES + 60 {
            return None;
        }
        let season = if n >= 7 * DAY_MINUTES + 60 {
            7 * DAY_MINUTES
        } else {
            DAY_MINUTES
        };
        let mean = |from: usize, to: usize| {
            let xs = &self.minutes[from..to];
            xs.iter().sum::<f64>() / xs.len().max(1) as f64
        };
        let recent = mean(n - 60, n);
        let then = mean(n - 60 - season, n - season);
        let level = if then > 0.0 {
            (recent / then).clamp(0.5, 2.0)
        } else {
            1.0
        };
        let ahead = (self.horizon_secs / 60).max(1) as usize;
        (0..ahead)
            .filter_map(|k| self.minutes.get(n + k - season))
            .map(|past| past * level)
            .reduce(f64::max)
    }
}

impl Policy for Forecast {
    fn history(&self) -> Option<&[f64]> {
        Some(&self.minutes)
    }

    fn preload(&mut self, minutes: Vec<f64>) {
        Forecast::preload(self, minutes);
    }

    fn last_forecast(&self) -> Option<f64> {
        self.last
    }

    fn name(&self) -> &'static str {
        match self.model {
            ForecastModel::Mstl => "forecast",
            ForecastModel::SeasonalNaive => "forecast-naive",
        }
    }

    fn propose(&mut self, s: &Signals) -> Option<Proposal> {
        self.record(s.now, s.rate);
        self.last = self.forecast();
        let rate = self.last?;
        Some(Proposal {
            replicas: (rate / (s.capacity * self.target)).ceil() as u32,
            layer: self.name(),
            reason: format!(
                "{rate:.0} requests/s forecast within {} s",
                self.horizon_secs
            ),
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
mod tests {
    use super::*;

    fn signals(now: u64, rate: f64, replicas: u32) -> Signals {
        Signals {
            now,
            utc_offset: 0,
            rate,
            replicas,
            ready: replicas,
            capacity: 100.0,
        }
    }

    #[test]
    fn hpa_formula_and_tolerance() {
        let hpa = Hpa::new(0.5, 1, 100);
        // The HPA docs' example: 200m used against a 100m target doubles.
        assert_eq!(hpa.recommend(1, 1.0), 2);
        assert_eq!(
            hpa.recommend(10, 0.54),
            10,
            "within 0.1 of the target ratio"
        );
        assert_eq!(hpa.recommend(10, 0.56), 12, "ratio 1.12: ceil(11.2)");
        assert_eq!(hpa.recommend(10, 0.25), 5);
        assert_eq!(hpa.recommend(3, 0.51), 3);
    }

    #[test]
    fn hpa_scale_up_is_limited_to_max_of_double_or_four_per_15s() {
        let mut hpa = Hpa::new(0.5, 1, 1_000);
        assert_eq!(hpa.behave(0, 2, 100), 6, "2 + 4 beats 2 x 2");
        assert_eq!(hpa.behave(15, 6, 100), 12, "then doubling");
        assert_eq!(hpa.behave(30, 12, 100), 24);
        // Within one 15 s period the limit counts from the period's start.
        let mut hpa = Hpa::new(0.5, 1, 1_000);
        assert_eq!(hpa.behave(0, 10, 100), 20);
        assert_eq!(hpa.behave(5, 20, 100), 20, "same period: still 2 x 10");
    }

    #[test]
    fn hpa_scale_down_waits_out_the_stabilisation_window() {
        let mut hpa = Hpa::new(0.5, 1, 100);
        assert_eq!(hpa.behave(0, 10, 10), 10);
        assert_eq!(hpa.behave(60, 10, 4), 10, "the window still holds 10");
        assert_eq!(hpa.behave(299, 10, 4), 10);
        assert_eq!(hpa.behave(301, 10, 4), 4, "10 has left the window");
        // The highest recommendation of the window wins, not the last.
        let mut hpa = Hpa::new(0.5, 1, 100);
        hpa.behave(0, 10, 8);
        hpa.behave(100, 10, 3);
        assert_eq!(hpa.behave(200, 10, 2), 8);
        assert_eq!(hpa.behave(301, 10, 2), 3);
    }

    #[test]
    fn hpa_respects_min_and_max() {
        let mut hpa = Hpa::new(0.5, 2, 5);
        assert_eq!(hpa.behave(0, 5, 50), 5);
        assert_eq!(hpa.behave(1_000, 5, 0), 2);
    }

    #[test]
    fn spike_fires_on_a_real_rise_and_not_on_noise() {
        // 40% in 2 minutes at 10,000 requests/s: a spike.
        let mut spike = Spike::new(0.7);
        let mut fired = None;
        for t in (0..=600u64).step_by(15) {
            // Flat, then up 40% over two minutes from t = 300.
            let ramp = (t.saturating_sub(300) as f64 / 120.0).min(1.0);
            let rate = 10_000.0 * (1.0 + 0.4 * ramp);
            if let Some(p) = spike.propose(&signals(t, rate, 143)) {
                fired.get_or_insert((t, p));
            }
        }
        let (t, p) = fired.expect("a 40% rise fires");
        assert!(
            (300..=450).contains(&t),
            "fired at {t}: by 30 s after the rise is complete"
        );
        assert!(p.replicas > 143, "{p:?}");

        // Poisson noise at 2 requests/s: ±sqrt(2 * 15) per 15 s count, far
        // more than 30% of the rate, and never a spike.
        let mut spike = Spike::new(0.7);
        let mut state = 12_345u64;
        for t in (0..86_400u64).step_by(15) {
            // A Poisson(30) count per 15 s by summing Bernoulli draws.
            let mut count = 0;
            for _ in 0..300 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                if state % 10 == 0 {
                    count += 1;
                }
            }
            let rate = f64::from(count) / 15.0;
            assert!(
                spike.propose(&signals(t, rate, 1)).is_none(),
                "fired on noise at {t}: {rate}"
            );
        }
    }

    #[test]
    fn scheduled_thresholds_follow_the_local_hour() {
        let mut s = Scheduled::new((9, 18), 1, 100);
        // 70% at 10:00 local (UTC-4: 14:00 UTC) is inside the peak band.
        let mut sig = signals(14 * 3_600, 7_000.0, 100);
        sig.utc_offset = -4 * 3_600;
        assert_eq!(s.propose(&sig).unwrap().replicas, 100);
        // The same 70% at 22:00 local is above the off-peak band's 60%.
        let mut s = Scheduled::new((9, 18), 1, 200);
        let mut sig = signals(26 * 3_600, 7_000.0, 100);
        sig.utc_offset = -4 * 3_600;
        assert_eq!(s.propose(&sig).unwrap().replicas, 140, "sized for 50%");
    }

    /// 100 requests/s, 1,000 from 12:00 to 13:00 every day.
    fn daily_peak(t: u64) -> f64 {
        if (43_200..46_800).contains(&(t % 86_400)) {
            1_000.0
        } else {
            100.0
        }
    }

    #[test]
    fn forecast_abstains_without_history_and_follows_the_season() {
        for model in [ForecastModel::Mstl, ForecastModel::SeasonalNaive] {
            // Twenty hours: too little for either model (MSTL wants two
            // days, seasonal-naive one).
            let mut f = Forecast::with_model(900, 0.5, model);
            for t in (0..72_000).step_by(15) {
                assert!(f.propose(&signals(t, 100.0, 2)).is_none(), "{model:?}");
            }
        }
        // Three days of the daily cycle, then 11:50 on day four: the noon
        // peak is inside the 15-minute horizon.
        for model in [ForecastModel::Mstl, ForecastModel::SeasonalNaive] {
            let mut f = Forecast::with_model(900, 0.5, model);
            let mut last = None;
            for t in (0..3 * 86_400 + 42_600).step_by(15) {
                last = f.propose(&signals(t, daily_peak(t), 2));
            }
            let p = last.take().expect("three days of history");
            // 1,000 / (100 x 0.5) = 20.
            assert!((19..=21).contains(&p.replicas), "{model:?}: {p:?}");
            // And at 15:00 it sees only the base rate ahead.
            for t in (3 * 86_400 + 42_600..3 * 86_400 + 54_000).step_by(15) {
                last = f.propose(&signals(t, daily_peak(t), 2));
            }
            let p = last.expect("a forecast");
            assert!((1..=3).contains(&p.replicas), "{model:?}: {p:?}");
        }
    }

    #[test]
    fn forecast_resumes_from_stored_history() {
        let mut f = Forecast::new(900, 0.5);
        for t in (0..3 * 86_400).step_by(15) {
            f.propose(&signals(t, daily_peak(t), 2));
        }
        let mut g = Forecast::new(900, 0.5);
        g.preload(f.history().unwrap().to_vec());
        let p = g.propose(&signals(3 * 86_400 + 42_600, 100.0, 2)).unwrap();
        assert!((19..=21).contains(&p.replicas), "{p:?}");
    }

    #[test]
    fn layered_takes_the_highest_and_scales_in_only_reactively() {
        struct Fixed(u32);
        impl Policy for Fixed {
            fn name(&self) -> &'static str {
                "fixed"
            }
            fn propose(&mut self, _: &Signals) -> Option<Proposal> {
                Some(Proposal {
                    replicas: self.0,
                    layer: "fixed",
                    reason: String::new(),
                })
            }
        }
        let mut l = Layered {
            layers: vec![Box::new(Fixed(5)), Box::new(Fixed(8)), Box::new(Fixed(2))],
            min: 1,
            max: 7,
        };
        let p = l.propose(&signals(0, 0.0, 6)).unwrap();
        assert_eq!(p.replicas, 7, "the highest, within max");
        let mut l = Layered {
            layers: vec![Box::new(Fixed(3)), Box::new(Fixed(2))],
            min: 1,
            max: 10,
        };
        assert_eq!(l.propose(&signals(0, 0.0, 6)).unwrap().replicas, 3);
    }
}
