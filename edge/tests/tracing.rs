//! Tracing (issue 6): B3 headers arriving at the edge reach the origin on
//! the proxied request, naming the edge's span as the parent; the edge's
//! spans go to an OTLP/HTTP endpoint (a collector stand-in here) in the
//! caller's trace; unsampled requests export nothing and tell the origin.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use edgelink_core::net::{self, server};
use edgelink_core::shutdown::CancellationToken;
use http::{Method, Response, StatusCode};
use serde_json::Value;
use support::upstream::Upstream;
use support::*;

/// An OTLP/HTTP collector stand-in: keeps every span posted to /v1/traces.
struct Collector {
    url: String,
    spans: Arc<Mutex<Vec<Value>>>,
    stop: CancellationToken,
}

impl Collector {
    async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let spans = Arc::new(Mutex::new(Vec::new()));
        let kept = spans.clone();
        let handler = move |req: http::Request<hyper::body::Incoming>, _peer| {
            let kept = kept.clone();
            async move {
                assert_eq!(req.uri().path(), "/v1/traces");
                assert_eq!(req.headers()["content-type"], "application/json");
                let limits = net::BodyLimits::new(&Default::default(), 16 << 20);
                let body = net::read_body(req.into_body(), limits, &Default::default())
                    .await
                    .unwrap();
                let v: Value = serde_json::from_slice(&body).unwrap();
                kept.lock()
                    .unwrap()
                    .extend(edgelink_core::testing::otlp_spans(&v));
                Response::builder()
                    .status(StatusCode::OK)
                    .body(net::Body::default())
                    .unwrap()
            }
        };
        let stop = CancellationToken::new();
        let options = server::Options::internal(&edgelink_core::Config::default().server);
        tokio::spawn(server::serve(listener, options, handler, stop.clone()));
        Collector { url, spans, stop }
    }

    /// The spans of `trace` (hex), waiting up to 5 s for at least `n`.
    async fn trace(&self, trace: &str, n: usize) -> Vec<Value> {
        let spans = || -> Vec<Value> {
            self.spans
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s["traceId"] == trace)
                .cloned()
                .collect()
        };
        eventually(Duration::from_secs(5), || async { spans().len() >= n }).await;
        spans()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn named<'a>(spans: &'a [Value], name: &str) -> &'a Value {
    spans
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no {name} span in {spans:#?}"))
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a str {
    span["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == key)
        .and_then(|a| a["value"]["stringValue"].as_str())
        .unwrap_or_else(|| panic!("no {key} on {span}"))
}

async fn traced_edge(
    upstream: &Upstream,
    collector: Option<&Collector>,
) -> (TestEdge, tempfile::TempDir) {
    edge_with(|c| {
        c.proxy.upstreams = vec![upstream.url()];
        c.proxy.health_check_path = String::new();
        c.limits.create_per_sec = 0.0;
        c.tracing.otlp_endpoint = collector.map(|c| c.url.clone());
        c.tracing.sample_ratio = 0.0;
    })
    .await
}

#[tokio::test]
async fn b3_in_reaches_the_origin_and_spans_join_the_callers_trace() {
    let collector = Collector::start().await;
    let upstream = Upstream::start("origin").await;
    let (edge, _dir) = traced_edge(&upstream, Some(&collector)).await;
    let trace = "80f198ee56343ba864fe8b2a57d3eff7";
    let caller = "e457b5a2e4d86bd1";

    for headers in [
        vec![("b3", format!("{trace}-{caller}-1"))],
        vec![
            ("x-b3-traceid", trace.to_owned()),
            ("x-b3-spanid", caller.to_owned()),
            ("x-b3-sampled", "1".to_owned()),
        ],
    ] {
        collector.spans.lock().unwrap().clear();
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = edge
            .send(
                Method::POST,
                "/api/v1/links",
                &headers,
                Bytes::from_static(b"{}"),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);

        let spans = collector.trace(trace, 2).await;
        let server = named(&spans, "edge.request");
        let client = named(&spans, "proxy.forward");
        assert_eq!(
            server["parentSpanId"], caller,
            "the caller's span is the parent"
        );
        assert_eq!(server["kind"], 2);
        assert_eq!(attr(server, "url.path"), "/api/v1/links");
        assert_eq!(attr(server, "http.response.status_code"), "201");
        assert_eq!(server["service"], "edgelink-edge");
        assert_eq!(client["parentSpanId"], server["spanId"]);
        assert_eq!(client["kind"], 3);

        // The origin got B3 in both forms, naming the proxy's span.
        let client_id = client["spanId"].as_str().unwrap();
        let server_id = server["spanId"].as_str().unwrap();
        assert_eq!(
            upstream.last_header("b3").unwrap(),
            format!("{trace}-{client_id}-1-{server_id}")
        );
        assert_eq!(upstream.last_header("x-b3-traceid").unwrap(), trace);
        assert_eq!(upstream.last_header("x-b3-spanid").unwrap(), client_id);
        assert_eq!(
            upstream.last_header("x-b3-parentspanid").unwrap(),
            server_id
        );
        assert_eq!(upstream.last_header("x-b3-sampled").unwrap(), "1");
    }

    // A redirect is traced too.
    let r = edge
        .send(
            Method::GET,
            "/abc",
            &[("b3", &format!("{trace}-{caller}-1"))],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 302);
    let spans = collector.trace(trace, 3).await;
    assert!(spans
        .iter()
        .any(|s| s["name"] == "edge.request" && attr(s, "url.path") == "/abc"));

    // Not sampled (no decision in, ratio 0): nothing exported, and the
    // origin is told not to sample.
    let before = collector.spans.lock().unwrap().len();
    let r = edge
        .send(
            Method::POST,
            "/api/v1/links",
            &[],
            Bytes::from_static(b"{}"),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(upstream.last_header("b3").as_deref(), Some("0"));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(collector.spans.lock().unwrap().len(), before);
    edge.stop().await;
}

#[tokio::test]
async fn with_tracing_off_b3_passes_through_untouched() {
    let upstream = Upstream::start("origin").await;
    let (edge, _dir) = traced_edge(&upstream, None).await;
    let b3 = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1";
    let r = edge
        .send(
            Method::POST,
            "/api/v1/links",
            &[("b3", b3), ("x-b3-flags", "1")],
            Bytes::from_static(b"{}"),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(upstream.last_header("b3").as_deref(), Some(b3));
    assert_eq!(upstream.last_header("x-b3-flags").as_deref(), Some("1"));
    edge.stop().await;
}

/// The access log: one JSON line per request, written off the request
/// path, all there after a graceful stop.
#[tokio::test]
async fn the_access_log_has_a_json_line_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let (edge, _db) = edge_with(|c| c.access_log.path = Some(log.clone())).await;
    for path in ["/abc", "/nope", "/healthz"] {
        edge.send(
            Method::GET,
            path,
            &[("user-agent", "probe/1.0")],
            Bytes::new(),
        )
        .await;
    }
    edge.stop().await;
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0]["path"], "/abc");
    assert_eq!(lines[0]["status"], 302);
    assert_eq!(lines[0]["method"], "GET");
    assert_eq!(lines[0]["client"], "127.0.0.1");
    assert_eq!(lines[0]["user_agent"], "probe/1.0");
    assert!(lines[0]["duration_us"].is_u64());
    assert!(lines[0]["ts"].as_str().unwrap().ends_with('Z'));
    assert_eq!(lines[1]["status"], 404);
    assert_eq!(lines[2]["status"], 200);
}
