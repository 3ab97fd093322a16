//! The read path against the real tiers: SQLite, PostgreSQL, Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod support;

use std::time::Duration;

use edgelink_core::link::{from_unix, now_unix};
use edgelink_core::{RedirectStatus, MAX_CODE_LEN};
use http::Method;
use support::*;

const PG_LOOKUPS: &str = r#"edgelink_backend_lookups_total{backend="postgres"}"#;
const REDIS_LOOKUPS: &str = r#"edgelink_backend_lookups_total{backend="redis"}"#;
const SQLITE_LOOKUPS: &str = r#"edgelink_backend_lookups_total{backend="sqlite"}"#;

fn served(status: u16, tier: &str) -> String {
    format!(r#"edgelink_http_requests_total{{status="{status}",tier="{tier}"}}"#)
}

#[tokio::test]
async fn sqlite_serves_a_link_then_tier0_does() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config();
    let stores = sqlite_stores(&dir, &mut config).await;
    insert(
        stores.source.as_ref(),
        &[link("abc", "https://example.com/a?b=c")],
    )
    .await;
    let edge = TestEdge::start(config, stores).await;

    let r = edge.get("/abc").await;
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("https://example.com/a?b=c"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(r.body.is_empty());
    let r = edge.get("/abc").await;
    assert_eq!(r.status, 302);

    assert_eq!(edge.metric(&served(302, "sqlite")).await, 1.0);
    assert_eq!(edge.metric(&served(302, "memory")).await, 1.0);
    assert_eq!(edge.metric(SQLITE_LOOKUPS).await, 1.0);
    edge.stop().await;
}

#[tokio::test]
async fn postgres_hit_fills_redis_and_tier0_and_redis_serves_a_fresh_edge() {
    let db = TestDb::create().await;
    let mut config = test_config();
    let stores = distributed_stores(&db, &mut config, true).await;
    let redis = stores.cache.clone().unwrap();
    insert(
        stores.source.as_ref(),
        &[link("pg1", "https://example.com/pg")],
    )
    .await;
    let edge = TestEdge::start(config.clone(), stores.clone()).await;

    assert_eq!(edge.get("/pg1").await.status, 302);
    assert_eq!(edge.metric(&served(302, "postgres")).await, 1.0);
    assert_eq!(edge.metric(REDIS_LOOKUPS).await, 1.0, "redis asked first");
    assert!(
        eventually(Duration::from_secs(3), || async {
            cached(redis.as_ref(), "pg1").await.is_some()
        })
        .await,
        "the PostgreSQL hit is written back to Redis"
    );
    let in_redis = cached(redis.as_ref(), "pg1").await.unwrap();
    assert_eq!(in_redis.target, "https://example.com/pg");

    assert_eq!(edge.get("/pg1").await.status, 302);
    assert_eq!(edge.metric(&served(302, "memory")).await, 1.0);
    assert_eq!(edge.metric(PG_LOOKUPS).await, 1.0, "tier 0 answered");

    // A second edge has an empty tier 0: Redis answers, PostgreSQL is not asked.
    let fresh = TestEdge::start(config, stores).await;
    let r = fresh.get("/pg1").await;
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("https://example.com/pg"));
    assert_eq!(fresh.metric(&served(302, "redis")).await, 1.0);
    assert_eq!(fresh.metric(PG_LOOKUPS).await, 0.0);
    fresh.stop().await;
    edge.stop().await;
}

#[tokio::test]
async fn expired_and_disabled_links_are_gone() {
    let db = TestDb::create().await;
    let mut config = test_config();
    let stores = distributed_stores(&db, &mut config, false).await;
    let mut expired = link("old", "https://example.com/old");
    expired.expires_at = from_unix(now_unix() - 10);
    let mut disabled = link("off", "https://example.com/off");
    disabled.disabled = true;
    let mut soon = link("soon", "https://example.com/soon");
    soon.expires_at = from_unix(now_unix() + 2);
    insert(stores.source.as_ref(), &[expired, disabled, soon]).await;
    let edge = TestEdge::start(config, stores).await;

    for code in ["old", "off"] {
        let r = edge.get(&format!("/{code}")).await;
        assert_eq!(r.status, 410, "{code}");
        assert_eq!(r.json()["error"]["code"], "gone");
        assert_eq!(r.header("cache-control"), Some("no-store"));
    }
    // A live link in tier 0 turns 410 the second it expires, not when its
    // cache entry does.
    let r = edge.get("/soon").await;
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("cache-control"),
        Some("no-store"),
        "expiring links are not cacheable"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            edge.get("/soon").await.status == 410
        })
        .await
    );
    assert!(edge.metric(&served(410, "memory")).await >= 1.0);
    edge.stop().await;
}

