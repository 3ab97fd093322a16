//! The reverse proxy to origin upstreams: forwarding headers, streaming,
//! outlier ejection and return, retries only where allowed, 502/503/504,
//! the creation rate limit, and a reload that swaps upstreams and limits.
//! The upstreams are small HTTP servers in this process whose behaviour
//! each test sets.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod support;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgelink_core::config::{Balance, Config};
use http::StatusCode;
use support::upstream::*;
use support::*;

fn proxy_config(upstreams: &[String]) -> Config {
    let mut c = test_config();
    c.proxy.upstreams = upstreams.to_vec();
    c.proxy.health_check_path = String::new();
    c.proxy.retry_backoff_ms = 5;
    c.limits.create_per_sec = 0.0;
    c
}

async fn edge_for(config: Config, dir: &tempfile::TempDir) -> TestEdge {
    edge_with_mounts(config, dir, edgelink_edge::Mounts::default()).await
}

async fn edge_with_mounts(
    mut config: Config,
    dir: &tempfile::TempDir,
    mounts: edgelink_edge::Mounts,
) -> TestEdge {
    let stores = sqlite_stores(dir, &mut config).await;
    let permanent = edgelink_core::Link::new(
        "perm",
        "https://example.com/perm",
        edgelink_core::RedirectStatus::MovedPermanently,
        edgelink_core::link::now(),
        None,
    )
    .unwrap();
    insert(
        stores.source.as_ref(),
        &[link("abc", "https://example.com/abc"), permanent],
    )
    .await;
    TestEdge::start_full(config, stores, 1, mounts).await
}

