//! The key pool's admin endpoints, on the admin listener:
//!
//! - `GET /admin/keypool`: counts, watermarks, the last refill (JSON);
//! - `POST /admin/keypool/refill` with `{"count": N}`: asks for N keys now
//!   (1..=`keypool.max_refill`), answered 202 before the work is done.
//!
//! Both need `Authorization: Bearer <admin.token>` (401 otherwise, compared
//! in constant time). With no token configured the endpoints do not exist
//! (404): an admin surface is never open by default.

use std::sync::Arc;

use bytes::Bytes;
pub use edgelink_core::net::Body;
use edgelink_core::net::{json, json_error, read_body, BodyLimits};
use http::{HeaderMap, Method, Response, StatusCode};
use serde::Deserialize;

use crate::refill::Refiller;
use crate::store::PoolStore;

/// Largest request body the admin endpoints read.
const MAX_BODY: usize = 4 * 1024;

pub struct Admin {
    token: Option<String>,
    store: Arc<dyn PoolStore>,
    refiller: Arc<Refiller>,
    /// [`MAX_BODY`] under the server's body timeouts.
    body: BodyLimits,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefillRequest {
    count: u64,
}

impl Admin {
    pub fn new(
        token: Option<String>,
        store: Arc<dyn PoolStore>,
        refiller: Arc<Refiller>,
        server: &edgelink_core::config::ServerConfig,
    ) -> Admin {
        Admin {
            token,
            store,
            refiller,
            body: BodyLimits::new(server, MAX_BODY),
        }
    }

    /// Whether `path` is one of these endpoints.
    pub fn owns(path: &str) -> bool {
        path == "/admin/keypool" || path.starts_with("/admin/keypool/")
    }

    /// Answers a request for one of these endpoints ([`Admin::owns`]).
    pub async fn handle<B>(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        body: B,
    ) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Unpin,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Some(token) = &self.token else {
            return json_error(
                StatusCode::NOT_FOUND,
                "not_found",
                "the admin endpoints are off (no admin.token)",
            );
        };
        if !authorized(headers, token) {
            return json_error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send Authorization: Bearer <admin token>",
            );
        }
        match (method, path) {
            (&Method::GET, "/admin/keypool") => self.status().await,
            (&Method::POST, "/admin/keypool/refill") => self.refill(body).await,
            (_, "/admin/keypool" | "/admin/keypool/refill") => json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "GET /admin/keypool, POST /admin/keypool/refill",
            ),
            _ => json_error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"),
        }
    }

    async fn status(&self) -> Response<Body> {
        let counts = match self.store.counts().await {
            Ok(c) => c,
            Err(e) => {
                return json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    &e.to_string(),
                );
            }
        };
        let c = self.refiller.config();
        let space = self.refiller.space();
        json(
            StatusCode::OK,
            &serde_json::json!({
                "backend": self.store.name(),
                "free": counts.free,
                "generated": counts.generated,
                "leased": counts.leased,
                "used": counts.used,
                "low_watermark": c.low_watermark,
                "high_watermark": c.high_watermark,
                "batch_size": c.batch_size,
                "key_length": space.length(),
                "keyspace_size": space.size(),
                "last_refill": counts.last_refill,
                "refilling": self.refiller.refilling(),
                "refill_requested": self.refiller.pending(),
                "last_error": self.refiller.last_error(),
            }),
        )
    }

    async fn refill<B>(&self, body: B) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Unpin,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let bytes = match read_body(body, self.body, &Default::default()).await {
            Ok(b) => b,
            Err(e) => return e.response(),
        };
        let req: RefillRequest = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_json",
                    &format!("expected {{\"count\": N}}: {e}"),
                )
            }
        };
        let max = self.refiller.config().max_refill;
        if req.count == 0 || req.count > max {
            return json_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_count",
                &format!("count must be 1..={max}"),
            );
        }
        let pending = self.refiller.request(req.count);
        json(
            StatusCode::ACCEPTED,
            &serde_json::json!({ "requested": req.count, "pending": pending }),
        )
    }
}

/// `Authorization: Bearer <token>`, compared without an early exit.
fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (given.as_bytes(), token.as_bytes());
    let mut diff = a.len() ^ b.len();
    for (i, &x) in b.iter().enumerate() {
        diff |= usize::from(x ^ a.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(auth).unwrap(),
        );
        h
    }

    #[test]
    fn only_the_exact_bearer_token_is_accepted() {
        let token = "0123456789abcdef";
        assert!(authorized(&headers("Bearer 0123456789abcdef"), token));
        for bad in [
            "Bearer 0123456789abcde",
            "Bearer 0123456789abcdef0",
            "Bearer 0123456789abcdeF",
            "bearer 0123456789abcdef",
            "Basic 0123456789abcdef",
            "Bearer ",
        ] {
            assert!(!authorized(&headers(bad), token), "{bad}");
        }
        assert!(!authorized(&HeaderMap::new(), token));
    }
}
