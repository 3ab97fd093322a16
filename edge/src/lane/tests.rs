#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use super::*;
use crate::domain::is_header_value;
use bytes::Bytes;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;
use tokio::io::DuplexStream;

/// Answers `GET /a` (and `HEAD /a`) with a 302 to `/x`, and `/slow`
/// after a wait with a body; declines the rest.
#[derive(Default)]
struct OnlyA {
    answered: AtomicUsize,
    /// `/slow` is answered once this is notified.
    gate: tokio::sync::Notify,
}

impl Express for OnlyA {
    fn answer_now(&self, req: &Simple<'_>, _peer: Peer, out: &mut Vec<u8>) -> bool {
        if req.target != "/a" {
            return false;
        }
        self.answered.fetch_add(1, Ordering::Relaxed);
        write_head(out, 302, "Found", &[("location", b"/x")]);
        true
    }

    fn answer_later(&self, req: Request<()>, _peer: Peer) -> Option<Responding<'_>> {
        if req.uri().path() != "/slow" {
            return None;
        }
        Some(Box::pin(async move {
            self.gate.notified().await;
            let mut resp = Response::new(Body::new(Bytes::from_static(b"slow")));
            *resp.status_mut() = http::StatusCode::NOT_FOUND;
            let ua = req.headers().get("user-agent").cloned();
            resp.headers_mut()
                .insert("x-ua", ua.unwrap_or(HeaderValue::from_static("-")));
            resp
        }))
    }
}

fn peer() -> Peer {
    Peer {
        addr: "127.0.0.1:1".parse().unwrap(),
        tls: false,
    }
}

const LIMITS: Limits = Limits {
    head_timeout: Duration::from_secs(5),
    keepalive: Duration::from_secs(5),
    max_head: 8192,
    write_timeout: Duration::from_secs(5),
};

/// Runs the lane on one end of a pipe; the test holds the other.
fn lane(
    express: Arc<OnlyA>,
    closing: CancellationToken,
) -> (DuplexStream, tokio::task::JoinHandle<Outcome<DuplexStream>>) {
    lane_with(express, closing, LIMITS)
}

fn lane_with(
    express: Arc<OnlyA>,
    closing: CancellationToken,
    limits: Limits,
) -> (DuplexStream, tokio::task::JoinHandle<Outcome<DuplexStream>>) {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let task =
        tokio::spawn(async move { drive(server, &*express, peer(), limits, &closing).await });
    (client, task)
}

use std::sync::Arc;

/// Reads `n` responses (heads only: the lane's have no body).
async fn responses(client: &mut DuplexStream, n: usize) -> Vec<String> {
    let mut text = Vec::new();
    let mut byte = [0u8; 1];
    while text.windows(4).filter(|w| w == b"\r\n\r\n").count() < n {
        client.read_exact(&mut byte).await.unwrap();
        text.push(byte[0]);
    }
    String::from_utf8(text)
        .unwrap()
        .split_inclusive("\r\n\r\n")
        .map(str::to_owned)
        .collect()
}

async fn replayed(outcome: Outcome<DuplexStream>, n: usize) -> Vec<u8> {
    let Outcome::Handoff(mut io) = outcome else {
        panic!("expected a handoff");
    };
    let mut rest = vec![0; n];
    io.read_exact(&mut rest).await.unwrap();
    rest
}

fn simple_of(head: &[u8]) -> Option<(bool, String, Option<Vec<u8>>)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    assert!(req.parse(head).unwrap().is_complete());
    simple(&req, &mut KnownHost::default()).map(|s| {
        (
            s.head,
            s.target.to_owned(),
            s.user_agent.map(<[u8]>::to_vec),
        )
    })
}

