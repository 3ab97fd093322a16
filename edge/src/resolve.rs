//! Redirect resolution through the tiers: the in-process cache (tier 0),
//! then the shared cache (tier 1, Redis), then the source of truth (tier 2,
//! PostgreSQL or SQLite).
//!
//! Tier 0 holds the answer itself, pre-built ([`Answer`]): a hit copies two
//! `HeaderValue`s (reference counts, no allocation). moka owns tier 0
//! (capacity, eviction, TTL, single-flight); hits are read from its
//! [`Index`](crate::index), which moka's eviction listener keeps in step,
//! because a moka read costs a trip to memory per policy update.
//! Misses for one code coalesce into a single backend lookup (moka's
//! `try_get_with`); unknown codes are cached for a short negative TTL; a
//! backend failure is not cached, so the next request tries again.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use bytes::Bytes;

use edgelink_core::config::{CacheConfig, RedirectConfig};
use edgelink_core::link::now_unix;
use edgelink_core::{Link, LinkCache, LinkState, LinkStore, StoreError, Stores};
use http::{HeaderValue, StatusCode};
use moka::future::Cache;
use moka::Expiry;

use crate::index::{self, Index};
use crate::metrics::{EdgeMetrics, Tier, BACKEND_CACHE, BACKEND_STORE};
use crate::respond::NO_STORE;

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

/// A tier-0 value: the answer and the tier it was loaded from.
#[derive(Debug)]
pub struct Entry {
    pub answer: Answer,
    pub source: Tier,
    /// The code, then the `Location` value of a redirect, in one block
    /// ([`index::block`]); `location` is a slice of it, and the index
    /// serves hits from it.
    pub block: Bytes,
}

/// Per-entry lifetimes: negative answers short, links no longer than they live.
#[derive(Clone, Copy)]
struct EntryExpiry {
    ttl: Duration,
    negative_ttl: Duration,
}

impl EntryExpiry {
    fn lifetime(&self, entry: &Entry) -> Duration {
        match entry.answer {
            Answer::NotFound => self.negative_ttl,
            Answer::Redirect {
                expires_at: Some(exp),
                ..
            } => {
                let left = u64::try_from(exp - now_unix()).unwrap_or(0);
                self.ttl.min(Duration::from_secs(left.max(1)))
            }
            _ => self.ttl,
        }
    }
}

impl Expiry<String, Arc<Entry>> for EntryExpiry {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Arc<Entry>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(self.lifetime(value))
    }
}

pub struct Resolver {
    index: Arc<Index>,
    expiry: EntryExpiry,
    cache: Cache<String, Arc<Entry>>,
    tier1: Option<Arc<dyn LinkCache>>,
    tier2: Arc<dyn LinkStore>,
    /// `Cache-Control` of permanent redirects (`redirect.permanent_max_age_secs`,
    /// reloadable).
    permanent_cache_control: ArcSwap<HeaderValue>,
    metrics: Arc<EdgeMetrics>,
}

impl Resolver {
    pub fn new(
        stores: &Stores,
        cache: &CacheConfig,
        redirect: &RedirectConfig,
        metrics: Arc<EdgeMetrics>,
    ) -> Resolver {
        let expiry = EntryExpiry {
            ttl: Duration::from_secs(cache.ttl_secs),
            negative_ttl: Duration::from_secs(cache.negative_ttl_secs),
        };
        let index = Arc::new(Index::new());
        let evicted = index.clone();
        Resolver {
            index,
            expiry,
            cache: Cache::builder()
                .max_capacity(cache.max_entries)
                .expire_after(expiry)
                .eviction_listener(move |code: Arc<String>, entry: Arc<Entry>, _cause| {
                    evicted.remove_if_same(&code, &entry.block)
                })
                .build(),
            tier1: stores.cache.clone(),
            tier2: stores.source.clone(),
            permanent_cache_control: ArcSwap::from_pointee(permanent_cache_control(redirect)),
            metrics,
        }
    }

    /// Applies reloaded redirect settings; tier 0 is emptied when they
    /// change, since its answers carry the old headers.
    pub async fn set_redirect(&self, redirect: &RedirectConfig) {
        let new = permanent_cache_control(redirect);
        if **self.permanent_cache_control.load() != new {
            self.permanent_cache_control.store(Arc::new(new));
            self.invalidate_all().await;
        }
    }

    /// Resolves a valid code: the answer and the tier it came from. `Err`
    /// means the backends could not answer and nothing was cached.
    pub async fn resolve(&self, code: &str) -> Result<(Answer, Tier), Arc<StoreError>> {
        match self
            .resolve_gated(code, || Ok::<(), Infallible>(()))
            .await?
        {
            Ok(found) => Ok(found),
            Err(never) => match never {},
        }
    }

    /// [`Resolver::resolve`], asking `gate` before going past tier 0: an
    /// `Err` from it is returned instead of asking the backends (a client
    /// out of 404 tokens).
    pub async fn resolve_gated<W>(
        &self,
        code: &str,
        gate: impl FnOnce() -> Result<(), W>,
    ) -> Result<Result<(Answer, Tier), W>, Arc<StoreError>> {
        let hash = self.index.hash(code);
        let hit = self
            .index
            .get(code, hash, &self.permanent_cache_control.load());
        if let Some(answer) = hit {
            self.metrics.cache_hits.increment(1);
            if index::sampled() {
                // Keeps moka's eviction policy informed of what is hot.
                let _ = self.cache.get(code).await;
            }
            return Ok(Ok((answer, Tier::Memory)));
        }
        if let Some(entry) = self.cache.get(code).await {
            self.metrics.cache_hits.increment(1);
            self.index_entry(code, hash, &entry);
            return Ok(Ok((entry.answer.clone(), Tier::Memory)));
        }
        if let Err(refused) = gate() {
            return Ok(Err(refused));
        }
        self.metrics.cache_misses.increment(1);
        let entry = self
            .cache
            .try_get_with_by_ref(code, self.load(code))
            .await?;
        self.index_entry(code, hash, &entry);
        Ok(Ok((entry.answer.clone(), entry.source)))
    }

