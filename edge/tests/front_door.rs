//! At the front door: what a hostile or broken client gets, case by case
//! (README "At the front door"). Raw sockets where a client library would
//! not send the bytes; an HTTP/2 client for HTTP/2.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgelink_core::config::Config;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Empty};
use support::upstream::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An edge on SQLite holding `/abc`, proxying `/api/` to a fresh origin
/// stand-in (health checks off, creations unlimited), with `f` applied.
async fn proxied(f: impl FnOnce(&mut Config)) -> (Arc<Upstream>, TestEdge, tempfile::TempDir) {
    let origin = Upstream::start("origin").await;
    let url = origin.url();
    let (edge, dir) = edge_with(|c| {
        c.proxy.upstreams = vec![url];
        c.proxy.health_check_path = String::new();
        c.limits.create_per_sec = 0.0;
        f(c);
    })
    .await;
    (origin, edge, dir)
}

/// A well-formed creation through the edge.
async fn create(edge: &TestEdge) -> StatusCode {
    edge.send(
        Method::POST,
        "/api/v1/links",
        &[("content-type", "application/json")],
        Bytes::from_static(br#"{"url":"https://example.com/"}"#),
    )
    .await
    .status
}

/// Writes `bytes` on a new connection and reads until the edge closes it
/// (at most 5 s).
async fn exchange(edge: &TestEdge, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(edge.addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut reply)).await;
    String::from_utf8_lossy(&reply).into_owned()
}

