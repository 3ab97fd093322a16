//! Serving HTTP, shared by every role: listeners built with socket2, the
//! hyper accept loop (connection cap, header-read timeout, graceful drain)
//! with the framing guard under hyper and a hook for a lane in front of it
//! ([`server::Lane`]: the edge's express lane), the small responses every
//! role's routes make, and request bodies read under the client's limits
//! (a client's fault is its own 4xx).

mod body;
mod fault;
pub mod framing;
pub mod listener;
pub mod process;
mod replay;
mod request_body;
pub mod server;

pub use body::Body;
pub use fault::{ClientFault, ClientFaults, CLIENT_FAULTS_TOTAL};
pub use replay::Replay;
pub use request_body::{read_body, BodyError, BodyLimits, BodyWatch, LimitedBody};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Response, StatusCode};

pub const JSON: HeaderValue = HeaderValue::from_static("application/json");
pub const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
const PROMETHEUS: HeaderValue = HeaderValue::from_static("text/plain; version=0.0.4");

fn with_type(status: StatusCode, content_type: HeaderValue, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Body::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, content_type);
    resp
}

/// A JSON answer from text already serialised.
pub fn json_bytes(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    with_type(status, JSON, body.into())
}

/// A JSON answer.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    json_bytes(status, value.to_string())
}

/// The error shape of every JSON API: `{"error": {"code", "message"}}`.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let mut resp = json(
        status,
        &serde_json::json!({ "error": { "code": code, "message": message } }),
    );
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

/// A plain-text answer.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    with_type(status, TEXT, body.into())
}

/// The routes every admin listener has: `GET /metrics` (the Prometheus text
/// `render` makes, then the [`process`] metrics) and `GET /healthz`. `None`
/// for any other request.
pub fn admin_basics(
    method: &Method,
    path: &str,
    render: impl FnOnce() -> String,
) -> Option<Response<Body>> {
    match (method, path) {
        (&Method::GET, "/metrics") => {
            let mut text = render();
            text.push_str(&process::render());
            Some(with_type(StatusCode::OK, PROMETHEUS, text.into()))
        }
        (&Method::GET, "/healthz") => Some(text(StatusCode::OK, "ok\n")),
        _ => None,
    }
}
