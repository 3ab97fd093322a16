//! What one click flush costs SQLite: the edge's flush under uniform
//! traffic (tens of thousands of distinct codes a second) as upserts into
//! `link_clicks`, in the order the flusher drains them (hash order, which
//! is random) against key order, and through `SqliteStore::add_clicks`
//! (which sorts). Every round is one flush into a table that already holds
//! a row for most codes.
//!
//! ```sh
//! cargo run --release -p edgelink-core --example click_flush
//! CLICK_CODES=100000 CLICK_ROWS=48000 CLICK_ROUNDS=10 cargo run ...
//! ```
//!
//! A measurement, not a test: figures go to `bench/RESULTS.md` by hand.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use edgelink_core::config::SqliteConfig;
use edgelink_core::store::sqlite::{SqliteStore, UPSERT_CLICKS};
use edgelink_core::store::ClickDelta;
use edgelink_core::LinkStore;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name).map_or(default, |v| v.parse().expect(name))
}

/// `rows` distinct codes of `codes`, in random order, one click each.
fn flush(rng: &mut rand::rngs::StdRng, codes: usize, rows: usize) -> Vec<ClickDelta> {
    let day = time::OffsetDateTime::now_utc().date();
    let mut picked: Vec<usize> = (0..codes).collect();
    picked.shuffle(rng);
    picked.truncate(rows);
    picked
        .into_iter()
        .map(|i| ClickDelta {
            code: format!("k{i:07}"),
            day,
            human: rng.random_range(0..2),
            bot: 1,
        })
        .collect()
}

/// The upserts alone, on the store's writer, in the given order (sorted
/// first when `sort`, the sort timed too).
async fn upserts(store: &SqliteStore, mut deltas: Vec<ClickDelta>, sort: bool) -> Duration {
    store
        .with_writer(Duration::from_secs(60), move |conn| {
            let started = Instant::now();
            if sort {
                deltas.sort_unstable_by(ClickDelta::key_cmp);
            }
            let tx = conn.transaction().unwrap();
            {
                let mut stmt = tx.prepare_cached(UPSERT_CLICKS).unwrap();
                for d in &deltas {
                    let n = |x: u64| i64::try_from(x).unwrap();
                    stmt.execute((&d.code, d.day.to_julian_day(), n(d.human), n(d.bot)))
                        .unwrap();
                }
            }
            tx.commit().unwrap();
            Ok(started.elapsed())
        })
        .await
        .unwrap()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let codes = knob("CLICK_CODES", 100_000);
    let rows = knob("CLICK_ROWS", 48_000).min(codes);
    let rounds = knob("CLICK_ROUNDS", 10);
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&SqliteConfig {
        path: dir.path().join("clicks.db"),
        readers: 1,
        timeout_ms: 60_000,
    })
    .await
    .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    // Most codes get a row first, as after a while of traffic.
    upserts(&store, flush(&mut rng, codes, codes), true).await;
    let per_row = |d: Duration| d.as_secs_f64() * 1e6 / rows as f64;
    let (mut drained, mut sorted, mut shipped) = (vec![], vec![], vec![]);
    for round in 0..rounds {
        let deltas = flush(&mut rng, codes, rows);
        drained.push(per_row(upserts(&store, deltas.clone(), false).await));
        sorted.push(per_row(upserts(&store, deltas.clone(), true).await));
        let started = Instant::now();
        store
            .add_clicks("click_flush", round as u64 + 1, &deltas)
            .await
            .unwrap();
        shipped.push(per_row(started.elapsed()));
        println!(
            "round {round}: drained order {:.2} us a row, key order {:.2}, add_clicks {:.2}",
            drained[round], sorted[round], shipped[round]
        );
    }
    println!(
        "median of {rounds} flushes of {rows} codes (of {codes}): drained order {:.2} us a row, \
         key order {:.2} (sort included), add_clicks {:.2}",
        median(drained),
        median(sorted),
        median(shipped)
    );
}
