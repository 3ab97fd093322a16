//! The read index of tier 0: what a cache hit is served from.
//!
//! moka owns tier 0 (capacity, admission, eviction, TTLs, single-flight);
//! hits are served from this index instead, filled when moka returns an
//! entry and emptied by its eviction listener, because every moka read is
//! also a policy update, a trip to memory over a large working set. One
//! hit in [`SAMPLE`] still reaches moka so its policy sees what is hot.
//! A hit touches three cache lines: the table's control bytes, its
//! [`Slot`], and the slot's [`block`] (code and `Location` together). Each
//! slot also counts the clicks served from it, with one relaxed add on a
//! line already in cache; [`Index::drain_clicks`] takes them, and a slot
//! replaced or removed passes its counts on, so eviction loses none.
//!
//! Why this shape, and the figures behind it: `docs/design/tier0-index.md`.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Instant;

use bytes::Bytes;
use hashbrown::HashTable;
use http::{HeaderValue, StatusCode};

use crate::domain::{Answer, Click, NO_STORE};

/// One hit in this many is also a moka read.
pub const SAMPLE: u32 = 32;

const SHARDS: usize = 64;

/// `code` followed by `rest` in one heap block that also holds its own
/// reference count (bytes' owner form), in size classes of 64, 128 and 256
/// bytes; longer blocks fall back to a plain `Vec`.
pub fn block(code: &[u8], rest: &[u8]) -> Bytes {
    let len = code.len() + rest.len();
    match len {
        0..=55 => Inline::<55>::bytes(code, rest),
        56..=119 => Inline::<119>::bytes(code, rest),
        120..=247 => Inline::<247>::bytes(code, rest),
        _ => Bytes::from([code, rest].concat()),
    }
}

/// A fixed-capacity owner for [`Bytes::from_owner`]; with bytes' 8-byte
/// count in front, `Inline<55>` fills exactly one 64-byte allocation.
struct Inline<const N: usize> {
    buf: [u8; N],
    len: u8,
}

impl<const N: usize> Inline<N> {
    fn bytes(code: &[u8], rest: &[u8]) -> Bytes {
        let mut inline = Inline {
            buf: [0; N],
            len: 0,
        };
        let len = code.len() + rest.len();
        inline.buf[..code.len()].copy_from_slice(code);
        inline.buf[code.len()..len].copy_from_slice(rest);
        inline.len = u8::try_from(len).unwrap_or(u8::MAX);
        Bytes::from_owner(inline)
    }
}

impl<const N: usize> AsRef<[u8]> for Inline<N> {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

/// What a slot answers, without the bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Redirect { status: u16, permanent: bool },
    Gone,
    NotFound,
    Broken,
}

/// One indexed code: a single cache line.
#[repr(align(64))]
struct Slot {
    /// The code, then (for a redirect) the `Location` value.
    block: Bytes,
    /// Unix seconds; `i64::MAX` when the link does not expire.
    expires_at: i64,
    /// Milliseconds since the index's epoch; the slot is dead from then on.
    deadline_ms: u64,
    kind: Kind,
    code_len: u8,
    /// Redirects served from this slot since the last drain: human, bot.
    clicks: [AtomicU32; 2],
}

impl Slot {
    /// Takes the slot's counts (leaving zeros), without writing to a line
    /// that has none.
    fn take_clicks(&self) -> [u32; 2] {
        self.clicks.each_ref().map(|c| {
            if c.load(Ordering::Relaxed) == 0 {
                0
            } else {
                c.swap(0, Ordering::Relaxed)
            }
        })
    }

    #[inline]
    fn code(&self) -> &[u8] {
        self.block.get(..usize::from(self.code_len)).unwrap_or(&[])
    }

    #[inline]
    fn answer(&self, permanent_cache_control: &HeaderValue) -> Option<Answer> {
        Some(match self.kind {
            Kind::Redirect { status, permanent } => Answer::Redirect {
                status: StatusCode::from_u16(status).ok()?,
                // A clone of the block (one reference count on the line
                // just read) and a validity scan of the value, no copy.
                location: HeaderValue::from_maybe_shared(
                    self.block.slice(usize::from(self.code_len)..),
                )
                .ok()?,
                cache_control: if permanent {
                    permanent_cache_control.clone()
                } else {
                    NO_STORE
                },
                expires_at: (self.expires_at != i64::MAX).then_some(self.expires_at),
            },
            Kind::Gone => Answer::Gone,
            Kind::NotFound => Answer::NotFound,
            Kind::Broken => Answer::Broken,
        })
    }
}

/// A shard lock on a line of its own, so neighbours do not share misses.
#[repr(align(128))]
struct Shard(RwLock<HashTable<Slot>>);

