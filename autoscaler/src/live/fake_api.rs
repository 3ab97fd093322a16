//! Tests only: a loopback HTTP server standing in for the Kubernetes API
//! server (none runs where these tests run). Each request is handed to a
//! handler as (method, path, content type, body) and answered with its
//! (status, JSON).

use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use serde_json::{json, Value};

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub content_type: String,
    pub body: String,
}

/// The API server's error object.
pub fn status(code: u16, reason: &str) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "reason": reason, "message": reason, "code": code}),
    )
}

/// Serves `handler` on a free loopback port; its base URL.
#[allow(clippy::unwrap_used)]
pub async fn serve(handler: impl Fn(Seen) -> (u16, Value) + Send + Sync + 'static) -> String {
    let handler = Arc::new(handler);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let handler = handler.clone();
                    async move {
                        let method = req.method().to_string();
                        let path = req.uri().path().to_owned();
                        let content_type = req
                            .headers()
                            .get("content-type")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let (code, answer) = handler(Seen {
                            method,
                            path,
                            content_type,
                            body: String::from_utf8(body.to_vec()).unwrap(),
                        });
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .status(code)
                                .header("content-type", "application/json")
                                .body(Full::new(bytes::Bytes::from(answer.to_string())))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    url
}
