//! An origin's in-memory lease of pool keys.
//!
//! Creating a link takes a key from memory. When fewer than half a lease
//! batch are left, one background lease (never two at once) fetches the next
//! batch, so a steady stream of creations never waits on the database; only
//! a caller that finds the buffer empty waits (asking the pool again every
//! 50 ms, as a refill may be under way), for at most its budget, and then
//! gets [`LeaseError::Empty`] (the API answers 503 with `Retry-After`).
//! Keys handed out are counted and reported as used with the next lease.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::metrics::KeypoolMetrics;
use crate::store::PoolStore;

/// How long a caller waits before asking an empty pool again.
const RETRY_EMPTY: Duration = Duration::from_millis(50);

/// Why no key could be had.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LeaseError {
    #[error("the key pool has no free keys right now")]
    Empty,
}

pub struct Leaser {
    store: Arc<dyn PoolStore>,
    batch: u32,
    keys: Mutex<VecDeque<String>>,
    /// Keys handed out less keys given back, since the last report (may go
    /// below zero when a key leased before a report comes back after it).
    used: AtomicI64,
    fetching: AtomicBool,
    fetched: Notify,
    metrics: KeypoolMetrics,
}

impl Leaser {
    pub fn new(store: Arc<dyn PoolStore>, batch: u32, metrics: KeypoolMetrics) -> Arc<Leaser> {
        Arc::new(Leaser {
            store,
            batch: batch.max(1),
            keys: Mutex::new(VecDeque::new()),
            used: AtomicI64::new(0),
            fetching: AtomicBool::new(false),
            fetched: Notify::new(),
            metrics,
        })
    }

    /// Keys in memory now.
    pub fn buffered(&self) -> usize {
        self.lock().len()
    }

    /// A key no one else has or will get. Waits at most `wait` when the
    /// buffer is empty.
    pub async fn next(self: &Arc<Self>, wait: Duration) -> Result<String, LeaseError> {
        if let Some(key) = self.pop() {
            return Ok(key);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.fetched.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(key) = self.pop() {
                return Ok(key);
            }
            self.fetch_in_background();
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.pop().ok_or(LeaseError::Empty);
            }
            if self.buffered() == 0 && !self.fetching.load(Ordering::Acquire) {
                // The lease came back empty (or failed): the pool may be
                // being refilled. Ask again shortly, until the deadline.
                let pause = tokio::time::Instant::now() + RETRY_EMPTY;
                if pause >= deadline {
                    return self.pop().ok_or(LeaseError::Empty);
                }
                tokio::time::sleep_until(pause).await;
            }
        }
    }

    /// Puts back a key that did not become a link (its insert failed for a
    /// reason other than the key), to be handed out first.
    pub fn give_back(&self, key: String) {
        self.lock().push_front(key);
        self.used.fetch_sub(1, Ordering::AcqRel);
    }

    /// Reports the keys used since the last lease (at shutdown).
    pub async fn report(&self) {
        let used = self.used.swap(0, Ordering::AcqRel);
        if used != 0 {
            if let Err(e) = self.store.lease(0, used).await {
                self.used.fetch_add(used, Ordering::AcqRel);
                tracing::warn!(error = %e, "could not report used keys");
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<String>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pop(self: &Arc<Self>) -> Option<String> {
        let (key, left) = {
            let mut keys = self.lock();
            let key = keys.pop_front();
            (key, keys.len())
        };
        if left < (self.batch as usize).div_ceil(2) {
            self.fetch_in_background();
        }
        if key.is_some() {
            self.used.fetch_add(1, Ordering::AcqRel);
        }
        key
    }

    fn fetch_in_background(self: &Arc<Self>) {
        if self.fetching.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let used = this.used.swap(0, Ordering::AcqRel);
            match this.store.lease(this.batch, used).await {
                Ok(keys) => {
                    this.metrics.leased.increment(keys.len() as u64);
                    if keys.is_empty() {
                        tracing::warn!("the key pool is empty; link creation waits for a refill");
                    }
                    this.lock().extend(keys);
                }
                Err(e) => {
                    this.used.fetch_add(used, Ordering::AcqRel);
                    tracing::warn!(error = %e, "leasing keys failed");
                }
            }
            this.fetching.store(false, Ordering::Release);
            this.fetched.notify_waiters();
        });
    }
}
