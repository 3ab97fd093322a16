//! The creation API against the real PostgreSQL (a fresh database per test):
//! the CRUD round trip, aliases, Idempotency-Key, API keys, every validation
//! rule, an empty key pool, and eight origins creating links at once.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use edgelink_core::config::Config;
use edgelink_core::shutdown::CancellationToken;
use edgelink_core::store::postgres::PgStore;
use edgelink_core::testing::TestDb;
use edgelink_core::LinkStore;
use edgelink_keypool::metrics::KeypoolMetrics;
use edgelink_keypool::postgres::PgPool;
use edgelink_keypool::Keypool;
use edgelink_origin::api::Api;
use edgelink_origin::store::{OriginStore, PgOrigin};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

struct Env {
    /// Kept for its Drop: the database goes with the test.
    _db: TestDb,
    config: Config,
    links: Arc<dyn LinkStore>,
    key: String,
}

async fn env() -> Env {
    let db = TestDb::create().await;
    let mut config = Config::default();
    config.postgres.url = Some(db.url.clone());
    config.postgres.timeout_ms = 10_000;
    config.origin.public_url = "https://sho.rt".to_owned();
    config.origin.blocked_domains = vec!["blocked.example".to_owned()];
    config.keypool.low_watermark = 0;
    config.keypool.high_watermark = 100_000;
    config.keypool.batch_size = 25_000;
    config.admin.token = Some(ADMIN_TOKEN.to_owned());
    let pg = PgStore::connect(&config.postgres).await.unwrap();
    pg.migrate().await.unwrap();
    let (key, prefix, hash) = edgelink_origin::apikey::generate();
    PgOrigin::connect(&config.postgres)
        .unwrap()
        .add_api_key("tests", &prefix, hash)
        .await
        .unwrap();
    Env {
        links: Arc::new(pg),
        _db: db,
        config,
        key,
    }
}

async fn fill(env: &Env, n: u64) {
    let pool = keypool(env).await;
    pool.refiller.request(n);
    pool.refiller.tick(&CancellationToken::new()).await.unwrap();
}

async fn keypool(env: &Env) -> Keypool {
    let store = Arc::new(PgPool::connect(&env.config.postgres).unwrap());
    Keypool::open(store, &env.config, KeypoolMetrics::noop())
        .await
        .unwrap()
}

/// One origin: its own connection pools and key lease.
async fn origin(env: &Env) -> Api {
    let pool = keypool(env).await;
    edgelink_origin::build(
        &env.config,
        env.links.clone(),
        None,
        Arc::new(PgOrigin::connect(&env.config.postgres).unwrap()),
        pool.leaser(env.config.keypool.lease_batch),
        Arc::new(edgelink_origin::TtlOnly),
    )
    .await
    .unwrap()
}

const ADMIN_TOKEN: &str = "origin-tests-admin-token-0123";

fn auth_admin() -> HeaderMap {
    auth(ADMIN_TOKEN)
}

fn auth(key: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
    );
    h
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

async fn call(api: &Api, method: Method, target: &str, headers: &HeaderMap, body: &str) -> Reply {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let resp = api
        .handle(
            &method,
            path,
            query,
            headers,
            Full::new(Bytes::from(body.to_owned())),
        )
        .await;
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    Reply {
        status,
        headers,
        body,
    }
}

async fn create(api: &Api, key: &str, body: Value) -> Reply {
    call(
        api,
        Method::POST,
        "/api/v1/links",
        &auth(key),
        &body.to_string(),
    )
    .await
}