pub struct Index {
    shards: Box<[Shard]>,
    /// Counts of removed slots, until the next drain.
    spilled: Mutex<HashMap<Box<[u8]>, [u64; 2]>>,
    hasher: std::collections::hash_map::RandomState,
    epoch: Instant,
}

impl Index {
    pub fn new() -> Index {
        Index {
            shards: (0..SHARDS)
                .map(|_| Shard(RwLock::new(HashTable::new())))
                .collect(),
            spilled: Mutex::new(HashMap::new()),
            // SipHash with a per-process key: codes come from clients, and a
            // keyed hash keeps them from aiming at one bucket.
            hasher: std::collections::hash_map::RandomState::new(),
            epoch: Instant::now(),
        }
    }

    /// The hash of `code`; computed once per request and passed to
    /// [`get`](Self::get) and [`insert`](Self::insert).
    #[inline]
    pub fn hash(&self, code: &str) -> u64 {
        self.hasher.hash_one(code.as_bytes())
    }

    /// Bits 32..38 pick the shard; hashbrown uses the low bits for the
    /// bucket and the top seven for its tag, so the three stay independent.
    #[inline]
    fn shard(&self, hash: u64) -> &RwLock<HashTable<Slot>> {
        &self.shards[(hash >> 32) as usize % SHARDS].0
    }

    #[inline]
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The answer for `code` if indexed and within its lifetime; a
    /// redirect served is counted as `click` (when counting is on).
    #[inline]
    pub fn get(
        &self,
        code: &str,
        hash: u64,
        permanent_cache_control: &HeaderValue,
        click: Option<Click>,
    ) -> Option<Answer> {
        self.with_live(code, hash, |slot| {
            if let (Some(click), Kind::Redirect { .. }) = (click, slot.kind) {
                slot.clicks[click as usize].fetch_add(1, Ordering::Relaxed);
            }
            slot.answer(permanent_cache_control)
        })
    }

    /// `f` of the slot `code` is indexed in, if within its lifetime, under
    /// the shard's read lock.
    #[inline]
    fn with_live<R>(&self, code: &str, hash: u64, f: impl FnOnce(&Slot) -> Option<R>) -> Option<R> {
        let now = self.now_ms();
        let shard = self.shard(hash).read().unwrap_or_else(|p| p.into_inner());
        let slot = shard.find(hash, |s| s.code() == code.as_bytes())?;
        if now >= slot.deadline_ms {
            return None;
        }
        f(slot)
    }

    /// The express lane's hit: `write(status, location, permanent)` with
    /// the redirect `code` is indexed as, under the shard's read lock, and
    /// the redirect counted as `click`. `None`, with nothing counted, for
    /// anything else: not indexed, past its lifetime, not a redirect (a
    /// 404 or 410 goes the long way), or a link past its `expires_at`.
    #[inline]
    pub fn with_redirect<R>(
        &self,
        code: &str,
        hash: u64,
        click: Option<Click>,
        write: impl FnOnce(u16, &[u8], bool) -> R,
    ) -> Option<R> {
        self.with_live(code, hash, |slot| {
            let Kind::Redirect { status, permanent } = slot.kind else {
                return None;
            };
            if slot.expires_at != i64::MAX && slot.expires_at <= edgelink_core::link::now_unix() {
                return None;
            }
            // A valid header value: checked when indexed.
            let location = slot.block.get(usize::from(slot.code_len)..)?;
            if let Some(click) = click {
                slot.clicks[click as usize].fetch_add(1, Ordering::Relaxed);
            }
            Some(write(status, location, permanent))
        })
    }