#[test]
fn only_bodiless_http11_get_and_head_are_simple() {
    assert_eq!(
        simple_of(b"GET /a?q=1 HTTP/1.1\r\nHost: h\r\nUser-Agent: ua/1\r\nuser-agent: two\r\n\r\n"),
        Some((false, "/a?q=1".into(), Some(b"ua/1".to_vec())))
    );
    assert_eq!(
        simple_of(b"HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n"),
        Some((true, "/a".into(), None))
    );
    for head in [
        &b"POST /a HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET http://h/a HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /a HTTP/1.0\r\n\r\n",
        b"GET /a HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        b"GET /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"GET /a HTTP/1.1\r\nconnection: keep-alive\r\n\r\n",
        b"GET /a HTTP/1.1\r\nUpgrade: h2c\r\n\r\n",
        b"GET /a HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
        // Without exactly one valid Host: the framing guard refuses it.
        b"GET /a HTTP/1.1\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: x\r\nHost: x\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: a b\r\n\r\n",
    ] {
        assert_eq!(simple_of(head), None, "{}", String::from_utf8_lossy(head));
    }
}

/// A connection's valid Host is remembered, never an invalid one.
#[test]
fn a_remembered_host_lets_only_itself_through() {
    let mut known = KnownHost::default();
    let mut run = |head: &[u8]| {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        assert!(req.parse(head).unwrap().is_complete());
        simple(&req, &mut known).is_some()
    };
    assert!(run(b"GET /a HTTP/1.1\r\nHost: sho.rt:8080\r\n\r\n"));
    assert!(run(b"GET /a HTTP/1.1\r\nHost: sho.rt:8080\r\n\r\n"));
    assert!(!run(b"GET /a HTTP/1.1\r\nHost: sho.rt:80x\r\n\r\n"));
    assert!(!run(b"GET /a HTTP/1.1\r\nHost: sho.rt:8080:1\r\n\r\n"));
    assert!(run(b"GET /a HTTP/1.1\r\nHost: other.example\r\n\r\n"));
    assert!(!run(&[
        &b"GET /a HTTP/1.1\r\nHost: "[..],
        &[b'a'; 100],
        b" b\r\n\r\n"
    ]
    .concat()));
}

#[test]
fn a_head_is_written_as_hyper_writes_it() {
    let mut out = Vec::new();
    write_head(
        &mut out,
        301,
        "Moved Permanently",
        &[
            ("location", b"https://e.com/"),
            ("cache-control", b"max-age=60"),
        ],
    );
    let text = String::from_utf8(out).unwrap();
    let date = text
        .strip_prefix(
            "HTTP/1.1 301 Moved Permanently\r\nlocation: https://e.com/\r\n\
             cache-control: max-age=60\r\ncontent-length: 0\r\ndate: ",
        )
        .and_then(|rest| rest.strip_suffix("\r\n\r\n"))
        .unwrap_or_else(|| panic!("{text:?}"));
    let parsed = httpdate::parse_http_date(date).unwrap();
    let off = SystemTime::now().duration_since(parsed).unwrap();
    assert!(off < Duration::from_secs(2), "{date}");
}

#[test]
fn header_values_follow_http_rules() {
    assert!(is_header_value(b"https://e.com/a b\t\x80"));
    assert!(!is_header_value(b"a\r\nset-cookie: x"));
    assert!(!is_header_value(b"a\x7f"));
    assert!(!is_header_value(b"a\x00"));
}

