//! The redirect hot path allocates nothing of ours: a tier-0 hit and the
//! response built from it are counted by dhat's allocator.
//!
//! What is left is not ours and is bounded here so a regression shows:
//! hyper's `HeaderMap` allocates its two tables on a response's first
//! header, and one hit in 32 is also a moka read, whose inline housekeeping
//! allocates now and then (a boxed shared future, a crossbeam-epoch bag:
//! about 0.002 blocks per hit, measured with a dhat heap profile). A
//! per-hit allocation of ours would add at least 1.0 per hit.
//!
//! The express lane, which writes the response's bytes itself, allocates
//! nothing but moka's share.
//!
//! One test per file: dhat allows one profiler per process.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod support;

use std::sync::Arc;

use edgelink_edge::domain::Answer;
use edgelink_edge::metrics::EdgeMetrics;
use edgelink_edge::resolve::Resolver;
use edgelink_edge::respond;
use support::*;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

#[tokio::test(flavor = "current_thread")]
async fn a_tier0_hit_allocates_nothing() {
    const HITS: u64 = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config();
    let stores = sqlite_stores(&dir, &mut config).await;
    insert(
        stores.source.as_ref(),
        &[link("hot", "https://example.com/hot")],
    )
    .await;
    let (metrics, _prometheus) = EdgeMetrics::new(None, "sqlite");
    let resolver = Resolver::new(&stores, &config, Arc::new(metrics));
    resolver.resolve("hot").await.unwrap(); // the miss fills tier 0
    resolver.cache_entries().await; // and moka's pending housekeeping is done

    let _profiler = dhat::Profiler::builder().testing().build();
    let before = dhat::HeapStats::get();
    for _ in 0..HITS {
        let (answer, _) = resolver.resolve("hot").await.unwrap();
        assert!(matches!(answer, Answer::Redirect { .. }));
    }
    let resolved = dhat::HeapStats::get();
    let mut responses = 0;
    for _ in 0..HITS {
        let (answer, _) = resolver.resolve("hot").await.unwrap();
        if let Answer::Redirect {
            status,
            location,
            cache_control,
            ..
        } = answer
        {
            let resp = respond::redirect(status, location, cache_control);
            responses += resp.status().as_u16() as u64;
        }
    }
    let responded = dhat::HeapStats::get();
    assert_eq!(responses, HITS * 302);
    // The express lane: the redirect's bytes written into the connection's
    // buffer (reused, as the lane reuses it) straight from the index.
    let mut out = Vec::with_capacity(512);
    for _ in 0..HITS {
        out.clear();
        let written = resolver.with_redirect("hot", None, |status, location, cache_control| {
            edgelink_edge::lane::write_head(
                &mut out,
                status,
                "Found",
                &[
                    ("location", location),
                    ("cache-control", cache_control.as_bytes()),
                ],
            );
        });
        assert!(written.is_some() && out.starts_with(b"HTTP/1.1 302 Found\r\n"));
    }
    let expressed = dhat::HeapStats::get();

    let per_hit = (resolved.total_blocks - before.total_blocks) as f64 / HITS as f64;
    assert!(per_hit < 0.05, "a tier-0 hit allocated {per_hit} blocks");
    let per_response =
        (responded.total_blocks - resolved.total_blocks) as f64 / HITS as f64 - per_hit;
    eprintln!("blocks per hit: {per_hit:.3}; per response built: {per_response:.3}");
    assert!(
        per_response <= 2.2,
        "building a redirect allocated {per_response} blocks per response"
    );
    let per_express = (expressed.total_blocks - responded.total_blocks) as f64 / HITS as f64;
    eprintln!("blocks per express-lane answer: {per_express:.3}");
    assert!(
        per_express < 0.05,
        "an express-lane answer allocated {per_express} blocks"
    );
}
