//! Test harness: real PostgreSQL and Redis (the shared services of
//! DESIGN.md, isolated per test), edges started in-process on port 0, and
//! a client that does not follow redirects.
#![allow(dead_code)]

pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use edgelink_core::config::Config;
use edgelink_core::net::listener;
use edgelink_core::shutdown::CancellationToken;
use edgelink_core::{LinkCache, LinkStore, Stores};
use edgelink_edge::{Deps, Listeners, Mounts};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub use edgelink_core::testing::{redis_url, unique, TestDb};

/// A config for tests: generous lookup budgets, a unique Redis key prefix.
pub fn test_config() -> Config {
    let mut c = Config::default();
    c.postgres.timeout_ms = 5_000;
    c.redis.timeout_ms = 1_000;
    c.redis.ttl_secs = 120;
    c.redis.key_prefix = unique("t") + ":";
    c.server.drain_timeout_ms = 1_000;
    c
}

pub async fn sqlite_stores(dir: &tempfile::TempDir, config: &mut Config) -> Stores {
    config.sqlite.path = dir.path().join("edgelink.db");
    Stores::open_embedded(config).await.unwrap()
}

/// PostgreSQL (migrated) and, when `with_redis`, Redis.
pub async fn distributed_stores(db: &TestDb, config: &mut Config, with_redis: bool) -> Stores {
    config.postgres.url = Some(db.url.clone());
    config.redis.url = with_redis.then(redis_url);
    Stores::open_distributed(config).await.unwrap()
}

/// An edge running in this process.
pub struct TestEdge {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The plain-HTTP redirect listener, when `tls.redirect_listen` is set.
    pub redirect: Option<SocketAddr>,
    pub shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), edgelink_edge::EdgeError>>,
    client: Client<HttpConnector, Full<Bytes>>,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

impl TestEdge {
    pub async fn start(config: Config, stores: Stores) -> TestEdge {
        Self::start_with(config, stores, 1).await
    }

    /// An edge with `public_listeners` listeners on one port (per-core mode:
    /// all but the first get a thread of their own).
    pub async fn start_with(config: Config, stores: Stores, public_listeners: usize) -> TestEdge {
        Self::start_full(config, stores, public_listeners, Mounts::default()).await
    }

    /// An edge with other components (or a reload source) mounted.
    pub async fn start_full(
        config: Config,
        stores: Stores,
        public_listeners: usize,
        mounts: Mounts,
    ) -> TestEdge {
        if std::env::var_os("EDGELINK_TEST_LOG").is_some() {
            edgelink_core::telemetry::init();
        }
        let listeners = Listeners {
            public: listener::bind_many("127.0.0.1:0".parse().unwrap(), public_listeners, 4096)
                .unwrap(),
            admin: listener::bind("127.0.0.1:0".parse().unwrap(), 128).unwrap(),
            redirect: config
                .tls
                .redirect_listen
                .map(|a| listener::bind(a, 128).unwrap()),
        };
        let addr = listeners.public_addr().unwrap();
        let admin = listeners.admin_addr().unwrap();
        let redirect = listeners.redirect_addr();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(edgelink_edge::run(
            listeners,
            Arc::new(config),
            Deps { stores, mounts },
            shutdown.clone(),
        ));
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        TestEdge {
            addr,
            admin,
            redirect,
            shutdown,
            task,
            client,
        }
    }

    pub async fn request(&self, method: Method, path: &str) -> Reply {
        self.request_to(self.addr, method, path).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request(Method::GET, path).await
    }

    pub async fn request_to(&self, addr: SocketAddr, method: Method, path: &str) -> Reply {
        self.send_to(addr, method, path, &[], Bytes::new()).await
    }

    /// A request with headers and a body to the public listener.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Reply {
        self.send_to(self.addr, method, path, headers, body).await
    }

    pub async fn send_to(
        &self,
        addr: SocketAddr,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body)).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .expect("request timed out")
            .expect("request failed");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body,
        }
    }

    /// The Prometheus text of the admin listener.
    pub async fn metrics_text(&self) -> String {
        let r = self.request_to(self.admin, Method::GET, "/metrics").await;
        assert_eq!(r.status, 200);
        String::from_utf8(r.body.to_vec()).unwrap()
    }

    /// The value of one series, e.g. `edgelink_backend_lookups_total{backend="postgres"}`;
    /// 0 when the series is not there.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics_text().await;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                (name == series).then(|| value.parse().unwrap())
            })
            .unwrap_or(0.0)
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// An edge on SQLite holding `/abc` -> https://example.com/abc, with
/// `f` applied to the test config.
pub async fn edge_with(
    f: impl FnOnce(&mut edgelink_core::Config),
) -> (TestEdge, tempfile::TempDir) {
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

/// Polls `check` every 20 ms until it holds or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn link(code: &str, target: &str) -> edgelink_core::Link {
    edgelink_core::Link::new(
        code,
        target,
        edgelink_core::RedirectStatus::Found,
        edgelink_core::link::now(),
        None,
    )
    .unwrap()
}

pub async fn insert(store: &dyn LinkStore, links: &[edgelink_core::Link]) {
    let report = store.insert_links(links).await.unwrap();
    assert_eq!(report.inserted, links.len(), "{report:?}");
}

pub async fn cached(cache: &dyn LinkCache, code: &str) -> Option<edgelink_core::Link> {
    cache.get(code).await.unwrap()
}
