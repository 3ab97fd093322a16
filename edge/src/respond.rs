//! The one place that turns outcomes into HTTP responses.
//!
//! Errors are sorted by who is at fault: the client (404, 405, 410) gets a
//! JSON body and is not logged; a backend failure gets 503 with
//! `Retry-After` and is logged at most once per second; an internal fault
//! gets 500. Bodies and header values are static, so building a response
//! allocates nothing of ours (hyper's `HeaderMap` allocates its table).

use std::sync::atomic::{AtomicI64, Ordering};

use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};

use edgelink_core::link::now_unix;

/// The body type of every response the edge makes.
pub use edgelink_core::net::Body;

use edgelink_core::net::JSON;

use crate::domain::NO_STORE;

/// Why a request did not get a redirect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Not a code, or an unknown one.
    NotFound,
    /// Expired or disabled.
    Gone,
    MethodNotAllowed,
    /// A backend could not answer in time.
    Unavailable,
    /// The stored data cannot be served.
    Internal,
    /// The request target is longer than `limits.max_uri_bytes`.
    UriTooLong,
    /// A plain-HTTP request without a usable `Host` to redirect to.
    NoHost,
    /// A method the creation API is never called with (`CONNECT`,
    /// `TRACE`, unknown ones): not forwarded.
    ApiMethodNotAllowed,
    /// An API path with dot-segments or an encoded slash: not forwarded.
    BadPath,
}

impl Failure {
    pub fn status(self) -> StatusCode {
        match self {
            Failure::NotFound => StatusCode::NOT_FOUND,
            Failure::Gone => StatusCode::GONE,
            Failure::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Failure::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Failure::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Failure::UriTooLong => StatusCode::URI_TOO_LONG,
            Failure::NoHost | Failure::BadPath => StatusCode::BAD_REQUEST,
            Failure::ApiMethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    fn body(self) -> &'static str {
        match self {
            Failure::NotFound => {
                r#"{"error":{"code":"not_found","message":"no link has this code"}}"#
            }
            Failure::Gone => {
                r#"{"error":{"code":"gone","message":"this link has expired or was disabled"}}"#
            }
            Failure::MethodNotAllowed => {
                r#"{"error":{"code":"method_not_allowed","message":"links answer GET and HEAD only"}}"#
            }
            Failure::Unavailable => {
                r#"{"error":{"code":"unavailable","message":"link storage is unavailable; retry shortly"}}"#
            }
            Failure::Internal => {
                r#"{"error":{"code":"internal","message":"this link cannot be served"}}"#
            }
            Failure::UriTooLong => {
                r#"{"error":{"code":"uri_too_long","message":"the request target is too long"}}"#
            }
            Failure::NoHost => {
                r#"{"error":{"code":"no_host","message":"the request has no usable Host header"}}"#
            }
            Failure::ApiMethodNotAllowed => {
                r#"{"error":{"code":"method_not_allowed","message":"the API is not called with this method"}}"#
            }
            Failure::BadPath => {
                r#"{"error":{"code":"bad_path","message":"the path has dot-segments or an encoded slash"}}"#
            }
        }
    }
}

/// An error response with its JSON body.
pub fn failure(f: Failure) -> Response<Body> {
    let mut resp = Response::new(Body::new(Bytes::from_static(f.body().as_bytes())));
    *resp.status_mut() = f.status();
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, JSON);
    h.insert(CACHE_CONTROL, NO_STORE);
    match f {
        Failure::MethodNotAllowed => {
            h.insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        Failure::ApiMethodNotAllowed => {
            h.insert(
                ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            );
        }
        Failure::Unavailable => {
            h.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        _ => {}
    }
    resp
}

/// A redirect; the header values are shared with the cache entry.
#[inline]
pub fn redirect(
    status: StatusCode,
    location: HeaderValue,
    cache_control: HeaderValue,
) -> Response<Body> {
    let mut resp = Response::new(Body::default());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(LOCATION, location);
    h.insert(CACHE_CONTROL, cache_control);
    resp
}

/// 429 with `Retry-After` (whole seconds, rounded up).
pub fn rate_limited(wait: std::time::Duration) -> Response<Body> {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut resp = Response::new(Body::new(Bytes::from_static(
        br#"{"error":{"code":"rate_limited","message":"too many requests from this address; slow down"}}"#,
    )));
    *resp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, JSON);
    h.insert(CACHE_CONTROL, NO_STORE);
    h.insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
    resp
}

/// A small plain-text answer (health), not to be cached.
pub fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = edgelink_core::net::text(status, Bytes::from_static(body.as_bytes()));
    resp.headers_mut().insert(CACHE_CONTROL, NO_STORE);
    resp
}

/// A JSON answer built at run time (readiness), not to be cached; not on
/// the redirect path.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut resp = edgelink_core::net::json(status, value);
    resp.headers_mut().insert(CACHE_CONTROL, NO_STORE);
    resp
}

/// Lets a message through at most once per second, so a backend outage at
/// full request rate does not turn into a log flood.
#[derive(Debug, Default)]
pub struct LogThrottle {
    last: AtomicI64,
}

impl LogThrottle {
    pub fn allow(&self) -> bool {
        let now = now_unix();
        let last = self.last.load(Ordering::Relaxed);
        now != last
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_body_is_the_documented_json_shape() {
        for f in [
            Failure::NotFound,
            Failure::Gone,
            Failure::MethodNotAllowed,
            Failure::Unavailable,
            Failure::Internal,
            Failure::UriTooLong,
            Failure::NoHost,
            Failure::ApiMethodNotAllowed,
            Failure::BadPath,
        ] {
            let v: serde_json::Value = serde_json::from_str(f.body()).unwrap();
            assert!(v["error"]["code"].is_string(), "{f:?}");
            assert!(v["error"]["message"].is_string(), "{f:?}");
            assert!(f.status().is_client_error() || f.status().is_server_error());
        }
    }

    #[test]
    fn unavailable_says_when_to_retry() {
        let r = failure(Failure::Unavailable);
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[RETRY_AFTER], "1");
    }

    #[test]
    fn rate_limited_rounds_retry_after_up() {
        let r = rate_limited(std::time::Duration::from_millis(1_200));
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[RETRY_AFTER], "2");
        assert_eq!(
            rate_limited(std::time::Duration::ZERO).headers()[RETRY_AFTER],
            "1"
        );
    }

    #[test]
    fn throttle_lets_one_through_per_second() {
        let t = LogThrottle::default();
        assert!(t.allow());
        assert!(!t.allow());
    }
}
