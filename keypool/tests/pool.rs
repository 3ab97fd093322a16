//! The key pool against the real PostgreSQL (a fresh database per test) and
//! SQLite: uniqueness under concurrent leasing, the refill lock, watermarks,
//! the lease buffer and the admin endpoints.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use edgelink_core::config::Config;
use edgelink_core::shutdown::CancellationToken;
use edgelink_core::store::postgres::PgStore;
use edgelink_core::store::sqlite::SqliteStore;
use edgelink_core::testing::TestDb;
use edgelink_keypool::lease::LeaseError;
use edgelink_keypool::metrics::KeypoolMetrics;
use edgelink_keypool::postgres::PgPool;
use edgelink_keypool::refill::Tick;
use edgelink_keypool::sqlite::SqlitePool;
use edgelink_keypool::store::PoolStore;
use edgelink_keypool::Keypool;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Full};

const TOKEN: &str = "test-admin-token-0123456789";

fn config(db: Option<&TestDb>) -> Config {
    let mut c = Config::default();
    c.postgres.url = db.map(|d| d.url.clone());
    c.postgres.pool_size = 8;
    c.postgres.timeout_ms = 10_000;
    c.keypool.low_watermark = 1_000;
    c.keypool.high_watermark = 5_000;
    c.keypool.batch_size = 2_000;
    c.keypool.check_interval_ms = 50;
    c.keypool.max_refill = 50_000;
    c.admin.token = Some(TOKEN.to_owned());
    c
}

async fn pg(db: &TestDb, c: &Config) -> Arc<dyn PoolStore> {
    PgStore::connect(&c.postgres)
        .await
        .unwrap()
        .migrate()
        .await
        .unwrap();
    let _ = db;
    Arc::new(PgPool::connect(&c.postgres).unwrap())
}

async fn sqlite(dir: &tempfile::TempDir, c: &mut Config) -> Arc<dyn PoolStore> {
    c.sqlite.path = dir.path().join("pool.db");
    c.sqlite.timeout_ms = 10_000;
    Arc::new(SqlitePool::new(SqliteStore::open(&c.sqlite).await.unwrap()))
}

async fn keypool(store: Arc<dyn PoolStore>, c: &Config) -> Keypool {
    Keypool::open(store, c, KeypoolMetrics::noop())
        .await
        .unwrap()
}

/// Fills the pool with exactly `n` keys through the refiller.
async fn fill(pool: &Keypool, n: u64) {
    pool.refiller.request(n);
    let tick = pool.refiller.tick(&CancellationToken::new()).await.unwrap();
    assert!(matches!(tick, Tick::Refilled(k) if k >= n), "{tick:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_leasers_never_get_the_same_key() {
    let db = TestDb::create().await;
    let c = config(Some(&db));
    let pool = keypool(pg(&db, &c).await, &c).await;
    fill(&pool, 20_000).await;
    let free = pool.store.free().await.unwrap();
    // Eight origins, each with its own connection pool, lease until empty.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store: Arc<dyn PoolStore> = Arc::new(PgPool::connect(&c.postgres).unwrap());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let keys = store.lease(97, 0).await.unwrap();
                if keys.is_empty() {
                    return mine;
                }
                mine.extend(keys);
            }
        }));
    }
    let mut all = Vec::new();
    let mut per_origin = Vec::new();
    for t in tasks {
        let keys = t.await.unwrap();
        per_origin.push(keys.len());
        all.extend(keys);
    }
    let distinct: HashSet<&String> = all.iter().collect();
    assert_eq!(all.len() as u64, free, "every free key was leased once");
    assert_eq!(distinct.len(), all.len(), "no key was leased twice");
    assert!(
        per_origin.iter().filter(|&&n| n > 0).count() >= 2,
        "the leasers ran side by side: {per_origin:?}"
    );
    assert!(all
        .iter()
        .all(|k| k.len() == 7 && edgelink_core::is_valid_code(k)));
    let counts = pool.store.counts().await.unwrap();
    assert_eq!(counts.free, 0);
    assert_eq!(counts.leased, free);
}

