//! Tier 0's read index stays in step with moka, which decides what is cached.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod support;

use std::sync::Arc;
use std::time::Duration;

use edgelink_edge::domain::{Answer, Tier};
use edgelink_edge::metrics::EdgeMetrics;
use edgelink_edge::resolve::Resolver;
use support::*;

async fn resolver(config: &mut edgelink_core::Config, dir: &tempfile::TempDir) -> Resolver {
    let stores = sqlite_stores(dir, config).await;
    insert(
        stores.source.as_ref(),
        &[link("real", "https://example.com/r")],
    )
    .await;
    let (metrics, _) = EdgeMetrics::new(None, "sqlite");
    Resolver::new(&stores, config, Arc::new(metrics))
}

#[tokio::test]
async fn the_index_never_holds_what_moka_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config();
    config.cache.max_entries = 50;
    let r = resolver(&mut config, &dir).await;
    for i in 0..2_000 {
        r.resolve(&format!("c{i}")).await.unwrap();
    }
    let in_moka = r.cache_entries().await; // applies evictions, which call the listener
    assert!(in_moka <= 50, "moka holds {in_moka}");
    assert!(
        r.indexed() as u64 <= in_moka,
        "index {} > moka {in_moka}",
        r.indexed()
    );
}

#[tokio::test]
async fn short_lived_answers_expire_from_the_index_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config();
    config.cache.negative_ttl_secs = 1;
    let r = resolver(&mut config, &dir).await;
    let (first, tier) = r.resolve("missing").await.unwrap();
    assert!(matches!(first, Answer::NotFound));
    assert_eq!(tier, Tier::Store);
    let (_, tier) = r.resolve("missing").await.unwrap();
    assert_eq!(tier, Tier::Memory, "served from tier 0");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (later, tier) = r.resolve("missing").await.unwrap();
    assert_eq!(tier, Tier::Store, "looked up again after the negative TTL");
    assert!(matches!(later, Answer::NotFound));
    let (found, _) = r.resolve("real").await.unwrap();
    assert!(matches!(found, Answer::Redirect { .. }));
}