#[tokio::test]
async fn answers_in_order_then_hands_the_rest_to_hyper() {
    let express = Arc::new(OnlyA::default());
    let (mut client, task) = lane(express.clone(), CancellationToken::new());
    let rest = b"GET /b HTTP/1.1\r\nHost: x\r\n\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\n";
    client
        .write_all(
            &[
                &b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nHEAD /a HTTP/1.1\r\nHost: x\r\n\r\n"[..],
                rest,
            ]
            .concat(),
        )
        .await
        .unwrap();
    let answers = responses(&mut client, 2).await;
    assert_eq!(answers.len(), 2);
    assert!(answers
        .iter()
        .all(|a| a.starts_with("HTTP/1.1 302 Found\r\nlocation: /x\r\n")));
    // hyper reads what the lane did not answer, from its first byte.
    assert_eq!(replayed(task.await.unwrap(), rest.len()).await, rest);
    assert_eq!(express.answered.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn an_answer_waited_for_keeps_its_place_and_the_lane() {
    let express = Arc::new(OnlyA::default());
    let (mut client, task) = lane(express.clone(), CancellationToken::new());
    client
        .write_all(
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /slow HTTP/1.1\r\nHost: x\r\nUser-Agent: ua/2\r\n\r\n\
              GET /a HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await
        .unwrap();
    // The answer before the wait is sent before the wait ends.
    let first = tokio::time::timeout(Duration::from_secs(10), responses(&mut client, 1))
        .await
        .expect("the first answer waited for the second");
    assert!(first[0].starts_with("HTTP/1.1 302 Found\r\n"), "{first:?}");
    express.gate.notify_one();
    let answers = [first, responses(&mut client, 2).await].concat();
    assert!(
        answers[1]
            .starts_with("HTTP/1.1 404 Not Found\r\nx-ua: ua/2\r\ncontent-length: 4\r\ndate: "),
        "{answers:?}"
    );
    // The body comes before the next answer's head.
    assert!(
        answers[2].starts_with("slowHTTP/1.1 302 Found\r\n"),
        "{answers:?}"
    );
    assert_eq!(express.answered.load(Ordering::Relaxed), 2);
    // Still in the lane: a request after the wait is answered there too.
    client
        .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(responses(&mut client, 1).await.len(), 1);
    assert_eq!(express.answered.load(Ordering::Relaxed), 3);
    drop(client);
    assert!(matches!(task.await.unwrap(), Outcome::Closed));
}

#[tokio::test]
async fn a_head_split_across_reads_is_answered() {
    let (mut client, task) = lane(Arc::default(), CancellationToken::new());
    for part in [&b"GET /a HT"[..], b"TP/1.1\r\nHost: x\r", b"\n\r\n"] {
        client.write_all(part).await.unwrap();
        tokio::task::yield_now().await;
    }
    assert_eq!(responses(&mut client, 1).await.len(), 1);
    drop(client);
    assert!(matches!(task.await.unwrap(), Outcome::Closed));
}

#[tokio::test]
async fn bad_and_oversized_heads_go_to_hyper_whole() {
    for head in [
        b"GET /a HTTP/1.1\r\nBad Header\r\n\r\n".to_vec(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        [&b"GET /a HTTP/1.1\r\nX: "[..], &[b'y'; 9000]].concat(),
    ] {
        let (mut client, task) = lane(Arc::default(), CancellationToken::new());
        client.write_all(&head).await.unwrap();
        let got = replayed(task.await.unwrap(), head.len().min(LIMITS.max_head)).await;
        assert_eq!(got, head[..got.len()]);
    }
}

#[tokio::test(start_paused = true)]
async fn an_idle_or_unfinished_head_times_out() {
    let limits = Limits {
        head_timeout: Duration::from_millis(200),
        ..LIMITS
    };
    for sent in [&b""[..], b"GET /a HTTP/1.1\r\nHost: x\r\n"] {
        let started = tokio::time::Instant::now();
        let (mut client, task) = lane_with(Arc::default(), CancellationToken::new(), limits);
        client.write_all(sent).await.unwrap();
        assert!(matches!(task.await.unwrap(), Outcome::Closed));
        assert!(started.elapsed() >= limits.head_timeout);
    }
}

/// The timer is armed once and moved on lazily: a request answered
/// still gives the connection a whole keep-alive timeout from then.
#[tokio::test(start_paused = true)]
async fn each_answer_restarts_the_keepalive_timeout() {
    let limits = Limits {
        keepalive: Duration::from_millis(300),
        ..LIMITS
    };
    let started = tokio::time::Instant::now();
    let (mut client, task) = lane_with(Arc::default(), CancellationToken::new(), limits);
    client
        .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(responses(&mut client, 1).await.len(), 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    client
        .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(responses(&mut client, 1).await.len(), 1);
    // Past the first deadline (300 ms), before the second (500 ms).
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(!task.is_finished(), "closed at the first deadline");
    let outcome = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the moved deadline must still close the connection")
        .unwrap();
    assert!(matches!(outcome, Outcome::Closed));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(took < Duration::from_millis(600), "{took:?}");
}

/// A long keep-alive does not lengthen the time a started head has.
#[tokio::test(start_paused = true)]
async fn a_head_started_while_idle_has_the_head_timeout() {
    let limits = Limits {
        head_timeout: Duration::from_millis(200),
        keepalive: Duration::from_secs(60),
        ..LIMITS
    };
    let (mut client, task) = lane_with(Arc::default(), CancellationToken::new(), limits);
    client
        .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(responses(&mut client, 1).await.len(), 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!task.is_finished(), "idle within the keep-alive");
    let started = tokio::time::Instant::now();
    client.write_all(b"GET /a HTTP/1.1\r\n").await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the unfinished head must be cut")
        .unwrap();
    assert!(matches!(outcome, Outcome::Closed));
    let took = started.elapsed();
    assert!(
        took >= limits.head_timeout && took < Duration::from_millis(300),
        "{took:?}"
    );
}

/// The rest of the connection's bytes once the lane has closed it.
async fn until_closed(client: &mut DuplexStream) -> String {
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    String::from_utf8(rest).unwrap()
}

#[tokio::test(start_paused = true)]
async fn on_shutdown_every_request_read_is_answered_the_last_with_close() {
    // Idle when the drain begins: closed after a short wait.
    let closing = CancellationToken::new();
    let (mut client, task) = lane(Arc::default(), closing.clone());
    client
        .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(responses(&mut client, 1).await.len(), 1);
    let began = tokio::time::Instant::now();
    closing.cancel();
    assert!(matches!(task.await.unwrap(), Outcome::Closed));
    assert!(began.elapsed() >= SETTLE);

    // A head under way when the drain begins is answered, with close.
    let closing = CancellationToken::new();
    let (mut client, task) = lane(Arc::default(), closing.clone());
    client.write_all(b"GET /a HT").await.unwrap();
    tokio::task::yield_now().await;
    closing.cancel();
    tokio::task::yield_now().await;
    client
        .write_all(b"TP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(matches!(task.await.unwrap(), Outcome::Closed));
    let reply = until_closed(&mut client).await;
    assert!(reply.starts_with("HTTP/1.1 302 Found\r\n"), "{reply:?}");
    assert!(reply.contains("\r\nconnection: close\r\n"), "{reply:?}");

    // A request sent just after, on an idle connection: answered too.
    let closing = CancellationToken::new();
    let (mut client, task) = lane(Arc::default(), closing.clone());
    closing.cancel();
    tokio::task::yield_now().await;
    client
        .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(matches!(task.await.unwrap(), Outcome::Closed));
    assert!(until_closed(&mut client)
        .await
        .contains("connection: close"));

    // Pipelined requests: all answered, only the last says close.
    let closing = CancellationToken::new();
    closing.cancel();
    let (mut client, task) = lane(Arc::default(), closing.clone());
    client
        .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nHEAD /a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(matches!(task.await.unwrap(), Outcome::Closed));
    let reply = until_closed(&mut client).await;
    assert_eq!(reply.matches("HTTP/1.1 302").count(), 2, "{reply:?}");
    assert_eq!(reply.matches("connection: close").count(), 1, "{reply:?}");
    assert!(reply
        .rsplit("HTTP/1.1")
        .next()
        .unwrap()
        .contains("connection: close"));
}

#[tokio::test]
async fn a_peer_that_closes_ends_the_lane() {
    let (mut client, task) = lane(Arc::default(), CancellationToken::new());
    client
        .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    client.shutdown().await.unwrap();
    // Its request is still answered (a half-close is not an abort).
    assert_eq!(responses(&mut client, 1).await.len(), 1);
    assert!(matches!(task.await.unwrap(), Outcome::Closed));
}
