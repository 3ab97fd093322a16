//! An origin stand-in for proxy tests: a small HTTP server in the test
//! process whose behaviour each test sets.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use edgelink_core::config::Config;
use edgelink_core::net::{self, server, Body};
use edgelink_core::shutdown::CancellationToken;
use http::{HeaderMap, Request, Response, StatusCode};

pub const OK: u8 = 0;
pub const FAIL: u8 = 1;
pub const SLOW: u8 = 2;
/// Answers 401, as an origin does to an unknown API key.
pub const DENY: u8 = 3;

/// An origin stand-in: counts requests, remembers the last one's headers
/// and body, answers as `mode` says; `/healthz` answers as `healthy` says.
pub struct Upstream {
    pub addr: SocketAddr,
    name: &'static str,
    hits: AtomicUsize,
    pub mode: AtomicU8,
    pub healthy: AtomicBool,
    last: Mutex<Option<(HeaderMap, Bytes)>>,
    stop: CancellationToken,
}

impl Upstream {
    pub async fn start(name: &'static str) -> Arc<Upstream> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = Arc::new(Upstream {
            addr: listener.local_addr().unwrap(),
            name,
            hits: AtomicUsize::new(0),
            mode: AtomicU8::new(OK),
            healthy: AtomicBool::new(true),
            last: Mutex::new(None),
            stop: CancellationToken::new(),
        });
        let handler = {
            let up = up.clone();
            move |req: Request<hyper::body::Incoming>, _peer| {
                let up = up.clone();
                async move { up.answer(req).await }
            }
        };
        let options = server::Options::internal(&Config::default().server);
        tokio::spawn(server::serve(listener, options, handler, up.stop.clone()));
        up
    }

    async fn answer(&self, req: Request<hyper::body::Incoming>) -> Response<Body> {
        if req.uri().path() == "/healthz" {
            let status = if self.healthy.load(Ordering::Relaxed) {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            return net::text(status, "health\n");
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        let (parts, body) = req.into_parts();
        let body = net::read_body(
            body,
            net::BodyLimits::new(&Config::default().server, 64 << 20),
            &Default::default(),
        )
        .await
        .unwrap_or_default();
        *self.last.lock().unwrap() = Some((parts.headers, body.clone()));
        match self.mode.load(Ordering::Relaxed) {
            FAIL => return net::text(StatusCode::INTERNAL_SERVER_ERROR, "broken\n"),
            DENY => return net::text(StatusCode::UNAUTHORIZED, "who are you\n"),
            SLOW => tokio::time::sleep(Duration::from_secs(3)).await,
            _ => {}
        }
        if parts.uri.path() == "/api/big" {
            return net::text(StatusCode::OK, Bytes::from(vec![b'x'; 3 << 20]));
        }
        if parts.uri.path() == edgelink_core::link::BATCH_PATH {
            // As the API answers a batch: 200 for 1..=100 link objects,
            // else the whole batch is refused.
            let links: Option<Vec<serde_json::Value>> =
                serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("links").and_then(|l| l.as_array()).cloned());
            let taken = links.is_some_and(|l| {
                (1..=100).contains(&l.len()) && l.iter().all(serde_json::Value::is_object)
            });
            let status = if taken {
                StatusCode::OK
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            return net::json(status, &serde_json::json!({ "results": [] }));
        }
        let mut resp = net::json(
            StatusCode::CREATED,
            &serde_json::json!({ "upstream": self.name, "received": body.len() }),
        );
        resp.headers_mut()
            .insert("connection", "x-upstream-private".parse().unwrap());
        resp.headers_mut()
            .insert("x-upstream-private", "1".parse().unwrap());
        resp
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }

    pub fn last_header(&self, name: &str) -> Option<String> {
        let last = self.last.lock().unwrap();
        let (h, _) = last.as_ref()?;
        let all: Vec<&str> = h
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        (!all.is_empty()).then(|| all.join(", "))
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A port nothing listens on.
pub fn closed_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}