#[tokio::test]
async fn invalid_codes_are_404_without_touching_any_tier() {
    let db = TestDb::create().await;
    let mut config = test_config();
    let stores = distributed_stores(&db, &mut config, true).await;
    let edge = TestEdge::start(config, stores).await;
    let too_long = format!("/{}", "a".repeat(MAX_CODE_LEN + 1));
    for path in [
        "/",
        "/a.b",
        "/a%20b",
        "/%C3%A9",
        "/a/b",
        "/api/v1/links",
        "/admin/keypool",
        "/abc/",
        too_long.as_str(),
    ] {
        let r = edge.get(path).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.json()["error"]["code"], "not_found", "{path}");
    }
    assert_eq!(edge.metric(PG_LOOKUPS).await, 0.0);
    assert_eq!(edge.metric(REDIS_LOOKUPS).await, 0.0);
    assert_eq!(edge.metric("edgelink_cache_misses_total").await, 0.0);
    assert_eq!(edge.metric("edgelink_cache_hits_total").await, 0.0);
    assert_eq!(edge.metric(&served(404, "none")).await, 9.0);
    edge.stop().await;
}

#[tokio::test]
async fn codes_at_the_length_limit_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config();
    let stores = sqlite_stores(&dir, &mut config).await;
    let longest = "L".repeat(MAX_CODE_LEN);
    insert(
        stores.source.as_ref(),
        &[link(&longest, "https://example.com/long")],
    )
    .await;
    let edge = TestEdge::start(config, stores).await;
    assert_eq!(edge.get(&format!("/{longest}")).await.status, 302);
    assert_eq!(edge.get(&format!("/{longest}L")).await.status, 404);
    assert_eq!(
        edge.metric(SQLITE_LOOKUPS).await,
        1.0,
        "only the valid one was looked up"
    );
    edge.stop().await;
}

#[tokio::test]
async fn unknown_codes_are_cached_negatively() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config();
    let stores = sqlite_stores(&dir, &mut config).await;
    let edge = TestEdge::start(config, stores).await;
    for _ in 0..5 {
        let r = edge.get("/nosuch").await;
        assert_eq!(r.status, 404);
        assert_eq!(r.json()["error"]["code"], "not_found");
    }
    assert_eq!(edge.metric(SQLITE_LOOKUPS).await, 1.0);
    assert_eq!(edge.metric(&served(404, "memory")).await, 4.0);
    edge.stop().await;
}

#[tokio::test]
async fn head_gets_headers_only_and_other_methods_405() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config();
    let stores = sqlite_stores(&dir, &mut config).await;
    insert(
        stores.source.as_ref(),
        &[link("h", "https://example.com/h")],
    )
    .await;
    let edge = TestEdge::start(config, stores).await;

    let r = edge.request(Method::HEAD, "/h").await;
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("https://example.com/h"));
    assert!(r.body.is_empty());
    let r = edge.request(Method::HEAD, "/missing").await;
    assert_eq!(r.status, 404);
    assert!(r.body.is_empty());

    let r = edge.request(Method::POST, "/h").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    edge.stop().await;
}

#[tokio::test]
async fn redirect_status_and_cache_control_follow_the_link() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config();
    config.redirect.permanent_max_age_secs = 600;
    let stores = sqlite_stores(&dir, &mut config).await;
    let mut links = Vec::new();
    for s in RedirectStatus::ALL {
        let mut l = link(&format!("s{}", s.code()), "https://example.com/s");
        l.redirect = s;
        links.push(l);
    }
    insert(stores.source.as_ref(), &links).await;
    let edge = TestEdge::start(config, stores).await;
    for s in RedirectStatus::ALL {
        let r = edge.get(&format!("/s{}", s.code())).await;
        assert_eq!(r.status.as_u16(), s.code());
        let expected = if s.is_permanent() {
            "public, max-age=600"
        } else {
            "no-store"
        };
        assert_eq!(r.header("cache-control"), Some(expected), "{s}");
    }
    edge.stop().await;
}

