//! The link model and the rules every stored link obeys.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::code::{check_code, CodeError};

/// Longest target URL accepted, in bytes (after normalisation).
pub const MAX_TARGET_LEN: usize = 8 * 1024;

/// The creation API's batch endpoint (`POST`): the edge charges its create
/// rate limit once per link in it.
pub const BATCH_PATH: &str = "/api/v1/links/batch";

/// The redirect status a link answers with.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "u16", into = "u16")]
pub enum RedirectStatus {
    /// 301: permanent, browsers may cache it and may turn POST into GET.
    MovedPermanently,
    /// 302: temporary; the default.
    #[default]
    Found,
    /// 307: temporary, method preserved.
    TemporaryRedirect,
    /// 308: permanent, method preserved.
    PermanentRedirect,
}

impl RedirectStatus {
    pub const ALL: [RedirectStatus; 4] = [
        RedirectStatus::MovedPermanently,
        RedirectStatus::Found,
        RedirectStatus::TemporaryRedirect,
        RedirectStatus::PermanentRedirect,
    ];

    pub const fn code(self) -> u16 {
        match self {
            RedirectStatus::MovedPermanently => 301,
            RedirectStatus::Found => 302,
            RedirectStatus::TemporaryRedirect => 307,
            RedirectStatus::PermanentRedirect => 308,
        }
    }

    pub const fn from_code(code: u16) -> Option<Self> {
        match code {
            301 => Some(RedirectStatus::MovedPermanently),
            302 => Some(RedirectStatus::Found),
            307 => Some(RedirectStatus::TemporaryRedirect),
            308 => Some(RedirectStatus::PermanentRedirect),
            _ => None,
        }
    }

    /// Permanent redirects may be cached by browsers and intermediaries.
    pub const fn is_permanent(self) -> bool {
        matches!(
            self,
            RedirectStatus::MovedPermanently | RedirectStatus::PermanentRedirect
        )
    }
}

impl From<RedirectStatus> for u16 {
    fn from(s: RedirectStatus) -> u16 {
        s.code()
    }
}

impl TryFrom<u16> for RedirectStatus {
    type Error = String;
    fn try_from(code: u16) -> Result<Self, String> {
        RedirectStatus::from_code(code)
            .ok_or_else(|| format!("redirect status must be 301, 302, 307 or 308, not {code}"))
    }
}

impl fmt::Display for RedirectStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code())
    }
}

/// A short link as the source of truth holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub code: String,
    /// Normalised absolute http(s) URL; always a valid `Location` header value.
    pub target: String,
    pub redirect: RedirectStatus,
    pub created_at: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
    pub disabled: bool,
}

/// What a link means for a request at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Live,
    Expired,
    Disabled,
}

impl Link {
    /// Builds a validated link: the code obeys the code rules and the target is
    /// normalised (see [`normalize_target`]). Timestamps are cut to whole
    /// seconds so every backend stores the same value.
    pub fn new(
        code: &str,
        target: &str,
        redirect: RedirectStatus,
        created_at: OffsetDateTime,
        expires_at: Option<OffsetDateTime>,
    ) -> Result<Link, LinkError> {
        check_code(code)?;
        let target = normalize_target(target)?;
        Ok(Link {
            code: code.to_owned(),
            target,
            redirect,
            created_at: truncate_to_second(created_at),
            expires_at: expires_at.map(truncate_to_second),
            disabled: false,
        })
    }

    pub fn state_at(&self, now_unix: i64) -> LinkState {
        if self.disabled {
            LinkState::Disabled
        } else if self
            .expires_at
            .is_some_and(|e| e.unix_timestamp() <= now_unix)
        {
            LinkState::Expired
        } else {
            LinkState::Live
        }
    }
}

/// Why a link could not be built; messages are safe to show a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Code(#[from] CodeError),
    #[error("url is empty")]
    EmptyTarget,
    #[error("url is {0} bytes long; the limit is {MAX_TARGET_LEN}")]
    TargetTooLong(usize),
    #[error("url contains a control character")]
    ControlCharacter,
    #[error("url contains whitespace; percent-encode spaces as %20")]
    Whitespace,
    #[error("url is not a valid absolute URL: {0}")]
    BadUrl(String),
    #[error("url scheme must be http or https, not {0:?}")]
    BadScheme(String),
    #[error("url has no host")]
    NoHost,
    #[error("url must not carry a username or password")]
    Credentials,
}

