//! Request bodies and every rule they must pass before anything is written.

use edgelink_core::code::{check_code, CodeError};
use edgelink_core::link::{normalize_target, parse_rfc3339, LinkError};
use edgelink_core::RedirectStatus;
use serde::{Deserialize, Deserializer};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use time::OffsetDateTime;

use crate::error::ApiError;

/// `POST /api/v1/links` (and each item of a batch).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct CreateLink {
    pub url: String,
    #[serde(default)]
    pub alias: Option<String>,
    /// RFC 3339; exclusive with `ttl_seconds`.
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    #[serde(default)]
    pub redirect: Option<u16>,
}

/// `PATCH /api/v1/links/{code}`: fields left out stay; `"expires_at": null`
/// removes the expiry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateLink {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub expires_at: Option<Option<String>>,
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    #[serde(default)]
    pub redirect: Option<u16>,
    #[serde(default)]
    pub disabled: Option<bool>,
}

/// Tells a field set to `null` (Some(None)) from one left out (None).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// The rules links are created and changed under (from `[origin]` config).
#[derive(Debug, Clone)]
pub struct Policy {
    /// Host of the shortener's own public URL: no link may point back at it.
    pub own_host: Option<Host>,
    /// `origin.block_private_targets`.
    pub block_private: bool,
    /// Lower-case domains; a target on one of them or a subdomain is refused.
    pub blocked_domains: Vec<String>,
    pub alias_min_len: usize,
    pub alias_max_len: usize,
    /// The longest lifetime a link may be given, in seconds.
    pub max_ttl_secs: u64,
    pub default_redirect: RedirectStatus,
}

impl Policy {
    /// A target URL, normalised (punycode host, percent-encoded path), or why not.
    pub fn target(&self, raw: &str) -> Result<String, ApiError> {
        let target = normalize_target(raw).map_err(|e| {
            let code = match e {
                LinkError::TargetTooLong(_) => "url_too_long",
                LinkError::BadScheme(_) => "url_scheme",
                _ => "invalid_url",
            };
            ApiError::invalid(code, e.to_string())
        })?;
        let host = url::Url::parse(&target)
            .ok()
            .as_ref()
            .and_then(Host::of)
            .ok_or_else(|| ApiError::invalid("invalid_url", "url has no host"))?;
        if self.own_host.as_ref().is_some_and(|own| own.same(&host)) {
            return Err(ApiError::invalid(
                "url_loops",
                "url points at this shortener; a link to a link would loop",
            ));
        }
        if self.block_private && !host.is_public() {
            return Err(ApiError::invalid(
                "url_private",
                "url points at a loopback, private or link-local address",
            ));
        }
        let domain = match &host {
            Host::Domain(d) => d.as_str(),
            Host::Ip(_) => "",
        };
        if let Some(d) = self.blocked_domains.iter().find(|d| {
            domain == d.as_str()
                || domain
                    .strip_suffix(d.as_str())
                    .is_some_and(|p| p.ends_with('.'))
        }) {
            return Err(ApiError::invalid(
                "domain_blocked",
                format!("links to {d} are not accepted"),
            ));
        }
        Ok(target)
    }

    /// A custom code, or why not.
    pub fn alias(&self, alias: &str) -> Result<(), ApiError> {
        match check_code(alias) {
            Ok(()) => {}
            Err(CodeError::Reserved(_)) => {
                return Err(ApiError::invalid(
                    "alias_reserved",
                    format!("{alias:?} is reserved for the service itself"),
                ))
            }
            Err(e) => return Err(ApiError::invalid("invalid_alias", e.to_string())),
        }
        if !(self.alias_min_len..=self.alias_max_len).contains(&alias.len()) {
            return Err(ApiError::invalid(
                "invalid_alias",
                format!(
                    "alias must be {}..={} characters",
                    self.alias_min_len, self.alias_max_len
                ),
            ));
        }
        Ok(())
    }

