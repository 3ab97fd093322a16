//! API keys: `el_` and 40 random base62 characters (about 238 bits), shown
//! once when created; only their SHA-256 is stored. Verified keys are
//! remembered for [`CACHE_TTL`] so a busy client costs no lookup per
//! request; a revoked key therefore stops working within that time. Keys
//! the store does not know are remembered as unknown for as long, in a map
//! of [`MAX_REMEMBERED`] entries, so repeating a made-up key costs no
//! lookup either (the edge limits 401s per client: see `limits.unauthorized_per_sec`).

use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use rand::Rng;
use sha2::{Digest as _, Sha256};

use crate::error::ApiError;
use crate::store::{Digest, OriginStore};

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const PREFIX: &str = "el_";
const RANDOM_CHARS: usize = 40;
/// Characters of a key kept in clear to name it (`el_` and eight more).
const SHOWN: usize = PREFIX.len() + 8;

/// How long a verified key is trusted, and an unknown one refused,
/// without asking the store again.
pub const CACHE_TTL: Duration = Duration::from_secs(10);

/// Keys remembered at most, verified and unknown each.
pub const MAX_REMEMBERED: u64 = 10_000;

/// A new key: (the key, its prefix, its hash).
pub fn generate() -> (String, String, Digest) {
    let mut rng = rand::rng();
    let mut key = String::with_capacity(PREFIX.len() + RANDOM_CHARS);
    key.push_str(PREFIX);
    for _ in 0..RANDOM_CHARS {
        key.push(char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]));
    }
    let prefix = key[..SHOWN].to_owned();
    let hash = hash(&key);
    (key, prefix, hash)
}

/// What is stored of a key.
pub fn hash(key: &str) -> Digest {
    Sha256::digest(key.as_bytes()).into()
}

/// The prefix that names `key` (for `apikey revoke` and logs).
pub fn prefix(key: &str) -> Option<&str> {
    key.get(..SHOWN).filter(|_| key.starts_with(PREFIX))
}

/// Checks the API keys of requests.
#[derive(Clone)]
pub struct Keys {
    store: Arc<dyn OriginStore>,
    verified: Cache<Digest, i64>,
    unknown: Cache<Digest, ()>,
}

impl Keys {
    pub fn new(store: Arc<dyn OriginStore>) -> Keys {
        Keys {
            store,
            verified: Cache::builder()
                .max_capacity(MAX_REMEMBERED)
                .time_to_live(CACHE_TTL)
                .build(),
            unknown: Cache::builder()
                .max_capacity(MAX_REMEMBERED)
                .time_to_live(CACHE_TTL)
                .build(),
        }
    }

    /// The key id of `Authorization: Bearer <key>` (the scheme in any
    /// case), or 401.
    pub async fn check(&self, headers: &http::HeaderMap) -> Result<i64, ApiError> {
        let key = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .filter(|k| k.len() == PREFIX.len() + RANDOM_CHARS && k.starts_with(PREFIX))
            .ok_or_else(ApiError::unauthorized)?;
        let digest = hash(key);
        if let Some(id) = self.verified.get(&digest).await {
            return Ok(id);
        }
        if self.unknown.contains_key(&digest) {
            return Err(ApiError::unauthorized());
        }
        match self.store.api_key_id(digest).await? {
            Some(id) => {
                self.verified.insert(digest, id).await;
                Ok(id)
            }
            None => {
                self.unknown.insert(digest, ()).await;
                Err(ApiError::unauthorized())
            }
        }
    }

    /// Registers `key` (EDGELINK_BOOTSTRAP_API_KEY) under `name`; it must
    /// have the shape of a generated key.
    pub async fn register(&self, name: &str, key: &str) -> Result<(), String> {
        let prefix = prefix(key)
            .filter(|_| key.len() == PREFIX.len() + RANDOM_CHARS)
            .filter(|_| {
                key[PREFIX.len()..]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric())
            })
            .ok_or_else(|| {
                format!("an API key is {PREFIX} and {RANDOM_CHARS} letters or digits")
            })?;
        self.store
            .add_api_key(name, prefix, hash(key))
            .await
            .map_err(|e| e.to_string())
    }
}

/// The credentials of a `Bearer` authorization: the scheme is matched
/// in any case (RFC 9110 §11.1), one or more spaces before the token.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim_start_matches(' '))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_matched_in_any_case() {
        for header in ["Bearer k", "bearer k", "BEARER k", "bEaReR   k"] {
            assert_eq!(bearer(header), Some("k"), "{header}");
        }
        for header in ["Basic k", "Bearerk", "Bearer", "Token k"] {
            assert_eq!(bearer(header), None, "{header}");
        }
    }

    #[test]
    fn keys_are_long_random_and_named_by_their_prefix() {
        let (a, pa, ha) = generate();
        let (b, _, hb) = generate();
        assert_ne!(a, b);
        assert_ne!(ha, hb);
        assert_eq!(a.len(), 43);
        assert!(a.starts_with("el_") && a[3..].bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(prefix(&a), Some(pa.as_str()));
        assert_eq!(hash(&a), ha);
        assert_eq!(prefix("nope"), None);
    }
}