async fn send(
    edge: &TestEdge,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Reply {
    let method = http::Method::from_bytes(method.as_bytes()).unwrap();
    edge.send(method, path, headers, body).await
}

/// Which upstream answered `GET /api/x`.
async fn answered_by(edge: &TestEdge) -> serde_json::Value {
    send(edge, "GET", "/api/x", &[], Bytes::new()).await.json()["upstream"].clone()
}

/// Asks for a reload and waits until `counter` reaches 1.
async fn reload(edge: &TestEdge, tx: &tokio::sync::mpsc::Sender<()>, counter: &str) {
    tx.send(()).await.unwrap();
    let done = eventually(Duration::from_secs(5), || async {
        edge.metric(counter).await == 1.0
    })
    .await;
    assert!(done, "{counter} never reached 1");
}

#[tokio::test]
async fn requests_go_upstream_with_forwarding_headers_and_stream_back() {
    let a = Upstream::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let edge = edge_for(proxy_config(&[a.url()]), &dir).await;

    let r = send(
        &edge,
        "POST",
        "/api/v1/links",
        &[
            ("host", "sho.rt"),
            ("x-forwarded-for", "6.6.6.6"), // from an untrusted peer: dropped
            ("connection", "x-hop"),
            ("x-hop", "secret"),
            ("content-type", "application/json"),
        ],
        Bytes::from_static(br#"{"url":"https://example.com/"}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.json()["upstream"], "a");
    assert_eq!(r.json()["received"], 30);
    assert_eq!(
        a.last_header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(a.last_header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(a.last_header("x-forwarded-host").as_deref(), Some("sho.rt"));
    assert_eq!(
        a.last_header("x-hop"),
        None,
        "hop-by-hop headers are dropped"
    );
    let id = a.last_header("x-request-id").unwrap();
    assert_eq!(id.len(), 32);
    assert_eq!(
        r.headers["x-request-id"],
        id.as_str(),
        "the client gets the same id"
    );
    assert!(
        r.headers.get("x-upstream-private").is_none(),
        "and both ways"
    );

    // A client's own request id is passed on.
    let r = send(
        &edge,
        "GET",
        "/api/v1/links/x",
        &[("x-request-id", "trace-42")],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.headers["x-request-id"], "trace-42");
    assert_eq!(a.last_header("x-request-id").as_deref(), Some("trace-42"));

    // A large answer streams through whole; a body over the limit is refused.
    let r = send(&edge, "GET", "/api/big", &[], Bytes::new()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), 3 << 20);
    let r = send(
        &edge,
        "POST",
        "/api/v1/links",
        &[],
        Bytes::from(vec![b'x'; 2 << 20]),
    )
    .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.json()["error"]["code"], "body_too_large");

    // Redirects are still the edge's own.
    assert_eq!(edge.get("/abc").await.status, StatusCode::FOUND);
    edge.stop().await;
}

#[tokio::test]
async fn a_failing_upstream_is_ejected_then_restored() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    a.mode.store(FAIL, Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let mut config = proxy_config(&[a.url(), b.url()]);
    config.proxy.eject_base_ms = 700;
    let edge = edge_for(config, &dir).await;

    for _ in 0..40 {
        let r = send(&edge, "GET", "/api/v1/links/x", &[], Bytes::new()).await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "GETs are retried on the healthy host"
        );
    }
    assert_eq!(
        a.hits(),
        5,
        "five failures in a row eject the host; then it gets nothing"
    );
    assert_eq!(edge.metric("edgelink_proxy_ejections_total").await, 1.0);
    assert!(edge.metric("edgelink_proxy_retries_total").await >= 5.0);

    // Its ejection over, it is half-open: still failing, it gets one
    // request (the probe), and that one failure ejects it again, for
    // twice as long.
    tokio::time::sleep(Duration::from_millis(800)).await;
    for _ in 0..40 {
        let r = send(&edge, "GET", "/api/v1/links/x", &[], Bytes::new()).await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    assert_eq!(a.hits(), 6, "one probe, then ejected again");
    let open = r#"edgelink_proxy_upstreams{state="open"}"#;
    assert!(
        eventually(Duration::from_secs(3), || async {
            edge.metric(open).await == 1.0
        })
        .await,
        "the ejected host's breaker state is exported"
    );
    assert_eq!(edge.metric("edgelink_proxy_ejections_total").await, 2.0);

    // It recovers; after its (1.4 s) ejection a probe succeeds and it is
    // used again.
    a.mode.store(OK, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..40 {
        let r = send(&edge, "GET", "/api/v1/links/x", &[], Bytes::new()).await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    assert!(a.hits() > 7, "restored: {} hits", a.hits());
    assert_eq!(edge.metric("edgelink_proxy_readmissions_total").await, 1.0);
    let closed = r#"edgelink_proxy_upstreams{state="closed"}"#;
    assert!(
        eventually(Duration::from_secs(3), || async {
            edge.metric(closed).await == 2.0
        })
        .await,
        "both hosts back in rotation"
    );
    edge.stop().await;
}

#[tokio::test]
async fn an_upstream_failing_its_health_check_gets_no_traffic_until_it_passes() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    a.healthy.store(false, Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let mut config = proxy_config(&[a.url(), b.url()]);
    config.proxy.health_check_path = "/healthz".into();
    config.proxy.health_check_interval_ms = 100;
    let edge = edge_for(config, &dir).await;
    tokio::time::sleep(Duration::from_millis(400)).await; // two failed checks
    for _ in 0..20 {
        assert_eq!(
            send(&edge, "GET", "/api/x", &[], Bytes::new()).await.status,
            StatusCode::CREATED
        );
    }
    assert_eq!(a.hits(), 0);
    // Out of rotation, and exported so: not counted as in rotation.
    let open = r#"edgelink_proxy_upstreams{state="open"}"#;
    assert!(
        eventually(Duration::from_secs(3), || async {
            edge.metric(open).await == 1.0
        })
        .await,
        "the unhealthy host counts as out of rotation"
    );
    a.healthy.store(true, Ordering::Relaxed);
    let back = eventually(Duration::from_secs(5), || async {
        send(&edge, "GET", "/api/x", &[], Bytes::new()).await;
        a.hits() > 0
    })
    .await;
    assert!(back);
    edge.stop().await;
}

#[tokio::test]
async fn retries_only_for_idempotent_requests_or_requests_never_sent() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    a.mode.store(FAIL, Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let mut config = proxy_config(&[a.url(), b.url()]);
    config.proxy.balance = Balance::RoundRobin;
    config.proxy.eject_consecutive_failures = 1_000;
    let edge = edge_for(config, &dir).await;

    // POST: the host that answered 500 may have acted on it; no retry.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            send(
                &edge,
                "POST",
                "/api/v1/links",
                &[],
                Bytes::from_static(b"{}"),
            )
            .await
            .status,
        );
    }
    statuses.sort();
    assert_eq!(statuses, [201, 201, 500, 500]);
    assert_eq!((a.hits(), b.hits()), (2, 2));
    assert_eq!(edge.metric("edgelink_proxy_retries_total").await, 0.0);

    // GET: retried on the other host.
    for _ in 0..4 {
        assert_eq!(
            send(&edge, "GET", "/api/v1/links/x", &[], Bytes::new())
                .await
                .status,
            StatusCode::CREATED
        );
    }
    let first_tries_on_a = a.hits() - 2;
    assert!(first_tries_on_a > 0);
    assert_eq!(
        edge.metric("edgelink_proxy_retries_total").await,
        first_tries_on_a as f64,
        "every GET that failed on a was retried"
    );
    edge.stop().await;

    // A POST that could not connect was never sent: retried, body intact.
    let dead = closed_port();
    let dir = tempfile::tempdir().unwrap();
    let mut config = proxy_config(&[dead, b.url()]);
    config.proxy.balance = Balance::RoundRobin;
    config.proxy.eject_consecutive_failures = 1_000;
    let edge = edge_for(config, &dir).await;
    let before = b.hits();
    for _ in 0..2 {
        let r = send(
            &edge,
            "POST",
            "/api/v1/links",
            &[],
            Bytes::from_static(b"{\"n\":1}"),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED);
        assert_eq!(r.json()["received"], 7);
    }
    assert_eq!(b.hits() - before, 2);
    // A streamed body (over replay_body_bytes) cannot be replayed: 502.
    let big = Bytes::from(vec![b'x'; 200 * 1024]);
    let mut codes = Vec::new();
    for _ in 0..2 {
        codes.push(
            send(&edge, "POST", "/api/v1/links", &[], big.clone())
                .await
                .status
                .as_u16(),
        );
    }
    codes.sort();
    assert_eq!(codes, [201, 502]);
    edge.stop().await;
}

#[tokio::test]
async fn no_host_left_is_503_a_dead_one_502_and_a_slow_one_504() {
    let a = Upstream::start("a").await;
    a.healthy.store(false, Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let mut config = proxy_config(&[a.url()]);
    config.proxy.health_check_path = "/healthz".into();
    config.proxy.health_check_interval_ms = 100;
    let edge = edge_for(config, &dir).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = send(&edge, "GET", "/api/x", &[], Bytes::new()).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["error"]["code"], "no_upstream");
    assert_eq!(r.headers["retry-after"], "1");
    edge.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let edge = edge_for(proxy_config(&[closed_port()]), &dir).await;
    let r = send(&edge, "GET", "/api/x", &[], Bytes::new()).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.json()["error"]["code"], "bad_gateway");
    edge.stop().await;

    let slow = Upstream::start("slow").await;
    slow.mode.store(SLOW, Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let mut config = proxy_config(&[slow.url()]);
    config.proxy.timeout_ms = 300;
    let edge = edge_for(config, &dir).await;
    let started = Instant::now();
    let r = send(&edge, "GET", "/api/x", &[], Bytes::new()).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.json()["error"]["code"], "upstream_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    edge.stop().await;
}

#[tokio::test]
async fn creations_are_rate_limited_per_client_ip() {
    let a = Upstream::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = proxy_config(&[a.url()]);
    config.limits.create_per_sec = 0.5;
    config.limits.create_burst = 2;
    config.limits.trusted_proxies = vec!["127.0.0.1".into()];
    let edge = edge_for(config, &dir).await;
    let post = |xff: &'static str| {
        let edge = &edge;
        async move {
            let headers: &[(&str, &str)] = if xff.is_empty() {
                &[]
            } else {
                &[("x-forwarded-for", xff)]
            };
            send(
                edge,
                "POST",
                "/api/v1/links",
                headers,
                Bytes::from_static(b"{}"),
            )
            .await
        }
    };
    assert_eq!(post("").await.status, StatusCode::CREATED);
    assert_eq!(post("").await.status, StatusCode::CREATED);
    let r = post("").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.json()["error"]["code"], "rate_limited");
    let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait), "{wait}");
    assert_eq!(a.hits(), 2, "a refused creation never reaches the origin");
    // Reads are not creations.
    assert_eq!(
        send(&edge, "GET", "/api/x", &[], Bytes::new()).await.status,
        StatusCode::CREATED
    );

    // Through a trusted proxy, the client is the forwarded address.
    assert_eq!(post("203.0.113.5").await.status, StatusCode::CREATED);
    assert_eq!(
        a.last_header("x-forwarded-for").as_deref(),
        Some("203.0.113.5, 127.0.0.1")
    );
    assert_eq!(edge.metric("edgelink_rate_limited_total").await, 1.0);
    edge.stop().await;
}

