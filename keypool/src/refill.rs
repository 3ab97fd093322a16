//! The refill worker: keeps the pool between its watermarks.
//!
//! Every `check_interval_ms` (or at once when asked through the admin
//! endpoint) it counts the free keys; under `low_watermark` it fills the
//! pool up to `high_watermark`, `batch_size` keys per transaction. Only one
//! refiller in the whole deployment works at a time (the store's refill
//! lock); the others find the lock taken and check again later. A failure
//! is retried after a fully jittered exponential backoff (100 ms doubling
//! to 30 s), and a shutdown stops the worker between batches.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgelink_core::config::KeypoolConfig;
use edgelink_core::retry::backoff;
use edgelink_core::shutdown::CancellationToken;
use edgelink_core::StoreError;
use tokio::sync::Notify;

use crate::keys::KeySpace;
use crate::metrics::KeypoolMetrics;
use crate::store::PoolStore;

pub struct Refiller {
    store: Arc<dyn PoolStore>,
    space: KeySpace,
    config: KeypoolConfig,
    metrics: KeypoolMetrics,
    /// Keys asked for through the admin endpoint, not yet generated.
    requested: AtomicU64,
    wake: Notify,
    refilling: AtomicBool,
    last_error: Mutex<Option<String>>,
}

/// What one check did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// Enough keys and nothing asked for.
    Idle,
    /// Another refiller holds the lock.
    Busy,
    /// Added this many keys.
    Refilled(u64),
}

impl Refiller {
    pub fn new(
        store: Arc<dyn PoolStore>,
        space: KeySpace,
        config: KeypoolConfig,
        metrics: KeypoolMetrics,
    ) -> Arc<Refiller> {
        Arc::new(Refiller {
            store,
            space,
            config,
            metrics,
            requested: AtomicU64::new(0),
            wake: Notify::new(),
            refilling: AtomicBool::new(false),
            last_error: Mutex::new(None),
        })
    }

    pub fn config(&self) -> &KeypoolConfig {
        &self.config
    }

    pub fn space(&self) -> &KeySpace {
        &self.space
    }

    /// Asks for `count` more keys now, whatever the watermarks say. Pending
    /// requests add up to at most `max_refill`; returns the pending total.
    pub fn request(&self, count: u64) -> u64 {
        let max = self.config.max_refill;
        let prev = self
            .requested
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| {
                Some(r.saturating_add(count).min(max))
            })
            .unwrap_or(0);
        self.wake.notify_one();
        prev.saturating_add(count).min(max)
    }

    /// Keys asked for and not generated yet.
    pub fn pending(&self) -> u64 {
        self.requested.load(Ordering::Acquire)
    }

    /// Whether this process is generating keys right now.
    pub fn refilling(&self) -> bool {
        self.refilling.load(Ordering::Acquire)
    }

    /// The error of the last failed check, cleared by the next success.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Runs checks until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let interval = Duration::from_millis(self.config.check_interval_ms);
        let mut failures = 0u32;
        loop {
            let wait = match self.tick(&shutdown).await {
                Ok(_) => {
                    failures = 0;
                    *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    interval
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    self.metrics.refill_errors.increment(1);
                    let wait = backoff(failures);
                    tracing::warn!(error = %e, retry_in = ?wait, "key pool refill failed");
                    *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(e.to_string());
                    wait
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// One check: counts the free keys and refills when under the low
    /// watermark or asked to. Stops between batches once `shutdown` fires.
    pub async fn tick(&self, shutdown: &CancellationToken) -> Result<Tick, StoreError> {
        let free = self.store.free().await?;
        self.metrics.free.set(free as f64);
        let asked = self.requested.swap(0, Ordering::AcqRel);
        let to_high = if free < self.config.low_watermark {
            self.config.high_watermark - free
        } else {
            0
        };
        let want = asked.max(to_high);
        if want == 0 {
            return Ok(Tick::Idle);
        }
        let session = match self.store.begin_refill().await {
            Ok(Some(session)) => session,
            Ok(None) => {
                self.requested.fetch_add(asked, Ordering::AcqRel);
                return Ok(Tick::Busy);
            }
            Err(e) => {
                self.requested.fetch_add(asked, Ordering::AcqRel);
                return Err(e);
            }
        };
        self.refilling.store(true, Ordering::Release);
        let result = self.fill(session, want, shutdown).await;
        self.refilling.store(false, Ordering::Release);
        let added = match result {
            Ok(added) => added,
            Err((added, e)) => {
                self.requested
                    .fetch_add(asked.saturating_sub(added), Ordering::AcqRel);
                return Err(e);
            }
        };
        self.metrics.free.set((free + added) as f64);
        tracing::info!(added, free = free + added, "key pool refilled");
        Ok(Tick::Refilled(added))
    }

    async fn fill(
        &self,
        mut session: Box<dyn crate::store::RefillSession>,
        want: u64,
        shutdown: &CancellationToken,
    ) -> Result<u64, (u64, StoreError)> {
        let started = Instant::now();
        let mut added = 0u64;
        while added < want && !shutdown.is_cancelled() {
            let n = self.config.batch_size.min(want - added);
            match session.batch(&self.space, n).await {
                Ok(k) => {
                    added += k;
                    self.metrics.generated.increment(k);
                }
                Err(e) => return Err((added, e)),
            }
        }
        let took = started.elapsed();
        self.metrics.refill_seconds.record(took.as_secs_f64());
        let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        // A refill cut short by shutdown before its first batch did nothing:
        // the last one that did stays on record.
        if added > 0 {
            if let Err(e) = session.record(added, ms).await {
                tracing::warn!(error = %e, "could not record the refill");
            }
        }
        Ok(added)
    }
}
