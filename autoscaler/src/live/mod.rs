//! The live autoscaler (`edgelink autoscale run --config FILE`): every
//! `interval_secs` it takes the lease (or stays passive), reads the fleet
//! ([`signals`]), asks the configured policy (the simulator's, unchanged),
//! and when the answer differs from the current count writes the action to
//! the [`wal`] and calls the [`actuator`].
//!
//! It keeps in `state_dir`: `actions.wal` (the write-ahead log),
//! `history.json` (per-minute fleet rates for the forecast layer, four
//! weeks at most), `decisions.log` (one JSON line per evaluation: the
//! signals, each number's source, the winning layer and why), and for the
//! process actuator `edges.json` and `edge-N.log` (the systemd actuator:
//! `units.json`; its edges log to the journal).

pub mod actuator;
pub mod config;
#[cfg(test)]
mod fake_api;
pub mod lease;
mod meters;
mod role;
pub mod signals;
pub mod wal;

pub use meters::{
    ACTIONS_TOTAL, ACTION_FAILURES_TOTAL, ACTIVE, DECISIONS_TOTAL, FLEET_RATE, FORECAST_RATE,
    REPLICAS, STALE_TARGETS,
};
pub use role::{run, AutoscaleError, Deps, Listeners};

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::policy::{Policy, Signals};
use actuator::Actuator;
use config::{Config, SignalsConfig};
use lease::Lease;
use meters::Metrics;
use signals::{Endpoints, Prometheus, Reading, Scraper};
use wal::Wal;

/// Days of per-minute history kept for the forecast (it trains on four
/// weeks at most).
const HISTORY_DAYS: usize = 29;
/// A gap longer than this starts the history afresh (a day of repeated
/// last values would teach the model a flat day that never was).
const MAX_HISTORY_GAP_SECS: u64 = 3_600;
/// The decision log is rotated (to `decisions.log.1`) past this size.
const MAX_DECISION_LOG: u64 = 64 << 20;

