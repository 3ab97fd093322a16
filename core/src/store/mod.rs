//! Storage traits and their backends.
//!
//! The edge sees two seams: a [`LinkStore`] (the source of truth: SQLite
//! embedded, PostgreSQL distributed) and an optional [`LinkCache`] (Redis,
//! shared by every edge). Both are `Send + Sync` trait objects so roles and
//! tests compose them freely.

pub mod codec;
pub mod postgres;
pub mod redis;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::Config;
use crate::error::StoreError;
use crate::link::{Link, RedirectStatus};
use time::OffsetDateTime;

/// What an insert of many links did. The insert is all-or-nothing: on error
/// nothing was written.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct InsertReport {
    /// Links written.
    pub inserted: usize,
    /// Indexes (into the slice given) of links whose code was already taken,
    /// in the store or earlier in the same slice; those were not written and
    /// the stored ones are untouched.
    pub existing: Vec<usize>,
}

/// A change to a stored link; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkPatch {
    /// A normalised target ([`crate::link::normalize_target`]).
    pub target: Option<String>,
    pub redirect: Option<RedirectStatus>,
    /// `Some(None)` removes the expiry.
    pub expires_at: Option<Option<OffsetDateTime>>,
    pub disabled: Option<bool>,
}

/// Clicks to add to one link's count for one UTC day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClickDelta {
    pub code: String,
    pub day: time::Date,
    pub human: u64,
    pub bot: u64,
}

impl ClickDelta {
    /// The order of `link_clicks`' key, (code, day), in which the stores
    /// write a flush: PostgreSQL then locks rows in one order (edges
    /// flushing the same links cannot deadlock), and SQLite's upserts find
    /// the B-tree pages the last one left in the cache.
    pub fn key_cmp(&self, other: &ClickDelta) -> std::cmp::Ordering {
        (&self.code, self.day).cmp(&(&other.code, other.day))
    }
}

/// One link's clicks on one UTC day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DailyClicks {
    pub day: time::Date,
    pub human: u64,
    pub bot: u64,
}

/// Days one [`LinkStore::clicks`] call covers at most.
pub const MAX_STATS_DAYS: i64 = 3_660;

/// Most links one [`LinkStore::list`] call returns.
pub const MAX_LIST: u32 = 1_000;

/// The source of truth for links.
#[async_trait]
pub trait LinkStore: Send + Sync + 'static {
    /// Short fixed name for logs and metric labels (`sqlite`, `postgres`).
    fn name(&self) -> &'static str;

    /// Looks a link up by code. `Ok(None)` means the code is unknown.
    async fn get(&self, code: &str) -> Result<Option<Link>, StoreError>;

    /// Inserts links in one transaction; codes already present are skipped
    /// and reported, never overwritten.
    async fn insert_links(&self, links: &[Link]) -> Result<InsertReport, StoreError>;

    /// A cheap round trip, for readiness.
    async fn ping(&self) -> Result<(), StoreError>;

    /// A link that exists: like [`get`](Self::get), without deleted ones
    /// (which `get` returns disabled, so the edge answers 410).
    async fn find(&self, code: &str) -> Result<Option<Link>, StoreError>;

    /// Applies `patch` to an existing link and returns it as stored;
    /// `Ok(None)` when there is no such link (or it was deleted).
    async fn update(&self, code: &str, patch: &LinkPatch) -> Result<Option<Link>, StoreError>;

    /// Deletes a link, leaving a tombstone: disabled, and its code never
    /// taken again. `Ok(false)` when there was no such link.
    async fn delete(&self, code: &str) -> Result<bool, StoreError>;

    /// Existing links with codes after `after`, in code order, at most
    /// `limit` (capped at [`MAX_LIST`]).
    async fn list(&self, after: Option<&str>, limit: u32) -> Result<Vec<Link>, StoreError>;

    /// Adds a flush of click counts, all or nothing, if `seq` is above
    /// every seq applied for `edge` before: `Ok(false)` when it is not (a
    /// retry after a lost answer), and nothing is added again. An edge
    /// writes its flushes one at a time in increasing seq and retries the
    /// oldest until it is taken, so "above the highest" is "not applied";
    /// the store keeps one row per edge. `deltas` holds each (code, day)
    /// once.
    async fn add_clicks(
        &self,
        edge: &str,
        seq: u64,
        deltas: &[ClickDelta],
    ) -> Result<bool, StoreError>;

    /// `code`'s clicks per day from `from` to `to` (inclusive), days with
    /// none left out, in day order.
    async fn clicks(
        &self,
        code: &str,
        from: time::Date,
        to: time::Date,
    ) -> Result<Vec<DailyClicks>, StoreError>;
}

