//! Circuit breakers: a backend that keeps failing is not called until it
//! has had time to recover, so requests fail (or fall back) at once instead
//! of each waiting out a timeout.
//!
//! Closed, open (a jittered, doubling span that is also the reconnect
//! backoff) and half-open (a few probes); a timeout or an unreachable
//! backend is a failure, a corrupt value an answer, an abandoned call
//! neither. [`Guarded`] puts a breaker in front of a [`LinkStore`] or
//! [`LinkCache`]; the edge's tier-0 hits never reach one.
//!
//! The states and their settings: `docs/design/breakers.md`.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use metrics::{Counter, Gauge};

use crate::config::BreakerConfig;
use crate::error::StoreError;
use crate::link::Link;
use crate::store::{ClickDelta, DailyClicks, InsertReport, LinkCache, LinkPatch, LinkStore};

/// A breaker's state, as exported (`edgelink_breaker_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }

    fn from_u8(v: u8) -> State {
        match v {
            1 => State::Open,
            2 => State::HalfOpen,
            _ => State::Closed,
        }
    }
}

pub const STATE: &str = "edgelink_breaker_state";
pub const TRANSITIONS_TOTAL: &str = "edgelink_breaker_transitions_total";
pub const REJECTED_TOTAL: &str = "edgelink_breaker_rejected_total";

/// A breaker's metric handles, registered by its owner (no-ops by default).
#[derive(Clone)]
pub struct BreakerMetrics {
    /// 0 closed, 1 open, 2 half-open.
    pub state: Gauge,
    /// Transitions into closed, open and half-open, in [`State`] order.
    pub transitions: [Counter; 3],
    /// Calls refused while open.
    pub rejected: Counter,
}

impl BreakerMetrics {
    /// Registers the handles of `backend`'s breaker with the recorder in
    /// force (wrap the call in `metrics::with_local_recorder` for a local one).
    pub fn register(backend: &'static str) -> BreakerMetrics {
        BreakerMetrics {
            state: metrics::gauge!(STATE, "backend" => backend),
            transitions: ["closed", "open", "half_open"]
                .map(|to| metrics::counter!(TRANSITIONS_TOTAL, "backend" => backend, "to" => to)),
            rejected: metrics::counter!(REJECTED_TOTAL, "backend" => backend),
        }
    }

    /// Describes the series, once per recorder.
    pub fn describe() {
        metrics::describe_gauge!(
            STATE,
            "Circuit breaker state by backend: 0 closed, 1 open, 2 half-open."
        );
        metrics::describe_counter!(
            TRANSITIONS_TOTAL,
            "Circuit breaker transitions, by backend and the state entered."
        );
        metrics::describe_counter!(
            REJECTED_TOTAL,
            "Backend calls refused at once because the backend's breaker was open."
        );
    }
}

impl Default for BreakerMetrics {
    fn default() -> Self {
        BreakerMetrics {
            state: Gauge::noop(),
            transitions: [Counter::noop(), Counter::noop(), Counter::noop()],
            rejected: Counter::noop(),
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: State,
    consecutive: u32,
    window_start: Instant,
    window_calls: u32,
    window_failures: u32,
    /// When an open breaker lets probes through.
    open_until: Instant,
    /// Times opened since it last closed: the span's exponent.
    opens: u32,
    probes_in_flight: u32,
}

/// One backend's breaker.
pub struct Breaker {
    name: &'static str,
    config: BreakerConfig,
    inner: Mutex<Inner>,
    /// The state, readable without the lock.
    state: AtomicU8,
    metrics: BreakerMetrics,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("name", &self.name)
            .field("state", &self.state())
            .finish()
    }
}

/// Leave to make one call; reports its outcome with [`Permit::record`].
/// Dropped without a record, it frees a probe slot and counts for nothing.
#[must_use]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    recorded: bool,
}

impl Permit<'_> {
    pub fn record(mut self, ok: bool) {
        self.recorded = true;
        self.breaker.record(ok, self.probe);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.recorded {
            let mut inner = self.breaker.lock();
            inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
        }
    }
}