    /// The expiry from `expires_at` or `ttl_seconds` (not both), in the
    /// future and within `max_ttl_secs`.
    pub fn expiry(
        &self,
        expires_at: Option<&str>,
        ttl_seconds: Option<u64>,
        now: OffsetDateTime,
    ) -> Result<Option<OffsetDateTime>, ApiError> {
        let at = match (expires_at, ttl_seconds) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid(
                    "invalid_expiry",
                    "give expires_at or ttl_seconds, not both",
                ))
            }
            (None, None) => return Ok(None),
            (Some(s), None) => parse_rfc3339(s).map_err(|e| {
                ApiError::invalid(
                    "invalid_expiry",
                    format!("expires_at must be RFC 3339 (2026-12-31T23:59:59Z): {e}"),
                )
            })?,
            (None, Some(0)) => {
                return Err(ApiError::invalid(
                    "invalid_expiry",
                    "ttl_seconds must be > 0",
                ))
            }
            (None, Some(ttl)) => {
                let secs =
                    i64::try_from(ttl.min(self.max_ttl_secs.saturating_add(1))).unwrap_or(i64::MAX);
                now + time::Duration::seconds(secs)
            }
        };
        if at <= now {
            return Err(ApiError::invalid(
                "invalid_expiry",
                "the expiry is in the past",
            ));
        }
        let max =
            now + time::Duration::seconds(i64::try_from(self.max_ttl_secs).unwrap_or(i64::MAX));
        if at > max {
            return Err(ApiError::invalid(
                "invalid_expiry",
                format!("a link may live at most {} seconds", self.max_ttl_secs),
            ));
        }
        Ok(Some(at))
    }

    pub fn redirect(&self, code: Option<u16>) -> Result<RedirectStatus, ApiError> {
        match code {
            None => Ok(self.default_redirect),
            Some(c) => RedirectStatus::from_code(c).ok_or_else(|| {
                ApiError::invalid(
                    "invalid_redirect",
                    format!("redirect must be 301, 302, 307 or 308, not {c}"),
                )
            }),
        }
    }
}

// === canonical hosts ===

/// A URL's host as what it denotes: an address (an IPv6 address that
/// carries an IPv4 one as that IPv4 address: [`embedded_v4`]; `localhost`
/// names as the loopback address), or a domain name
/// spelt one way (lower case, no trailing dot). The URL parser has already
/// read numeric IPv4 short forms (`127.1`, `2130706433`, `0x7f.1`) as the
/// address they denote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    Domain(String),
}

impl Host {
    pub fn of(url: &url::Url) -> Option<Host> {
        Some(match url.host()? {
            url::Host::Ipv4(v4) => Host::Ip(IpAddr::V4(v4)),
            url::Host::Ipv6(v6) => Host::Ip(embedded_v4(v6).map_or(IpAddr::V6(v6), IpAddr::V4)),
            url::Host::Domain(d) => {
                let d = d.trim_end_matches('.').to_ascii_lowercase();
                if d == "localhost" || d.ends_with(".localhost") {
                    Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST))
                } else if let Ok(v4) = d.parse::<Ipv4Addr>() {
                    Host::Ip(IpAddr::V4(v4))
                } else {
                    Host::Domain(d)
                }
            }
        })
    }

    /// Whether both name the same host. Every loopback address is this
    /// machine, and so is the unspecified one (a shortener listening on
    /// `0.0.0.0` answers on all of them).
    pub fn same(&self, other: &Host) -> bool {
        let local = |h: &Host| matches!(h, Host::Ip(ip) if ip.is_loopback() || ip.is_unspecified());
        self == other || (local(self) && local(other))
    }

    /// Whether the host may be on the public internet: not a loopback,
    /// private, shared (CGNAT), link-local, unique-local, multicast,
    /// broadcast, documentation or unspecified address. Domain names are
    /// not resolved (the client that follows the link resolves them).
    pub fn is_public(&self) -> bool {
        match self {
            Host::Domain(_) => true,
            Host::Ip(IpAddr::V4(v4)) => {
                let [a, b, c, _] = v4.octets();
                !(v4.is_loopback()
                    || v4.is_private()
                    || v4.is_link_local()
                    || v4.is_unspecified()
                    || v4.is_multicast()
                    || v4.is_documentation()
                    || a == 0
                    || a >= 240 // reserved, and broadcast
                    || (a == 100 && (64..128).contains(&b)) // shared (CGNAT)
                    || (a == 198 && (18..20).contains(&b)) // benchmarking
                    || (a, b, c) == (192, 0, 0)) // IETF protocol assignments
            }
            Host::Ip(IpAddr::V6(v6)) => {
                let [first, second, ..] = v6.segments();
                !(v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    || (first & 0xfe00) == 0xfc00 // unique local
                    || (first & 0xffc0) == 0xfe80 // link-local
                    || (first & 0xffc0) == 0xfec0 // site-local (deprecated)
                    || u128::from(*v6) >> 64 == 0x0100 << 48 // discard-only 100::/64
                                        || (first, second, v6.segments()[2]) == (0x64, 0xff9b, 1) // local-use NAT64
                    || (first == 0x2001 && second < 0x0200 && !v6_global_assignment(v6))
                    || (first == 0x2001 && second == 0x0db8) // documentation
                    || (first & 0xfff0) == 0x3ff0) // documentation, 3fff::/20
            }
        }
    }
}