#[tokio::test]
async fn create_read_change_delete_and_list() {
    let env = env().await;
    fill(&env, 1_000).await;
    let api = origin(&env).await;

    let r = create(
        &api,
        &env.key,
        json!({"url": "https://example.com/a", "ttl_seconds": 3600}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let code = r.body["code"].as_str().unwrap().to_owned();
    assert_eq!(code.len(), 7);
    assert_eq!(r.body["short_url"], format!("https://sho.rt/{code}"));
    assert_eq!(
        r.headers[http::header::LOCATION],
        format!("https://sho.rt/{code}").as_str()
    );
    assert_eq!(r.body["url"], "https://example.com/a");
    assert_eq!(r.body["redirect"], 302);
    assert!(r.body["expires_at"].is_string());
    assert!(r.body["created_at"].as_str().unwrap().ends_with('Z'));
    let stored = env
        .links
        .get(&code)
        .await
        .unwrap()
        .expect("committed before the 201");
    assert_eq!(stored.target, "https://example.com/a");

    let got = call(
        &api,
        Method::GET,
        &format!("/api/v1/links/{code}"),
        &auth(&env.key),
        "",
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, r.body);

    let patched = call(
        &api,
        Method::PATCH,
        &format!("/api/v1/links/{code}"),
        &auth(&env.key),
        r#"{"url": "https://example.com/b", "redirect": 301, "expires_at": null}"#,
    )
    .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    assert_eq!(patched.body["url"], "https://example.com/b");
    assert_eq!(patched.body["redirect"], 301);
    assert!(patched.body["expires_at"].is_null());
    let disabled = call(
        &api,
        Method::PATCH,
        &format!("/api/v1/links/{code}"),
        &auth(&env.key),
        r#"{"disabled": true}"#,
    )
    .await;
    assert_eq!(disabled.body["disabled"], true);
    assert_eq!(
        disabled.body["url"], "https://example.com/b",
        "fields left out stay"
    );

    for i in 0..5 {
        let r = create(
            &api,
            &env.key,
            json!({"url": format!("https://example.com/{i}")}),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let target = match &cursor {
            Some(c) => format!("/api/v1/links?limit=2&cursor={c}"),
            None => "/api/v1/links?limit=2".to_owned(),
        };
        let page = call(&api, Method::GET, &target, &auth(&env.key), "").await;
        assert_eq!(page.status, StatusCode::OK);
        for l in page.body["links"].as_array().unwrap() {
            seen.push(l["code"].as_str().unwrap().to_owned());
        }
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 6, "{seen:?}");
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "pages come in code order");

    let del = call(
        &api,
        Method::DELETE,
        &format!("/api/v1/links/{code}"),
        &auth(&env.key),
        "",
    )
    .await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    let gone = call(
        &api,
        Method::GET,
        &format!("/api/v1/links/{code}"),
        &auth(&env.key),
        "",
    )
    .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(gone.body["error"]["code"], "not_found");
    let again = call(
        &api,
        Method::DELETE,
        &format!("/api/v1/links/{code}"),
        &auth(&env.key),
        "",
    )
    .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    assert!(
        env.links.get(&code).await.unwrap().unwrap().disabled,
        "the edge answers 410"
    );
}

#[tokio::test]
async fn aliases_are_taken_once() {
    let env = env().await;
    let api = origin(&env).await;
    let r = create(
        &api,
        &env.key,
        json!({"url": "https://example.com/", "alias": "launch-2026", "redirect": 308}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["code"], "launch-2026");
    assert_eq!(r.body["redirect"], 308);
    let again = create(
        &api,
        &env.key,
        json!({"url": "https://example.com/other", "alias": "launch-2026"}),
    )
    .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.body["error"]["code"], "alias_taken");
    let stored = env.links.get("launch-2026").await.unwrap().unwrap();
    assert_eq!(
        stored.target, "https://example.com/",
        "the first link is untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_key_makes_retries_safe() {
    let env = env().await;
    fill(&env, 1_000).await;
    let api = Arc::new(origin(&env).await);
    let mut headers = auth(&env.key);
    headers.insert("idempotency-key", HeaderValue::from_static("order-1234"));
    let body = json!({"url": "https://example.com/once"}).to_string();
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let (api, headers, body) = (api.clone(), headers.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            call(&api, Method::POST, "/api/v1/links", &headers, &body).await
        }));
    }
    let mut codes = HashSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        if r.status == StatusCode::CREATED {
            codes.insert(r.body["code"].as_str().unwrap().to_owned());
        } else {
            // Only a retry that raced the first one's commit may be told to retry.
            assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
        }
    }
    let r = call(&api, Method::POST, "/api/v1/links", &headers, &body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    codes.insert(r.body["code"].as_str().unwrap().to_owned());
    assert_eq!(codes.len(), 1, "one link for one key: {codes:?}");
    let all = env.links.list(None, 1_000).await.unwrap();
    assert_eq!(all.len(), 1, "and only one was written");

    let other = json!({"url": "https://example.com/different"}).to_string();
    let r = call(&api, Method::POST, "/api/v1/links", &headers, &other).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["error"]["code"], "idempotency_key_reused");
}

