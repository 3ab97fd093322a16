//! Per-client-IP token buckets and the client IP itself.
//!
//! An IPv6 client is keyed by its prefix (`limits.ipv6_prefix_len`, a /64
//! by default: one host usually holds a whole /64, so per address it would
//! have millions of fresh buckets); an IPv4-mapped IPv6 address is its IPv4
//! address. Buckets live in 32 shards, each a small `Mutex<HashMap>`; only the
//! creation API and 404 answers consult them, never a tier-0 redirect hit.
//! A shard that reaches its share of `max_tracked_clients` first forgets
//! the buckets that have refilled (they are the same as no bucket); if it is
//! still full, clients it cannot track share one overflow bucket, so memory
//! stays bounded however many addresses a scan comes from.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use edgelink_core::ipnet::IpNet;
use http::HeaderMap;

const SHARDS: usize = 32;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug)]
struct Shard {
    buckets: HashMap<IpAddr, Bucket>,
    overflow: Bucket,
}

/// One rate limit: `per_sec` tokens a second per client, up to `burst`.
#[derive(Debug)]
pub struct RateLimit {
    per_sec: f64,
    burst: f64,
    /// Bits of an IPv6 address that name the client.
    v6_mask: u128,
    per_shard: usize,
    hasher: RandomState,
    shards: Vec<Mutex<Shard>>,
}

impl RateLimit {
    /// `None` when `per_sec` is 0 (no limit). IPv6 clients are keyed by
    /// their first `ipv6_prefix_len` bits.
    pub fn new(
        per_sec: f64,
        burst: u32,
        max_clients: usize,
        ipv6_prefix_len: u8,
    ) -> Option<RateLimit> {
        if per_sec <= 0.0 {
            return None;
        }
        let now = Instant::now();
        let burst = f64::from(burst.max(1));
        let v6_mask = match ipv6_prefix_len.min(128) {
            0 => 0,
            bits => u128::MAX << (128 - u32::from(bits)),
        };
        Some(RateLimit {
            per_sec,
            burst,
            v6_mask,
            per_shard: max_clients.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        buckets: HashMap::new(),
                        overflow: Bucket {
                            tokens: burst,
                            at: now,
                        },
                    })
                })
                .collect(),
        })
    }

    /// Takes a token for `ip`: `Err(wait)` when there is none, with how long
    /// until there is one (for `Retry-After`).
    pub fn take(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        self.take_n(ip, 1, now)
    }

    /// Takes `n` tokens at once (a batch of `n` links): possible when the
    /// bucket holds `n`, or is full when `n` is more than a burst; the
    /// bucket may then go below zero, and the client waits for the whole
    /// `n` before its next token.
    pub fn take_n(&self, ip: IpAddr, n: u32, now: Instant) -> Result<(), Duration> {
        let n = f64::from(n);
        let need = n.min(self.burst);
        self.with_bucket(ip, now, |b| {
            if b.tokens >= need {
                b.tokens -= n;
                Ok(())
            } else {
                Err(Duration::from_secs_f64((need - b.tokens) / self.per_sec))
            }
        })
    }

    /// Whether `ip` has a token now, taking none: `Err(wait)` as for
    /// [`RateLimit::take`].
    pub fn ready(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        self.with_bucket(ip, now, |b| {
            if b.tokens >= 1.0 {
                Ok(())
            } else {
                Err(Duration::from_secs_f64((1.0 - b.tokens) / self.per_sec))
            }
        })
    }

    /// The bucket key of `ip`: IPv4 as is (IPv4-mapped IPv6 too), IPv6 by
    /// its prefix.
    fn key(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & self.v6_mask)),
            },
        }
    }

    /// Gives back a token [`RateLimit::take`] took for something that did
    /// not count after all (a lookup that found a link).
    pub fn refund(&self, ip: IpAddr, now: Instant) {
        self.refund_n(ip, 1, now);
    }

    /// Gives back `n` tokens (a batch the API refused whole).
    pub fn refund_n(&self, ip: IpAddr, n: u32, now: Instant) {
        let burst = self.burst;
        self.with_bucket(ip, now, |b| b.tokens = (b.tokens + f64::from(n)).min(burst));
    }

    fn with_bucket<T>(&self, ip: IpAddr, now: Instant, f: impl FnOnce(&mut Bucket) -> T) -> T {
        let ip = self.key(ip);
        let shard = &self.shards[(self.hasher.hash_one(ip) as usize) % SHARDS];
        let mut shard = shard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (per_sec, burst) = (self.per_sec, self.burst);
        let refill = |b: &mut Bucket| {
            let dt = now.saturating_duration_since(b.at).as_secs_f64();
            b.tokens = (b.tokens + dt * per_sec).min(burst);
            b.at = now;
        };
        if !shard.buckets.contains_key(&ip) && shard.buckets.len() >= self.per_shard {
            // Forget the clients whose buckets are full again.
            let full_after = Duration::from_secs_f64(burst / per_sec);
            shard
                .buckets
                .retain(|_, b| now.saturating_duration_since(b.at) < full_after);
        }
        if shard.buckets.len() >= self.per_shard && !shard.buckets.contains_key(&ip) {
            refill(&mut shard.overflow);
            return f(&mut shard.overflow);
        }
        let bucket = shard.buckets.entry(ip).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        refill(bucket);
        f(bucket)
    }

    /// Clients tracked now (for tests and the metrics loop).
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |s| s.buckets.len()))
            .sum()
    }
}

