//! The forecast layer: the fleet rate ahead from daily and weekly
//! seasonality (MSTL with an AutoETS trend, or the seasonal-naive
//! reference), over per-minute means of what the edges served.

use super::{Policy, Proposal, Signals};

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
    /// The minute being averaged now.
    current: OpenMinute,
    fitted: Option<Fitted>,
    last: Option<f64>,
}

/// The minute whose rates are being averaged.
#[derive(Debug, Clone, Copy, Default)]
struct OpenMinute {
    minute: u64,
    sum: f64,
    samples: u32,
}

/// The last fit of the MSTL model.
#[derive(Debug, Clone)]
struct Fitted {
    /// The minute its history ended.
    history_end: usize,
    /// The minute it was made.
    made_at: usize,
    /// Its 5-minute point forecasts from the end of its history.
    points: Vec<f64>,
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
            current: OpenMinute::default(),
            fitted: None,
            last: None,
        }
    }

    /// Starts from stored history: `minutes[i]` is the mean rate of minute
    /// `i`, counted from the same origin as [`Signals::now`].
    pub fn preload(&mut self, minutes: Vec<f64>) {
        self.minutes = minutes;
        self.current = OpenMinute {
            minute: self.minutes.len() as u64,
            ..OpenMinute::default()
        };
        self.fitted = None;
    }

    fn record(&mut self, now: u64, rate: f64) {
        let minute = now / 60;
        let OpenMinute {
            minute: m,
            sum,
            samples,
        } = self.current;
        if minute != m && samples > 0 {
            let mean = sum / f64::from(samples);
            while (self.minutes.len() as u64) < m {
                // Minutes without a scrape repeat the last mean.
                let last = self.minutes.last().copied().unwrap_or(mean);
                self.minutes.push(last);
            }
            if (self.minutes.len() as u64) == m {
                self.minutes.push(mean);
            }
            self.current = OpenMinute {
                minute,
                ..OpenMinute::default()
            };
        }
        if self.current.samples == 0 {
            self.current.minute = minute;
        }
        self.current.sum += rate;
        self.current.samples += 1;
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
        let now = (self.current.minute as usize).max(n);
        let retrain = (self.retrain_secs / 60) as usize;
        let stale = self
            .fitted
            .as_ref()
            .is_none_or(|fit| now >= fit.made_at + retrain.max(1));
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
            self.fitted = Some(Fitted {
                history_end: buckets * BUCKET_MINUTES,
                made_at: now,
                points: points.unwrap_or_default(),
            });
        }
        let Fitted {
            history_end,
            points,
            ..
        } = self.fitted.as_ref()?;
        let from = (now - history_end) / BUCKET_MINUTES;
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