    /// Counts a redirect for `code` served from elsewhere than a hit (a
    /// miss just indexed, a stale answer): on its slot when there is one,
    /// else in the spill map.
    pub fn count(&self, code: &str, hash: u64, click: Click) {
        {
            let shard = self.shard(hash).read().unwrap_or_else(|p| p.into_inner());
            if let Some(slot) = shard.find(hash, |s| s.code() == code.as_bytes()) {
                slot.clicks[click as usize].fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let mut counts = [0; 2];
        counts[click as usize] = 1;
        self.spill(code.as_bytes(), counts);
    }

    fn spill(&self, code: &[u8], counts: [u64; 2]) {
        if counts == [0, 0] {
            return;
        }
        let mut spilled = self.spilled.lock().unwrap_or_else(|p| p.into_inner());
        match spilled.get_mut(code) {
            Some(c) => {
                c[0] += counts[0];
                c[1] += counts[1];
            }
            None => {
                spilled.insert(code.into(), counts);
            }
        }
    }

    fn spill_slot(&self, slot: &Slot) {
        let [h, b] = slot.take_clicks();
        self.spill(slot.code(), [u64::from(h), u64::from(b)]);
    }

    /// Takes every count since the last drain: `f(code, human, bot)` once
    /// per code with clicks (a code may come twice: its slot and its spill).
    pub fn drain_clicks(&self, mut f: impl FnMut(&[u8], u64, u64)) {
        for shard in self.shards.iter() {
            let shard = shard.0.read().unwrap_or_else(|p| p.into_inner());
            for slot in shard.iter() {
                let [h, b] = slot.take_clicks();
                if h != 0 || b != 0 {
                    f(slot.code(), u64::from(h), u64::from(b));
                }
            }
        }
        let spilled = std::mem::take(&mut *self.spilled.lock().unwrap_or_else(|p| p.into_inner()));
        for (code, [h, b]) in spilled {
            f(&code, h, b);
        }
    }

    /// Indexes `answer` for `code` until `deadline`. `block` must start with
    /// the code and, for a redirect, hold the `Location` value right after
    /// it (what [`block`] builds and `Answer::Redirect::location` slices);
    /// a redirect whose value may not be sent as is is not indexed.
    pub fn insert(&self, code: &str, hash: u64, block: &Bytes, answer: &Answer, deadline: Instant) {
        let Ok(code_len) = u8::try_from(code.len()) else {
            return;
        };
        if !block.starts_with(code.as_bytes()) {
            debug_assert!(false, "a block must start with its code");
            return;
        }
        let kind = match answer {
            Answer::Redirect {
                status,
                cache_control,
                ..
            } => Kind::Redirect {
                status: status.as_u16(),
                permanent: cache_control != NO_STORE,
            },
            Answer::Gone => Kind::Gone,
            Answer::NotFound => Kind::NotFound,
            Answer::Broken => Kind::Broken,
        };
        // Checked once here, so that a hit copies the value as it is.
        if matches!(kind, Kind::Redirect { .. })
            && !block
                .get(code.len()..)
                .is_some_and(crate::domain::is_header_value)
        {
            return;
        }
        let expires_at = match answer {
            Answer::Redirect {
                expires_at: Some(e),
                ..
            } => *e,
            _ => i64::MAX,
        };
        let deadline_ms = u64::try_from(deadline.saturating_duration_since(self.epoch).as_millis())
            .unwrap_or(u64::MAX);
        let slot = Slot {
            block: block.clone(),
            expires_at,
            deadline_ms,
            kind,
            code_len,
            clicks: [AtomicU32::new(0), AtomicU32::new(0)],
        };
        let mut shard = self.shard(hash).write().unwrap_or_else(|p| p.into_inner());
        let hasher = |s: &Slot| self.hasher.hash_one(s.code());
        match shard.entry(hash, |s| s.code() == code.as_bytes(), hasher) {
            hashbrown::hash_table::Entry::Occupied(mut o) => {
                // The code's counts carry over to its new answer.
                let counts = o.get().take_clicks();
                for (to, n) in slot.clicks.iter().zip(counts) {
                    to.store(n, Ordering::Relaxed);
                }
                *o.get_mut() = slot;
            }
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(slot);
            }
        }
    }

    /// Empties the index.
    pub fn clear(&self) {
        for shard in self.shards.iter() {
            let mut shard = shard.0.write().unwrap_or_else(|p| p.into_inner());
            for slot in shard.iter() {
                self.spill_slot(slot);
            }
            shard.clear();
        }
    }

    /// Removes `code` whatever it holds (an invalidation).
    pub fn remove(&self, code: &str) {
        self.remove_where(code, |_| true);
    }

    /// Removes `code` if its slot still holds `block` (moka's eviction
    /// listener: a newer entry for the same code stays).
    pub fn remove_if_same(&self, code: &str, block: &Bytes) {
        self.remove_where(code, |slot| slot.block.as_ptr() == block.as_ptr());
    }

    fn remove_where(&self, code: &str, remove: impl FnOnce(&Slot) -> bool) {
        let hash = self.hash(code);
        let mut shard = self.shard(hash).write().unwrap_or_else(|p| p.into_inner());
        if let Ok(o) = shard.find_entry(hash, |s| s.code() == code.as_bytes()) {
            if remove(o.get()) {
                self.spill_slot(o.get());
                o.remove();
            }
        }
    }

    /// Drops slots past their deadline in `count` shards, starting at
    /// `from` (the edge sweeps a few shards a second, all in a minute).
    pub fn sweep(&self, from: usize, count: usize) {
        let now = self.now_ms();
        for i in 0..count.min(SHARDS) {
            let mut shard = self.shards[(from + i) % SHARDS]
                .0
                .write()
                .unwrap_or_else(|p| p.into_inner());
            shard.retain(|slot| {
                let keep = slot.deadline_ms > now;
                if !keep {
                    self.spill_slot(slot);
                }
                keep
            });
        }
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.0.read().unwrap_or_else(|p| p.into_inner()).len())
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

thread_local! {
    static HITS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
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
mod tests;