/// 1,000 requests for one uncached code, all waiting at once, make exactly
/// one PostgreSQL query (and one Redis GET). The links table is locked while
/// they arrive, so the lookup cannot finish early and let later requests hit
/// a filled cache instead: only single-flight can pass this.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_for_one_code_make_one_backend_query() {
    const N: usize = 1_000;
    let db = TestDb::create().await;
    let mut config = test_config();
    config.postgres.timeout_ms = 30_000;
    config.redis.timeout_ms = 5_000;
    // Each miss in flight holds one of the client's 404 tokens until its
    // lookup ends; this test is about coalescing, not that budget.
    config.limits.not_found_per_sec = 0.0;
    let stores = distributed_stores(&db, &mut config, true).await;
    insert(
        stores.source.as_ref(),
        &[link("hot", "https://example.com/hot")],
    )
    .await;
    let edge = std::sync::Arc::new(TestEdge::start(config, stores).await);
    // Warm the pool so no connection has to be opened (and its statement
    // prepared) while the table is locked.
    assert_eq!(edge.get("/warmup").await.status, 404);
    let pg_before = edge.metric(PG_LOOKUPS).await;
    let redis_before = edge.metric(REDIS_LOOKUPS).await;

    let locker = db.client().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE links IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();

    let requests: Vec<_> = (0..N)
        .map(|_| {
            let edge = edge.clone();
            tokio::spawn(async move { edge.get("/hot").await })
        })
        .collect();
    let all_waiting = eventually(Duration::from_secs(60), || async {
        edge.metric("edgelink_http_requests_in_flight").await >= N as f64
    })
    .await;
    let waiting_on_lock: i64 = locker
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
            &[&db.name],
        )
        .await
        .unwrap()
        .get(0);
    locker.batch_execute("COMMIT").await.unwrap();
    let mut ok = 0;
    for r in requests {
        let r = r.await.unwrap();
        assert_eq!(r.status, 302);
        assert_eq!(r.header("location"), Some("https://example.com/hot"));
        ok += 1;
    }
    assert!(all_waiting, "all {N} requests were in flight together");
    assert_eq!(waiting_on_lock, 1, "one query waited on the lock");
    assert_eq!(ok, N);
    assert_eq!(edge.metric(PG_LOOKUPS).await - pg_before, 1.0);
    assert_eq!(edge.metric(REDIS_LOOKUPS).await - redis_before, 1.0);
    std::sync::Arc::into_inner(edge).unwrap().stop().await;
}

#[tokio::test]
async fn readiness_reports_each_backend() {
    let db = TestDb::create().await;
    let mut config = test_config();
    let stores = distributed_stores(&db, &mut config, true).await;
    let edge = TestEdge::start(config.clone(), stores).await;
    let r = edge.get("/readyz").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ready");
    assert_eq!(r.json()["backends"]["postgres"], "up");
    assert_eq!(r.json()["backends"]["redis"], "up");
    assert_eq!(edge.get("/healthz").await.status, 200);
    edge.stop().await;

    // Redis unreachable: still ready (PostgreSQL serves), reported degraded.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("redis://{}", dead.local_addr().unwrap());
    drop(dead);
    config.redis.url = Some(dead_url);
    config.redis.connect_timeout_ms = 200;
    config.redis.timeout_ms = 300;
    let mut stores = distributed_stores(&db, &mut config.clone(), false).await;
    stores.cache = Some(std::sync::Arc::new(
        edgelink_core::store::redis::RedisCache::connect(&config.redis)
            .await
            .unwrap(),
    ));
    insert(
        stores.source.as_ref(),
        &[link("deg", "https://example.com/deg")],
    )
    .await;
    let edge = TestEdge::start(config, stores).await;
    let r = edge.get("/readyz").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "degraded");
    assert!(r.json()["backends"]["redis"]
        .as_str()
        .unwrap()
        .starts_with("down"));
    let r = edge.get("/deg").await;
    assert_eq!(r.status, 302, "served from PostgreSQL with Redis down");
    assert_eq!(edge.metric(&served(302, "postgres")).await, 1.0);
    edge.stop().await;
}