#[tokio::test]
async fn a_reload_swaps_upstreams_and_limits_and_a_bad_one_changes_nothing() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let dir = tempfile::tempdir().unwrap();
    let first = proxy_config(&[a.url()]);
    let next = Arc::new(Mutex::new(Ok(first.clone())));
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let source = next.clone();
    let mounts = edgelink_edge::Mounts {
        reload: Some(edgelink_edge::Reload {
            load: Box::new(move || source.lock().unwrap().clone()),
            requests: rx,
        }),
        ..Default::default()
    };
    let edge = edge_with_mounts(first.clone(), &dir, mounts).await;
    assert_eq!(answered_by(&edge).await, "a");
    let perm = edge.get("/perm").await;
    assert_eq!(
        perm.status,
        StatusCode::MOVED_PERMANENTLY,
        "{:?}",
        perm.body
    );
    assert_eq!(perm.header("cache-control"), Some("public, max-age=3600"));

    // A configuration that does not validate: nothing changes.
    *next.lock().unwrap() = Err("proxy.timeout_ms must be 1..=600000".to_owned());
    reload(&edge, &tx, "edgelink_config_reload_failures_total").await;
    assert_eq!(answered_by(&edge).await, "a");

    // A good one: new upstream, shorter URI limit, another permanent max-age.
    let mut second = proxy_config(&[b.url()]);
    second.limits.max_uri_bytes = 64;
    second.redirect.permanent_max_age_secs = 42;
    *next.lock().unwrap() = Ok(second);
    reload(&edge, &tx, "edgelink_config_reloads_total").await;
    assert_eq!(answered_by(&edge).await, "b");
    assert_eq!(
        edge.get("/perm").await.header("cache-control"),
        Some("public, max-age=42"),
        "tier 0 was emptied: its answers carried the old header"
    );
    let long = format!("/abc?{}", "q".repeat(100));
    let r = edge.get(&long).await;
    assert_eq!(r.status, StatusCode::URI_TOO_LONG);
    assert_eq!(r.json()["error"]["code"], "uri_too_long");
    assert_eq!(edge.get("/abc").await.status, StatusCode::FOUND);
    edge.stop().await;
}
