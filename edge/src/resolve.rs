//! Redirect resolution through the tiers: the in-process cache (tier 0),
//! then the shared cache (tier 1, Redis), then the source of truth (tier 2,
//! PostgreSQL or SQLite).
//!
//! Tier 0 holds the answer itself, pre-built ([`Answer`]), so a hit copies
//! two `HeaderValue`s; hits are read from its [`Index`](crate::index).
//! Misses for one code coalesce into one backend lookup; unknown codes are
//! cached for a short negative TTL; a failure is not cached. Each backend
//! sits behind a circuit breaker; tier 1 failing sends lookups to tier 2
//! and skips the write-back (at most [`MAX_WRITEBACKS`] in flight); tier 2
//! failing serves a known link stale for `cache.stale_if_error_secs`, and
//! an unknown code 503.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use bytes::Bytes;

use edgelink_core::breaker::{Breaker, Guarded, State};
use edgelink_core::config::{Config, RedirectConfig};
use edgelink_core::link::now_unix;
use edgelink_core::{Link, LinkCache, LinkState, LinkStore, StoreError, Stores};
use futures_util::FutureExt;
use http::{HeaderValue, StatusCode};
use moka::future::Cache;
use moka::Expiry;

use crate::domain::{Answer, Click, Tier, NO_STORE};
use crate::index::{self, Index};
use crate::metrics::{EdgeMetrics, BACKEND_CACHE, BACKEND_STORE};

/// Tier-1 write-backs in flight at most; more are dropped (and counted).
pub const MAX_WRITEBACKS: usize = 256;

/// A tier-0 value: the answer and the tier it was loaded from.
#[derive(Debug)]
pub struct Entry {
    pub answer: Answer,
    pub source: Tier,
    /// The code, then the `Location` value of a redirect, in one block
    /// ([`index::block`]); `location` is a slice of it, and the index
    /// serves hits from it.
    pub block: Bytes,
    /// When it was loaded: it is fresh for [`EntryExpiry::lifetime`] from
    /// then, and stale (served only if the backends fail) after.
    pub loaded: Instant,
}

/// Per-entry lifetimes: negative answers short, links no longer than they live.
#[derive(Clone, Copy)]
struct EntryExpiry {
    ttl: Duration,
    negative_ttl: Duration,
    /// Kept this much longer than fresh, for stale-if-error.
    stale: Duration,
}

impl EntryExpiry {
    /// How long moka keeps `entry`: fresh, then (a link or a 410) stale.
    fn kept(&self, entry: &Entry) -> Duration {
        match entry.answer {
            Answer::Redirect { .. } | Answer::Gone => self.lifetime(entry) + self.stale,
            Answer::NotFound | Answer::Broken => self.lifetime(entry),
        }
    }

    /// When `entry` stops being fresh.
    fn fresh_until(&self, entry: &Entry) -> Instant {
        entry.loaded + self.lifetime(entry)
    }

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
        Some(self.kept(value))
    }
}

pub struct Resolver {
    index: Arc<Index>,
    expiry: EntryExpiry,
    cache: Cache<String, Arc<Entry>>,
    tier1: Option<Arc<dyn LinkCache>>,
    tier2: Arc<dyn LinkStore>,
    /// The breakers in front of tier 1 (if any) and tier 2.
    breakers: Vec<Arc<Breaker>>,
    /// Single-flight for refreshes of stale entries (moka's own
    /// single-flight only runs for absent keys); emptied after each.
    refreshing: Cache<String, Arc<Entry>>,
    writebacks: Arc<tokio::sync::Semaphore>,
    /// `Cache-Control` of permanent redirects (`redirect.permanent_max_age_secs`,
    /// reloadable).
    permanent_cache_control: ArcSwap<HeaderValue>,
    metrics: Arc<EdgeMetrics>,
}

