//! The storage backends against the real PostgreSQL and Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::sync::Arc;
use std::time::{Duration, Instant};

use bb8_redis::redis::AsyncCommands;
use edgelink_core::config::{Config, PostgresConfig, RedisConfig};
use edgelink_core::import::{import_csv, ImportOptions};
use edgelink_core::link::{from_unix, now, now_unix};
use edgelink_core::store::postgres::PgStore;
use edgelink_core::store::redis::RedisCache;
use edgelink_core::store::{codec, LinkCache, LinkStore};
use edgelink_core::testing::{redis_url, unique, TestDb};
use edgelink_core::{Link, RedirectStatus, StoreError, Stores};

fn link(code: &str) -> Link {
    Link::new(
        code,
        "https://example.com/x",
        RedirectStatus::Found,
        now(),
        None,
    )
    .unwrap()
}

fn pg_config(db: &TestDb) -> PostgresConfig {
    PostgresConfig {
        url: Some(db.url.clone()),
        timeout_ms: 5_000,
        ..PostgresConfig::default()
    }
}

async fn pg(db: &TestDb) -> PgStore {
    let store = PgStore::connect(&pg_config(db)).await.unwrap();
    store.migrate().await.unwrap();
    store
}

fn redis_config() -> RedisConfig {
    RedisConfig {
        url: Some(redis_url()),
        key_prefix: unique("t") + ":",
        ttl_secs: 120,
        ..RedisConfig::default()
    }
}

