//! Fault injection under concurrent load (issue 5): each test breaks pieces
//! of its own (a redis-server it started, a TCP fault proxy in front of
//! PostgreSQL) and never the shared services, then asserts with numbers
//! what clients saw, and that the edge recovers within 5 s of the fault
//! ending.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use edgelink_core::store::postgres::PgStore;
use edgelink_core::store::redis::RedisCache;
use edgelink_core::testing::fault::{Fault, FaultProxy};
use edgelink_core::testing::redis::RedisServer;
use edgelink_core::{LinkCache, Stores};
use support::*;

const HOT: usize = 50;
const WORKERS: usize = 8;
/// Cold codes seeded: each is asked once, so a load ends when they run out
/// (on a fast machine before `run_for`).
const COLD: usize = 40_000;

fn breaker(backend: &str) -> String {
    format!(r#"edgelink_breaker_state{{backend="{backend}"}}"#)
}

fn opened(backend: &str) -> String {
    format!(r#"edgelink_breaker_transitions_total{{backend="{backend}",to="open"}}"#)
}

fn served(status: u16, tier: &str) -> String {
    format!(r#"edgelink_http_requests_total{{status="{status}",tier="{tier}"}}"#)
}

/// One request of a load run.
#[derive(Debug)]
struct Sample {
    cold: bool,
    status: u16,
    took: Duration,
    retry_after: bool,
}

/// `WORKERS` clients in a loop until `run_for` has passed or the `COLD`
/// cold codes are used up, alternating a hot code (in tier 0) and a cold
/// one (each asked once: a miss that goes to the backends).
async fn load(edge: Arc<TestEdge>, run_for: Duration) -> Vec<Sample> {
    let until = Instant::now() + run_for;
    let next_cold = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let edge = edge.clone();
        let next_cold = next_cold.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut i = w;
            while Instant::now() < until {
                let cold = i % 2 == 1;
                let path = if cold {
                    let n = next_cold.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n >= COLD {
                        break;
                    }
                    format!("/c{n}")
                } else {
                    format!("/h{}", i % HOT)
                };
                let started = Instant::now();
                let r = edge.get(&path).await;
                samples.push(Sample {
                    cold,
                    status: r.status.as_u16(),
                    took: started.elapsed(),
                    retry_after: r.header("retry-after").is_some(),
                });
                i += 1;
            }
            samples
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

fn p99(mut took: Vec<Duration>) -> Duration {
    took.sort();
    took.get((took.len() * 99 / 100).min(took.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

/// `HOT` hot codes (`h0`...), `cold` cold ones (`c0`...) and 1,000 for
/// recovery checks (`r0`...) in PostgreSQL.
async fn seed(stores: &Stores, cold: usize) {
    let mut links: Vec<_> = (0..HOT)
        .map(|i| link(&format!("h{i}"), &format!("https://example.com/h{i}")))
        .collect();
    links.extend((0..1000).map(|i| link(&format!("r{i}"), &format!("https://example.com/r{i}"))));
    links.extend((0..cold).map(|i| link(&format!("c{i}"), &format!("https://example.com/c{i}"))));
    for chunk in links.chunks(1000) {
        insert(stores.source.as_ref(), chunk).await;
    }
}

async fn warm(edge: &TestEdge) {
    for i in 0..HOT {
        assert_eq!(edge.get(&format!("/h{i}")).await.status, 302);
    }
}

/// An edge on PostgreSQL (fresh database, seeded) and Redis on a server of
/// our own, its hot codes in tier 0; with a handle on that Redis and the
/// edge's config.
async fn edge_with_own_redis(
    db: &TestDb,
    redis: &RedisServer,
) -> (Arc<TestEdge>, Arc<dyn LinkCache>, edgelink_core::Config) {
    let mut config = fault_config();
    let mut stores = distributed_stores(db, &mut config, false).await;
    config.redis.url = Some(redis.url());
    let cache: Arc<dyn LinkCache> = Arc::new(RedisCache::connect(&config.redis).await.unwrap());
    stores.cache = Some(cache.clone());
    seed(&stores, COLD).await;
    let edge = Arc::new(TestEdge::start(config.clone(), stores).await);
    warm(&edge).await;
    (edge, cache, config)
}

fn fault_config() -> edgelink_core::Config {
    let mut config = test_config();
    config.redis.timeout_ms = 200;
    config.redis.connect_timeout_ms = 200;
    config.postgres.timeout_ms = 500;
    config.postgres.connect_timeout_ms = 300;
    // The cold codes all come from one client.
    config.limits.not_found_per_sec = 0.0;
    config
}

/// Redis is killed mid-load: nothing fails (hot codes from tier 0, cold
/// ones from PostgreSQL), the p99 of misses stays within their budget, and
/// after a restart the breaker closes and Redis serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_fails_nothing_and_recovers() {
    let db = TestDb::create().await;
    let mut redis = RedisServer::start();
    let (edge, cache, config) = edge_with_own_redis(&db, &redis).await;

    let run = tokio::spawn(load(edge.clone(), Duration::from_secs(3)));
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.kill();
    let samples = run.await.unwrap();

    let failed: Vec<_> = samples.iter().filter(|s| s.status != 302).collect();
    let cold: Vec<_> = samples.iter().filter(|s| s.cold).map(|s| s.took).collect();
    let budget = Duration::from_millis(config.redis.timeout_ms + config.postgres.timeout_ms);
    eprintln!(
        "redis killed: {} requests ({} misses), {} failed, miss p99 {:?}, budget {budget:?}",
        samples.len(),
        cold.len(),
        failed.len(),
        p99(cold.clone())
    );
    assert!(samples.len() > 200 && cold.len() > 100, "the load ran");
    assert!(
        failed.is_empty(),
        "failed: {:?}",
        &failed[..failed.len().min(5)]
    );
    assert!(p99(cold) <= budget);
    assert!(
        edge.metric(&opened("redis")).await >= 1.0,
        "the breaker opened"
    );

    // Recovery: within 5 s of the restart a link only Redis has is served
    // from Redis, and the breaker is closed.
    redis.restart();
    let restarted = Instant::now();
    let recovered = until_redis_serves(&edge, cache.as_ref()).await;
    eprintln!("redis recovered in {:?}", restarted.elapsed());
    assert!(recovered, "Redis serves again within 5 s of its restart");
    assert!(edge.metric(&served(302, "redis")).await >= 1.0);
    Arc::into_inner(edge).unwrap().stop().await;
}

/// Redis frozen with SIGSTOP (connections open, no answers): no request
/// waits longer than the Redis timeout plus the PostgreSQL lookup, and
/// after SIGCONT Redis serves again within 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_costs_at_most_its_timeout_and_recovers() {
    let db = TestDb::create().await;
    let redis = RedisServer::start();
    let (edge, cache, config) = edge_with_own_redis(&db, &redis).await;

    redis.freeze();
    let samples = load(edge.clone(), Duration::from_secs(3)).await;
    let failed = samples.iter().filter(|s| s.status != 302).count();
    let slowest = samples.iter().map(|s| s.took).max().unwrap();
    // Timeouts are enforced by the edge; the margin is the scheduling of a
    // loaded 2-core machine, not slack in the budget.
    let budget = Duration::from_millis(config.redis.timeout_ms + config.postgres.timeout_ms);
    let cold: Vec<_> = samples.iter().filter(|s| s.cold).map(|s| s.took).collect();
    eprintln!(
        "redis frozen: {} requests, {failed} failed, slowest {slowest:?}, miss p99 {:?}, budget {budget:?}",
        samples.len(),
        p99(cold)
    );
    assert_eq!(failed, 0);
    assert!(
        slowest <= budget + Duration::from_millis(100),
        "{slowest:?}"
    );

    redis.thaw();
    let thawed = Instant::now();
    let recovered = until_redis_serves(&edge, cache.as_ref()).await;
    eprintln!("redis recovered in {:?}", thawed.elapsed());
    assert!(recovered, "Redis serves again within 5 s of SIGCONT");
    Arc::into_inner(edge).unwrap().stop().await;
}

/// Whether, within 5 s, a link only Redis holds is served from Redis with
/// its breaker closed. Each try writes a new code (a code asked while the
/// breaker was open went to PostgreSQL and is cached as unknown).
async fn until_redis_serves(edge: &TestEdge, cache: &dyn LinkCache) -> bool {
    let served_before = edge.metric(&served(302, "redis")).await;
    let mut n = 0;
    eventually(Duration::from_secs(5), || {
        n += 1;
        let code = format!("onlyredis{n}");
        async move {
            if cache
                .put(&link(&code, "https://example.com/onlyredis"))
                .await
                .is_err()
            {
                return false;
            }
            edge.get(&format!("/{code}")).await.status == 302
                && edge.metric(&served(302, "redis")).await > served_before
                && edge.metric(&breaker("redis")).await == 0.0
        }
    })
    .await
}

/// PostgreSQL behind the fault proxy, no Redis.
async fn pg_through(db: &TestDb, config: &mut edgelink_core::Config) -> (Stores, FaultProxy) {
    // Migrated directly, then used through the proxy.
    let direct = distributed_stores(db, config, false).await;
    seed(&direct, COLD).await;
    let (proxy, url) = db.behind_fault_proxy().await;
    config.postgres.url = Some(url);
    let pg = PgStore::connect(&config.postgres).await.unwrap();
    let stores = Stores {
        source: Arc::new(pg),
        cache: None,
        embedded: None,
    };
    (stores, proxy)
}

/// PostgreSQL blackholed mid-load: every tier-0 link is still served, also
/// past its TTL (stale-if-error), and misses get 503 with Retry-After
/// within the timeout. Healed, misses are served again within 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_blackholed_serves_tier0_and_503s_misses_then_recovers() {
    let db = TestDb::create().await;
    let mut config = fault_config();
    config.cache.ttl_secs = 1;
    config.cache.negative_ttl_secs = 1;
    let (stores, proxy) = pg_through(&db, &mut config).await;
    let edge = Arc::new(TestEdge::start(config.clone(), stores).await);
    warm(&edge).await;

    proxy.set(Fault::Blackhole);
    // 3 s: the hot links' 1 s TTL runs out during the fault.
    let samples = load(edge.clone(), Duration::from_secs(3)).await;
    let hot: Vec<_> = samples.iter().filter(|s| !s.cold).collect();
    let cold: Vec<_> = samples.iter().filter(|s| s.cold).collect();
    let hot_ok = hot.iter().filter(|s| s.status == 302).count();
    let cold_503 = cold
        .iter()
        .filter(|s| s.status == 503 && s.retry_after)
        .count();
    let slowest_miss = cold.iter().map(|s| s.took).max().unwrap();
    let stale = edge.metric("edgelink_stale_served_total").await;
    eprintln!(
        "postgres blackholed: {} hot ({hot_ok} served), {} misses ({cold_503} 503), slowest miss {slowest_miss:?}, {stale} stale answers",
        hot.len(),
        cold.len()
    );
    assert!(hot.len() > 100 && cold.len() > 100, "the load ran");
    assert_eq!(hot_ok, hot.len(), "100% of tier-0 links served");
    assert_eq!(cold_503, cold.len(), "every miss is a 503 with Retry-After");
    let timeout = Duration::from_millis(config.postgres.timeout_ms);
    assert!(
        slowest_miss <= timeout + Duration::from_millis(100),
        "{slowest_miss:?}"
    );
    assert!(stale > 0.0, "hot links were served past their TTL");
    assert!(
        edge.metric(&opened("postgres")).await >= 1.0,
        "the breaker opened"
    );

    proxy.set(Fault::Pass);
    let healed = Instant::now();
    let mut n = 0;
    let recovered = eventually(Duration::from_secs(5), || {
        n += 1;
        let path = format!("/r{n}");
        let edge = edge.clone();
        async move {
            edge.get(&path).await.status == 302 && edge.metric(&breaker("postgres")).await == 0.0
        }
    })
    .await;
    eprintln!("postgres recovered in {:?}", healed.elapsed());
    assert!(recovered, "misses served within 5 s of the fault ending");
    Arc::into_inner(edge).unwrap().stop().await;
}

/// The other ways a connection to PostgreSQL can fail — reset, closed
/// part-way through an answer, slower than the timeout — each give 503
/// within the timeout, never a hang or a wrong redirect, and each heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reset_truncated_or_slow_gives_prompt_503s_and_heals() {
    let db = TestDb::create().await;
    let mut config = fault_config();
    let (stores, proxy) = pg_through(&db, &mut config).await;
    let edge = Arc::new(TestEdge::start(config.clone(), stores).await);
    let timeout = Duration::from_millis(config.postgres.timeout_ms);
    let mut n = 0;
    for fault in [
        Fault::Reset,
        Fault::CloseAfter(64),
        Fault::Delay(timeout * 2),
    ] {
        proxy.set(fault);
        for _ in 0..10 {
            n += 1;
            let started = Instant::now();
            let r = edge.get(&format!("/c{n}")).await;
            let took = started.elapsed();
            assert_eq!(r.status, 503, "{fault:?}");
            assert!(r.header("location").is_none());
            assert!(
                took <= timeout + Duration::from_millis(100),
                "{fault:?}: {took:?}"
            );
        }
        proxy.set(Fault::Pass);
        let healed = Instant::now();
        let recovered = eventually(Duration::from_secs(5), || {
            n += 1;
            let path = format!("/r{n}");
            let edge = edge.clone();
            async move { edge.get(&path).await.status == 302 }
        })
        .await;
        eprintln!("{fault:?}: recovered in {:?}", healed.elapsed());
        assert!(recovered, "{fault:?}: healed within 5 s");
    }
    Arc::into_inner(edge).unwrap().stop().await;
}