/// One line of `decisions.log`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Decision {
    pub at: u64,
    pub active: bool,
    pub current: u32,
    pub ready: u32,
    pub stale: u32,
    pub rate: f64,
    pub cpu_cores: f64,
    pub in_flight: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forecast_rate: Option<f64>,
    pub desired: u32,
    pub layer: String,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct History {
    /// Unix second of minute 0.
    origin: u64,
    minutes: Vec<f64>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// The autoscaler's state between evaluations.
struct Autoscaler {
    config: Config,
    state_dir: PathBuf,
    policy: Box<dyn Policy + Send>,
    actuator: Actuator,
    wal: Wal,
    lease: Lease,
    scraper: Scraper,
    prometheus: Option<Prometheus>,
    endpoints: Option<Endpoints>,
    metrics: Metrics,
    /// Unix second the forecast history's minute 0 stands for.
    origin: u64,
    was_active: bool,
    last_saved: u64,
    decisions: std::fs::File,
    status: Arc<Mutex<Decision>>,
}

impl Autoscaler {
    fn history_path(&self) -> PathBuf {
        self.state_dir.join("history.json")
    }

    /// Loads the stored rate history, unless it ended too long ago.
    fn load_history(&mut self, now: u64) {
        self.origin = now - now % 60;
        let Ok(text) = std::fs::read(self.history_path()) else {
            return;
        };
        let Ok(h) = serde_json::from_slice::<History>(&text) else {
            tracing::warn!("history.json unreadable: starting the forecast history afresh");
            return;
        };
        let end = h.origin + 60 * h.minutes.len() as u64;
        if h.origin > now || now.saturating_sub(end) > MAX_HISTORY_GAP_SECS {
            tracing::info!("stored history too old: starting afresh");
            return;
        }
        tracing::info!(minutes = h.minutes.len(), "forecast history loaded");
        self.origin = h.origin;
        self.policy.preload(h.minutes);
    }

    /// Saves the history every five minutes, dropping whole days beyond
    /// [`HISTORY_DAYS`].
    fn save_history(&mut self, now: u64) {
        if now < self.last_saved + 300 {
            return;
        }
        self.last_saved = now;
        let Some(minutes) = self.policy.history() else {
            return;
        };
        let mut minutes = minutes.to_vec();
        let keep = HISTORY_DAYS * 1_440;
        if minutes.len() > keep + 1_440 {
            let days = (minutes.len() - keep) / 1_440;
            minutes.drain(..days * 1_440);
            self.origin += days as u64 * 86_400;
            self.policy.preload(minutes.clone());
        }
        let h = History {
            origin: self.origin,
            minutes,
        };
        if let Err(e) = serde_json::to_vec(&h)
            .map_err(std::io::Error::other)
            .and_then(|b| write_atomic(&self.history_path(), &b))
        {
            tracing::warn!(error = %e, "cannot save the forecast history");
        }
    }

    fn log(&mut self, d: &Decision) {
        if let Ok(m) = self.decisions.metadata() {
            if m.len() > MAX_DECISION_LOG {
                let path = self.state_dir.join("decisions.log");
                let _ = std::fs::rename(&path, path.with_extension("log.1"));
                if let Ok(f) = open_append(&path) {
                    self.decisions = f;
                }
            }
        }
        if let Ok(mut line) = serde_json::to_vec(d) {
            line.push(b'\n');
            if let Err(e) = self.decisions.write_all(&line) {
                tracing::warn!(error = %e, "cannot write the decision log");
            }
        }
        tracing::info!(
            current = d.current,
            desired = d.desired,
            ready = d.ready,
            stale = d.stale,
            rate = format!("{:.1}", d.rate),
            layer = %d.layer,
            reason = %d.reason,
            "decision"
        );
        if let Ok(mut s) = self.status.lock() {
            *s = d.clone();
        }
    }

    async fn read(&mut self, current: u32) -> Reading {
        let targets = match &self.config.signals {
            SignalsConfig::Static { targets } => Ok(targets.clone()),
            SignalsConfig::Actuator => Ok(self.actuator.targets().unwrap_or_default()),
            SignalsConfig::Dns { name } => signals::resolve(name).await,
            SignalsConfig::Kubernetes { .. } => match &self.endpoints {
                Some(e) => e.targets().await,
                None => Err("no Kubernetes client".to_owned()),
            },
            SignalsConfig::Prometheus {
                rate_query,
                ready_query,
                ..
            } => {
                return match &self.prometheus {
                    Some(p) => p.read(rate_query, ready_query, current).await,
                    None => Reading::default(),
                };
            }
        };
        match targets {
            Ok(targets) => self.scraper.read(&targets, current).await,
            Err(e) => {
                // Nothing read: every edge counts as stale (no scale-in).
                tracing::warn!(error = %e, "cannot find the edges to read");
                Reading {
                    stale: current.max(1),
                    ..Reading::default()
                }
            }
        }
    }

    /// One evaluation.
    async fn evaluate(&mut self) {
        let active = self.lease.hold().await;
        self.metrics.active.set(if active { 1.0 } else { 0.0 });
        let now = unix_now();
        if !active {
            if self.was_active {
                tracing::warn!("lease lost: passive");
            }
            self.was_active = false;
            let mut d = Decision {
                at: now,
                reason: "passive: another autoscaler holds the lease".to_owned(),
                ..Decision::default()
            };
            if let Ok(mut s) = self.status.lock() {
                std::mem::swap(&mut *s, &mut d);
                s.active = false;
            }
            return;
        }
        let current = match self.actuator.current().await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the replica count: no decision");
                return;
            }
        };
        if !self.was_active {
            self.was_active = true;
            // Newly active (start-up or a lease taken over): close an
            // action a crash left half done against what is really there.
            match self.wal.reconcile(now, current) {
                Ok(Some(r)) => tracing::warn!(
                    seq = r.seq,
                    from = r.from,
                    to = r.to,
                    actual = current,
                    note = %r.note,
                    "reconciled an interrupted action; deciding afresh"
                ),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot write the WAL"),
            }
        }
        let reading = self.read(current).await;
        let s = &self.config.autoscaler;
        let signals = Signals {
            now: now.saturating_sub(self.origin),
            // Minute 0 of the history is `origin`, not midnight.
            utc_offset: s.utc_offset_hours * 3_600 + (self.origin % 86_400) as i64,
            rate: reading.rate,
            replicas: current,
            ready: reading.ready,
            capacity: s.node_capacity,
        };
        let proposal = self.policy.propose(&signals);
        let forecast = self.policy.last_forecast();
        let (mut desired, mut layer, mut reason) = match proposal {
            Some(p) => (p.replicas, p.layer.to_owned(), p.reason),
            None => (
                current,
                "hold".to_owned(),
                "no layer proposed a change".to_owned(),
            ),
        };
        desired = desired.clamp(s.min_replicas, s.max_replicas);
        if reading.stale > 0 && desired < current {
            // As the HPA: missing metrics never cause a scale-down.
            reason = format!(
                "{} edges unread: no scale-in (the policy asked for {desired})",
                reading.stale
            );
            desired = current;
            layer = "stale-hold".to_owned();
        }
        let m = &self.metrics;
        m.desired.set(f64::from(desired));
        m.current.set(f64::from(current));
        m.ready.set(f64::from(reading.ready));
        m.rate.set(reading.rate);
        m.forecast.set(forecast.unwrap_or(0.0));
        m.stale.set(f64::from(reading.stale));
        m.decided(&layer);
        let mut d = Decision {
            at: now,
            active: true,
            current,
            ready: reading.ready,
            stale: reading.stale,
            rate: reading.rate,
            cpu_cores: reading.cpu_cores,
            in_flight: reading.in_flight,
            forecast_rate: forecast,
            desired,
            layer,
            reason,
            action: None,
        };
        if desired != current {
            d.action = Some(if matches!(self.actuator, Actuator::Observe(_)) {
                format!("would scale {current} -> {desired} (observe only)")
            } else {
                self.act(now, current, desired, &d.layer).await
            });
        }
        self.log(&d);
        self.save_history(now);
    }

    /// Writes the action ahead, takes it, writes how it ended.
    async fn act(&mut self, now: u64, current: u32, desired: u32, layer: &str) -> String {
        let seq = match self.wal.intend(now, current, desired, layer) {
            Ok(seq) => seq,
            Err(e) => {
                // Never act without the log: a crash could repeat it.
                self.metrics.failures.increment(1);
                return format!("not taken: cannot write the WAL: {e}");
            }
        };
        let timeout = Duration::from_millis(self.config.autoscaler.actuator_timeout_ms);
        let result = match tokio::time::timeout(timeout, self.actuator.scale(desired)).await {
            Ok(r) => r,
            Err(_) => Err(format!("the actuator did not finish in {timeout:?}")),
        };
        if let Err(e) = self
            .wal
            .finish(seq, unix_now(), (current, desired), result.clone())
        {
            tracing::warn!(error = %e, "cannot write the WAL");
        }
        match result {
            Ok(n) => {
                if desired > current {
                    self.metrics.up.increment(1);
                } else {
                    self.metrics.down.increment(1);
                }
                format!("scaled {current} -> {n}")
            }
            Err(e) => {
                self.metrics.failures.increment(1);
                tracing::warn!(error = %e, "scaling failed");
                format!("failed: {e}")
            }
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}