/// Whether a call's result says the backend is failing.
pub fn is_failure(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Timeout { .. } | StoreError::Unavailable { .. }
    )
}

impl Breaker {
    pub fn new(name: &'static str, config: &BreakerConfig, metrics: BreakerMetrics) -> Breaker {
        let now = Instant::now();
        metrics.state.set(0.0);
        Breaker {
            name,
            config: config.clone(),
            inner: Mutex::new(Inner {
                state: State::Closed,
                consecutive: 0,
                window_start: now,
                window_calls: 0,
                window_failures: 0,
                open_until: now,
                opens: 0,
                probes_in_flight: 0,
            }),
            state: AtomicU8::new(State::Closed as u8),
            metrics,
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The state as of the last call (an open breaker past its span reads
    /// open until a call turns it half-open).
    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Relaxed))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, inner: &mut Inner, to: State) {
        if inner.state == to {
            return;
        }
        inner.state = to;
        self.state.store(to as u8, Ordering::Relaxed);
        self.metrics.state.set(f64::from(to as u8));
        self.metrics.transitions[to as usize].increment(1);
        match to {
            State::Open => tracing::warn!(backend = self.name, "circuit breaker opened"),
            State::HalfOpen => tracing::info!(backend = self.name, "circuit breaker half-open"),
            State::Closed => tracing::info!(backend = self.name, "circuit breaker closed"),
        }
    }

    /// Leave to call the backend now, or `None` while it is open (or
    /// half-open with every probe slot taken).
    pub fn try_acquire(&self) -> Option<Permit<'_>> {
        if !self.config.enabled {
            return Some(Permit {
                breaker: self,
                probe: false,
                recorded: false,
            });
        }
        let mut inner = self.lock();
        let probe = match inner.state {
            State::Closed => false,
            State::Open if Instant::now() < inner.open_until => {
                drop(inner);
                self.metrics.rejected.increment(1);
                return None;
            }
            State::Open | State::HalfOpen => {
                if inner.probes_in_flight >= self.config.half_open_probes {
                    drop(inner);
                    self.metrics.rejected.increment(1);
                    return None;
                }
                self.set(&mut inner, State::HalfOpen);
                inner.probes_in_flight += 1;
                true
            }
        };
        Some(Permit {
            breaker: self,
            probe,
            recorded: false,
        })
    }

    fn record(&self, ok: bool, probe: bool) {
        if !self.config.enabled {
            return;
        }
        let now = Instant::now();
        let mut inner = self.lock();
        if probe {
            inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
        }
        match inner.state {
            State::HalfOpen if probe => {
                if ok {
                    inner.opens = 0;
                    inner.consecutive = 0;
                    inner.window_start = now;
                    inner.window_calls = 0;
                    inner.window_failures = 0;
                    self.set(&mut inner, State::Closed);
                } else {
                    self.open(&mut inner, now);
                }
            }
            // A call let through before the breaker opened: its outcome
            // says nothing new.
            State::Open | State::HalfOpen => {}
            State::Closed => {
                let window = Duration::from_millis(self.config.window_ms);
                if now.duration_since(inner.window_start) >= window {
                    inner.window_start = now;
                    inner.window_calls = 0;
                    inner.window_failures = 0;
                }
                inner.window_calls += 1;
                if ok {
                    inner.consecutive = 0;
                    return;
                }
                inner.consecutive += 1;
                inner.window_failures += 1;
                let by_count = inner.consecutive >= self.config.consecutive_failures;
                let by_rate = inner.window_calls >= self.config.min_calls
                    && u64::from(inner.window_failures) * 100
                        >= u64::from(self.config.failure_rate_percent)
                            * u64::from(inner.window_calls);
                if by_count || by_rate {
                    self.open(&mut inner, now);
                }
            }
        }
    }

    fn open(&self, inner: &mut Inner, now: Instant) {
        let span = open_span(&self.config, inner.opens);
        inner.opens = inner.opens.saturating_add(1);
        inner.open_until = now + span;
        inner.consecutive = 0;
        self.set(inner, State::Open);
    }

    /// Runs `call` unless the breaker is open, recording its outcome.
    pub async fn call<T, F>(&self, call: F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = Result<T, StoreError>>,
    {
        let Some(permit) = self.try_acquire() else {
            return Err(StoreError::CircuitOpen { backend: self.name });
        };
        let result = call.await;
        permit.record(match &result {
            Ok(_) => true,
            Err(e) => !is_failure(e),
        });
        result
    }
}

