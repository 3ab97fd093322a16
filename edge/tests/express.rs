//! The public listener's express lane (`edgelink_edge::lane`): a
//! tier-0 redirect answered without hyper must be the answer hyper gives,
//! counted the same, and a connection whose requests the lane cannot answer
//! must get every answer, in order, from hyper.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod support;

use std::time::Duration;

use edgelink_core::{Link, RedirectStatus};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LANE_HITS: &str = "edgelink_http_requests_total{status=\"302\",tier=\"memory\"}";
const HANDOFFS: &str = "edgelink_express_handoffs_total";

/// Sends `requests` at once on a new connection and reads `n` answers
/// (status line and headers, then `content-length` bytes of body).
async fn exchange(
    edge: &TestEdge,
    requests: &[u8],
    n: usize,
) -> Vec<(String, Vec<String>, String)> {
    let mut s = TcpStream::connect(edge.addr).await.unwrap();
    s.write_all(requests).await.unwrap();
    let mut buf = Vec::new();
    let mut answers = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while answers.len() < n {
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .expect("answers timed out")
            .unwrap();
        assert!(
            read > 0,
            "closed after {} answers: {answers:?}",
            answers.len()
        );
        buf.extend_from_slice(&chunk[..read]);
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(buf[..end].to_vec()).unwrap();
            let mut lines = head.split("\r\n").map(str::to_owned);
            let status = lines.next().unwrap();
            let headers: Vec<String> = lines.collect();
            let body = headers
                .iter()
                .find_map(|h| h.strip_prefix("content-length: "))
                .map_or(0, |l| l.parse::<usize>().unwrap());
            if buf.len() < end + 4 + body {
                break;
            }
            let text = String::from_utf8(buf[end + 4..end + 4 + body].to_vec()).unwrap();
            buf.drain(..end + 4 + body);
            answers.push((status, headers, text));
        }
    }
    answers
}