/// The globally reachable assignments inside `2001::/23` (IETF protocol
/// assignments, which are otherwise not): PCP and TURN anycast, AMT,
/// AS112-v6 and ORCHIDv2 (the IANA special-purpose registry).
fn v6_global_assignment(v6: &Ipv6Addr) -> bool {
    let bits = u128::from(*v6);
    bits == 0x2001_0001_0000_0000_0000_0000_0000_0001
        || bits == 0x2001_0001_0000_0000_0000_0000_0000_0002
        || matches!(v6.segments(), [0x2001, 3, ..])
        || matches!(v6.segments(), [0x2001, 4, 0x112, ..])
        || matches!(v6.segments(), [0x2001, 0x20..=0x2f, ..])
}

/// The IPv4 address an IPv6 address carries, where it denotes or reaches
/// that IPv4 host: IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible
/// (`::a.b.c.d`, deprecated), IPv4-translated (`::ffff:0:a.b.c.d`), NAT64's
/// well-known prefix (`64:ff9b::/96`) and 6to4 (`2002:AABB:CCDD::/48`). The
/// local-use NAT64 prefix (`64:ff9b:1::/48`) places the IPv4 address where
/// its operator chose; it is not public at all ([`Host::is_public`]).
pub fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(v6);
    let low = Ipv4Addr::from(bits as u32);
    match v6.segments() {
        [0, 0, 0, 0, 0, 0xffff, ..] => Some(low),
        [0, 0, 0, 0, 0, 0, ..] if bits > 1 => Some(low),
        [0, 0, 0, 0, 0xffff, 0, ..] => Some(low),
        [0x64, 0xff9b, 0, 0, 0, 0, ..] => Some(low),

        [0x2002, hi, lo, ..] => Some(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgelink_core::link::from_unix;

    fn policy() -> Policy {
        Policy {
            own_host: Some(Host::Domain("sho.rt".to_owned())),
            block_private: true,
            blocked_domains: vec!["evil.example".to_owned()],
            alias_min_len: 3,
            alias_max_len: 32,
            max_ttl_secs: 86_400 * 365,
            default_redirect: RedirectStatus::Found,
        }
    }

    fn code_of(r: Result<impl std::fmt::Debug, ApiError>) -> &'static str {
        r.unwrap_err().code
    }

    #[test]
    fn targets_are_normalised_and_policed() {
        let p = policy();
        assert_eq!(
            p.target("https://Bücher.example/ä").unwrap(),
            "https://xn--bcher-kva.example/%C3%A4"
        );
        assert_eq!(code_of(p.target("ftp://a.example/")), "url_scheme");
        assert_eq!(code_of(p.target("https://")), "invalid_url");
        assert_eq!(code_of(p.target("https://a.example/\n")), "invalid_url");
        assert_eq!(code_of(p.target("https://a.example/ x")), "invalid_url");
        assert_eq!(
            code_of(p.target(&format!("https://a.example/{}", "x".repeat(8_200)))),
            "url_too_long"
        );
        assert_eq!(code_of(p.target("https://SHO.RT/abc")), "url_loops");
        assert_eq!(code_of(p.target("https://sho.rt./abc")), "url_loops");
        assert_eq!(code_of(p.target("https://evil.example/")), "domain_blocked");
        assert_eq!(
            code_of(p.target("https://www.Evil.example/")),
            "domain_blocked"
        );
        assert!(
            p.target("https://notevil.example/").is_ok(),
            "only the domain and its subdomains"
        );
    }

    #[test]
    fn every_spelling_of_the_shorteners_own_host_loops() {
        let own = |public: &str| {
            let p = Policy {
                own_host: Host::of(&url::Url::parse(public).unwrap()),
                block_private: false,
                ..policy()
            };
            move |target: &str| p.target(target).map_err(|e| e.code)
        };
        let named = own("https://sho.rt");
        for target in [
            "https://SHO.RT/a",
            "https://sho.rt./a",
            "http://Sho.Rt.:8443/a",
        ] {
            assert_eq!(named(target), Err("url_loops"), "{target}");
        }
        assert!(named("https://sho.rt.example/a").is_ok());
        let local = own("http://127.0.0.1:8080");
        for target in [
            "http://localhost:8080/a",
            "http://LOCALHOST./a",
            "http://app.localhost/a",
            "http://[::ffff:127.0.0.1]:8080/a",
            "http://[::127.0.0.1]:8080/a",
            "http://[64:ff9b::7f00:1]/a",
            "http://[::1]/a",
            "http://127.1/a",
            "http://2130706433/a",
            "http://0x7f.0.0.1/a",
            "http://0177.0.0.1/a",
            "http://127.0.0.1./a",
            "http://127.0.0.2/a",
        ] {
            assert_eq!(local(target), Err("url_loops"), "{target}");
        }
        let anywhere = own("http://0.0.0.0:8080");
        assert_eq!(anywhere("http://localhost:8080/a"), Err("url_loops"));
        let by_name = own("http://localhost:8080");
        assert_eq!(by_name("http://127.0.0.1:8080/a"), Err("url_loops"));
        assert_eq!(by_name("http://[::1]:8080/a"), Err("url_loops"));
    }

    #[test]
    fn private_and_local_targets_are_refused_unless_allowed() {
        let p = policy();
        for target in [
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://192.168.1.1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://100.64.0.1/",
            "http://0.0.0.0/",
            "http://[fd00::1]/",
            "http://[fe80::1]/",
            "http://[::ffff:10.0.0.1]/",
            "http://localhost/",
            "http://127.0.0.1/",
            "http://[::127.0.0.1]/",
            "http://[::ffff:0:7f00:1]/",
            "http://[64:ff9b::a00:1]/",
            "http://[64:ff9b:1::a9fe:a9fe]/",
            "http://[64:ff9b:1:a00:0:100:808:808]/",
            "http://[2001:2::1]/",
            "http://[2002:7f00:1::]/",
            "http://[fec0::1]/",
            "http://[100::1]/",
            "http://[3fff::1]/",
            "http://240.0.0.1/",
            "http://198.18.0.1/",
            "http://192.0.0.8/",
        ] {
            assert_eq!(code_of(p.target(target)), "url_private", "{target}");
        }
        for target in [
            "http://93.184.215.14/",
            "http://[2606:4700::1111]/",
            "https://intranet/",
            "http://[2002:808:808::1]/",
            "http://[64:ff9b::808:808]/",
            "http://[2001:4:112::1]/",
            "http://[2001:3::1]/",
        ] {
            assert!(p.target(target).is_ok(), "{target}");
        }
        let allowed = Policy {
            block_private: false,
            ..policy()
        };
        assert!(allowed.target("http://10.1.2.3/").is_ok());
    }

    #[test]
    fn aliases_follow_the_code_rules_and_length_bounds() {
        let p = policy();
        assert!(p.alias("my-link_1").is_ok());
        assert_eq!(code_of(p.alias("ab")), "invalid_alias");
        assert_eq!(code_of(p.alias(&"a".repeat(33))), "invalid_alias");
        assert_eq!(code_of(p.alias("has space")), "invalid_alias");
        assert_eq!(code_of(p.alias("ünï")), "invalid_alias");
        assert_eq!(code_of(p.alias("admin")), "alias_reserved");
        assert_eq!(code_of(p.alias("HealthZ")), "alias_reserved");
    }

    #[test]
    fn expiry_is_one_of_two_forms_in_the_future_and_bounded() {
        let p = policy();
        let now = from_unix(1_800_000_000).unwrap();
        assert_eq!(p.expiry(None, None, now).unwrap(), None);
        assert_eq!(
            p.expiry(None, Some(60), now).unwrap(),
            from_unix(1_800_000_060)
        );
        // now is 2027-01-15T08:00:00Z
        assert_eq!(
            p.expiry(Some("2027-02-01T00:00:00Z"), None, now).unwrap(),
            Some(parse_rfc3339("2027-02-01T00:00:00Z").unwrap())
        );
        assert_eq!(
            code_of(p.expiry(Some("2027-01-15T08:00:00Z"), None, now)),
            "invalid_expiry"
        );
        assert_eq!(
            code_of(p.expiry(Some("2027-02-01T00:00:00Z"), Some(5), now)),
            "invalid_expiry"
        );
        assert_eq!(
            code_of(p.expiry(Some("tomorrow"), None, now)),
            "invalid_expiry"
        );
        assert_eq!(
            code_of(p.expiry(Some("2020-01-01T00:00:00Z"), None, now)),
            "invalid_expiry"
        );
        assert_eq!(code_of(p.expiry(None, Some(0), now)), "invalid_expiry");
        assert_eq!(
            code_of(p.expiry(None, Some(86_400 * 366), now)),
            "invalid_expiry"
        );
        assert_eq!(
            code_of(p.expiry(None, Some(u64::MAX), now)),
            "invalid_expiry"
        );
    }

    #[test]
    fn redirects_are_the_four_statuses() {
        let p = policy();
        assert_eq!(p.redirect(None).unwrap(), RedirectStatus::Found);
        assert_eq!(
            p.redirect(Some(308)).unwrap(),
            RedirectStatus::PermanentRedirect
        );
        for bad in [200, 300, 303, 404] {
            assert_eq!(code_of(p.redirect(Some(bad))), "invalid_redirect");
        }
    }

    #[test]
    fn patch_tells_null_from_absent() {
        let u: UpdateLink = serde_json::from_str(r#"{"expires_at": null}"#).unwrap();
        assert_eq!(u.expires_at, Some(None));
        let u: UpdateLink = serde_json::from_str(r#"{"disabled": true}"#).unwrap();
        assert_eq!(u.expires_at, None);
        assert!(serde_json::from_str::<UpdateLink>(r#"{"color": 1}"#).is_err());
        assert!(serde_json::from_str::<CreateLink>(r#"{"url": "x", "colour": 1}"#).is_err());
    }
}