fn status_of(reply: &str) -> u16 {
    reply
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// One response read off a connection.
#[derive(Debug)]
struct Raw {
    status: u16,
    /// Lower-case names, in order, `date` left out.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response from `s` (`buf` keeps what came after it); `None`
/// when the connection ends before a whole one. `head_only`: the answer
/// to a HEAD (no body whatever its length says).
async fn read_one(s: &mut TcpStream, buf: &mut Vec<u8>, head_only: bool) -> Option<Raw> {
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8(buf[..end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.get(9..12)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.to_owned()))
        .filter(|(n, _)| n != "date")
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap());
    let len = if head_only { 0 } else { len };
    while buf.len() < end + len {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = buf[end..end + len].to_vec();
    buf.drain(..end + len);
    Some(Raw {
        status,
        headers,
        body,
    })
}

const PROXY_EJECTIONS: &str = "edgelink_proxy_ejections_total";

fn fault(reason: &str) -> String {
    format!("edgelink_client_faults_total{{reason=\"{reason}\"}}")
}

// === who is at fault decides who pays ===

#[tokio::test]
async fn malformed_chunked_bodies_are_the_clients_400_and_never_eject_the_origin() {
    let (origin, edge, _dir) = proxied(|_| {}).await;
    for _ in 0..6 {
        let reply = exchange(
            &edge,
            b"POST /api/v1/links HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        )
        .await;
        assert_eq!(status_of(&reply), 400, "{reply:?}");
        assert!(reply.contains(r#""code":"bad_body""#), "{reply:?}");
    }
    assert_eq!(
        create(&edge).await,
        StatusCode::CREATED,
        "the origin was ejected"
    );
    assert_eq!(edge.metric(PROXY_EJECTIONS).await, 0.0);
    assert!(edge.metric(&fault("body_malformed")).await >= 6.0);
    assert!(origin.hits() >= 1);
    edge.stop().await;
}

#[tokio::test]
async fn aborted_uploads_never_eject_the_origin() {
    let (_origin, edge, _dir) = proxied(|_| {}).await;
    for i in 0..6 {
        // Streamed bodies (chunked, or longer than proxy.replay_body_bytes)
        // whose client goes away half way.
        let head: &[u8] = if i % 2 == 0 {
            b"POST /api/v1/links HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n"
        } else {
            b"POST /api/v1/links HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
        };
        let mut s = TcpStream::connect(edge.addr).await.unwrap();
        s.write_all(head).await.unwrap();
        s.write_all(&[b'x'; 100]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(s);
    }
    let counted = eventually(Duration::from_secs(5), || async {
        edge.metric(&fault("body_aborted")).await >= 6.0
    })
    .await;
    assert_eq!(
        create(&edge).await,
        StatusCode::CREATED,
        "the origin was ejected"
    );
    assert_eq!(edge.metric(PROXY_EJECTIONS).await, 0.0);
    assert!(counted, "aborted bodies are counted as the clients'");
    edge.stop().await;
}

/// An upload slower than the proxy's whole budget: the client's 408, not
/// the origin's 504.
#[tokio::test]
async fn slow_uploads_are_the_clients_408_and_never_eject_the_origin() {
    let (_origin, edge, _dir) = proxied(|c| c.proxy.timeout_ms = 600).await;
    let mut slow = Vec::new();
    for _ in 0..6 {
        let addr = edge.addr;
        slow.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"POST /api/v1/links HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
                .await
                .unwrap();
            let mut buf = Vec::new();
            let started = Instant::now();
            let reply = read_one(&mut s, &mut buf, false).await.unwrap();
            (reply, started.elapsed())
        }));
    }
    for task in slow {
        let (reply, took) = task.await.unwrap();
        assert_eq!(reply.status, 408, "{reply:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
    }
    assert_eq!(
        create(&edge).await,
        StatusCode::CREATED,
        "the origin was ejected"
    );
    assert_eq!(edge.metric(PROXY_EJECTIONS).await, 0.0);
    assert_eq!(
        edge.metric("edgelink_proxy_failures_total{status=\"504\"}")
            .await,
        0.0
    );
    assert!(edge.metric(&fault("body_slow")).await >= 6.0);
    edge.stop().await;
}

// === a timeout on every phase ===

/// A creation API mounted in the edge's process, as `serve` mounts it:
/// counts the requests that reach it.
fn counting_api(reached: Arc<AtomicUsize>) -> edgelink_edge::Mounts {
    edgelink_edge::Mounts {
        api: Some(Arc::new(move |req: http::Request<_>| {
            let reached = reached.clone();
            Box::pin(async move {
                reached.fetch_add(1, Ordering::Relaxed);
                let n = req.into_body().collect().await.unwrap().to_bytes().len();
                edgelink_core::net::text(StatusCode::CREATED, format!("{n}\n"))
            })
        })),
        ..Default::default()
    }
}

#[tokio::test]
async fn api_bodies_have_a_timeout_per_read_and_for_the_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config();
    config.server.body_read_timeout_ms = 300;
    config.server.body_timeout_ms = 1_000;
    config.limits.create_per_sec = 0.0;
    let stores = sqlite_stores(&dir, &mut config).await;
    let reached = Arc::new(AtomicUsize::new(0));
    let edge = TestEdge::start_full(config, stores, 1, counting_api(reached.clone())).await;
    let head: &[u8] = b"POST /api/v1/links HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n";

    // One byte, then nothing: cut a read timeout later.
    let mut s = TcpStream::connect(edge.addr).await.unwrap();
    s.write_all(head).await.unwrap();
    s.write_all(b"{").await.unwrap();
    let started = Instant::now();
    let reply = read_one(&mut s, &mut Vec::new(), false).await.unwrap();
    assert_eq!(reply.status, 408, "{reply:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );

    // A byte every 200 ms (each read in time): cut at the whole timeout.
    let mut s = TcpStream::connect(edge.addr).await.unwrap();
    s.write_all(head).await.unwrap();
    let started = Instant::now();
    let dribble = async {
        loop {
            if s.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(4), dribble).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "the dribble was never cut: {took:?}"
    );
    assert_eq!(
        reached.load(Ordering::Relaxed),
        0,
        "no body reached the API"
    );
    assert!(edge.metric(&fault("body_slow")).await >= 2.0);
    edge.stop().await;
}

#[tokio::test]
async fn idle_http1_connections_close_after_the_keepalive_timeout() {
    let (edge, _dir) = edge_with(|c| {
        c.server.keepalive_timeout_ms = 300;
        c.server.header_read_timeout_ms = 5_000;
    })
    .await;
    // The express lane (a hit), then hyper (a request with a Connection
    // header goes there).
    for request in [
        &b"GET /abc HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"GET /abc HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(edge.addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut buf = Vec::new();
        assert_eq!(read_one(&mut s, &mut buf, false).await.unwrap().status, 302);
        let idle = Instant::now();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "an idle connection was kept");
        let took = idle.elapsed();
        assert!(took >= Duration::from_millis(250), "{took:?}");
    }
    edge.stop().await;
}

/// An HTTP/2 client connection over cleartext (prior knowledge) that
/// pings the edge every 50 ms; resolves when the edge closes it.
async fn h2_client(
    addr: std::net::SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Duration::from_millis(50))
            .keep_alive_while_idle(true)
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    let driven = tokio::spawn(async move {
        let _ = conn.await;
    });
    (send, driven)
}

fn h2_get(path: &str) -> http::Request<Empty<Bytes>> {
    http::Request::get(format!("http://x{path}"))
        .body(Empty::new())
        .unwrap()
}

#[tokio::test]
async fn idle_http2_connections_close_even_while_they_answer_pings() {
    let (edge, _dir) = edge_with(|c| c.server.h2_idle_timeout_ms = 400).await;
    let (mut send, conn) = h2_client(edge.addr).await;
    let resp = send.send_request(h2_get("/abc")).await.unwrap();
    assert_eq!(resp.status(), 302);
    let idle = Instant::now();
    tokio::time::timeout(Duration::from_secs(3), conn)
        .await
        .expect("an idle HTTP/2 connection was kept while it answered pings")
        .unwrap();
    assert!(
        idle.elapsed() >= Duration::from_millis(350),
        "{:?}",
        idle.elapsed()
    );
    edge.stop().await;
}

/// A connection that never sends a byte is closed at the header timeout,
/// on the admin listener too (hyper reads the first bytes to choose
/// HTTP/1 or HTTP/2, with no timer of its own).
#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_at_the_header_timeout() {
    let (edge, _dir) = edge_with(|c| c.server.header_read_timeout_ms = 300).await;
    for addr in [edge.addr, edge.admin] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "{addr}: a silent connection was kept");
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "{:?}",
            started.elapsed()
        );
    }
    edge.stop().await;
}

