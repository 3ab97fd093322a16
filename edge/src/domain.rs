//! What the edge's modules tell each other: what a lookup answers
//! ([`Answer`]), who clicked ([`Click`]), which tier answered ([`Tier`]),
//! and the `Cache-Control` an answer carries. Every other module depends
//! down on this one, and it on none of them: shared words get a room of
//! their own instead of a circle between the modules that use them.

use http::{HeaderValue, StatusCode};

/// `Cache-Control` of every answer that must not be cached downstream.
pub const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

/// Whether `value` may be sent as a header value as is (the rule of
/// `http::HeaderValue`: visible ASCII, obs-text, space and tab).
#[inline]
pub fn is_header_value(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| (b >= 0x20 && b != 0x7f) || b == b'\t')
}

/// What the edge answers for a code. Cloning it copies reference counts.
#[derive(Debug, Clone)]
pub enum Answer {
    Redirect {
        status: StatusCode,
        location: HeaderValue,
        cache_control: HeaderValue,
        /// Unix seconds; checked on every hit so a link turns 410 on time.
        expires_at: Option<i64>,
    },
    /// Expired or disabled: 410.
    Gone,
    /// Unknown code: 404.
    NotFound,
    /// The stored target cannot be a `Location` header (written around the
    /// API's validation): 500, logged once when loaded.
    Broken,
}

/// Who clicked, by `User-Agent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Click {
    Human = 0,
    Bot = 1,
}

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// No tier was consulted (health, invalid paths).
    None = 0,
    /// Tier 0, the in-process cache.
    Memory = 1,
    /// Tier 1, Redis.
    Cache = 2,
    /// Tier 2, the source of truth (PostgreSQL or SQLite).
    Store = 3,
}
