//! The API's one error shape: `{"error": {"code": "...", "message": "..."}}`
//! with a status that says whose fault it is (4xx the client's, 5xx ours).

use edgelink_core::net::Body;
use http::header::RETRY_AFTER;
use http::{HeaderValue, Response, StatusCode};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable, machine-readable: clients branch on it.
    pub code: &'static str,
    /// For people; safe to show (never a backend's internals).
    pub message: String,
    /// Seconds, for 429 and 503.
    pub retry_after: Option<u32>,
    /// Storage timed out or could not be reached (counts against its
    /// circuit breaker).
    pub storage_failed: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            storage_failed: false,
        }
    }

    /// A field broke a rule (422).
    pub fn invalid(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// The request itself is malformed (400).
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no link has this code")
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send a valid API key: Authorization: Bearer <key>",
        )
    }

    /// A backend could not answer: 503, try again shortly.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            retry_after: Some(1),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let mut resp = edgelink_core::net::json_error(self.status, self.code, &self.message);
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<edgelink_core::StoreError> for ApiError {
    fn from(e: edgelink_core::StoreError) -> ApiError {
        // The one thing storage reports busy: an Idempotency-Key bound by
        // a request whose transaction has not committed. Not a storage
        // failure: the breaker does not count it, and it is 409 (as the
        // IETF Idempotency-Key draft says), so no proxy in front counts it
        // against this origin either: it is the client's own retry.
        if let edgelink_core::StoreError::Busy { message, .. } = &e {
            return ApiError {
                retry_after: Some(1),
                ..ApiError::new(
                    StatusCode::CONFLICT,
                    "idempotency_in_progress",
                    message.clone(),
                )
            };
        }
        tracing::warn!(error = %e, "storage call failed");
        ApiError {
            storage_failed: edgelink_core::breaker::is_failure(&e),
            ..ApiError::unavailable(
                "storage is unavailable; retry (with the same Idempotency-Key to make it safe)",
            )
        }
    }
}