#[tokio::test]
async fn api_keys_are_required_and_revocable() {
    let env = env().await;
    let api = origin(&env).await;
    let body = json!({"url": "https://example.com/", "alias": "needs-key"}).to_string();
    for headers in [
        HeaderMap::new(),
        auth("el_0000000000000000000000000000000000000000"),
        auth("short"),
    ] {
        let r = call(&api, Method::POST, "/api/v1/links", &headers, &body).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.body["error"]["code"], "unauthorized");
        let r = call(&api, Method::GET, "/api/v1/links", &headers, "").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    assert!(env.links.get("needs-key").await.unwrap().is_none());

    let store = PgOrigin::connect(&env.config.postgres).unwrap();
    let prefix = edgelink_origin::apikey::prefix(&env.key)
        .unwrap()
        .to_owned();
    assert!(store.revoke_api_key(&prefix).await.unwrap());
    let fresh = origin(&env).await; // no key cached yet
    let r = call(
        &fresh,
        Method::POST,
        "/api/v1/links",
        &auth(&env.key),
        &body,
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "a revoked key is refused"
    );
}

#[tokio::test]
async fn every_bad_input_gets_a_4xx_and_writes_nothing() {
    let env = env().await;
    fill(&env, 100).await;
    let api = origin(&env).await;
    let long = format!("https://example.com/{}", "x".repeat(8_200));
    let cases: Vec<(String, StatusCode, &str)> = vec![
        (json!({"url": "ftp://example.com/"}).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "url_scheme"),
        (json!({"url": "javascript:alert(1)"}).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "url_scheme"),
        (json!({"url": "https://"}).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_url"),
        (json!({"url": "/relative"}).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_url"),
        (json!({"url": "https://example.com/\r\nSet-Cookie: a=b"}).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_url"),
        (json!({"url": "https://example.com/a b"}).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_url"),
        (json!({"url": long}).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "url_too_long"),
        (json!({"url": "https://sho.rt/abc"}).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "url_loops"),
        (json!({"url": "https://www.blocked.example/"}).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "domain_blocked"),
        (json!({"url": "https://example.com/", "alias": "a b"}).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_alias"),
        (json!({"url": "https://example.com/", "alias": "ab"}).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_alias"),
        (json!({"url": "https://example.com/", "alias": "x".repeat(65)}).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_alias"),
        (json!({"url": "https://example.com/", "alias": "metrics"}).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "alias_reserved"),
        (json!({"url": "https://example.com/", "redirect": 303}).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_redirect"),
        (json!({"url": "https://example.com/", "expires_at": "2001-01-01T00:00:00Z"}).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_expiry"),
        (json!({"url": "https://example.com/", "expires_at": "soon"}).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_expiry"),
        (json!({"url": "https://example.com/", "ttl_seconds": 0}).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_expiry"),
        (json!({"url": "https://example.com/", "ttl_seconds": 60, "expires_at": "2099-01-01T00:00:00Z"}).to_string(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_expiry"),
        (json!({"url": "https://example.com/", "colour": "red"}).to_string(), StatusCode::BAD_REQUEST, "invalid_json"),
        (json!({"alias": "no-url"}).to_string(), StatusCode::BAD_REQUEST, "invalid_json"),
        (json!({"url": 5}).to_string(), StatusCode::BAD_REQUEST, "invalid_json"),
        ("{\"url\": ".to_owned(), StatusCode::BAD_REQUEST, "invalid_json"),
        (format!("{{\"url\": \"https://example.com/\", \"pad\": \"{}\"}}", "x".repeat(20_000)), StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
    ];
    for (body, status, code) in &cases {
        let r = call(&api, Method::POST, "/api/v1/links", &auth(&env.key), body).await;
        assert_eq!(r.status, *status, "{body:.80}: {}", r.body);
        assert_eq!(r.body["error"]["code"], *code, "{body:.80}");
        assert!(r.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    assert!(
        env.links.list(None, 10).await.unwrap().is_empty(),
        "nothing was written"
    );

    // IDN hosts become punycode; non-ASCII path bytes are percent-encoded.
    let r = create(
        &api,
        &env.key,
        json!({"url": "https://bücher.example/straße"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body["url"], "https://xn--bcher-kva.example/stra%C3%9Fe");

    let mut bad_idem = auth(&env.key);
    bad_idem.insert("idempotency-key", HeaderValue::from_static(""));
    let r = call(
        &api,
        Method::POST,
        "/api/v1/links",
        &bad_idem,
        r#"{"url": "https://example.com/"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = call(
        &api,
        Method::GET,
        "/api/v1/links?limit=0",
        &auth(&env.key),
        "",
    )
    .await;
    assert_eq!(r.body["error"]["code"], "invalid_limit");
    let r = call(
        &api,
        Method::PATCH,
        "/api/v1/links/unknown-code",
        &auth(&env.key),
        r#"{"disabled": true}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = call(&api, Method::PUT, "/api/v1/links", &auth(&env.key), "").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn an_empty_pool_is_503_with_retry_after_never_a_duplicate() {
    let env = env().await;
    fill(&env, 3).await;
    let mut config = env.config.clone();
    config.keypool.lease_batch = 2;
    let env = Env { config, ..env };
    let api = origin(&env).await;
    let mut codes = HashSet::new();
    let mut unavailable = 0;
    for i in 0..6 {
        let r = create(
            &api,
            &env.key,
            json!({"url": format!("https://example.com/{i}")}),
        )
        .await;
        match r.status {
            StatusCode::CREATED => {
                assert!(codes.insert(r.body["code"].as_str().unwrap().to_owned()))
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                unavailable += 1;
                assert_eq!(r.body["error"]["code"], "keys_exhausted");
                assert!(r.headers.contains_key(http::header::RETRY_AFTER));
            }
            other => panic!("{other}: {}", r.body),
        }
    }
    assert_eq!(codes.len(), 3, "every pool key used once");
    assert_eq!(unavailable, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_origins_create_twenty_thousand_links_without_a_duplicate() {
    let env = env().await;
    let mut config = env.config.clone();
    config.keypool.low_watermark = 5_000;
    config.keypool.high_watermark = 15_000;
    config.keypool.batch_size = 5_000;
    config.keypool.lease_batch = 500;
    let env = Arc::new(Env { config, ..env });
    // The pool starts at its high watermark, below what the origins need:
    // the refiller must top it up under load.
    let pool = keypool(&env).await;
    pool.refiller.tick(&CancellationToken::new()).await.unwrap();
    assert_eq!(pool.store.free().await.unwrap(), 15_000);
    let stop = CancellationToken::new();
    let refiller = tokio::spawn(pool.refiller.clone().run(stop.clone()));
    let mut tasks = Vec::new();
    for o in 0..8 {
        let env = env.clone();
        tasks.push(tokio::spawn(async move {
            let api = origin(&env).await;
            let mut codes = Vec::new();
            for i in 0..2_500 {
                let r = create(
                    &api,
                    &env.key,
                    json!({"url": format!("https://example.com/{o}/{i}")}),
                )
                .await;
                assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
                codes.push((
                    r.body["code"].as_str().unwrap().to_owned(),
                    format!("https://example.com/{o}/{i}"),
                ));
            }
            codes
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    stop.cancel();
    refiller.await.unwrap();
    let distinct: HashSet<&String> = all.iter().map(|(c, _)| c).collect();
    assert_eq!(all.len(), 20_000);
    assert_eq!(distinct.len(), 20_000, "no code was given twice");
    // Every link answered 201 is in the source of truth, with the URL it
    // was created with. (That an edge then serves it is a cross-role check:
    // tests/cli.rs, `origin_killed_mid_load_loses_no_acknowledged_link`.)
    for (code, url) in &all {
        let link = env.links.get(code).await.unwrap();
        assert_eq!(
            link.map(|l| l.target).as_deref(),
            Some(url.as_str()),
            "{code}"
        );
    }
    // The pool was refilled under that load, and its admin endpoint says so.
    let status = pool
        .admin
        .handle(
            &Method::GET,
            "/admin/keypool",
            &auth_admin(),
            Full::new(Bytes::new()),
        )
        .await;
    assert_eq!(status.status(), StatusCode::OK);
    let status: Value =
        serde_json::from_slice(&status.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert!(status["generated"].as_u64().unwrap() > 15_000, "{status}");
    assert!(status["leased"].as_u64().unwrap() >= 20_000, "{status}");
    assert!(
        status["last_refill"]["keys"].as_u64().unwrap() > 0,
        "{status}"
    );
    drop(env);
}

#[tokio::test]
async fn a_batch_answers_each_item_in_order() {
    let env = env().await;
    fill(&env, 1_000).await;
    let api = origin(&env).await;
    let body = json!({"links": [
        {"url": "https://example.com/1"},
        {"url": "https://example.com/2", "alias": "batch-alias"},
        {"url": "ftp://example.com/3"},
        {"url": "https://example.com/4", "alias": "batch-alias"},
        {"url": "https://example.com/5", "ttl_seconds": 60},
    ]});
    let r = call(
        &api,
        Method::POST,
        "/api/v1/links/batch",
        &auth(&env.key),
        &body.to_string(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let results = r.body["results"].as_array().unwrap();
    let statuses: Vec<u64> = results
        .iter()
        .map(|x| x["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [201, 201, 422, 409, 201]);
    for (i, x) in results.iter().enumerate() {
        assert_eq!(x["index"], i);
    }
    assert_eq!(results[1]["link"]["code"], "batch-alias");
    assert_eq!(results[2]["error"]["code"], "url_scheme");
    assert_eq!(results[3]["error"]["code"], "alias_taken");
    for i in [0, 4] {
        let code = results[i]["link"]["code"].as_str().unwrap();
        assert_eq!(
            env.links.get(code).await.unwrap().unwrap().target,
            format!("https://example.com/{}", i + 1)
        );
    }
    assert_eq!(
        env.links.get("batch-alias").await.unwrap().unwrap().target,
        "https://example.com/2"
    );

    let too_many: Vec<Value> = (0..1_001)
        .map(|i| json!({"url": format!("https://example.com/{i}")}))
        .collect();
    for bad in [json!({"links": []}), json!({"links": too_many})] {
        let r = call(
            &api,
            Method::POST,
            "/api/v1/links/batch",
            &auth(&env.key),
            &bad.to_string(),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(r.body["error"]["code"], "invalid_batch");
    }
    let mut idem = auth(&env.key);
    idem.insert("idempotency-key", HeaderValue::from_static("k"));
    let r = call(
        &api,
        Method::POST,
        "/api/v1/links/batch",
        &idem,
        &body.to_string(),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

/// The OpenAPI document and the routes agree: every documented operation is
/// answered (not "no such route", not 405), and every route is documented.
#[tokio::test]
async fn the_openapi_document_matches_the_routes() {
    let env = env().await;
    let api = origin(&env).await;
    let doc = call(
        &api,
        Method::GET,
        "/api/v1/openapi.json",
        &HeaderMap::new(),
        "",
    )
    .await;
    assert_eq!(doc.status, StatusCode::OK, "served without a key");
    let doc = doc.body;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented = HashSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "post", "patch", "delete", "put"] {
            if item.get(method).is_some() {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    let routes: HashSet<(String, String)> = edgelink_origin::api::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, routes, "documented vs routed");
    for (method, path) in &documented {
        let concrete = path.replace("{code}", "some-code");
        let r = call(
            &api,
            method.parse().unwrap(),
            &concrete,
            &auth(&env.key),
            "{}",
        )
        .await;
        assert_ne!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_ne!(r.body["error"]["code"], "no_route", "{method} {path}");
    }
    // And an undocumented one is not answered.
    let r = call(
        &api,
        Method::PUT,
        "/api/v1/links/some-code",
        &auth(&env.key),
        "{}",
    )
    .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn a_bootstrap_api_key_is_registered_at_start_up() {
    let env = env().await;
    let (key, _, _) = edgelink_origin::apikey::generate();
    let mut config = env.config.clone();
    config.bootstrap.api_key = Some(key.clone());
    let env = Env { config, ..env };
    let api = origin(&env).await; // registers it
    let r = call(&api, Method::GET, "/api/v1/links", &auth(&key), "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let _again = origin(&env).await; // a restart registers it again, harmlessly

    let mut bad = env.config.clone();
    bad.bootstrap.api_key = Some("not-a-key".to_owned());
    let pool = keypool(&env).await;
    let built = edgelink_origin::build(
        &bad,
        env.links.clone(),
        None,
        Arc::new(PgOrigin::connect(&env.config.postgres).unwrap()),
        pool.leaser(10),
        Arc::new(edgelink_origin::TtlOnly),
    )
    .await;
    assert!(built.is_err(), "a malformed bootstrap key stops start-up");
}

/// A binding whose request died before writing its link: a retry gets 503
/// while that request could still be running, and completes the link with
/// the bound code once the binding is old enough to be an orphan.
#[tokio::test]
async fn an_orphaned_idempotency_binding_is_completed_by_a_retry() {
    let env = env().await;
    fill(&env, 100).await;
    let api = origin(&env).await;
    let mut headers = auth(&env.key);
    headers.insert("idempotency-key", HeaderValue::from_static("died-midway"));
    let body = json!({"url": "https://example.com/orphan"}).to_string();
    let first = call(&api, Method::POST, "/api/v1/links", &headers, &body).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let code = first.body["code"].as_str().unwrap().to_owned();
    // Make it look as if the request had bound its code and died: no link.
    let sql = env._db.client().await;
    sql.execute("DELETE FROM links WHERE code = $1", &[&code])
        .await
        .unwrap();
    let retry = call(&api, Method::POST, "/api/v1/links", &headers, &body).await;
    assert_eq!(retry.status, StatusCode::CONFLICT, "{}", retry.body);
    assert_eq!(retry.body["error"]["code"], "idempotency_in_progress");
    assert!(retry.headers.contains_key(http::header::RETRY_AFTER));
    sql.execute(
        "UPDATE idempotency_keys SET created_at = now() - interval '5 minutes'",
        &[],
    )
    .await
    .unwrap();
    let retry = call(&api, Method::POST, "/api/v1/links", &headers, &body).await;
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.body);
    assert_eq!(
        retry.body["code"],
        code.as_str(),
        "the bound code, not a new one"
    );
    assert_eq!(
        env.links.get(&code).await.unwrap().unwrap().target,
        "https://example.com/orphan"
    );
}

/// Issue 5: with PostgreSQL blackholed (a fault proxy between the origin
/// and it), creations fail with 503 and `Retry-After` within the storage
/// timeout, and at once when the breaker has opened; a link acknowledged
/// before the fault is still there after it, and creations succeed again
/// within 5 s of it ending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_blackholed_fails_creations_fast_and_loses_nothing() {
    use edgelink_core::testing::fault::Fault;
    use std::time::{Duration, Instant};

    let mut env = env().await;
    fill(&env, 1_000).await;
    let (proxy, through) = env._db.behind_fault_proxy().await;
    env.config.postgres.url = Some(through);
    env.config.postgres.timeout_ms = 500;
    env.config.postgres.connect_timeout_ms = 300;
    env.links = Arc::new(PgStore::connect(&env.config.postgres).await.unwrap());
    let api = origin(&env).await;
    let before = create(&api, &env.key, json!({"url": "https://example.com/before"})).await;
    assert_eq!(before.status, StatusCode::CREATED, "{}", before.body);
    let code = before.body["code"].as_str().unwrap().to_owned();

    proxy.set(Fault::Blackhole);
    let mut took = Vec::new();
    for i in 0..20 {
        let started = Instant::now();
        let r = create(
            &api,
            &env.key,
            json!({"url": format!("https://example.com/{i}")}),
        )
        .await;
        took.push(started.elapsed());
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
        assert_eq!(r.headers.get("retry-after").unwrap(), "1");
    }
    let slowest = *took.iter().max().unwrap();
    let fast = took
        .iter()
        .filter(|t| **t < Duration::from_millis(50))
        .count();
    eprintln!("blackholed: slowest 503 {slowest:?}, {fast} of 20 at once");
    assert!(slowest <= Duration::from_millis(600), "{took:?}");
    assert!(fast >= 10, "the breaker opened after a few: {took:?}");

    proxy.set(Fault::Pass);
    let healed = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        let r = create(
            &api,
            &env.key,
            json!({"url": format!("https://example.com/after{n}")}),
        )
        .await;
        if r.status == StatusCode::CREATED {
            break;
        }
        assert!(healed.elapsed() < Duration::from_secs(5), "{}", r.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("creations again after {:?}", healed.elapsed());
    let r = call(
        &api,
        Method::GET,
        &format!("/api/v1/links/{code}"),
        &auth(&env.key),
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["url"], "https://example.com/before");
}

/// Issue 6: the stats API sums the edges' click counts per day, human and
/// bot, with every day of the range in the series.
#[tokio::test]
async fn stats_give_totals_and_a_daily_series() {
    use edgelink_core::store::ClickDelta;
    let env = env().await;
    fill(&env, 100).await;
    let api = origin(&env).await;
    let made = create(
        &api,
        &env.key,
        json!({"url": "https://example.com/counted"}),
    )
    .await;
    assert_eq!(made.status, StatusCode::CREATED);
    let code = made.body["code"].as_str().unwrap().to_owned();
    let today = time::OffsetDateTime::now_utc().date();
    let day = |back: i64| today - time::Duration::days(back);
    let delta = |d, human, bot| ClickDelta {
        code: code.clone(),
        day: d,
        human,
        bot,
    };
    env.links
        .add_clicks("e1", 1, &[delta(day(0), 5, 2), delta(day(2), 1, 0)])
        .await
        .unwrap();
    env.links
        .add_clicks("e2", 1, &[delta(day(0), 1, 1), delta(day(40), 9, 9)])
        .await
        .unwrap();

    let stats = |q: String| {
        let (api, key, code) = (&api, env.key.clone(), code.clone());
        async move {
            call(
                api,
                Method::GET,
                &format!("/api/v1/links/{code}/stats{q}"),
                &auth(&key),
                "",
            )
            .await
        }
    };
    // Default: the last 30 days.
    let r = stats(String::new()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["total"], json!({"clicks": 10, "human": 7, "bot": 3}));
    let daily = r.body["daily"].as_array().unwrap();
    assert_eq!(daily.len(), 30);
    let fmt = |d: time::Date| format!("{d}");
    assert_eq!(r.body["to"], fmt(today));
    assert_eq!(
        daily[29],
        json!({"date": fmt(today), "clicks": 9, "human": 6, "bot": 3})
    );
    assert_eq!(
        daily[27],
        json!({"date": fmt(day(2)), "clicks": 1, "human": 1, "bot": 0})
    );
    assert_eq!(
        daily[28]["clicks"], 0,
        "days without clicks are there, as zeros"
    );

    let r = stats(format!("?from={}&to={}", fmt(day(45)), fmt(day(40)))).await;
    assert_eq!(r.body["total"], json!({"clicks": 18, "human": 9, "bot": 9}));
    assert_eq!(r.body["daily"].as_array().unwrap().len(), 6);
    // The last days the format reads: a range, no overflow.
    let r = stats("?from=9999-12-01&to=9999-12-31".to_owned()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["daily"].as_array().unwrap().len(), 31);

    for (q, status, error) in [
        (
            format!("?from={}&to={}", fmt(day(0)), fmt(day(1))),
            422,
            "invalid_range",
        ),
        ("?from=2026-13-01".to_owned(), 422, "invalid_date"),
        ("?from=2010-01-01".to_owned(), 422, "invalid_range"),
        ("?since=2026-01-01".to_owned(), 400, "unknown_parameter"),
        // Dates the format reads that no arithmetic may overflow on.
        ("?to=-9999-01-01".to_owned(), 422, "invalid_date"),
        (
            "?from=-9999-01-01&to=-9999-01-29".to_owned(),
            422,
            "invalid_date",
        ),
    ] {
        let r = stats(q.clone()).await;
        assert_eq!(r.status.as_u16(), status, "{q}: {}", r.body);
        assert_eq!(r.body["error"]["code"], error, "{q}");
    }
    let r = call(
        &api,
        Method::GET,
        "/api/v1/links/nope/stats",
        &auth(&env.key),
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = call(
        &api,
        Method::GET,
        &format!("/api/v1/links/{code}/stats"),
        &HeaderMap::new(),
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

/// A batch is bounded like a single creation: by its body's size
/// (`origin.max_batch_body_bytes`, 413) and its number of links
/// (`origin.max_batch_links`, 422).
#[tokio::test]
async fn a_batch_is_bounded_by_its_body_size_and_link_count() {
    let env = env().await;
    fill(&env, 1_000).await;
    let api = origin(&env).await;
    let batch = |n: usize| {
        let links: Vec<Value> = (0..n)
            .map(|i| json!({"url": format!("https://example.com/{i}")}))
            .collect();
        json!({ "links": links }).to_string()
    };
    let post = |body: String| {
        let api = &api;
        let headers = auth(&env.key);
        async move { call(api, Method::POST, "/api/v1/links/batch", &headers, &body).await }
    };
    let max = env.config.origin.max_batch_links;
    assert_eq!(max, 100);
    assert_eq!(post(batch(max)).await.status, StatusCode::OK);
    let r = post(batch(max + 1)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["error"]["code"], "invalid_batch");
    // Two links, padded past the body limit.
    let padded = format!(
        "{}{}",
        batch(2),
        " ".repeat(env.config.origin.max_batch_body_bytes)
    );
    let r = post(padded).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "body_too_large");
}

/// Every spelling of the shortener's own host loops; targets on private,
/// loopback or link-local addresses are refused (`origin.block_private_targets`).
#[tokio::test]
async fn targets_on_the_own_host_or_a_private_address_are_refused() {
    let mut env = env().await;
    env.config.origin.public_url = "http://127.0.0.1:8080".to_owned();
    let api = origin(&env).await;
    for (url, code) in [
        ("http://localhost:8080/x", "url_loops"),
        ("http://LocalHost.:8080/x", "url_loops"),
        ("http://[::ffff:127.0.0.1]:8080/x", "url_loops"),
        ("http://127.1:8080/x", "url_loops"),
        ("http://2130706433:8080/x", "url_loops"),
        ("http://10.0.0.1/x", "url_private"),
        ("http://[fe80::1]/x", "url_private"),
        ("http://169.254.169.254/latest/meta-data/", "url_private"),
    ] {
        let r = create(&api, &env.key, json!({ "url": url })).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{url}: {}",
            r.body
        );
        assert_eq!(r.body["error"]["code"], code, "{url}");
    }
}

/// Counts the key lookups that reach the store.
struct CountingKeys {
    inner: PgOrigin,
    lookups: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl OriginStore for CountingKeys {
    async fn add_api_key(
        &self,
        name: &str,
        prefix: &str,
        hash: edgelink_origin::store::Digest,
    ) -> Result<(), edgelink_core::StoreError> {
        self.inner.add_api_key(name, prefix, hash).await
    }

    async fn revoke_api_key(&self, prefix: &str) -> Result<bool, edgelink_core::StoreError> {
        self.inner.revoke_api_key(prefix).await
    }

    async fn api_key_id(
        &self,
        hash: edgelink_origin::store::Digest,
    ) -> Result<Option<i64>, edgelink_core::StoreError> {
        self.lookups
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.api_key_id(hash).await
    }

    async fn bind(
        &self,
        key_id: i64,
        idem: &str,
        request: [u8; 32],
        code: &str,
    ) -> Result<Option<edgelink_origin::store::Binding>, edgelink_core::StoreError> {
        self.inner.bind(key_id, idem, request, code).await
    }

    async fn unbind(&self, key_id: i64, idem: &str) -> Result<(), edgelink_core::StoreError> {
        self.inner.unbind(key_id, idem).await
    }
}

#[tokio::test]
async fn the_bearer_scheme_is_any_case_and_a_made_up_key_is_looked_up_once() {
    let env = env().await;
    let keys = Arc::new(CountingKeys {
        inner: PgOrigin::connect(&env.config.postgres).unwrap(),
        lookups: Default::default(),
    });
    let pool = keypool(&env).await;
    let api = edgelink_origin::build(
        &env.config,
        env.links.clone(),
        None,
        keys.clone(),
        pool.leaser(env.config.keypool.lease_batch),
        Arc::new(edgelink_origin::TtlOnly),
    )
    .await
    .unwrap();
    for scheme in ["bearer", "BEARER", "Bearer "] {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(&format!("{scheme} {}", env.key)).unwrap(),
        );
        let r = call(&api, Method::GET, "/api/v1/links", &headers, "").await;
        assert_eq!(r.status, StatusCode::OK, "{scheme:?}: {}", r.body);
    }
    let made_up = auth("el_0000000000000000000000000000000000000000");
    for _ in 0..100 {
        let r = call(&api, Method::GET, "/api/v1/links", &made_up, "").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let lookups = keys.lookups.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(lookups, 2, "one for the real key, one for the made-up one");
}

/// HEAD is answered as GET is, without the body.
#[tokio::test]
async fn head_is_answered_like_get() {
    let env = env().await;
    let api = origin(&env).await;
    for (path, headers) in [
        ("/api/v1/openapi.json", HeaderMap::new()),
        ("/api/v1/links", auth(&env.key)),
    ] {
        let get = api
            .handle(&Method::GET, path, None, &headers, Full::new(Bytes::new()))
            .await;
        let head = api
            .handle(&Method::HEAD, path, None, &headers, Full::new(Bytes::new()))
            .await;
        assert_eq!(get.status(), StatusCode::OK, "{path}");
        assert_eq!(head.status(), StatusCode::OK, "{path}");
        let len = get.into_body().collect().await.unwrap().to_bytes().len();
        assert_eq!(
            head.headers()[http::header::CONTENT_LENGTH],
            len.to_string().as_str(),
            "{path}"
        );
        assert!(head
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty());
    }
}

#[tokio::test]
async fn readyz_answers_503_while_the_source_of_truth_does_not() {
    use edgelink_core::testing::fault::Fault;
    let mut env = env().await;
    let (proxy, through) = env._db.behind_fault_proxy().await;
    env.config.postgres.url = Some(through);
    env.config.postgres.timeout_ms = 300;
    env.config.postgres.connect_timeout_ms = 300;
    env.links = Arc::new(PgStore::connect(&env.config.postgres).await.unwrap());
    let api = origin(&env).await;
    let ready = || async {
        let req = http::Request::get("/readyz")
            .body(Full::new(Bytes::new()))
            .unwrap();
        edgelink_origin::route(&api, req).await.status()
    };
    assert_eq!(ready().await, StatusCode::OK);
    proxy.set(Fault::Blackhole);
    assert_eq!(ready().await, StatusCode::SERVICE_UNAVAILABLE);
    // `/healthz` is the process, not its store: still 200.
    let req = http::Request::get("/healthz")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        edgelink_origin::route(&api, req).await.status(),
        StatusCode::OK
    );
}