/// Checks a target URL and returns its normalised form: http/https only, a
/// host, no credentials, no control characters, punycode for IDN hosts and
/// percent-encoding for everything else that is not ASCII, so the result is
/// always a valid HTTP header value.
pub fn normalize_target(raw: &str) -> Result<String, LinkError> {
    if raw.is_empty() {
        return Err(LinkError::EmptyTarget);
    }
    if raw.len() > MAX_TARGET_LEN {
        return Err(LinkError::TargetTooLong(raw.len()));
    }
    if raw.chars().any(char::is_control) {
        return Err(LinkError::ControlCharacter);
    }
    if raw.chars().any(char::is_whitespace) {
        return Err(LinkError::Whitespace);
    }
    let url = url::Url::parse(raw).map_err(|e| LinkError::BadUrl(e.to_string()))?;
    match url.scheme() {
        "http" | "https" => {}
        other => return Err(LinkError::BadScheme(other.to_owned())),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(LinkError::NoHost);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(LinkError::Credentials);
    }
    let normalized = String::from(url);
    if normalized.len() > MAX_TARGET_LEN {
        return Err(LinkError::TargetTooLong(normalized.len()));
    }
    Ok(normalized)
}

/// Seconds since the Unix epoch, from the system clock.
#[inline]
pub fn now_unix() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// The current time, cut to whole seconds.
pub fn now() -> OffsetDateTime {
    truncate_to_second(OffsetDateTime::now_utc())
}

pub fn truncate_to_second(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).unwrap_or(t)
}

/// Converts Unix seconds into a timestamp; `None` when out of range.
pub fn from_unix(secs: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(secs).ok()
}

/// Parses an RFC 3339 timestamp (`2026-12-31T23:59:59Z`).
pub fn parse_rfc3339(s: &str) -> Result<OffsetDateTime, time::error::Parse> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).map(truncate_to_second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_status_round_trips_and_rejects_others() {
        for s in RedirectStatus::ALL {
            assert_eq!(RedirectStatus::from_code(s.code()), Some(s));
        }
        for bad in [200, 300, 303, 304, 404] {
            assert!(RedirectStatus::try_from(bad).is_err());
        }
        assert!(RedirectStatus::MovedPermanently.is_permanent());
        assert!(!RedirectStatus::TemporaryRedirect.is_permanent());
    }

    #[test]
    fn normalizes_targets_to_header_safe_ascii() {
        assert_eq!(
            normalize_target("https://bücher.example/ä?q=1").as_deref(),
            Ok("https://xn--bcher-kva.example/%C3%A4?q=1")
        );
        assert_eq!(
            normalize_target("HTTP://Example.COM").as_deref(),
            Ok("http://example.com/")
        );
    }

    #[test]
    fn refuses_bad_targets() {
        assert_eq!(normalize_target(""), Err(LinkError::EmptyTarget));
        assert!(matches!(
            normalize_target("javascript:alert(1)"),
            Err(LinkError::BadScheme(_))
        ));
        assert!(matches!(
            normalize_target("ftp://x.example/"),
            Err(LinkError::BadScheme(_))
        ));
        assert!(matches!(
            normalize_target("/relative"),
            Err(LinkError::BadUrl(_))
        ));
        assert_eq!(
            normalize_target("https://a.example/\r\nSet-Cookie: x"),
            Err(LinkError::ControlCharacter)
        );
        for spaced in [
            " https://a.example/",
            "https://a.example/a b",
            "https://a.example/\u{a0}",
        ] {
            assert_eq!(
                normalize_target(spaced),
                Err(LinkError::Whitespace),
                "{spaced:?}"
            );
        }
        assert_eq!(
            normalize_target("https://user:pw@a.example/"),
            Err(LinkError::Credentials)
        );
        let long = format!("https://a.example/{}", "x".repeat(MAX_TARGET_LEN));
        assert!(matches!(
            normalize_target(&long),
            Err(LinkError::TargetTooLong(_))
        ));
    }

    #[test]
    fn state_follows_disabled_then_expiry() {
        let mut link = Link::new(
            "abc",
            "https://a.example/",
            RedirectStatus::Found,
            now(),
            from_unix(1_000),
        )
        .unwrap();
        assert_eq!(link.state_at(999), LinkState::Live);
        assert_eq!(link.state_at(1_000), LinkState::Expired);
        link.disabled = true;
        assert_eq!(link.state_at(0), LinkState::Disabled);
    }
}
