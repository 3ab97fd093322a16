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

async fn edge_with(f: impl FnOnce(&mut edgelink_core::Config)) -> (TestEdge, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config();
    f(&mut config);
    let stores = sqlite_stores(&dir, &mut config).await;
    insert(
        stores.source.as_ref(),
        &[link("abc", "https://example.com/abc")],
    )
    .await;
    (TestEdge::start(config, stores).await, dir)
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