#[tokio::test]
async fn one_refiller_at_a_time_across_processes() {
    let db = TestDb::create().await;
    let c = config(Some(&db));
    let a = pg(&db, &c).await;
    let b: Arc<dyn PoolStore> = Arc::new(PgPool::connect(&c.postgres).unwrap());
    let held = a.begin_refill().await.unwrap().expect("the lock is free");
    assert!(
        b.begin_refill().await.unwrap().is_none(),
        "a second refiller waits"
    );
    // The other process's refiller reports Busy and keeps the manual request.
    let other = keypool(b.clone(), &c).await;
    other.refiller.request(10);
    assert_eq!(
        other
            .refiller
            .tick(&CancellationToken::new())
            .await
            .unwrap(),
        Tick::Busy
    );
    assert_eq!(other.refiller.pending(), 10);
    drop(held);
    let mut retried = None;
    for _ in 0..50 {
        match b.begin_refill().await.unwrap() {
            Some(s) => {
                retried = Some(s);
                break;
            }
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert!(retried.is_some(), "the lock is released with its session");
}

#[tokio::test]
async fn every_process_shares_one_keyspace() {
    let db = TestDb::create().await;
    let c = config(Some(&db));
    let a = pg(&db, &c).await;
    let b: Arc<dyn PoolStore> = Arc::new(PgPool::connect(&c.postgres).unwrap());
    let (sa, sb) = (a.keyspace(7).await.unwrap(), b.keyspace(7).await.unwrap());
    assert_eq!(sa.key(12_345), sb.key(12_345));
    let s8 = a.keyspace(8).await.unwrap();
    assert_eq!(
        s8.key(0).unwrap().len(),
        8,
        "another length is another space"
    );
}

async fn watermarks(store: Arc<dyn PoolStore>, c: &Config) {
    let pool = keypool(store, c).await;
    let stop = CancellationToken::new();
    assert_eq!(
        pool.refiller.tick(&stop).await.unwrap(),
        Tick::Refilled(5_000)
    );
    assert_eq!(pool.store.free().await.unwrap(), 5_000);
    assert_eq!(pool.refiller.tick(&stop).await.unwrap(), Tick::Idle);
    let taken = pool.store.lease(4_100, 0).await.unwrap();
    assert_eq!(taken.len(), 4_100);
    // Handed out in permutation order, not sorted: consecutive links get
    // unrelated-looking codes.
    let mut sorted = taken.clone();
    sorted.sort();
    assert_ne!(taken, sorted, "keys come out in generation order");
    let leading: HashSet<u8> = taken[..100].iter().map(|k| k.as_bytes()[0]).collect();
    assert!(
        leading.len() > 30,
        "the first 100 keys start with {} characters",
        leading.len()
    );
    // 900 left: under the low watermark, so back up to the high one.
    assert_eq!(
        pool.refiller.tick(&stop).await.unwrap(),
        Tick::Refilled(4_100)
    );
    let counts = pool.store.counts().await.unwrap();
    assert_eq!(counts.free, 5_000);
    assert_eq!(counts.leased, 4_100);
    assert!(counts.generated >= 9_100);
    let last = counts.last_refill.expect("a refill is recorded");
    assert_eq!(last.keys, 4_100);
    // Newly generated keys never repeat leased ones.
    let fresh = pool.store.lease(5_000, 0).await.unwrap();
    let old: HashSet<&String> = taken.iter().collect();
    assert!(fresh.iter().all(|k| !old.contains(k)));
    // A check that starts as the process stops adds nothing and leaves the
    // last refill on record.
    let stopped = CancellationToken::new();
    stopped.cancel();
    assert_eq!(
        pool.refiller.tick(&stopped).await.unwrap(),
        Tick::Refilled(0)
    );
    let last = pool.store.counts().await.unwrap().last_refill.unwrap();
    assert_eq!(last.keys, 4_100, "a refill of nothing is not recorded");
}

#[tokio::test]
async fn refills_between_the_watermarks_on_postgres() {
    let db = TestDb::create().await;
    let c = config(Some(&db));
    watermarks(pg(&db, &c).await, &c).await;
}

#[tokio::test]
async fn refills_between_the_watermarks_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(None);
    let store = sqlite(&dir, &mut c).await;
    watermarks(store, &c).await;
}

#[tokio::test]
async fn the_worker_refills_in_the_background_and_stops_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(None);
    let pool = keypool(sqlite(&dir, &mut c).await, &c).await;
    let stop = CancellationToken::new();
    let worker = tokio::spawn(pool.refiller.clone().run(stop.clone()));
    let mut free = 0;
    for _ in 0..100 {
        free = pool.store.free().await.unwrap();
        if free >= 5_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(free, 5_000);
    pool.refiller.request(3_000);
    for _ in 0..100 {
        free = pool.store.free().await.unwrap();
        if free >= 8_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(free, 8_000, "a manual refill adds what was asked");
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(2), worker)
        .await
        .expect("the worker stops on shutdown")
        .unwrap();
}

#[tokio::test]
async fn the_lease_buffer_hands_out_each_key_once_and_reports_use() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(None);
    c.keypool.low_watermark = 0; // only the 1,000 keys asked for below
    let pool = keypool(sqlite(&dir, &mut c).await, &c).await;
    fill(&pool, 1_000).await;
    let leaser = pool.leaser(100);
    let mut got = HashSet::new();
    for _ in 0..1_000 {
        let key = leaser.next(Duration::from_secs(2)).await.unwrap();
        assert!(got.insert(key), "a key came twice");
    }
    assert_eq!(
        leaser.next(Duration::from_millis(200)).await,
        Err(LeaseError::Empty),
        "an empty pool is an error, never a repeat"
    );
    let back = got.iter().next().unwrap().clone();
    leaser.give_back(back.clone());
    assert_eq!(leaser.next(Duration::ZERO).await.unwrap(), back);
    leaser.report().await;
    let counts = pool.store.counts().await.unwrap();
    assert_eq!(counts.leased, 1_000);
    assert_eq!(counts.used, 1_000);
}

