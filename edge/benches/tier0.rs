//! The tier-0 hit path in isolation: what one cached redirect costs in CPU,
//! without sockets, hyper or a load generator on the same cores.
//!
//!   cargo bench -p edgelink-edge --bench tier0
//!
//! `uniform_100k` draws from 100,000 cached codes in a seeded random order
//! (the working set is larger than the CPU caches, as in bench/run.sh);
//! `one_hot_code` asks for the same code every time (all in cache). The gap
//! between the two is the memory cost of the lookup. Each iteration resolves
//! a batch of codes inside one `block_on`, so the runtime's cost is spread.
//! `reference_std_hashmap_uniform_100k` puts the same entries in a plain
//! `HashMap`: a floor for a structure with no eviction bookkeeping, to judge
//! tier-0 designs against.
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench set-up: a panic is the report

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use edgelink_core::config::Config;
use edgelink_core::link::now;
use edgelink_core::{Link, RedirectStatus, Stores};
use edgelink_edge::domain::Answer;
use edgelink_edge::metrics::EdgeMetrics;
use edgelink_edge::resolve::Resolver;
use edgelink_edge::respond;
use rand::seq::SliceRandom;
use rand::SeedableRng;

const LINKS: usize = 100_000;
const BATCH: usize = 1_024;

async fn setup(dir: &tempfile::TempDir) -> (Resolver, Vec<String>) {
    let mut config = Config::default();
    config.sqlite.path = dir.path().join("bench.db");
    config.cache.ttl_secs = 3_600;
    let stores = Stores::open_embedded(&config).await.unwrap();
    let codes: Vec<String> = (0..LINKS).map(|i| format!("k{i:07}")).collect();
    for chunk in codes.chunks(10_000) {
        let links: Vec<Link> = chunk
            .iter()
            .map(|c| {
                let target = format!("https://example.com/landing/{c}");
                Link::new(c, &target, RedirectStatus::Found, now(), None).unwrap()
            })
            .collect();
        stores.source.insert_links(&links).await.unwrap();
    }
    let (metrics, _) = EdgeMetrics::new(None, "sqlite");
    let resolver = Resolver::new(&stores, &config, Arc::new(metrics));
    for code in &codes {
        resolver.resolve(code).await.unwrap();
    }
    assert_eq!(resolver.cache_entries().await, LINKS as u64);
    (resolver, codes)
}

fn tier0(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (resolver, mut codes) = rt.block_on(setup(&dir));
    codes.shuffle(&mut rand::rngs::StdRng::seed_from_u64(42));

    let mut group = c.benchmark_group("tier0_hit");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut next = 0;
    group.bench_function("uniform_100k", |b| {
        b.iter(|| {
            rt.block_on(async {
                for _ in 0..BATCH {
                    let code = &codes[next % LINKS];
                    next += 1;
                    black_box(resolver.resolve(code).await.unwrap());
                }
            })
        })
    });
    group.bench_function("one_hot_code", |b| {
        b.iter(|| {
            rt.block_on(async {
                for _ in 0..BATCH {
                    black_box(resolver.resolve(&codes[0]).await.unwrap());
                }
            })
        })
    });
    group.bench_function("uniform_100k_with_response", |b| {
        b.iter(|| {
            rt.block_on(async {
                for _ in 0..BATCH {
                    let code = &codes[next % LINKS];
                    next += 1;
                    let (answer, _) = resolver.resolve(code).await.unwrap();
                    if let Answer::Redirect {
                        status,
                        location,
                        cache_control,
                        ..
                    } = answer
                    {
                        black_box(respond::redirect(status, location, cache_control));
                    }
                }
            })
        })
    });
    // Reference point, not a tier-0 design: the same entries in a std
    // HashMap behind an uncontended RwLock, with no eviction bookkeeping.
    let map: std::sync::RwLock<std::collections::HashMap<String, _>> = std::sync::RwLock::new(
        codes
            .iter()
            .map(|c| {
                let (entry, _) = rt.block_on(resolver.resolve(c)).unwrap();
                (c.clone(), entry)
            })
            .collect(),
    );
    group.bench_function("reference_std_hashmap_uniform_100k", |b| {
        b.iter(|| {
            let map = map.read().unwrap();
            for _ in 0..BATCH {
                let code = &codes[next % LINKS];
                next += 1;
                black_box(map.get(code.as_str()).cloned());
            }
        })
    });
    group.finish();
}

criterion_group!(benches, tier0);
criterion_main!(benches);