/// A shared cache tier in front of the source of truth.
#[async_trait]
pub trait LinkCache: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// `Ok(None)` is a cache miss, not proof that the code is unknown.
    async fn get(&self, code: &str) -> Result<Option<Link>, StoreError>;

    /// Stores a link with a TTL.
    async fn put(&self, link: &Link) -> Result<(), StoreError>;

    /// Drops `code` from the cache and tells every subscriber (the edges'
    /// tier 0) to drop it too.
    async fn forget(&self, code: &str) -> Result<(), StoreError>;

    async fn ping(&self) -> Result<(), StoreError>;
}

/// The pool policy every backend shares: connections open lazily (a role
/// starts, and serves from other tiers, while a backend is down), are not
/// tested on checkout (a round trip per request; broken ones are dropped by
/// the manager's `has_broken`), and opening one is bounded in time.
pub fn pool_builder<M: bb8::ManageConnection>(
    size: u32,
    connect_timeout_ms: u64,
) -> bb8::Builder<M> {
    bb8::Pool::builder()
        .max_size(size)
        .min_idle(Some(0))
        .test_on_check_out(false)
        .connection_timeout(std::time::Duration::from_millis(connect_timeout_ms))
}

/// The storage a role works with.
#[derive(Clone)]
pub struct Stores {
    pub source: Arc<dyn LinkStore>,
    pub cache: Option<Arc<dyn LinkCache>>,
    /// The SQLite store behind `source` in embedded mode, for the parts
    /// that share its one writer (the key pool).
    pub embedded: Option<sqlite::SqliteStore>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores")
            .field("source", &self.source.name())
            .field("cache", &self.cache.as_ref().map(|c| c.name()))
            .finish()
    }
}

impl Stores {
    /// The embedded default: a SQLite file, no shared cache. Applies migrations.
    pub async fn open_embedded(config: &Config) -> Result<Stores, StoreError> {
        let sqlite = sqlite::SqliteStore::open(&config.sqlite).await?;
        Ok(Stores {
            source: Arc::new(sqlite.clone()),
            cache: None,
            embedded: Some(sqlite),
        })
    }

    /// The distributed tiers: PostgreSQL, and Redis when configured. Applies
    /// PostgreSQL migrations.
    pub async fn open_distributed(config: &Config) -> Result<Stores, StoreError> {
        let pg = postgres::PgStore::connect(&config.postgres).await?;
        pg.migrate().await?;
        Stores::distributed(pg, config).await
    }

    /// PostgreSQL and Redis as [`Stores::open_distributed`] has them, without
    /// a round trip: pools connect on first use and migrations are left to
    /// `edgelink migrate`. What an edge starts on, so it comes up (and
    /// serves what it can) while PostgreSQL is down.
    pub async fn connect_distributed(config: &Config) -> Result<Stores, StoreError> {
        let pg = postgres::PgStore::connect(&config.postgres).await?;
        Stores::distributed(pg, config).await
    }

    async fn distributed(pg: postgres::PgStore, config: &Config) -> Result<Stores, StoreError> {
        let cache: Option<Arc<dyn LinkCache>> = match config.redis.url {
            Some(_) => Some(Arc::new(redis::RedisCache::connect(&config.redis).await?)),
            None => None,
        };
        Ok(Stores {
            source: Arc::new(pg),
            cache,
            embedded: None,
        })
    }
}