    fn index_entry(&self, code: &str, hash: u64, entry: &Entry) {
        let deadline = Instant::now() + self.expiry.lifetime(entry);
        self.index
            .insert(code, hash, &entry.block, &entry.answer, deadline);
    }

    /// Drops `code` from tier 0 (the link changed or was deleted); the next
    /// request for it asks the backends. A lookup already in flight when
    /// this runs may still put the old answer back, for at most the TTL.
    pub async fn invalidate(&self, code: &str) {
        self.index.remove(code);
        self.cache.invalidate(code).await;
    }

    /// Empties tier 0 (invalidations may have been missed).
    pub async fn invalidate_all(&self) {
        self.index.clear();
        self.cache.invalidate_all();
        self.cache.run_pending_tasks().await;
    }

    /// Entries in the read index (for tests and diagnostics).
    pub fn indexed(&self) -> usize {
        self.index.len()
    }

    /// Sweeps expired slots out of a few index shards; the edge calls it
    /// once a second with a counter, so every shard is swept each minute.
    pub fn sweep_index(&self, tick: u64) {
        const PER_TICK: usize = 2;
        let from = (tick as usize).wrapping_mul(PER_TICK) % Index::SHARDS;
        self.index.sweep(from, PER_TICK);
    }

    /// Entries in tier 0 (after pending evictions are applied).
    pub async fn cache_entries(&self) -> u64 {
        self.cache.run_pending_tasks().await;
        self.cache.entry_count()
    }

    /// Pings the backends: (tier 1 if configured, tier 2).
    pub async fn ping(&self) -> (Option<Result<(), StoreError>>, Result<(), StoreError>) {
        let t1 = async {
            match &self.tier1 {
                Some(c) => Some(c.ping().await),
                None => None,
            }
        };
        tokio::join!(t1, self.tier2.ping())
    }

    pub fn tier_names(&self) -> (Option<&'static str>, &'static str) {
        (self.tier1.as_ref().map(|c| c.name()), self.tier2.name())
    }

    /// The single-flight loader: tier 1, then tier 2 (writing back to tier 1).
    async fn load(&self, code: &str) -> Result<Arc<Entry>, StoreError> {
        let mut tier1_healthy = false;
        if let Some(tier1) = &self.tier1 {
            let started = Instant::now();
            let found = tier1.get(code).await;
            self.metrics.lookup(BACKEND_CACHE, started.elapsed());
            match found {
                Ok(Some(link)) => return Ok(self.entry(&link, Tier::Cache)),
                Ok(None) => tier1_healthy = true,
                Err(e) => {
                    // A corrupt value is overwritten below; an unreachable
                    // tier 1 is skipped, write-back included.
                    tier1_healthy = matches!(e, StoreError::Corrupt { .. });
                    self.metrics.backend_error(BACKEND_CACHE, e.kind());
                    tracing::debug!(error = %e, "tier 1 lookup failed; asking tier 2");
                }
            }
        }
        let started = Instant::now();
        let found = self.tier2.get(code).await;
        self.metrics.lookup(BACKEND_STORE, started.elapsed());
        match found {
            Ok(Some(link)) => {
                let entry = self.entry(&link, Tier::Store);
                if let (Some(tier1), true) = (&self.tier1, tier1_healthy) {
                    let tier1 = tier1.clone();
                    let metrics = self.metrics.clone();
                    tokio::spawn(async move {
                        if let Err(e) = tier1.put(&link).await {
                            metrics.backend_error(BACKEND_CACHE, e.kind());
                            tracing::debug!(error = %e, "tier 1 write-back failed");
                        }
                    });
                }
                Ok(entry)
            }
            Ok(None) => Ok(Arc::new(Entry {
                answer: Answer::NotFound,
                source: Tier::Store,
                block: index::block(code.as_bytes(), b""),
            })),
            Err(e) => {
                self.metrics.backend_error(BACKEND_STORE, e.kind());
                Err(e)
            }
        }
    }

    fn entry(&self, link: &Link, source: Tier) -> Arc<Entry> {
        let code = link.code.as_bytes();
        let live = matches!(link.state_at(now_unix()), LinkState::Live);
        let block = index::block(code, if live { link.target.as_bytes() } else { b"" });
        let answer = if !live {
            Answer::Gone
        } else {
            match HeaderValue::from_maybe_shared(block.slice(code.len()..)) {
                Ok(location) => Answer::Redirect {
                    status: StatusCode::from_u16(link.redirect.code()).unwrap_or(StatusCode::FOUND),
                    location,
                    // An expiring link must turn 410 on time, so only
                    // permanent links without an expiry may be cached downstream.
                    cache_control: if link.redirect.is_permanent() && link.expires_at.is_none() {
                        (**self.permanent_cache_control.load()).clone()
                    } else {
                        NO_STORE
                    },
                    expires_at: link.expires_at.map(|e| e.unix_timestamp()),
                },
                Err(_) => {
                    tracing::error!(code = %link.code, "stored target is not a valid Location header");
                    Answer::Broken
                }
            }
        };
        Arc::new(Entry {
            answer,
            source,
            block,
        })
    }
}

fn permanent_cache_control(redirect: &RedirectConfig) -> HeaderValue {
    let value = format!("public, max-age={}", redirect.permanent_max_age_secs);
    HeaderValue::from_str(&value).unwrap_or(NO_STORE)
}
