//! Where the pool lives: the seam between the pool's logic and its two
//! backends (PostgreSQL distributed, SQLite embedded).

use async_trait::async_trait;
use edgelink_core::StoreError;
use serde::Serialize;

use crate::keys::KeySpace;

/// The pool's counters, as the admin endpoint shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolCounts {
    /// Keys in the pool now.
    pub free: u64,
    /// Sequence numbers spent on keys, over every keyspace.
    pub generated: u64,
    /// Keys taken out of the pool by origins, ever.
    pub leased: u64,
    /// Leased keys that origins reported as turned into links. `leased -
    /// used` are keys in origins' memory, or lost with an origin that
    /// stopped: never handed out again either way.
    pub used: u64,
    pub last_refill: Option<RefillRecord>,
}

/// The last refill that finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefillRecord {
    /// RFC 3339, UTC.
    pub at: String,
    pub keys: u64,
    pub duration_ms: u64,
}

/// The right to generate keys, held by one refiller at a time across every
/// process sharing the pool; released when dropped.
#[async_trait]
pub trait RefillSession: Send {
    /// Generates up to `count` keys of `space` in one transaction: reserves
    /// the next `count` sequence numbers and inserts their keys. Returns how
    /// many keys were added (reserved words are skipped).
    async fn batch(&mut self, space: &KeySpace, count: u64) -> Result<u64, StoreError>;

    /// Records a finished refill for the admin endpoint.
    async fn record(&mut self, keys: u64, duration_ms: u64) -> Result<(), StoreError>;
}

/// A key pool backend.
#[async_trait]
pub trait PoolStore: Send + Sync + 'static {
    /// `postgres` or `sqlite`.
    fn name(&self) -> &'static str;

    /// The keyspace of `length`-character keys; the first caller creates it
    /// with a random secret, every later caller (any process) reads the same.
    async fn keyspace(&self, length: u8) -> Result<KeySpace, StoreError>;

    /// Keys free in the pool now.
    async fn free(&self) -> Result<u64, StoreError>;

    /// The refill right, or `None` while another refiller holds it.
    async fn begin_refill(&self) -> Result<Option<Box<dyn RefillSession>>, StoreError>;

    /// Takes up to `n` keys out of the pool, each to exactly one caller
    /// however many lease at once, and adds `used` (keys the caller turned
    /// into links since its last lease, less any it gave back) to the
    /// counters.
    async fn lease(&self, n: u32, used: i64) -> Result<Vec<String>, StoreError>;

    async fn counts(&self) -> Result<PoolCounts, StoreError>;
}

/// A fresh 128-bit keyspace secret.
pub(crate) fn new_secret() -> [u8; 16] {
    rand::random()
}

/// The keys of sequence numbers `start..start + count`, without reserved
/// words (a key that spells one is skipped, its number spent).
pub(crate) fn spell_range(space: &KeySpace, start: u64, count: u64) -> Vec<String> {
    (start..start.saturating_add(count))
        .filter_map(|seq| space.key(seq))
        .filter(|k| !edgelink_core::code::is_reserved(k))
        .collect()
}

/// Turns a stored secret into a keyspace, or says what is wrong with it.
pub(crate) fn space_from(
    backend: &'static str,
    length: u8,
    secret: &[u8],
) -> Result<KeySpace, StoreError> {
    let secret: [u8; 16] = secret
        .try_into()
        .map_err(|_| StoreError::corrupt(backend, "keyspace secret is not 16 bytes"))?;
    KeySpace::new(length, secret)
        .ok_or_else(|| StoreError::corrupt(backend, format!("key length {length} unsupported")))
}