fn auth(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    h
}

async fn call(
    pool: &Keypool,
    method: Method,
    path: &str,
    headers: &HeaderMap,
    body: &str,
) -> (StatusCode, serde_json::Value) {
    let resp = pool
        .admin
        .handle(
            &method,
            path,
            headers,
            Full::new(Bytes::from(body.to_owned())),
        )
        .await;
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn the_admin_endpoints_need_the_token_and_validate_input() {
    let db = TestDb::create().await;
    let c = config(Some(&db));
    let pool = keypool(pg(&db, &c).await, &c).await;
    let good = auth(TOKEN);

    for headers in [HeaderMap::new(), auth("wrong-token-0123456789abcd")] {
        let (status, body) = call(&pool, Method::GET, "/admin/keypool", &headers, "").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"]["code"], "unauthorized");
        let (status, _) = call(
            &pool,
            Method::POST,
            "/admin/keypool/refill",
            &headers,
            r#"{"count":5}"#,
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        pool.refiller.pending(),
        0,
        "nothing was asked without the token"
    );

    let (status, body) = call(
        &pool,
        Method::POST,
        "/admin/keypool/refill",
        &good,
        r#"{"count":3000}"#,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["pending"], 3000);
    pool.refiller.tick(&CancellationToken::new()).await.unwrap();
    let (status, body) = call(&pool, Method::GET, "/admin/keypool", &good, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["free"], 5_000, "{body}"); // the watermark fill covers the 3,000 asked
    assert_eq!(body["low_watermark"], 1_000);
    assert_eq!(body["high_watermark"], 5_000);
    assert_eq!(body["key_length"], 7);
    assert_eq!(body["last_refill"]["keys"], 5_000);
    assert!(body["last_refill"]["at"].as_str().unwrap().ends_with('Z'));

    for (payload, want) in [
        (r#"{"count":0}"#, StatusCode::UNPROCESSABLE_ENTITY),
        (r#"{"count":50001}"#, StatusCode::UNPROCESSABLE_ENTITY),
        (r#"{"count":-1}"#, StatusCode::BAD_REQUEST),
        (r#"{"count":5,"extra":1}"#, StatusCode::BAD_REQUEST),
        ("not json", StatusCode::BAD_REQUEST),
    ] {
        let (status, body) =
            call(&pool, Method::POST, "/admin/keypool/refill", &good, payload).await;
        assert_eq!(status, want, "{payload}: {body}");
        assert!(body["error"]["code"].is_string());
    }
    let big = format!(r#"{{"count":5,"pad":"{}"}}"#, "x".repeat(8_192));
    let (status, _) = call(&pool, Method::POST, "/admin/keypool/refill", &good, &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, _) = call(&pool, Method::DELETE, "/admin/keypool", &good, "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    // Without a configured token the endpoints do not exist.
    let mut open = c.clone();
    open.admin.token = None;
    let off = keypool(pool.store.clone(), &open).await;
    let (status, _) = call(&off, Method::GET, "/admin/keypool", &good, "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// A refiller whose database is unreachable keeps retrying, with backoff,
/// reports the error, and still stops at once on shutdown.
#[tokio::test]
async fn a_failing_refill_is_retried_with_backoff_and_reported() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut c = config(None);
    c.postgres.url = Some(format!(
        "postgres://postgres@{}/nowhere",
        dead.local_addr().unwrap()
    ));
    drop(dead); // nothing listens there now
    c.postgres.connect_timeout_ms = 200;
    c.postgres.timeout_ms = 300;
    let store: Arc<dyn PoolStore> = Arc::new(PgPool::connect(&c.postgres).unwrap());
    let recorder = edgelink_keypool::recorder();
    let prometheus = recorder.handle();
    let space = edgelink_keypool::keys::KeySpace::new(7, [7; 16]).unwrap();
    let refiller = edgelink_keypool::refill::Refiller::new(
        store,
        space,
        c.keypool.clone(),
        KeypoolMetrics::new(&recorder),
    );
    let stop = CancellationToken::new();
    let worker = tokio::spawn(refiller.clone().run(stop.clone()));
    let started = std::time::Instant::now();
    let errors = || {
        prometheus
            .render()
            .lines()
            .find_map(|l| l.strip_prefix("edgelink_keypool_refill_errors_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    while errors() < 3.0 && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(errors() >= 3.0, "retried: {} failures counted", errors());
    assert!(
        refiller.last_error().is_some(),
        "the admin endpoint can show why"
    );
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(2), worker)
        .await
        .expect("stops during its backoff")
        .unwrap();
}
