use serde::{Deserialize, Serialize};

use super::Problems;

/// The key pool: key shape, watermarks, batch sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeypoolConfig {
    /// Characters per generated key (base62), 4..=10.
    pub key_length: u8,
    /// The refill worker tops the pool up when fewer keys than this are free...
    pub low_watermark: u64,
    /// ...to this many.
    pub high_watermark: u64,
    /// Keys generated per transaction.
    pub batch_size: u64,
    /// How often the refill worker checks the free count.
    pub check_interval_ms: u64,
    /// The most keys one manual refill (`POST /admin/keypool/refill`) may ask for.
    pub max_refill: u64,
    /// Keys an origin leases at once into its in-memory buffer.
    pub lease_batch: u32,
}

impl Default for KeypoolConfig {
    fn default() -> Self {
        KeypoolConfig {
            key_length: 7,
            low_watermark: 100_000,
            high_watermark: 300_000,
            batch_size: 100_000,
            check_interval_ms: 1_000,
            max_refill: 10_000_000,
            lease_batch: 1_000,
        }
    }
}

impl KeypoolConfig {
    pub(super) fn validate(&self, problems: &mut Problems) {
        problems.need(
            (4..=10).contains(&self.key_length),
            "keypool.key_length must be 4..=10",
        );
        problems.need(
            self.low_watermark < self.high_watermark,
            "keypool.low_watermark must be below keypool.high_watermark",
        );
        problems.need(
            (1_000..=1_000_000).contains(&self.batch_size),
            "keypool.batch_size must be 1000..=1000000",
        );
        problems.need(
            (10..=3_600_000).contains(&self.check_interval_ms),
            "keypool.check_interval_ms must be 10..=3600000",
        );
        problems.need(
            self.max_refill > 0 && self.high_watermark <= 1_000_000_000,
            "keypool.max_refill must be > 0 and keypool.high_watermark <= 1000000000",
        );
        problems.need(
            (1..=100_000).contains(&self.lease_batch),
            "keypool.lease_batch must be 1..=100000",
        );
    }
}