/// The headers but `date`, which may differ by a second.
fn dateless(headers: &[String]) -> Vec<String> {
    headers
        .iter()
        .filter(|h| !h.starts_with("date: "))
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_lane_hit_is_the_answer_hyper_gives_and_is_counted_the_same() {
    let (edge, _dir) = edge_with(|_| {}).await;
    assert_eq!(edge.get("/abc").await.status, 302); // the miss fills tier 0

    let before = edge.metric(LANE_HITS).await;
    let handoffs = edge.metric(HANDOFFS).await;
    let lane = exchange(&edge, b"GET /abc HTTP/1.1\r\nHost: e\r\n\r\n", 1).await;
    assert_eq!(edge.metric(LANE_HITS).await, before + 1.0);
    assert_eq!(
        edge.metric(HANDOFFS).await,
        handoffs,
        "the lane answered it"
    );
    // `Connection` is not simple: hyper answers this one.
    let hyper = exchange(
        &edge,
        b"GET /abc HTTP/1.1\r\nHost: e\r\nConnection: keep-alive\r\n\r\n",
        1,
    )
    .await;
    assert_eq!(edge.metric(LANE_HITS).await, before + 2.0);
    assert_eq!(edge.metric(HANDOFFS).await, handoffs + 1.0);
    assert_eq!(lane[0].0, "HTTP/1.1 302 Found");
    assert_eq!(lane[0].0, hyper[0].0);
    assert_eq!(dateless(&lane[0].1), dateless(&hyper[0].1));
    assert_eq!(
        dateless(&lane[0].1),
        [
            "location: https://example.com/abc",
            "cache-control: no-store",
            "content-length: 0"
        ]
    );
    assert!(lane[0].1.iter().any(|h| h.starts_with("date: ")));

    // HEAD, and a query, which the code's redirect ignores as hyper's does.
    let answers = exchange(
        &edge,
        b"HEAD /abc HTTP/1.1\r\nHost: x\r\n\r\nGET /abc?utm=x HTTP/1.1\r\nHost: x\r\n\r\n",
        2,
    )
    .await;
    for (status, headers, _) in &answers {
        assert_eq!(status, "HTTP/1.1 302 Found");
        assert_eq!(dateless(headers), dateless(&lane[0].1));
    }
    assert_eq!(edge.metric(LANE_HITS).await, before + 4.0);
    assert_eq!(edge.metric(HANDOFFS).await, handoffs + 1.0);

    // A 404 waited for in the lane (the lookup of an unknown code) is
    // hyper's 404 too, body and all.
    let lane = exchange(&edge, b"GET /nope1 HTTP/1.1\r\nHost: x\r\n\r\n", 1).await;
    let hyper = exchange(
        &edge,
        b"GET /nope2 HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
        1,
    )
    .await;
    assert_eq!(lane[0].0, "HTTP/1.1 404 Not Found");
    assert_eq!(lane[0].0, hyper[0].0);
    assert_eq!(dateless(&lane[0].1), dateless(&hyper[0].1));
    assert_eq!(lane[0].2, hyper[0].2);
    assert!(lane[0].2.contains("not_found"), "{}", lane[0].2);
    assert_eq!(edge.metric(HANDOFFS).await, handoffs + 2.0);
}

#[tokio::test]
async fn a_connection_the_lane_cannot_finish_gets_every_answer_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config();
    let stores = sqlite_stores(&dir, &mut config).await;
    let permanent = Link::new(
        "perm",
        "https://example.com/perm",
        RedirectStatus::MovedPermanently,
        edgelink_core::link::now(),
        None,
    )
    .unwrap();
    insert(
        stores.source.as_ref(),
        &[
            link("hot", "https://example.com/hot"),
            link("cold", "https://example.com/cold"),
            permanent,
        ],
    )
    .await;
    let edge = TestEdge::start(config, stores).await;
    assert_eq!(edge.get("/hot").await.status, 302);
    assert_eq!(edge.get("/perm").await.status, 301);

    let handoffs = edge.metric(HANDOFFS).await;
    // Two hits, then a miss (cold: its first request), a 404, a hit and a
    // POST, pipelined on one connection: the lane answers all but the POST
    // (the miss and the 404 after their lookups), hyper the POST.
    let answers = exchange(
        &edge,
        b"GET /hot HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /perm HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /cold HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /no-such-code HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /hot HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /hot HTTP/1.1\r\nHost: x\r\ncontent-length: 0\r\n\r\n",
        6,
    )
    .await;
    let statuses: Vec<&str> = answers.iter().map(|(s, _, _)| s.as_str()).collect();
    assert_eq!(
        statuses,
        [
            "HTTP/1.1 302 Found",
            "HTTP/1.1 301 Moved Permanently",
            "HTTP/1.1 302 Found",
            "HTTP/1.1 404 Not Found",
            "HTTP/1.1 302 Found",
            "HTTP/1.1 405 Method Not Allowed",
        ]
    );
    let location = |i: usize| {
        answers[i]
            .1
            .iter()
            .find_map(|h| h.strip_prefix("location: "))
            .unwrap()
            .to_owned()
    };
    assert_eq!(location(0), "https://example.com/hot");
    assert_eq!(location(1), "https://example.com/perm");
    assert_eq!(location(2), "https://example.com/cold");
    assert_eq!(location(4), "https://example.com/hot");
    // A permanent redirect may be cached by browsers, in either lane.
    assert!(answers[1]
        .1
        .iter()
        .any(|h| h.starts_with("cache-control: public, max-age=")));
    assert_eq!(edge.metric(HANDOFFS).await, handoffs + 1.0, "the POST's");

    // A lookup keeps the connection in the lane.
    let answers = exchange(
        &edge,
        b"GET /no-such-2 HTTP/1.1\r\nHost: x\r\n\r\nGET /hot HTTP/1.1\r\nHost: x\r\n\r\n",
        2,
    )
    .await;
    assert_eq!(answers[0].0, "HTTP/1.1 404 Not Found");
    assert_eq!(answers[1].0, "HTTP/1.1 302 Found");
    assert_eq!(edge.metric(HANDOFFS).await, handoffs + 1.0);
}

#[tokio::test]
async fn the_lane_is_off_while_the_access_log_is_on() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let (edge, _db) = edge_with(|c| c.access_log.path = Some(log.clone())).await;
    assert_eq!(edge.get("/abc").await.status, 302);
    let answers = exchange(
        &edge,
        b"GET /abc HTTP/1.1\r\nHost: x\r\n\r\nGET /abc HTTP/1.1\r\nHost: x\r\n\r\n",
        2,
    )
    .await;
    assert!(answers.iter().all(|(s, _, _)| s == "HTTP/1.1 302 Found"));
    // Every request is logged: none skipped hyper's path.
    assert!(
        eventually(Duration::from_secs(5), || async {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("/abc"))
                .count()
                == 3
        })
        .await,
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}