/// The client's address: the socket's peer, or, when the peer is a trusted
/// proxy, the right-most address in `X-Forwarded-For` that is not itself a
/// trusted proxy.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    let peer_ip = peer.ip();
    if trusted.is_empty() || !is_trusted(peer_ip) {
        return peer_ip;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for hop in hops.iter().rev() {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) if is_trusted(ip) => continue,
            Ok(ip) => return ip,
            // A hop we cannot read: nothing left of it can be believed.
            Err(_) => break,
        }
    }
    peer_ip
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|_| panic!("{s}"))
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let Some(limit) = RateLimit::new(2.0, 3, 100, 64) else {
            panic!("a limit")
        };
        let t0 = Instant::now();
        let a = ip("10.0.0.1");
        for _ in 0..3 {
            assert_eq!(limit.take(a, t0), Ok(()));
        }
        let wait = limit.take(a, t0).err().unwrap_or_default();
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(500));
        // Another client has its own bucket.
        assert_eq!(limit.take(ip("10.0.0.2"), t0), Ok(()));
        // Half a second later one token is back.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(limit.take(a, t1), Ok(()));
        assert!(limit.take(a, t1).is_err());
        // A refund makes one more possible, never more than the burst.
        limit.refund(a, t1);
        assert_eq!(limit.take(a, t1), Ok(()));
        for _ in 0..10 {
            limit.refund(a, t1);
        }
        for _ in 0..3 {
            assert_eq!(limit.take(a, t1), Ok(()));
        }
        assert!(limit.take(a, t1).is_err());
    }

    #[test]
    fn an_ipv6_prefix_is_one_client_and_mapped_ipv4_is_its_ipv4() {
        let Some(limit) = RateLimit::new(1.0, 2, 100, 64) else {
            panic!("a limit")
        };
        let t0 = Instant::now();
        // Two addresses of one /64: one bucket of two tokens.
        assert_eq!(limit.take(ip("2001:db8:1:2::1"), t0), Ok(()));
        assert_eq!(limit.take(ip("2001:db8:1:2:ffff::9"), t0), Ok(()));
        assert!(limit.take(ip("2001:db8:1:2::abcd"), t0).is_err());
        // The next /64 is another client.
        assert_eq!(limit.take(ip("2001:db8:1:3::1"), t0), Ok(()));
        // An IPv4-mapped address is the IPv4 client.
        assert_eq!(limit.take(ip("192.0.2.7"), t0), Ok(()));
        assert_eq!(limit.take(ip("::ffff:192.0.2.7"), t0), Ok(()));
        assert!(limit.take(ip("192.0.2.7"), t0).is_err());
        // A /128 tells every address apart.
        let Some(exact) = RateLimit::new(1.0, 1, 100, 128) else {
            panic!("a limit")
        };
        assert_eq!(exact.take(ip("2001:db8::1"), t0), Ok(()));
        assert_eq!(exact.take(ip("2001:db8::2"), t0), Ok(()));
    }

    #[test]
    fn a_batch_takes_a_token_per_link_and_may_run_into_debt() {
        let Some(limit) = RateLimit::new(10.0, 5, 100, 64) else {
            panic!("a limit")
        };
        let t0 = Instant::now();
        let a = ip("10.0.0.1");
        assert_eq!(limit.take_n(a, 3, t0), Ok(()));
        // Two left: a batch of three waits for the third.
        let wait = limit.take_n(a, 3, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        assert_eq!(limit.ready(a, t0), Ok(()));
        // A batch over the burst needs a full bucket, then leaves a debt.
        let t1 = t0 + Duration::from_secs(1);
        assert!(limit.take_n(a, 8, t0).is_err());
        assert_eq!(limit.take_n(a, 8, t1), Ok(()));
        let wait = limit.ready(a, t1).unwrap_err();
        assert!((wait.as_secs_f64() - 0.4).abs() < 1e-9, "{wait:?}");
        assert!(limit.take(a, t1 + Duration::from_millis(390)).is_err());
        assert_eq!(limit.take(a, t1 + Duration::from_millis(400)), Ok(()));
    }

    #[test]
    fn tracking_is_bounded() {
        let Some(limit) = RateLimit::new(1.0, 1, 64, 64) else {
            panic!("a limit")
        };
        let t0 = Instant::now();
        for i in 0..10_000u32 {
            let _ = limit.take(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(limit.tracked() <= 64 + SHARDS, "{}", limit.tracked());
        // Long after, the full buckets are forgotten to make room.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(limit.take(ip("192.0.2.1"), later), Ok(()));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap_or_else(|e| panic!("{e}"))];
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "203.0.113.9, 10.1.1.1".parse().unwrap_or_else(|_| panic!()),
        );
        let proxy: SocketAddr = "10.0.0.5:4000".parse().unwrap_or_else(|_| panic!());
        let stranger: SocketAddr = "198.51.100.7:4000".parse().unwrap_or_else(|_| panic!());
        assert_eq!(client_ip(proxy, &h, &trusted), ip("203.0.113.9"));
        assert_eq!(client_ip(stranger, &h, &trusted), ip("198.51.100.7"));
        assert_eq!(client_ip(proxy, &h, &[]), ip("10.0.0.5"));
        assert_eq!(
            client_ip(proxy, &HeaderMap::new(), &trusted),
            ip("10.0.0.5")
        );
        h.insert(
            "x-forwarded-for",
            "junk, 10.1.1.1".parse().unwrap_or_else(|_| panic!()),
        );
        assert_eq!(client_ip(proxy, &h, &trusted), ip("10.0.0.5"));
    }
}
