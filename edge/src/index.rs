//! The read index of tier 0.
//!
//! moka owns tier 0: capacity, TinyLFU admission and eviction, TTLs and the
//! single-flight of misses. But every moka read is also recorded for its
//! policy (a shared read log; LRU and frequency-sketch updates applied in
//! housekeeping), and over a working set larger than the CPU caches each of
//! those is a trip to memory: 1.47 us per hit over 100,000 codes against
//! 157 ns for the same entries in a plain `HashMap`
//! (`cargo bench -p edgelink-edge --bench tier0`).
//!
//! So hits are served from this index: the same `Arc<Entry>` values in a
//! sharded `RwLock<HashMap>`, filled when moka returns an entry and emptied
//! by moka's eviction listener, so moka still decides what stays. One hit in
//! [`SAMPLE`] is also sent to moka so its policy keeps seeing what is hot.
//! Each slot carries a deadline (the entry's lifetime, the same one moka
//! gives it): an entry moka dropped between returning it and it being
//! indexed cannot outlive its TTL here, and `sweep` clears such slots.

use std::cell::Cell;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use crate::resolve::Entry;

/// One hit in this many is also a moka read.
pub const SAMPLE: u32 = 32;

const SHARDS: usize = 64;

struct Slot {
    entry: Arc<Entry>,
    deadline: Instant,
}

type Shard = RwLock<HashMap<Box<str>, Slot>>;

pub struct Index {
    shards: Box<[Shard]>,
    hasher: std::collections::hash_map::RandomState,
}

thread_local! {
    static HITS: Cell<u32> = const { Cell::new(0) };
}

impl Index {
    pub fn new() -> Index {
        Index {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    #[inline]
    fn shard(&self, code: &str) -> &Shard {
        &self.shards[self.hasher.hash_one(code) as usize % SHARDS]
    }

    /// The entry for `code` if indexed and within its lifetime.
    #[inline]
    pub fn get(&self, code: &str) -> Option<Arc<Entry>> {
        let shard = self.shard(code).read().unwrap_or_else(|p| p.into_inner());
        let slot = shard.get(code)?;
        (Instant::now() < slot.deadline).then(|| slot.entry.clone())
    }

    pub fn insert(&self, code: &str, entry: Arc<Entry>, deadline: Instant) {
        let mut shard = self.shard(code).write().unwrap_or_else(|p| p.into_inner());
        shard.insert(code.into(), Slot { entry, deadline });
    }

    /// Removes `code` if it still maps to `entry` (moka's eviction listener:
    /// a newer entry for the same code stays).
    pub fn remove_if_same(&self, code: &str, entry: &Arc<Entry>) {
        let mut shard = self.shard(code).write().unwrap_or_else(|p| p.into_inner());
        if shard
            .get(code)
            .is_some_and(|s| Arc::ptr_eq(&s.entry, entry))
        {
            shard.remove(code);
        }
    }

    /// Drops slots past their deadline in `count` shards, starting at
    /// `from` (the edge sweeps a few shards a second, all in a minute).
    pub fn sweep(&self, from: usize, count: usize) {
        let now = Instant::now();
        for i in 0..count.min(SHARDS) {
            let mut shard = self.shards[(from + i) % SHARDS]
                .write()
                .unwrap_or_else(|p| p.into_inner());
            shard.retain(|_, slot| slot.deadline > now);
        }
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub const SHARDS: usize = SHARDS;
}

impl Default for Index {
    fn default() -> Self {
        Index::new()
    }
}

/// True once every [`SAMPLE`] calls on this thread.
#[inline]
pub fn sampled() -> bool {
    HITS.with(|h| {
        let n = h.get().wrapping_add(1);
        h.set(n);
        n % SAMPLE == 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Tier;
    use crate::resolve::Answer;
    use std::time::Duration;

    fn entry() -> Arc<Entry> {
        Arc::new(Entry {
            answer: Answer::NotFound,
            source: Tier::Store,
        })
    }

    #[test]
    fn serves_until_the_deadline() {
        let index = Index::new();
        let e = entry();
        index.insert("a", e.clone(), Instant::now() + Duration::from_secs(60));
        assert!(Arc::ptr_eq(&index.get("a").unwrap(), &e));
        assert!(index.get("b").is_none());
        index.insert("old", entry(), Instant::now() - Duration::from_millis(1));
        assert!(index.get("old").is_none(), "past its deadline");
        assert_eq!(index.len(), 2);
        index.sweep(0, Index::SHARDS);
        assert_eq!(index.len(), 1, "the sweep drops expired slots");
    }

    #[test]
    fn eviction_removes_only_the_entry_it_names() {
        let index = Index::new();
        let later = Instant::now() + Duration::from_secs(60);
        let old = entry();
        let new = entry();
        index.insert("a", old.clone(), later);
        index.insert("a", new.clone(), later);
        index.remove_if_same("a", &old);
        assert!(
            Arc::ptr_eq(&index.get("a").unwrap(), &new),
            "a newer entry stays"
        );
        index.remove_if_same("a", &new);
        assert!(index.get("a").is_none());
        assert!(index.is_empty());
    }

    #[test]
    fn samples_one_call_in_sample() {
        let n = (0..SAMPLE * 10).filter(|_| sampled()).count();
        assert_eq!(n, 10);
    }
}
