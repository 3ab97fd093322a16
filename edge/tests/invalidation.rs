//! The edge follows invalidations through a Redis restart: it subscribes
//! again, and empties tier 0 because it may have missed some. Runs its own
//! redis-server on a free port (never the shared one).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod support;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edgelink_core::store::LinkPatch;
use edgelink_core::testing::TestDb;
use support::*;

/// A redis-server of this test's own, killed on drop.
struct OwnRedis {
    child: Child,
    port: u16,
}

impl OwnRedis {
    fn start(port: u16) -> OwnRedis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (it is on this project's machines)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        OwnRedis { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn after_a_redis_restart_the_edge_resubscribes_and_drops_what_it_may_have_missed() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let redis = OwnRedis::start(port);
    let db = TestDb::create().await;
    let mut config = test_config();
    config.cache.ttl_secs = 3_600;
    config.postgres.url = Some(db.url.clone());
    config.redis.url = Some(redis.url());
    let stores = edgelink_core::Stores::open_distributed(&config)
        .await
        .unwrap();
    let source = stores.source.clone();
    insert(source.as_ref(), &[link("kept", "https://example.com/old")]).await;
    let edge = TestEdge::start(config, stores).await;
    assert_eq!(
        edge.get("/kept").await.header("location"),
        Some("https://example.com/old")
    );

    drop(redis); // killed: the subscription is lost
    let patch = LinkPatch {
        target: Some("https://example.com/new".to_owned()),
        ..LinkPatch::default()
    };
    // Changed while nobody could publish: an invalidation the edge never gets.
    source.update("kept", &patch).await.unwrap().unwrap();
    assert_eq!(
        edge.get("/kept").await.header("location"),
        Some("https://example.com/old"),
        "tier 0 still answers while Redis is down"
    );
    let _redis = OwnRedis::start(port);
    let started = Instant::now();
    let mut location = None;
    while started.elapsed() < Duration::from_secs(10) {
        location = edge
            .get("/kept")
            .await
            .header("location")
            .map(str::to_owned);
        if location.as_deref() == Some("https://example.com/new") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        location.as_deref(),
        Some("https://example.com/new"),
        "re-subscribed and emptied tier 0 within 10 s of Redis coming back"
    );
}