/// How long a breaker stays open after its `opens`-th opening (0-based):
/// `open_ms × 2^opens`, capped at `max_open_ms`, then between half of that
/// and all of it.
pub fn open_span(config: &BreakerConfig, opens: u32) -> Duration {
    let ceiling = Duration::from_millis(config.open_ms)
        .saturating_mul(1u32 << opens.min(20))
        .min(Duration::from_millis(config.max_open_ms));
    ceiling / 2 + (ceiling / 2).mul_f64(rand::random::<f64>())
}

/// A backend behind a breaker. Implements the trait its inner value does.
pub struct Guarded<T: ?Sized> {
    inner: Arc<T>,
    breaker: Arc<Breaker>,
}

impl<T: ?Sized> Guarded<T> {
    pub fn new(inner: Arc<T>, breaker: Arc<Breaker>) -> Guarded<T> {
        Guarded { inner, breaker }
    }

    pub fn breaker(&self) -> &Arc<Breaker> {
        &self.breaker
    }
}

#[async_trait]
impl LinkStore for Guarded<dyn LinkStore> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    async fn get(&self, code: &str) -> Result<Option<Link>, StoreError> {
        self.breaker.call(self.inner.get(code)).await
    }
    async fn insert_links(&self, links: &[Link]) -> Result<InsertReport, StoreError> {
        self.breaker.call(self.inner.insert_links(links)).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.breaker.call(self.inner.ping()).await
    }
    async fn find(&self, code: &str) -> Result<Option<Link>, StoreError> {
        self.breaker.call(self.inner.find(code)).await
    }
    async fn update(&self, code: &str, patch: &LinkPatch) -> Result<Option<Link>, StoreError> {
        self.breaker.call(self.inner.update(code, patch)).await
    }
    async fn delete(&self, code: &str) -> Result<bool, StoreError> {
        self.breaker.call(self.inner.delete(code)).await
    }
    async fn list(&self, after: Option<&str>, limit: u32) -> Result<Vec<Link>, StoreError> {
        self.breaker.call(self.inner.list(after, limit)).await
    }
    async fn add_clicks(
        &self,
        edge: &str,
        seq: u64,
        deltas: &[ClickDelta],
    ) -> Result<bool, StoreError> {
        self.breaker
            .call(self.inner.add_clicks(edge, seq, deltas))
            .await
    }
    async fn clicks(
        &self,
        code: &str,
        from: time::Date,
        to: time::Date,
    ) -> Result<Vec<DailyClicks>, StoreError> {
        self.breaker.call(self.inner.clicks(code, from, to)).await
    }
}