async fn raw_redis() -> bb8_redis::redis::aio::MultiplexedConnection {
    let client = bb8_redis::redis::Client::open(redis_url()).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

#[tokio::test]
async fn postgres_round_trips_every_field() {
    let db = TestDb::create().await;
    let store = pg(&db).await;
    let mut full = link("full");
    full.redirect = RedirectStatus::PermanentRedirect;
    full.expires_at = from_unix(now_unix() + 3_600);
    full.disabled = true;
    let plain = link("plain");
    store
        .insert_links(&[full.clone(), plain.clone()])
        .await
        .unwrap();
    assert_eq!(store.get("full").await.unwrap(), Some(full));
    assert_eq!(store.get("plain").await.unwrap(), Some(plain));
    assert_eq!(store.get("nope").await.unwrap(), None);
    store.ping().await.unwrap();
}

#[tokio::test]
async fn postgres_insert_skips_taken_codes_and_reports_them_by_index() {
    let db = TestDb::create().await;
    let store = pg(&db).await;
    store.insert_links(&[link("taken")]).await.unwrap();
    let mut changed = link("taken");
    changed.target = "https://other.example/".into();
    let report = store
        .insert_links(&[link("new1"), changed, link("new1"), link("new2")])
        .await
        .unwrap();
    assert_eq!(report.inserted, 2);
    assert_eq!(report.existing, vec![1, 2]);
    assert_eq!(
        store.get("taken").await.unwrap().unwrap().target,
        "https://example.com/x",
        "an existing link is never overwritten"
    );
}

#[tokio::test]
async fn postgres_batch_is_all_or_nothing() {
    let db = TestDb::create().await;
    let store = pg(&db).await;
    let mut bad = link("bad");
    bad.code = "no spaces allowed".into(); // bypasses Link::new; the CHECK refuses it
    assert!(store.insert_links(&[link("first"), bad]).await.is_err());
    assert_eq!(store.get("first").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent_even_when_run_at_once() {
    let db = TestDb::create().await;
    let mut runs = Vec::new();
    for _ in 0..4 {
        let store = PgStore::connect(&pg_config(&db)).await.unwrap();
        runs.push(tokio::spawn(async move { store.migrate().await }));
    }
    for r in runs {
        r.await.unwrap().unwrap();
    }
    pg(&db).await;
    let versions: Vec<i32> = db
        .client()
        .await
        .query(
            "SELECT version FROM edgelink_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let all: Vec<i32> = edgelink_core::migrate::POSTGRES
        .iter()
        .map(|m| m.version)
        .collect();
    assert_eq!(versions, all, "each applied exactly once");
}

#[tokio::test]
async fn postgres_unreachable_is_a_fast_error() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("postgres://postgres@{}/test", dead.local_addr().unwrap());
    drop(dead);
    let store = PgStore::connect(&PostgresConfig {
        url: Some(url),
        timeout_ms: 300,
        connect_timeout_ms: 200,
        ..PostgresConfig::default()
    })
    .await
    .unwrap();
    let started = Instant::now();
    let err = store.get("x").await.unwrap_err();
    assert!(matches!(
        err,
        StoreError::Unavailable { .. } | StoreError::Timeout { .. }
    ));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(store.migrate().await.is_err());
}

#[tokio::test]
async fn redis_round_trips_with_a_ttl_on_every_key() {
    let cache = RedisCache::connect(&redis_config()).await.unwrap();
    let plain = link("r1");
    let mut expiring = link("r2");
    expiring.expires_at = from_unix(now_unix() + 30);
    cache.put(&plain).await.unwrap();
    cache.put(&expiring).await.unwrap();
    assert_eq!(cache.get("r1").await.unwrap(), Some(plain));
    assert_eq!(cache.get("r2").await.unwrap(), Some(expiring));
    assert_eq!(cache.get("r3").await.unwrap(), None);

    let mut conn = raw_redis().await;
    let ttl1: i64 = conn.ttl(cache.key("r1")).await.unwrap();
    let ttl2: i64 = conn.ttl(cache.key("r2")).await.unwrap();
    assert!(ttl1 > 100 && ttl1 <= 120, "configured TTL, got {ttl1}");
    assert!(
        ttl2 > 0 && ttl2 <= 30,
        "cut to the link's expiry, got {ttl2}"
    );
    cache.ping().await.unwrap();
}

#[tokio::test]
async fn redis_corrupt_values_are_errors_not_links() {
    let cache = RedisCache::connect(&redis_config()).await.unwrap();
    let mut conn = raw_redis().await;
    let _: () = conn
        .set_ex(cache.key("junk"), b"\x09garbage".to_vec(), 60)
        .await
        .unwrap();
    assert!(matches!(
        cache.get("junk").await,
        Err(StoreError::Corrupt { .. })
    ));
    assert_eq!(
        codec::encode(&link("x")).len(),
        11 + "https://example.com/x".len(),
        "compact: an 11-byte header and the target"
    );
}

#[tokio::test]
async fn import_into_postgres_reports_bad_rows_by_line_and_writes_the_rest() {
    let db = TestDb::create().await;
    let store: Arc<dyn LinkStore> = Arc::new(pg(&db).await);
    let csv = "code,url,status,expires_at\n\
               a1,https://example.com/1\n\
               bad code,https://example.com/2\n\
               a3,https://example.com/3,301\n\
               a4,javascript:alert(1)\n\
               a5,https://example.com/5,302,2030-01-01T00:00:00Z\n\
               a1,https://example.com/dup\n\
               a7,https://example.com/7,399\n\
               \"a8\",\"https://example.com/8?x=1,2\"\n";
    let options = ImportOptions {
        batch_size: 2,
        ..ImportOptions::default()
    };
    let report = import_csv(csv.as_bytes(), store.as_ref(), &options)
        .await
        .unwrap();
    assert_eq!(report.rows, 8);
    assert_eq!(report.inserted, 4);
    assert_eq!(report.rejected, 3);
    assert_eq!(report.existing, 1);
    let lines: Vec<u64> = report.problems.iter().map(|p| p.line).collect();
    assert_eq!(lines, vec![3, 5, 7, 8]);
    assert_eq!(
        store.get("a8").await.unwrap().unwrap().target,
        "https://example.com/8?x=1,2"
    );
    assert_eq!(
        store.get("a3").await.unwrap().unwrap().redirect,
        RedirectStatus::MovedPermanently
    );
    assert_eq!(
        store.get("a1").await.unwrap().unwrap().target,
        "https://example.com/1"
    );
}

#[tokio::test]
async fn distributed_stores_open_and_migrate() {
    let db = TestDb::create().await;
    let config = Config {
        postgres: pg_config(&db),
        redis: redis_config(),
        ..Config::default()
    };
    let stores = Stores::open_distributed(&config).await.unwrap();
    stores.source.ping().await.unwrap();
    stores.cache.unwrap().ping().await.unwrap();
}

/// The write path's operations, the same on both SQL backends.
async fn updates_deletes_and_lists(store: &dyn LinkStore) {
    use edgelink_core::store::LinkPatch;
    let links: Vec<Link> = ["b", "a", "d", "c"].iter().map(|c| link(c)).collect();
    store.insert_links(&links).await.unwrap();

    let patch = LinkPatch {
        target: Some("https://example.com/new".to_owned()),
        redirect: Some(RedirectStatus::PermanentRedirect),
        expires_at: Some(from_unix(4_000_000_000)),
        disabled: None,
    };
    let updated = store.update("a", &patch).await.unwrap().unwrap();
    assert_eq!(updated.target, "https://example.com/new");
    assert_eq!(updated.redirect, RedirectStatus::PermanentRedirect);
    assert_eq!(updated.expires_at, from_unix(4_000_000_000));
    assert!(!updated.disabled);
    assert_eq!(store.get("a").await.unwrap(), Some(updated.clone()));
    // Fields left out stay; Some(None) clears the expiry.
    let cleared = store
        .update(
            "a",
            &LinkPatch {
                expires_at: Some(None),
                disabled: Some(true),
                ..LinkPatch::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cleared.target, "https://example.com/new");
    assert_eq!(cleared.expires_at, None);
    assert!(cleared.disabled);
    assert_eq!(store.update("zz", &patch).await.unwrap(), None);

    assert!(store.delete("b").await.unwrap());
    assert!(
        !store.delete("b").await.unwrap(),
        "deleting twice is a no-op"
    );
    assert!(!store.delete("zz").await.unwrap());
    assert_eq!(
        store.find("b").await.unwrap(),
        None,
        "the API no longer sees it"
    );
    let tomb = store.get("b").await.unwrap().expect("a tombstone stays");
    assert!(tomb.disabled, "so the edge answers 410");
    assert_eq!(store.update("b", &patch).await.unwrap(), None);
    let again = store.insert_links(&[link("b")]).await.unwrap();
    assert_eq!(
        again.existing,
        vec![0],
        "a deleted code is never taken again"
    );

    let page1 = store.list(None, 2).await.unwrap();
    let codes: Vec<&str> = page1.iter().map(|l| l.code.as_str()).collect();
    assert_eq!(codes, ["a", "c"], "code order, deleted ones left out");
    let page2 = store.list(Some("c"), 2).await.unwrap();
    assert_eq!(page2.len(), 1);
    assert_eq!(page2[0].code, "d");
    assert!(store.list(Some("d"), 2).await.unwrap().is_empty());
    assert_eq!(store.find("c").await.unwrap(), Some(links[3].clone()));
}

#[tokio::test]
async fn postgres_updates_deletes_and_lists() {
    let db = TestDb::create().await;
    updates_deletes_and_lists(&pg(&db).await).await;
}

#[tokio::test]
async fn sqlite_updates_deletes_and_lists() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = edgelink_core::config::SqliteConfig {
        path: dir.path().join("w.db"),
        ..Default::default()
    };
    let store = edgelink_core::store::sqlite::SqliteStore::open(&cfg)
        .await
        .unwrap();
    updates_deletes_and_lists(&store).await;
}

/// Click flushes add up, per (code, day), and a flush applied once is never
/// applied again (a retry after a lost answer adds nothing).
async fn clicks_add_up_once_per_flush(store: &dyn LinkStore) {
    use edgelink_core::store::{ClickDelta, DailyClicks};
    let day = time::macros::date!(2026 - 11 - 25);
    let next = time::macros::date!(2026 - 11 - 26);
    let delta = |code: &str, day, human, bot| ClickDelta {
        code: code.to_owned(),
        day,
        human,
        bot,
    };
    let first = [
        delta("a", day, 3, 1),
        delta("a", next, 2, 0),
        delta("b", day, 0, 5),
    ];
    assert!(store.add_clicks("edge1", 1, &first).await.unwrap());
    assert!(
        !store.add_clicks("edge1", 1, &first).await.unwrap(),
        "a retried flush is skipped"
    );
    // Another edge's flush, and this edge's next one, add to the same rows.
    assert!(store
        .add_clicks("edge2", 1, &[delta("a", day, 10, 10)])
        .await
        .unwrap());
    assert!(store
        .add_clicks("edge1", 2, &[delta("a", next, 1, 1)])
        .await
        .unwrap());
    // An edge's writes go in increasing seq: one at or below its highest
    // applied is a retry, whichever it is.
    for seq in [2, 1] {
        assert!(
            !store
                .add_clicks("edge1", seq, &[delta("a", next, 100, 100)])
                .await
                .unwrap(),
            "seq {seq} after 2"
        );
    }
    let a = store.clicks("a", day, next).await.unwrap();
    assert_eq!(
        a,
        vec![
            DailyClicks {
                day,
                human: 13,
                bot: 11
            },
            DailyClicks {
                day: next,
                human: 3,
                bot: 1
            },
        ]
    );
    assert_eq!(
        store.clicks("a", next, next).await.unwrap().len(),
        1,
        "the range is inclusive"
    );
    assert_eq!(store.clicks("b", day, day).await.unwrap()[0].bot, 5);
    assert!(store.clicks("nope", day, next).await.unwrap().is_empty());
}

#[tokio::test]
async fn postgres_clicks_add_up_once_per_flush() {
    let db = TestDb::create().await;
    clicks_add_up_once_per_flush(&pg(&db).await).await;
}

#[tokio::test]
async fn postgres_click_pages_keep_room_for_in_place_updates() {
    let db = TestDb::create().await;
    pg(&db).await;
    let row = db
        .client()
        .await
        .query_one(
            "SELECT reloptions FROM pg_class WHERE relname = 'link_clicks'",
            &[],
        )
        .await
        .unwrap();
    let options: Option<Vec<String>> = row.get(0);
    assert_eq!(options, Some(vec!["fillfactor=70".to_owned()]));
}

/// The store remembers an edge's highest applied seq, not every flush: a
/// thousand writes of one edge leave one row.
#[tokio::test]
async fn postgres_keeps_one_click_row_per_edge() {
    let db = TestDb::create().await;
    let store = pg(&db).await;
    let day = time::macros::date!(2026 - 11 - 25);
    for seq in 1..=1_000 {
        let delta = edgelink_core::store::ClickDelta {
            code: format!("c{}", seq % 7),
            day,
            human: 1,
            bot: 0,
        };
        assert!(store.add_clicks("edge1", seq, &[delta]).await.unwrap());
    }
    let client = db.client().await;
    let rows: Vec<(String, i64)> = client
        .query("SELECT edge, seq FROM click_edges", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows, vec![("edge1".to_owned(), 1_000)]);
    let total: i64 = client
        .query_one("SELECT sum(human)::int8 FROM link_clicks", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 1_000);
}

#[tokio::test]
async fn sqlite_clicks_add_up_once_per_flush() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        edgelink_core::store::sqlite::SqliteStore::open(&edgelink_core::config::SqliteConfig {
            path: dir.path().join("edgelink.db"),
            ..Default::default()
        })
        .await
        .unwrap();
    clicks_add_up_once_per_flush(&store).await;
}
