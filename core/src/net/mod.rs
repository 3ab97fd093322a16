//! Serving HTTP, shared by every role: listeners built with socket2, the
//! hyper accept loop (connection cap, header-read timeout, graceful drain),
//! and the small responses and body reads every role's routes make.

mod body;
pub mod express;
pub mod framing;
mod ipnet;
pub mod listener;
pub mod process;
pub mod server;

pub use body::Body;
pub use ipnet::IpNet;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::{BodyExt, Limited};

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

/// Why a request body could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Longer than the limit (413).
    TooLarge { limit: usize },
    /// The connection failed while it was read (400).
    Unreadable,
}

impl BodyError {
    /// The answer for this failure, in the JSON error shape.
    pub fn response(self) -> Response<Body> {
        match self {
            BodyError::TooLarge { limit } => json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                &format!("the body must be at most {limit} bytes"),
            ),
            BodyError::Unreadable => json_error(
                StatusCode::BAD_REQUEST,
                "bad_body",
                "the request body could not be read",
            ),
        }
    }
}

/// Reads a whole request body, refusing more than `limit` bytes.
pub async fn read_body<B>(body: B, limit: usize) -> Result<Bytes, BodyError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match Limited::new(body, limit).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge { limit }),
        Err(_) => Err(BodyError::Unreadable),
    }
}