/// A connection whose client sends requests and reads none of the
/// answers: closed once a write waits longer than the write timeout.
#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_at_the_write_timeout() {
    let (edge, _dir) = edge_with(|c| {
        c.server.write_timeout_ms = 300;
        c.limits.not_found_per_sec = 0.0;
    })
    .await;
    // The lane (404s of a path that is no code carry a body) and hyper.
    for request in [
        &b"GET /abc HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"GET /not.a.code HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
    ] {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut s = socket.connect(edge.addr).await.unwrap();
        // Requests until the edge stops reading them (its answers fill
        // both socket buffers), never reading an answer.
        let many = request.repeat(256);
        let flood = async {
            loop {
                if s.write_all(&many).await.is_err() {
                    return;
                }
            }
        };
        let started = Instant::now();
        let _ = tokio::time::timeout(Duration::from_secs(10), flood).await;
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{request:?}: the connection was kept for a client that reads nothing"
        );
    }
    edge.stop().await;
}

#[tokio::test]
async fn an_http2_stream_the_client_gives_no_window_does_not_keep_its_connection() {
    let (edge, _dir) = edge_with(|c| {
        c.server.h2_idle_timeout_ms = 300;
        c.server.write_timeout_ms = 300;
        c.limits.not_found_per_sec = 0.0;
    })
    .await;
    let tcp = TcpStream::connect(edge.addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .initial_stream_window_size(0)
            .keep_alive_interval(Duration::from_millis(50))
            .keep_alive_while_idle(true)
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    // A 404 has a body, which a window of 0 never lets through.
    let resp = send.send_request(h2_get("/nope")).await.unwrap();
    assert_eq!(resp.status(), 404);
    let _unread = resp;
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("a stalled HTTP/2 connection was kept")
        .unwrap()
        .ok();
    edge.stop().await;
}

/// A request that runs longer than the idle timeout is no idleness: its
/// connection is kept until it is answered.
#[tokio::test]
async fn a_slow_answer_is_not_idleness() {
    let (origin, edge, _dir) = proxied(|c| {
        c.server.h2_idle_timeout_ms = 300;
        c.server.write_timeout_ms = 300;
    })
    .await;
    origin.mode.store(SLOW, Ordering::Relaxed);
    let mut s = TcpStream::connect(edge.addr).await.unwrap();
    s.write_all(b"GET /api/slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_one(&mut s, &mut Vec::new(), false)
        .await
        .expect("the connection was closed under a request in flight");
    assert_eq!(answer.status, 201);
    edge.stop().await;
}

/// A client that pipelines, each head straddling two reads: every head has
/// the header timeout from its own first byte, not the first head's.
#[tokio::test]
async fn pipelined_heads_each_have_their_own_head_timeout() {
    let (edge, _dir) = edge_with(|c| c.server.header_read_timeout_ms = 1_000).await;
    let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n";
    let (first, second) = head.split_at(20);
    let mut s = TcpStream::connect(edge.addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(&[&head[..], first].concat()).await.unwrap();
    let started = Instant::now();
    let mut answered = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let Some(r) = read_one(&mut s, &mut buf, false).await else {
            panic!("cut after {answered} answers, {:?}", started.elapsed());
        };
        assert_eq!(r.status, 200);
        answered += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.write_all(&[second, first].concat()).await.unwrap();
    }
    edge.stop().await;
}

/// The HTTP/2 preface counts only where a connection starts, in the lane
/// as in hyper.
#[tokio::test]
async fn the_http2_preface_after_a_request_is_refused() {
    let (edge, _dir) = edge_with(|_| {}).await;
    let reply = exchange(
        &edge,
        b"GET /abc HTTP/1.1\r\nHost: x\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 302"), "{reply:?}");
    assert!(reply.contains("HTTP/1.1 400 Bad Request"), "{reply:?}");
    edge.stop().await;
}

// === strict framing on every request ===

#[tokio::test]
async fn a_long_header_line_does_not_switch_the_framing_guard_off() {
    let (origin, edge, _dir) = proxied(|_| {}).await;
    let padded = format!(
        "POST /api/v1/links HTTP/1.1\r\nHost: x\r\nContent-Length:{}5\r\n\r\nhello",
        " ".repeat(100)
    );
    let smuggled = "POST /api/v1/links HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /api/admin HTTP/1.1\r\nHost: x\r\n\r\n";
    let reply = exchange(&edge, format!("{padded}{smuggled}").as_bytes()).await;
    assert_eq!(reply.matches("HTTP/1.1 ").count(), 2, "{reply:?}");
    assert!(reply.starts_with("HTTP/1.1 201"), "{reply:?}");
    assert!(reply.contains("HTTP/1.1 400 Bad Request"), "{reply:?}");
    assert_eq!(
        origin.hits(),
        1,
        "only the first request reached the origin"
    );
    edge.stop().await;
}

#[tokio::test]
async fn the_hundredth_request_of_a_connection_is_checked_like_the_first() {
    let (origin, edge, _dir) = proxied(|_| {}).await;
    let one = "POST /api/v1/links HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}";
    let bad = "POST /api/v1/links HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}";
    let mut s = TcpStream::connect(edge.addr).await.unwrap();
    let mut buf = Vec::new();
    for _ in 0..99 {
        s.write_all(one.as_bytes()).await.unwrap();
        assert_eq!(read_one(&mut s, &mut buf, false).await.unwrap().status, 201);
    }
    s.write_all(bad.as_bytes()).await.unwrap();
    let reply = read_one(&mut s, &mut buf, false).await.unwrap();
    assert_eq!(reply.status, 400);
    assert_eq!(reply.header("connection"), Some("close"));
    assert!(
        read_one(&mut s, &mut buf, false).await.is_none(),
        "then closed"
    );
    assert_eq!(origin.hits(), 99);
    edge.stop().await;
}

#[tokio::test]
async fn listed_lengths_and_encodings_other_than_chunked_are_refused() {
    let (origin, edge, _dir) = proxied(|_| {}).await;
    for (case, head) in [
        (
            "listed Content-Length",
            "POST /api/v1/links HTTP/1.1\r\nHost: x\r\nContent-Length: 2, 2\r\n\r\n{}",
        ),
        (
            "gzip, chunked",
            "POST /api/v1/links HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        ),
        (
            "chunked, gzip",
            "POST /api/v1/links HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        ),
        (
            "chunked twice",
            "POST /api/v1/links HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        ),
    ] {
        let reply = exchange(&edge, head.as_bytes()).await;
        assert_eq!(status_of(&reply), 400, "{case}: {reply:?}");
        assert_eq!(reply.matches("HTTP/1.1 ").count(), 1, "{case}: {reply:?}");
    }
    assert_eq!(origin.hits(), 0);
    assert!(edge.metric(&fault("bad_framing")).await >= 4.0);
    edge.stop().await;
}

#[tokio::test]
async fn a_head_over_max_header_bytes_is_431_at_once_finished_or_not() {
    let (edge, _dir) = edge_with(|c| c.server.max_header_bytes = 8192).await;
    for finished in [false, true] {
        let mut head = b"GET /abc HTTP/1.1\r\nHost: x\r\n".to_vec();
        for i in 0..400 {
            head.extend_from_slice(format!("X-Pad-{i}: 0123456789\r\n").as_bytes());
        }
        if finished {
            head.extend_from_slice(b"\r\n");
        }
        let mut s = TcpStream::connect(edge.addr).await.unwrap();
        s.write_all(&head).await.unwrap();
        let reply = tokio::time::timeout(
            Duration::from_secs(2),
            read_one(&mut s, &mut Vec::new(), false),
        )
        .await
        .expect("the oversized head was held instead of refused")
        .unwrap();
        assert_eq!(reply.status, 431, "finished {finished}: {reply:?}");
    }
    assert!(edge.metric(&fault("head_too_large")).await >= 2.0);
    edge.stop().await;
}

// === HTTP semantics at the door ===

#[tokio::test]
async fn http11_without_exactly_one_valid_host_is_400_in_the_lane_and_in_hyper() {
    let (origin, edge, _dir) = proxied(|_| {}).await;
    for head in [
        "GET /abc HTTP/1.1\r\n\r\n",
        "GET /abc HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET /abc HTTP/1.1\r\nHost: a b\r\n\r\n",
        "GET /abc HTTP/1.1\r\nHost: ]]]:x:y\r\n\r\n",
        "GET /abc HTTP/1.1\r\nHost: x:abc\r\n\r\n",
        "GET /abc HTTP/1.1\r\nConnection: keep-alive\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",
        "POST /api/v1/links HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
        "GET http://user:pw@evil.example/api/x HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET http://evil.example:abc/api/x HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let reply = exchange(&edge, head.as_bytes()).await;
        assert_eq!(status_of(&reply), 400, "{head:?}: {reply:?}");
        assert!(reply.contains(r#""code":"bad_host""#), "{reply:?}");
    }
    assert_eq!(origin.hits(), 0);
    // HTTP/1.0 needs none.
    let reply = exchange(&edge, b"GET /abc HTTP/1.0\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.0 302"), "{reply:?}");
    edge.stop().await;
}

#[tokio::test]
async fn connect_trace_and_unknown_methods_on_the_api_are_405_and_never_forwarded() {
    let (origin, edge, _dir) = proxied(|_| {}).await;
    for method in ["CONNECT", "TRACE", "BREW"] {
        let reply = exchange(
            &edge,
            format!("{method} /api/v1/links HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(status_of(&reply), 405, "{method}: {reply:?}");
        assert!(
            reply.contains("allow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            "{reply:?}"
        );
    }
    assert_eq!(origin.hits(), 0);
    edge.stop().await;
}

#[tokio::test]
async fn dot_segments_in_api_paths_are_refused_before_the_prefix_match() {
    let (origin, edge, _dir) = proxied(|_| {}).await;
    for path in [
        "/api/../admin",
        "/api/%2e%2e/admin",
        "/api/.%2E/admin",
        "/api/v1/./links",
        "/api/v1%2flinks",
        "/api/v1%5Clinks",
    ] {
        let reply = exchange(
            &edge,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(status_of(&reply), 400, "{path}: {reply:?}");
        assert!(reply.contains(r#""code":"bad_path""#), "{reply:?}");
    }
    assert_eq!(origin.hits(), 0);
    edge.stop().await;
}

/// GET and HEAD of the same target, on one connection: the two heads.
async fn get_and_head(edge: &TestEdge, path: &str, extra: &str) -> (Raw, Raw) {
    let mut s = TcpStream::connect(edge.addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n").as_bytes())
        .await
        .unwrap();
    let get = read_one(&mut s, &mut buf, false).await.unwrap();
    s.write_all(format!("HEAD {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_one(&mut s, &mut buf, true).await.unwrap();
    (get, head)
}

#[tokio::test]
async fn head_answers_carry_the_headers_of_get_in_the_lane_and_in_hyper() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config();
    config.limits.not_found_per_sec = 0.0;
    let stores = sqlite_stores(&dir, &mut config).await;
    let mut gone = link("gone", "https://example.com/gone");
    gone.disabled = true;
    insert(
        stores.source.as_ref(),
        &[link("abc", "https://example.com/abc"), gone],
    )
    .await;
    let edge = TestEdge::start(config, stores).await;
    for path in ["/abc", "/nope", "/not.a.code", "/gone", "/healthz"] {
        // The lane answers plain requests; a Connection header sends a
        // request to hyper.
        for extra in ["", "Connection: keep-alive\r\n"] {
            let (get, head) = get_and_head(&edge, path, extra).await;
            assert_eq!(get.status, head.status, "{path} {extra:?}");
            let keep = |r: &Raw| -> Vec<(String, String)> {
                r.headers
                    .iter()
                    .filter(|(n, _)| n != "connection")
                    .cloned()
                    .collect()
            };
            assert_eq!(keep(&get), keep(&head), "{path} {extra:?}");
            assert!(head.body.is_empty());
        }
    }
    edge.stop().await;
}

#[tokio::test]
async fn forwarding_headers_from_untrusted_peers_are_removed() {
    let (origin, edge, _dir) = proxied(|_| {}).await;
    let headers = [
        ("x-real-ip", "6.6.6.6"),
        ("forwarded", "for=6.6.6.6;proto=https"),
        ("x-forwarded-for", "6.6.6.6"),
    ];
    edge.send(Method::GET, "/api/x", &headers, Bytes::new())
        .await;
    assert_eq!(origin.last_header("x-real-ip"), None);
    assert_eq!(origin.last_header("forwarded"), None);
    assert_eq!(
        origin.last_header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    edge.stop().await;

    // From a trusted proxy they are its to pass on.
    let (origin, edge, _dir) =
        proxied(|c| c.limits.trusted_proxies = vec!["127.0.0.1".into()]).await;
    edge.send(Method::GET, "/api/x", &headers, Bytes::new())
        .await;
    assert_eq!(origin.last_header("x-real-ip").as_deref(), Some("6.6.6.6"));
    assert_eq!(
        origin.last_header("forwarded").as_deref(),
        Some("for=6.6.6.6;proto=https")
    );
    edge.stop().await;
}

// === a drain loses nothing ===

/// A closed-loop client on one keep-alive connection: sends `request`,
/// reads the answer, again, until the edge says `connection: close` or
/// refuses new connections. Counts the answers, and the requests sent
/// that got none.
async fn keep_asking(addr: std::net::SocketAddr, request: &'static [u8]) -> (usize, usize) {
    let (mut answered, mut lost) = (0, 0);
    'connect: loop {
        let Ok(mut s) = TcpStream::connect(addr).await else {
            return (answered, lost);
        };
        let mut buf = Vec::new();
        loop {
            if s.write_all(request).await.is_err() {
                lost += 1;
                return (answered, lost);
            }
            match read_one(&mut s, &mut buf, false).await {
                None => {
                    lost += 1;
                    return (answered, lost);
                }
                Some(r) => {
                    assert!(r.status < 500, "{r:?}");
                    answered += 1;
                    if r.header("connection") == Some("close") {
                        continue 'connect;
                    }
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_under_load_answers_every_request_whose_head_arrived() {
    let (_origin, edge, _dir) = proxied(|c| c.server.drain_timeout_ms = 5_000).await;
    let requests: [&'static [u8]; 3] = [
        // The express lane, hyper after a handoff, and the proxy.
        b"GET /abc HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /abc HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
        b"POST /api/v1/links HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    ];
    let mut clients = Vec::new();
    for i in 0..12 {
        clients.push(tokio::spawn(keep_asking(edge.addr, requests[i % 3])));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    edge.stop().await;
    let (mut answered, mut lost) = (0, 0);
    for c in clients {
        let (a, l) = c.await.unwrap();
        answered += a;
        lost += l;
    }
    eprintln!("{answered} answered, {lost} without an answer");
    assert!(answered > 100, "{answered}");
    assert_eq!(lost, 0, "requests sent on an open connection got no answer");
}

/// On a connection hyper serves: a head half sent when the drain begins,
/// and a request pipelined behind a slow upload, are both answered.
#[tokio::test]
async fn a_drain_answers_heads_that_hyper_has_not_read_yet() {
    let (origin, edge, _dir) = proxied(|c| c.server.drain_timeout_ms = 5_000).await;
    // A head half sent (hyper gets it only whole).
    let mut half = TcpStream::connect(edge.addr).await.unwrap();
    let mut half_buf = Vec::new();
    half.write_all(b"GET /abc HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_one(&mut half, &mut half_buf, false)
            .await
            .unwrap()
            .status,
        302
    );
    half.write_all(b"GET /healthz HTTP/1.1\r\nHo")
        .await
        .unwrap();
    // A request behind an upload still under way.
    let mut piped = TcpStream::connect(edge.addr).await.unwrap();
    piped
        .write_all(b"POST /api/v1/links HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopped = tokio::spawn(async move { edge.stop().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    half.write_all(b"st: x\r\n\r\n").await.unwrap();
    piped
        .write_all(b"0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_one(&mut half, &mut half_buf, false)
        .await
        .expect("the half-sent head got no answer");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("connection"), Some("close"));
    let mut buf = Vec::new();
    let first = read_one(&mut piped, &mut buf, false)
        .await
        .expect("the upload got no answer");
    assert_eq!(first.status, 201);
    assert_eq!(first.header("connection"), None, "{first:?}");
    let second = read_one(&mut piped, &mut buf, false)
        .await
        .expect("the request behind the upload got no answer");
    assert_eq!(second.status, 200);
    assert_eq!(second.header("connection"), Some("close"));
    stopped.await.unwrap();
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn an_http2_drain_lets_streams_in_flight_finish() {
    let (origin, edge, _dir) = proxied(|c| c.server.drain_timeout_ms = 5_000).await;
    origin.mode.store(SLOW, Ordering::Relaxed);
    let (mut send, conn) = h2_client(edge.addr).await;
    let slow = tokio::spawn(send.send_request(h2_get("/api/slow")));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopped = tokio::spawn(edge.stop());
    let resp = slow.await.unwrap().expect("the stream in flight was cut");
    assert_eq!(resp.status(), 201);
    resp.into_body().collect().await.unwrap();
    stopped.await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the connection outlived the drain")
        .unwrap();
}

// === limits that cannot be used as a lever ===

fn batch_of(n: usize) -> Bytes {
    let links: Vec<serde_json::Value> = (0..n)
        .map(|i| serde_json::json!({ "url": format!("https://example.com/{i}") }))
        .collect();
    Bytes::from(serde_json::json!({ "links": links }).to_string())
}

#[tokio::test]
async fn a_batch_takes_a_create_token_per_link() {
    let (origin, edge, _dir) = proxied(|c| {
        c.limits.create_per_sec = 0.5;
        c.limits.create_burst = 200;
    })
    .await;
    let post = |path: &'static str, body: Bytes| {
        edge.send(
            Method::POST,
            path,
            &[("content-type", "application/json")],
            body,
        )
    };
    // Refused whole by the API (not links; too many): one token each.
    let zeros = Bytes::from(format!(r#"{{"links":[{}0]}}"#, "0,".repeat(499)));
    assert_eq!(post("/api/v1/links/batch", zeros).await.status, 422);
    assert_eq!(post("/api/v1/links/batch", batch_of(500)).await.status, 422);
    // 198 left: a batch of 100 goes; the next waits; one of 98 goes.
    assert_eq!(post("/api/v1/links/batch", batch_of(100)).await.status, 200);
    let r = post("/api/v1/links/batch", batch_of(100)).await;
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_some());
    assert_eq!(post("/api/v1/links/batch", batch_of(98)).await.status, 200);
    let one = Bytes::from_static(br#"{"url":"https://example.com/"}"#);
    assert_eq!(post("/api/v1/links", one).await.status, 429);
    assert_eq!(
        origin.hits(),
        4,
        "the batch the limit refused never reached the origin"
    );
    edge.stop().await;
}

#[tokio::test]
async fn a_flood_of_made_up_api_keys_is_cut_off_per_client() {
    let (origin, edge, _dir) = proxied(|c| {
        c.limits.trusted_proxies = vec!["127.0.0.1".into()];
        c.limits.unauthorized_per_sec = 1.0;
        c.limits.unauthorized_burst = 20;
    })
    .await;
    origin.mode.store(DENY, Ordering::Relaxed);
    let started = Instant::now();
    let mut statuses = Vec::new();
    for i in 0..60 {
        let key = format!("Bearer el_{i:040}");
        let headers = [
            ("authorization", key.as_str()),
            ("x-forwarded-for", "203.0.113.7"),
        ];
        statuses.push(
            edge.send(Method::GET, "/api/v1/links", &headers, Bytes::new())
                .await
                .status,
        );
    }
    let reached = origin.hits() as f64;
    let bound = 20.0 + started.elapsed().as_secs_f64().ceil();
    assert!(
        reached <= bound,
        "{reached} made-up keys reached the origin (bound {bound})"
    );
    assert!(
        statuses.iter().filter(|s| **s == 429).count() >= 35,
        "{statuses:?}"
    );
    // Another client is not held up by it.
    let other = [
        ("authorization", "Bearer el_x"),
        ("x-forwarded-for", "198.51.100.2"),
    ];
    let r = edge
        .send(Method::GET, "/api/v1/links", &other, Bytes::new())
        .await;
    assert_eq!(r.status, 401);
    edge.stop().await;
}

/// An API call its client abandons (an HTTP/2 stream reset) keeps its
/// `unauthorized` token: the origin may be looking its key up still.
#[tokio::test]
async fn an_abandoned_api_call_keeps_its_unauthorized_token() {
    let (origin, edge, _dir) = proxied(|c| {
        c.limits.unauthorized_per_sec = 0.1;
        c.limits.unauthorized_burst = 5;
    })
    .await;
    origin.mode.store(SLOW, Ordering::Relaxed);
    let (mut send, _conn) = h2_client(edge.addr).await;
    for _ in 0..5 {
        let call = send.send_request(h2_get("/api/v1/links"));
        assert!(
            tokio::time::timeout(Duration::from_millis(100), call)
                .await
                .is_err(),
            "the slow origin answered"
        );
    }
    let resp = tokio::time::timeout(
        Duration::from_secs(2),
        send.send_request(h2_get("/api/v1/links")),
    )
    .await
    .expect("the sixth call was let through to the slow origin")
    .unwrap();
    assert_eq!(resp.status(), 429);
    edge.stop().await;
}
