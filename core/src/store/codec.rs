//! The compact Redis value encoding of a link.
//!
//! ```text
//! byte 0      version (1)
//! byte 1      redirect status: 1=301 2=302 3=307 4=308
//! byte 2      flags: bit 0 disabled, bit 1 has expiry
//! bytes 3..11 created_at, i64 little-endian Unix seconds
//! [8 bytes    expires_at, same encoding, only when bit 1 is set]
//! rest        target URL, UTF-8
//! ```
//!
//! The code is the key, so it is not repeated in the value. A value this
//! version cannot read decodes to an error (the edge then treats Redis as a
//! miss and asks the source of truth), never to a wrong link.

use crate::link::{from_unix, normalize_target, Link, RedirectStatus};

const VERSION: u8 = 1;
const FLAG_DISABLED: u8 = 1;
const FLAG_EXPIRES: u8 = 2;
const HEADER: usize = 3 + 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("value is {0} bytes, shorter than the header")]
    Short(usize),
    #[error("unknown encoding version {0}")]
    Version(u8),
    #[error("unknown redirect status tag {0}")]
    Status(u8),
    #[error("unknown flags {0:#x}")]
    Flags(u8),
    #[error("timestamp out of range")]
    Timestamp,
    #[error("target is not a valid URL")]
    Target,
}

fn status_tag(s: RedirectStatus) -> u8 {
    match s {
        RedirectStatus::MovedPermanently => 1,
        RedirectStatus::Found => 2,
        RedirectStatus::TemporaryRedirect => 3,
        RedirectStatus::PermanentRedirect => 4,
    }
}

pub fn encode(link: &Link) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + 8 + link.target.len());
    let mut flags = 0;
    if link.disabled {
        flags |= FLAG_DISABLED;
    }
    if link.expires_at.is_some() {
        flags |= FLAG_EXPIRES;
    }
    out.push(VERSION);
    out.push(status_tag(link.redirect));
    out.push(flags);
    out.extend_from_slice(&link.created_at.unix_timestamp().to_le_bytes());
    if let Some(e) = link.expires_at {
        out.extend_from_slice(&e.unix_timestamp().to_le_bytes());
    }
    out.extend_from_slice(link.target.as_bytes());
    out
}

fn read_i64(bytes: &[u8]) -> Result<i64, DecodeError> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| DecodeError::Short(bytes.len()))?;
    Ok(i64::from_le_bytes(arr))
}

pub fn decode(code: &str, bytes: &[u8]) -> Result<Link, DecodeError> {
    if bytes.len() < HEADER {
        return Err(DecodeError::Short(bytes.len()));
    }
    if bytes[0] != VERSION {
        return Err(DecodeError::Version(bytes[0]));
    }
    let redirect = match bytes[1] {
        1 => RedirectStatus::MovedPermanently,
        2 => RedirectStatus::Found,
        3 => RedirectStatus::TemporaryRedirect,
        4 => RedirectStatus::PermanentRedirect,
        other => return Err(DecodeError::Status(other)),
    };
    let flags = bytes[2];
    if flags & !(FLAG_DISABLED | FLAG_EXPIRES) != 0 {
        return Err(DecodeError::Flags(flags));
    }
    let created_at = from_unix(read_i64(&bytes[3..11])?).ok_or(DecodeError::Timestamp)?;
    let mut rest = &bytes[HEADER..];
    let expires_at = if flags & FLAG_EXPIRES != 0 {
        if rest.len() < 8 {
            return Err(DecodeError::Short(bytes.len()));
        }
        let e = from_unix(read_i64(&rest[..8])?).ok_or(DecodeError::Timestamp)?;
        rest = &rest[8..];
        Some(e)
    } else {
        None
    };
    let target = std::str::from_utf8(rest).map_err(|_| DecodeError::Target)?;
    // Only targets that are already in normal form are accepted, so whatever
    // reaches a `Location` header passed the same rules as on insert.
    match normalize_target(target) {
        Ok(n) if n == target => {}
        _ => return Err(DecodeError::Target),
    }
    Ok(Link {
        code: code.to_owned(),
        target: target.to_owned(),
        redirect,
        created_at,
        expires_at,
        disabled: flags & FLAG_DISABLED != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::{from_unix, Link};

    fn link(expires: Option<i64>, disabled: bool) -> Link {
        let mut l = Link::new(
            "abc",
            "https://a.example/path?q=1",
            RedirectStatus::PermanentRedirect,
            from_unix(1_700_000_000).unwrap(),
            expires.and_then(from_unix),
        )
        .unwrap();
        l.disabled = disabled;
        l
    }

    #[test]
    fn round_trips_every_shape() {
        for status in RedirectStatus::ALL {
            for expires in [None, Some(1_800_000_000)] {
                for disabled in [false, true] {
                    let mut l = link(expires, disabled);
                    l.redirect = status;
                    let bytes = encode(&l);
                    assert_eq!(decode("abc", &bytes), Ok(l));
                }
            }
        }
    }

    #[test]
    fn is_compact() {
        let l = link(None, false);
        assert_eq!(encode(&l).len(), HEADER + l.target.len());
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        let good = encode(&link(Some(1_800_000_000), false));
        assert_eq!(decode("abc", &good[..5]), Err(DecodeError::Short(5)));
        let mut v = good.clone();
        v[0] = 9;
        assert_eq!(decode("abc", &v), Err(DecodeError::Version(9)));
        let mut v = good.clone();
        v[1] = 7;
        assert_eq!(decode("abc", &v), Err(DecodeError::Status(7)));
        let mut v = good.clone();
        v[2] = 0x80;
        assert_eq!(decode("abc", &v), Err(DecodeError::Flags(0x80)));
        let mut v = good[..HEADER + 4].to_vec();
        v[2] = FLAG_EXPIRES;
        assert!(decode("abc", &v).is_err());
        let mut v = encode(&link(None, false));
        v.extend_from_slice(b"\r\nSet-Cookie: x");
        assert_eq!(decode("abc", &v), Err(DecodeError::Target));
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let good = encode(&link(Some(1_800_000_000), true));
        for _ in 0..20_000 {
            let mut v = good.clone();
            let n = rng.random_range(0..v.len() + 4);
            v.truncate(n);
            for _ in 0..rng.random_range(0..4) {
                if v.is_empty() {
                    break;
                }
                let i = rng.random_range(0..v.len());
                v[i] = rng.random();
            }
            let _ = decode("abc", &v);
        }
    }
}
