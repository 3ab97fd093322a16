//! Retry pacing shared by every loop that reconnects or retries a backend
//! (the key pool's refill worker, the edge's invalidation subscription and
//! its reverse proxy).

use std::time::Duration;

/// The first retry waits up to this long...
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// ...doubling per failure up to this.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// The delay before retry number `failures` (1-based): uniform in
/// `0..=min(BACKOFF_CAP, BACKOFF_BASE * 2^(failures - 1))` ("full jitter",
/// so many clients that failed together do not retry together).
pub fn backoff(failures: u32) -> Duration {
    backoff_from(BACKOFF_BASE, BACKOFF_CAP, failures)
}

/// [`backoff`] with another first ceiling and cap (the edge's proxy retries
/// start at `proxy.retry_backoff_ms`).
pub fn backoff_from(base: Duration, cap: Duration, failures: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    exp.min(cap).mul_f64(rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_under_an_exponential_ceiling() {
        for failures in 1..40 {
            let ceiling = BACKOFF_BASE
                .saturating_mul(1 << (failures - 1).min(20))
                .min(BACKOFF_CAP);
            for _ in 0..50 {
                assert!(backoff(failures) <= ceiling);
            }
        }
        let spread: std::collections::HashSet<Duration> = (0..20).map(|_| backoff(10)).collect();
        assert!(spread.len() > 10, "jitter spreads retries");
        assert!(backoff(1) <= Duration::from_millis(100));
    }
}