#[tokio::test]
async fn source_of_truth_down_means_503_with_retry_after_and_no_caching() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = test_config();
    config.postgres.url = Some(format!(
        "postgres://postgres@{}/test",
        dead.local_addr().unwrap()
    ));
    drop(dead);
    config.postgres.connect_timeout_ms = 200;
    config.postgres.timeout_ms = 500;
    let pg = edgelink_core::store::postgres::PgStore::connect(&config.postgres)
        .await
        .unwrap();
    let stores = edgelink_core::Stores {
        source: std::sync::Arc::new(pg),
        cache: None,
        embedded: None,
    };
    let edge = TestEdge::start(config.clone(), stores).await;
    for _ in 0..2 {
        let started = std::time::Instant::now();
        let r = edge.get("/anything").await;
        assert_eq!(r.status, 503);
        assert_eq!(r.header("retry-after"), Some("1"));
        assert_eq!(r.json()["error"]["code"], "unavailable");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    assert_eq!(
        edge.metric(PG_LOOKUPS).await,
        2.0,
        "failures are not cached"
    );
    assert_eq!(edge.get("/readyz").await.status, 503);
    edge.stop().await;

    // Where every edge shares that source (Kubernetes readiness), they stay
    // in rotation, degraded, to give what tier 0 still has.
    let pg = edgelink_core::store::postgres::PgStore::connect(&config.postgres)
        .await
        .unwrap();
    config.server.ready_needs_source = false;
    let stores = edgelink_core::Stores {
        source: std::sync::Arc::new(pg),
        cache: None,
        embedded: None,
    };
    let edge = TestEdge::start(config, stores).await;
    let r = edge.get("/readyz").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "degraded");
    edge.stop().await;
}

#[tokio::test]
async fn shutdown_turns_readiness_off_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config();
    let stores = sqlite_stores(&dir, &mut config).await;
    insert(
        stores.source.as_ref(),
        &[link("bye", "https://example.com/bye")],
    )
    .await;
    let edge = TestEdge::start(config, stores).await;
    assert_eq!(edge.get("/bye").await.status, 302);
    let addr = edge.addr;
    tokio::time::timeout(Duration::from_secs(5), edge.stop())
        .await
        .expect("run returns after shutdown");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_core_listeners_share_the_port_the_cache_and_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config();
    let stores = sqlite_stores(&dir, &mut config).await;
    insert(
        stores.source.as_ref(),
        &[link("pc", "https://example.com/pc")],
    )
    .await;
    let edge = std::sync::Arc::new(TestEdge::start_with(config, stores, 3).await);
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let edge = edge.clone();
        tasks.push(tokio::spawn(async move { edge.get("/pc").await.status }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 302);
    }
    // One tier 0 for all threads: a single lookup however the kernel spread
    // the connections.
    assert_eq!(edge.metric(SQLITE_LOOKUPS).await, 1.0);
    let edge = std::sync::Arc::into_inner(edge).unwrap();
    let addr = edge.addr;
    tokio::time::timeout(Duration::from_secs(5), edge.stop())
        .await
        .expect("every listener thread stops");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// A change published on the shared cache's invalidation channel reaches a
/// running edge's tier 0 within a second; without it the edge would keep
/// the cached answer for `cache.ttl_secs`.
#[tokio::test]
async fn published_invalidations_reach_tier0_within_a_second() {
    use edgelink_core::store::LinkPatch;
    let db = edgelink_core::testing::TestDb::create().await;
    let mut config = test_config();
    config.cache.ttl_secs = 3_600;
    let stores = distributed_stores(&db, &mut config, true).await;
    let source = stores.source.clone();
    let cache = stores.cache.clone().unwrap();
    insert(
        source.as_ref(),
        &[link("moving", "https://example.com/old")],
    )
    .await;
    let edge = TestEdge::start(config, stores).await;
    assert_eq!(
        edge.get("/moving").await.header("location"),
        Some("https://example.com/old")
    );
    // Let the subscription settle, then change the link as an origin would:
    // commit, then forget (DEL + PUBLISH).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let patch = LinkPatch {
        target: Some("https://example.com/new".to_owned()),
        ..LinkPatch::default()
    };
    source.update("moving", &patch).await.unwrap().unwrap();
    assert_eq!(
        edge.get("/moving").await.header("location"),
        Some("https://example.com/old"),
        "still the cached answer before the invalidation"
    );
    cache.forget("moving").await.unwrap();
    let started = std::time::Instant::now();
    let mut location = None;
    while started.elapsed() < Duration::from_secs(1) {
        location = edge
            .get("/moving")
            .await
            .header("location")
            .map(str::to_owned);
        if location.as_deref() == Some("https://example.com/new") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        location.as_deref(),
        Some("https://example.com/new"),
        "within 1 s"
    );
    source.delete("moving").await.unwrap();
    cache.forget("moving").await.unwrap();
    let started = std::time::Instant::now();
    let mut status = 0;
    while started.elapsed() < Duration::from_secs(1) {
        status = edge.get("/moving").await.status.as_u16();
        if status == 410 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 410, "a deleted link answers 410 within 1 s");
}