#[async_trait]
impl LinkCache for Guarded<dyn LinkCache> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    async fn get(&self, code: &str) -> Result<Option<Link>, StoreError> {
        self.breaker.call(self.inner.get(code)).await
    }
    async fn put(&self, link: &Link) -> Result<(), StoreError> {
        self.breaker.call(self.inner.put(link)).await
    }
    async fn forget(&self, code: &str) -> Result<(), StoreError> {
        self.breaker.call(self.inner.forget(code)).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.breaker.call(self.inner.ping()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            enabled: true,
            consecutive_failures: 3,
            failure_rate_percent: 50,
            window_ms: 60_000,
            min_calls: 10,
            open_ms: 40,
            max_open_ms: 160,
            half_open_probes: 1,
        }
    }

    fn down() -> StoreError {
        StoreError::unavailable("test", "down")
    }

    async fn fail(b: &Breaker) -> Result<(), StoreError> {
        b.call(async { Err::<(), _>(down()) }).await
    }

    async fn succeed(b: &Breaker) -> Result<(), StoreError> {
        b.call(async { Ok(()) }).await
    }

    #[tokio::test]
    async fn opens_on_consecutive_failures_then_probes_and_closes() {
        let b = Breaker::new("test", &config(), BreakerMetrics::default());
        for _ in 0..2 {
            assert!(fail(&b).await.is_err());
        }
        assert!(succeed(&b).await.is_ok(), "a success resets the count");
        for _ in 0..2 {
            let _ = fail(&b).await;
        }
        assert_eq!(b.state(), State::Closed);
        let _ = fail(&b).await;
        assert_eq!(b.state(), State::Open);
        // Open: refused without running the call.
        let ran = std::sync::atomic::AtomicBool::new(false);
        let r = b
            .call(async {
                ran.store(true, Ordering::Relaxed);
                Ok(())
            })
            .await;
        assert!(matches!(r, Err(StoreError::CircuitOpen { .. })));
        assert!(!ran.load(Ordering::Relaxed));
        // After the span (at most open_ms): one probe; success closes.
        tokio::time::sleep(Duration::from_millis(45)).await;
        let probe = b.try_acquire().expect("a probe is let through");
        assert_eq!(b.state(), State::HalfOpen);
        assert!(b.try_acquire().is_none(), "one probe at a time");
        probe.record(true);
        assert_eq!(b.state(), State::Closed);
        assert!(succeed(&b).await.is_ok());
    }

    #[tokio::test]
    async fn a_failed_probe_reopens_for_longer_and_an_abandoned_one_frees_its_slot() {
        let b = Breaker::new("test", &config(), BreakerMetrics::default());
        for _ in 0..3 {
            let _ = fail(&b).await;
        }
        tokio::time::sleep(Duration::from_millis(45)).await;
        drop(b.try_acquire().expect("probe"));
        assert_eq!(b.state(), State::HalfOpen);
        let probe = b.try_acquire().expect("the abandoned probe's slot is free");
        probe.record(false);
        assert_eq!(b.state(), State::Open);
        // Second span: 40..=80 ms; still open at 30 ms.
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(b.try_acquire().is_none());
        tokio::time::sleep(Duration::from_millis(55)).await;
        assert!(b.try_acquire().is_some());
    }

    #[tokio::test]
    async fn opens_on_the_failure_rate_over_the_window() {
        let b = Breaker::new("test", &config(), BreakerMetrics::default());
        // Alternating: never 3 in a row, but 6 of 11 calls failed.
        for i in 0..11 {
            assert_eq!(b.state(), State::Closed, "call {i}");
            if i % 2 == 0 {
                let _ = fail(&b).await;
            } else {
                let _ = succeed(&b).await;
            }
        }
        assert_eq!(b.state(), State::Open);
    }

    #[tokio::test]
    async fn corrupt_values_busy_rows_and_disabled_breakers_never_open() {
        let b = Breaker::new("test", &config(), BreakerMetrics::default());
        for _ in 0..10 {
            let _ = b
                .call(async { Err::<(), _>(StoreError::corrupt("test", "bad")) })
                .await;
            let busy = StoreError::Busy {
                backend: "test",
                message: "held".into(),
            };
            let _ = b.call(async { Err::<(), _>(busy) }).await;
        }
        assert_eq!(b.state(), State::Closed);
        let off = Breaker::new(
            "test",
            &BreakerConfig {
                enabled: false,
                ..config()
            },
            BreakerMetrics::default(),
        );
        for _ in 0..10 {
            let _ = fail(&off).await;
        }
        assert!(matches!(
            fail(&off).await,
            Err(StoreError::Unavailable { .. })
        ));
    }

    #[test]
    fn spans_double_with_jitter_up_to_the_cap() {
        let c = config();
        for opens in 0..10 {
            let ceiling = Duration::from_millis((40u64 << opens).min(160));
            for _ in 0..50 {
                let s = open_span(&c, opens);
                assert!(s >= ceiling / 2 && s <= ceiling, "{opens}: {s:?}");
            }
        }
    }
}
