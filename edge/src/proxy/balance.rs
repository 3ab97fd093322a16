//! Which host takes a request: least outstanding or round robin over the
//! hosts in service, passive ejection (each host's circuit breaker, with
//! probation), the active health checks, and the retry budget.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Weak;
use std::time::Duration;

use edgelink_core::config::Balance;
use edgelink_core::shutdown::CancellationToken;
use http::Request;

use super::{Proxy, ReqBody, Upstream};

impl Proxy {
    /// A host for the next attempt, not one already tried.
    pub(super) fn pick(&self, tried: &[usize]) -> Option<usize> {
        let now = self.now_ms();
        let usable = |i: usize| {
            let u = &self.upstreams[i];
            // Half-open: one probe at a time.
            let probe_in_flight =
                u.probation.load(Ordering::Relaxed) && u.probing.load(Ordering::Relaxed);
            !tried.contains(&i)
                && !u.unhealthy.load(Ordering::Relaxed)
                && u.ejected_until.load(Ordering::Relaxed) <= now
                && !probe_in_flight
        };
        let n = self.upstreams.len();
        match self.config.balance {
            Balance::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n).map(|k| (start + k) % n).find(|&i| usable(i))
            }
            Balance::LeastOutstanding => {
                let candidates: Vec<usize> = (0..n).filter(|&i| usable(i)).collect();
                match candidates.len() {
                    0 => None,
                    1 => Some(candidates[0]),
                    len => {
                        let a = rand::random_range(0..len);
                        let b = (a + rand::random_range(1..len)) % len;
                        let load = |i: usize| {
                            self.upstreams[candidates[i]]
                                .outstanding
                                .load(Ordering::Relaxed)
                        };
                        Some(candidates[if load(b) < load(a) { b } else { a }])
                    }
                }
            }
        }
    }

    /// Outlier detection: a success resets the count, a failure may eject.
    pub(super) fn record(&self, index: usize, ok: bool) {
        let u = &self.upstreams[index];
        if ok {
            u.consecutive_failures.store(0, Ordering::Relaxed);
            if u.probation.swap(false, Ordering::Relaxed) {
                u.times_ejected.store(0, Ordering::Relaxed);
                self.metrics.readmitted.increment(1);
                tracing::info!(upstream = %u.base, "upstream readmitted: its probe succeeded");
            }
            return;
        }
        let failures = u.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let probe_failed = u.probation.load(Ordering::Relaxed);
        if failures < self.config.eject_consecutive_failures && !probe_failed {
            return;
        }
        let now = self.now_ms();
        let ejected_now = self
            .upstreams
            .iter()
            .filter(|u| u.ejected_until.load(Ordering::Relaxed) > now)
            .count();
        let cap = (self.upstreams.len() * self.config.max_ejection_percent as usize / 100).max(1);
        if ejected_now >= cap || u.ejected_until.load(Ordering::Relaxed) > now {
            return;
        }
        let times = u.times_ejected.fetch_add(1, Ordering::Relaxed) + 1;
        let span = self
            .config
            .eject_base_ms
            .saturating_mul(u64::from(times))
            .min(self.config.eject_max_ms);
        u.ejected_until.store(now + span, Ordering::Relaxed);
        u.consecutive_failures.store(0, Ordering::Relaxed);
        u.probation.store(true, Ordering::Relaxed);
        self.metrics.ejections.increment(1);
        tracing::warn!(upstream = %u.base, times, ms = span, "upstream ejected");
    }

    pub(super) fn retry_budget_allows(&self) -> bool {
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        let budget = (in_flight * self.config.retry_budget_percent as usize / 100).max(3);
        self.retries_in_flight.load(Ordering::Relaxed) < budget
    }
}

/// Runs the active health checks while the proxy lives.
pub(super) async fn health_checks(proxy: Weak<Proxy>, shutdown: CancellationToken) {
    let Some(interval) = proxy
        .upgrade()
        .map(|p| Duration::from_millis(p.config.health_check_interval_ms))
    else {
        return;
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(proxy) = proxy.upgrade() else { return };
        let checks = proxy.upstreams.iter().map(|u| check(&proxy, u));
        futures_util::future::join_all(checks).await;
    }
}

pub(super) async fn check(proxy: &Proxy, u: &Upstream) {
    let c = &proxy.config;
    let uri = format!(
        "{}{}",
        u.base.to_string().trim_end_matches('/'),
        c.health_check_path
    );
    let Ok(req) = Request::get(uri).body(ReqBody::Empty) else {
        return;
    };
    let timeout = Duration::from_millis(c.health_check_timeout_ms);
    let passed = matches!(
        tokio::time::timeout(timeout, proxy.client.request(req)).await,
        Ok(Ok(resp)) if resp.status().is_success()
    );
    if passed {
        u.check_failures.store(0, Ordering::Relaxed);
        let passes = u.check_passes.fetch_add(1, Ordering::Relaxed) + 1;
        if passes >= c.healthy_threshold && u.unhealthy.swap(false, Ordering::Relaxed) {
            tracing::info!(upstream = %u.base, "upstream healthy again");
        }
    } else {
        u.check_passes.store(0, Ordering::Relaxed);
        let failures = u.check_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= c.unhealthy_threshold && !u.unhealthy.swap(true, Ordering::Relaxed) {
            tracing::warn!(upstream = %u.base, "upstream failing its health check");
        }
    }
}

/// Marks a request to a host on probation as its probe while it is in
/// flight, however the request ends.
pub(super) struct Probe<'a>(Option<&'a AtomicBool>);

impl<'a> Probe<'a> {
    pub(super) fn claim(u: &'a Upstream) -> Probe<'a> {
        if !u.probation.load(Ordering::Relaxed) {
            return Probe(None);
        }
        u.probing.store(true, Ordering::Relaxed);
        Probe(Some(&u.probing))
    }
}

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        if let Some(probing) = self.0 {
            probing.store(false, Ordering::Relaxed);
        }
    }
}

pub(super) struct Decrement<'a>(pub(super) &'a AtomicUsize);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
