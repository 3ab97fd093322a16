//! The connection limits: request-head size, header-read timeout (which hyper
//! applies only with a timer installed) and the connection cap. Raw sockets,
//! so the test controls every byte.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until EOF (or 5 s), returning what arrived.
async fn read_all(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn an_oversized_request_head_is_refused_with_431() {
    let (edge, _dir) = edge_with(|c| c.server.max_header_bytes = 8192).await;
    let mut s = TcpStream::connect(edge.addr).await.unwrap();
    let big = "a".repeat(20_000);
    s.write_all(format!("GET /abc HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let reply = read_all(&mut s).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply:?}");

    // A head under the limit is served.
    let mut s = TcpStream::connect(edge.addr).await.unwrap();
    let fine = "a".repeat(4_000);
    s.write_all(
        format!("GET /abc HTTP/1.1\r\nHost: x\r\nX-Ok: {fine}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    assert!(read_all(&mut s).await.starts_with("HTTP/1.1 302"));
    edge.stop().await;
}

#[tokio::test]
async fn a_client_that_never_finishes_its_head_is_cut_off() {
    let (edge, _dir) = edge_with(|c| c.server.header_read_timeout_ms = 300).await;
    let mut s = TcpStream::connect(edge.addr).await.unwrap();
    s.write_all(b"GET /abc HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let reply = read_all(&mut s).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 408"),
        "{reply:?}"
    );
    edge.stop().await;
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_at_accept_and_counted() {
    let (edge, _dir) = edge_with(|c| c.server.max_connections = 2).await;
    let request = b"GET /abc HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(edge.addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 302");
        held.push(s); // keep-alive: the permit stays taken
    }
    let mut third = TcpStream::connect(edge.addr).await.unwrap();
    let _ = third.write_all(request).await;
    assert_eq!(read_all(&mut third).await, "", "closed without an answer");
    assert_eq!(
        edge.metric("edgelink_connections_rejected_total").await,
        1.0
    );
    assert_eq!(edge.metric("edgelink_connections_open").await, 2.0);

    // Closing one frees its place.
    drop(held.pop());
    let served = eventually(Duration::from_secs(5), || async {
        let Ok(mut s) = TcpStream::connect(edge.addr).await else {
            return false;
        };
        if s.write_all(b"GET /abc HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .is_err()
        {
            return false;
        }
        read_all(&mut s).await.starts_with("HTTP/1.1 302")
    })
    .await;
    assert!(served);
    drop(held);
    edge.stop().await;
}

#[tokio::test]
async fn ambiguous_request_framing_is_refused_with_400() {
    let (edge, _dir) = edge_with(|_| {}).await;
    for (case, request) in [
        (
            "Content-Length with Transfer-Encoding",
            "POST /abc HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "Transfer-Encoding then Content-Length",
            "POST /abc HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
        ),
        (
            "two equal Content-Lengths",
            "POST /abc HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        ),
        (
            "two different Content-Lengths",
            "POST /abc HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        ),
    ] {
        let mut s = TcpStream::connect(edge.addr).await.unwrap();
        // A clean request first on the same connection: it is answered,
        // then the ambiguous one is refused and the connection closed.
        s.write_all(format!("GET /abc HTTP/1.1\r\nHost: x\r\n\r\n{request}").as_bytes())
            .await
            .unwrap();
        let reply = read_all(&mut s).await;
        assert!(reply.starts_with("HTTP/1.1 302"), "{case}: {reply:?}");
        let second = reply.split("HTTP/1.1 ").nth(2).unwrap_or_default();
        assert!(second.starts_with("400"), "{case}: {reply:?}");
        assert!(
            second.contains("application/json") && second.contains("\"bad_framing\""),
            "{case}: {reply:?}"
        );
    }
    edge.stop().await;
}

#[tokio::test]
async fn a_target_over_max_uri_bytes_is_414() {
    let (edge, _dir) = edge_with(|c| c.limits.max_uri_bytes = 100).await;
    let r = edge.get(&format!("/abc?{}", "x".repeat(200))).await;
    assert_eq!(r.status, 414);
    assert_eq!(r.json()["error"]["code"], "uri_too_long");
    assert_eq!(
        edge.get(&format!("/abc?{}", "x".repeat(50))).await.status,
        302
    );
    edge.stop().await;
}

#[tokio::test]
async fn a_slow_header_client_is_cut_off_while_others_are_served() {
    let (edge, _dir) = edge_with(|c| c.server.header_read_timeout_ms = 400).await;
    let addr = edge.addr;
    let slow = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        // One header byte every 50 ms: never a whole head within 400 ms.
        for b in b"GET /abc HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if s.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            if started.elapsed() > Duration::from_secs(3) {
                break;
            }
        }
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut rest)).await;
        started.elapsed()
    });
    // Meanwhile others are answered at once.
    for _ in 0..20 {
        let t = Instant::now();
        assert_eq!(edge.get("/abc").await.status, 302);
        assert!(t.elapsed() < Duration::from_millis(300));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cut_after = slow.await.unwrap();
    assert!(
        cut_after < Duration::from_secs(3),
        "the slow client was cut off ({cut_after:?})"
    );
    edge.stop().await;
}

#[tokio::test]
async fn a_client_scanning_codes_gets_429_before_the_database_is_asked() {
    let (edge, _dir) = edge_with(|c| {
        c.limits.not_found_per_sec = 0.5;
        c.limits.not_found_burst = 3;
    })
    .await;
    assert_eq!(edge.get("/abc").await.status, 302); // now in tier 0
    for i in 0..3 {
        assert_eq!(edge.get(&format!("/nope{i}")).await.status, 404);
    }
    let lookups = edge
        .metric("edgelink_backend_lookups_total{backend=\"sqlite\"}")
        .await;
    for i in 3..30 {
        let r = edge.get(&format!("/nope{i}")).await;
        assert_eq!(r.status, 429, "{i}");
        assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
        assert_eq!(r.json()["error"]["code"], "rate_limited");
    }
    assert_eq!(
        edge.metric("edgelink_backend_lookups_total{backend=\"sqlite\"}")
            .await,
        lookups,
        "no lookup once the budget is spent"
    );
    // Links already in tier 0 are still served to that client.
    assert_eq!(edge.get("/abc").await.status, 302);
    // Paths that are not codes count too.
    assert_eq!(edge.get("/not/a/code").await.status, 429);
    edge.stop().await;
}
