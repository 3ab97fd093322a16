//! Hostile traffic: scans of random codes, a crowd of connections that never
//! finish their headers, and request smuggling through the proxy.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::upstream::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LOOKUPS: &str = "edgelink_backend_lookups_total{backend=\"sqlite\"}";

/// `n` GETs of `path(i)` from 16 concurrent tasks; the statuses seen.
async fn flood(edge: &Arc<TestEdge>, n: usize, path: fn(usize) -> String) -> Vec<u16> {
    let mut tasks = Vec::new();
    for t in 0..16 {
        let edge = edge.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for i in (t..n).step_by(16) {
                seen.push(edge.get(&path(i)).await.status.as_u16());
            }
            seen
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_random_unknown_codes_cost_a_bounded_number_of_queries() {
    // The default 404 budget (20/s, burst 100) for the one client IP.
    let (edge, _dir) = edge_with(|_| {}).await;
    let edge = Arc::new(edge);
    assert_eq!(edge.get("/abc").await.status, 302); // now in tier 0
    let started = Instant::now();
    let statuses = flood(&edge, 10_000, |i| {
        format!("/scan{i:05}x{}", i * 7919 % 10_007)
    })
    .await;
    let secs = started.elapsed().as_secs_f64();
    let lookups = edge.metric(LOOKUPS).await;
    let bound = 1.0 + 100.0 + 20.0 * secs.ceil(); // /abc, then the burst and the rate over the time
    assert!(
        lookups <= bound,
        "{lookups} lookups for 10,000 unknown codes in {secs:.1} s (bound {bound})"
    );
    assert!(statuses.iter().all(|s| *s == 404 || *s == 429));
    assert!(statuses.iter().filter(|s| **s == 429).count() > 9_000);
    // A known link in tier 0 is still served to that client.
    assert_eq!(edge.get("/abc").await.status, 302);

    // Without the rate limit, the negative cache alone bounds a scan that
    // repeats codes: one lookup per distinct code.
    let (edge, _dir) = edge_with(|c| c.limits.not_found_per_sec = 0.0).await;
    let edge = Arc::new(edge);
    let statuses = flood(&edge, 10_000, |i| format!("/again{}", i % 50)).await;
    assert!(statuses.iter().all(|s| *s == 404));
    assert_eq!(
        edge.metric(LOOKUPS).await,
        50.0,
        "one lookup per distinct unknown code"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_unfinished_heads_are_cut_off_while_requests_are_served() {
    let (edge, _dir) = edge_with(|c| {
        c.server.header_read_timeout_ms = 1_000;
        c.server.keepalive_timeout_ms = 1_000;
        c.server.max_connections = 5_000;
    })
    .await;
    let mut stalled = Vec::new();
    for _ in 0..1_000 {
        let mut s = TcpStream::connect(edge.addr).await.unwrap();
        s.write_all(b"GET /abc HTTP/1.1\r\nHost: x\r\nX-Never: ends")
            .await
            .unwrap();
        stalled.push(s);
    }
    let opened = Instant::now();
    // Normal clients are served meanwhile, promptly.
    for _ in 0..50 {
        let t = Instant::now();
        assert_eq!(edge.get("/abc").await.status, 302);
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
    }
    // Every stalled connection is closed by the server at its timeout.
    let mut closed = 0;
    for mut s in stalled {
        let mut buf = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
        if r.is_ok() {
            closed += 1;
        }
    }
    assert_eq!(closed, 1_000);
    assert!(
        opened.elapsed() < Duration::from_secs(8),
        "{:?}",
        opened.elapsed()
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            edge.metric("edgelink_connections_open").await <= 1.0
        })
        .await
    );
    edge.stop().await;
}

#[tokio::test]
async fn smuggling_through_the_proxy_is_refused_and_never_reaches_the_origin() {
    let origin = Upstream::start("origin").await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config();
    config.proxy.upstreams = vec![origin.url()];
    config.proxy.health_check_path = String::new();
    config.limits.create_per_sec = 0.0;
    let stores = sqlite_stores(&dir, &mut config).await;
    let edge = TestEdge::start(config, stores).await;
    let smuggled = "GET /api/admin HTTP/1.1\r\nHost: x\r\n\r\n";
    for (case, request) in [
        (
            "CL.TE",
            format!("POST /api/v1/links HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "TE.CL",
            format!("POST /api/v1/links HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\n{smuggled}\r\n0\r\n\r\n"),
        ),
        (
            "duplicate Content-Length",
            format!("POST /api/v1/links HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 37\r\n\r\n{smuggled}"),
        ),
        (
            "obs-fold",
            format!("POST /api/v1/links HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n Transfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n{smuggled}"),
        ),
        (
            "Transfer-Encoding not chunked",
            format!("POST /api/v1/links HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n{smuggled}"),
        ),
    ] {
        let mut s = TcpStream::connect(edge.addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut reply)).await;
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("HTTP/1.1 400"), "{case}: {reply:?}");
        assert_eq!(reply.matches("HTTP/1.1").count(), 1, "{case}: one answer, then close: {reply:?}");
    }
    assert_eq!(origin.hits(), 0, "nothing reached the origin");
    edge.stop().await;
}