impl Resolver {
    /// A resolver over `stores`, each behind a circuit breaker
    /// (`config.breaker`), with tier 0 sized by `config.cache`.
    pub fn new(stores: &Stores, config: &Config, metrics: Arc<EdgeMetrics>) -> Resolver {
        let cache = &config.cache;
        let expiry = EntryExpiry {
            ttl: Duration::from_secs(cache.ttl_secs),
            negative_ttl: Duration::from_secs(cache.negative_ttl_secs),
            stale: Duration::from_secs(cache.stale_if_error_secs),
        };
        let mut breakers = Vec::new();
        let tier1 = stores.cache.clone().map(|c| {
            let b = Arc::new(Breaker::new(
                c.name(),
                &config.breaker,
                metrics.breakers[BACKEND_CACHE].clone(),
            ));
            breakers.push(b.clone());
            Arc::new(Guarded::new(c, b)) as Arc<dyn LinkCache>
        });
        let b = Arc::new(Breaker::new(
            stores.source.name(),
            &config.breaker,
            metrics.breakers[BACKEND_STORE].clone(),
        ));
        breakers.push(b.clone());
        let tier2 = Arc::new(Guarded::new(stores.source.clone(), b)) as Arc<dyn LinkStore>;
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
            tier1,
            tier2,
            breakers,
            refreshing: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(1))
                .build(),
            writebacks: Arc::new(tokio::sync::Semaphore::new(MAX_WRITEBACKS)),
            permanent_cache_control: ArcSwap::from_pointee(permanent_cache_control(
                &config.redirect,
            )),
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
            .resolve_gated(code, None, || Ok::<(), Infallible>(()))
            .await?
        {
            Ok(found) => Ok(found),
            Err(never) => match never {},
        }
    }

    /// [`Resolver::resolve`], asking `gate` before going past tier 0: an
    /// `Err` from it is returned instead of asking the backends (a client
    /// out of 404 tokens). A redirect answered is counted as `click`
    /// (`None`: counting is off).
    pub async fn resolve_gated<W>(
        &self,
        code: &str,
        click: Option<Click>,
        gate: impl FnOnce() -> Result<(), W>,
    ) -> Result<Result<(Answer, Tier), W>, Arc<StoreError>> {
        let hash = self.index.hash(code);
        if let Some(answer) = self.hit_hashed(code, hash, click) {
            return Ok(Ok((answer, Tier::Memory)));
        }
        if let Some(entry) = self.cache.get(code).await {
            if Instant::now() < self.expiry.fresh_until(&entry) {
                self.metrics.cache_hits.increment(1);
                self.index_entry(code, hash, &entry);
                self.count(code, hash, &entry.answer, click);
                return Ok(Ok((entry.answer.clone(), Tier::Memory)));
            }
            // Past its TTL, kept for stale-if-error: a link or a 410, so
            // no 404 token is at stake.
            self.metrics.cache_misses.increment(1);
            let (answer, tier) = self.refresh(code, hash, entry).await;
            self.count(code, hash, &answer, click);
            return Ok(Ok((answer, tier)));
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
        self.count(code, hash, &entry.answer, click);
        Ok(Ok((entry.answer.clone(), entry.source)))
    }

    /// The answer for `code` if the tier-0 read index has it, without
    /// waiting on anything: the redirect hot path. A redirect answered is
    /// counted as `click`.
    #[inline]
    pub fn hit(&self, code: &str, click: Option<Click>) -> Option<Answer> {
        self.hit_hashed(code, self.index.hash(code), click)
    }

    #[inline]
    fn hit_hashed(&self, code: &str, hash: u64, click: Option<Click>) -> Option<Answer> {
        let answer = self
            .index
            .get(code, hash, &self.permanent_cache_control.load(), click)?;
        self.metrics.cache_hits.increment(1);
        if index::sampled() {
            // Keeps moka's eviction policy informed of what is hot. A read
            // that would have to wait (moka's upkeep is running) is skipped:
            // it is a hint, and the hit must not wait for it.
            let _ = self.cache.get(code).now_or_never();
        }
        Some(answer)
    }

    /// The express lane's hit ([`Index::with_redirect`]): `write(status,
    /// location, cache_control)` with a live redirect from the read index,
    /// counted like [`Resolver::hit`]; `None`, with nothing counted, for
    /// anything else.
    #[inline]
    pub fn with_redirect<R>(
        &self,
        code: &str,
        click: Option<Click>,
        write: impl FnOnce(u16, &[u8], &HeaderValue) -> R,
    ) -> Option<R> {
        let permanent_cache_control = self.permanent_cache_control.load();
        let written = self.index.with_redirect(
            code,
            self.index.hash(code),
            click,
            |status, location, permanent| {
                let cache_control = if permanent {
                    &**permanent_cache_control
                } else {
                    &NO_STORE
                };
                write(status, location, cache_control)
            },
        )?;
        self.metrics.cache_hits.increment(1);
        if index::sampled() {
            let _ = self.cache.get(code).now_or_never();
        }
        Some(written)
    }

    /// Counts a redirect answered other than by an index hit.
    fn count(&self, code: &str, hash: u64, answer: &Answer, click: Option<Click>) {
        if let (Some(click), Answer::Redirect { .. }) = (click, answer) {
            self.index.count(code, hash, click);
        }
    }

    /// The read index (whose slots hold the click counts).
    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    /// Reloads a stale entry (one load per code however many ask); if the
    /// backends fail, the stale answer is served.
    async fn refresh(&self, code: &str, hash: u64, stale: Arc<Entry>) -> (Answer, Tier) {
        let loaded = self
            .refreshing
            .try_get_with_by_ref(code, async {
                let fresh = self.load(code).await?;
                self.cache.insert(code.to_owned(), fresh.clone()).await;
                Ok::<_, StoreError>(fresh)
            })
            .await;
        self.refreshing.invalidate(code).await;
        match loaded {
            Ok(fresh) => {
                self.index_entry(code, hash, &fresh);
                (fresh.answer.clone(), fresh.source)
            }
            Err(e) => {
                self.metrics.stale_served.increment(1);
                tracing::debug!(error = %e, code, "backends failed; serving a stale answer");
                (stale.answer.clone(), Tier::Memory)
            }
        }
    }

    fn index_entry(&self, code: &str, hash: u64, entry: &Entry) {
        let deadline = self.expiry.fresh_until(entry);
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

    /// Each backend's breaker state (tier 1 first, when there is one).
    pub fn breaker_states(&self) -> Vec<(&'static str, State)> {
        self.breakers
            .iter()
            .map(|b| (b.name(), b.state()))
            .collect()
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
                    match self.writebacks.clone().try_acquire_owned() {
                        Ok(permit) => {
                            let tier1 = tier1.clone();
                            let metrics = self.metrics.clone();
                            tokio::spawn(async move {
                                if let Err(e) = tier1.put(&link).await {
                                    metrics.backend_error(BACKEND_CACHE, e.kind());
                                    tracing::debug!(error = %e, "tier 1 write-back failed");
                                }
                                drop(permit);
                            });
                        }
                        Err(_) => self.metrics.writebacks_skipped.increment(1),
                    }
                }
                Ok(entry)
            }
            Ok(None) => Ok(Arc::new(Entry {
                answer: Answer::NotFound,
                source: Tier::Store,
                block: index::block(code.as_bytes(), b""),
                loaded: Instant::now(),
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
            loaded: Instant::now(),
        })
    }
}

fn permanent_cache_control(redirect: &RedirectConfig) -> HeaderValue {
    let value = format!("public, max-age={}", redirect.permanent_max_age_secs);
    HeaderValue::from_str(&value).unwrap_or(NO_STORE)
}
