//! The pool in the embedded SQLite file, beside the links.
//!
//! SQLite has one writer at a time and this process holds the file's only
//! writer connection (edgelink-core's `SqliteStore`), so a lease inside a
//! write transaction is race-free without row locks, and refills are
//! serialised by an in-process lock.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use edgelink_core::store::sqlite::rusqlite::{params, OptionalExtension, TransactionBehavior};
use edgelink_core::store::sqlite::SqliteStore;
use edgelink_core::StoreError;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::Mutex;

use crate::keys::KeySpace;
use crate::store::{
    new_secret, space_from, spell_range, PoolCounts, PoolStore, RefillRecord, RefillSession,
};

const NAME: &str = "sqlite";

/// Budget of one generation batch.
const BATCH_TIMEOUT: Duration = Duration::from_secs(60);

fn sql_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::unavailable(NAME, e)
}

/// SQLite-backed [`PoolStore`], sharing the link store's connections.
#[derive(Clone)]
pub struct SqlitePool {
    store: SqliteStore,
    refilling: Arc<Mutex<()>>,
}

impl SqlitePool {
    /// The pool in `store`'s file (its migrations created the tables).
    pub fn new(store: SqliteStore) -> SqlitePool {
        SqlitePool {
            store,
            refilling: Arc::new(Mutex::new(())),
        }
    }
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

#[async_trait]
impl PoolStore for SqlitePool {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn keyspace(&self, length: u8) -> Result<KeySpace, StoreError> {
        let secret = new_secret();
        let stored = self
            .store
            .with_writer(self.store.timeout(), move |conn| {
                conn.execute(
                    "INSERT INTO keypool_spaces (key_length, secret) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                    params![length, secret.as_slice()],
                )
                .map_err(sql_err)?;
                conn.query_row(
                    "SELECT secret FROM keypool_spaces WHERE key_length = ?1",
                    [length],
                    |r| r.get::<_, Vec<u8>>(0),
                )
                .map_err(sql_err)
            })
            .await?;
        space_from(NAME, length, &stored)
    }

    async fn free(&self) -> Result<u64, StoreError> {
        self.store
            .with_reader(|conn| {
                conn.query_row("SELECT count(*) FROM keypool_free", [], |r| {
                    r.get::<_, i64>(0)
                })
                .map(to_u64)
                .map_err(sql_err)
            })
            .await
    }

    async fn begin_refill(&self) -> Result<Option<Box<dyn RefillSession>>, StoreError> {
        Ok(self.refilling.clone().try_lock_owned().ok().map(|guard| {
            Box::new(SqliteRefill {
                store: self.store.clone(),
                _guard: guard,
            }) as Box<dyn RefillSession>
        }))
    }

    async fn lease(&self, n: u32, used: i64) -> Result<Vec<String>, StoreError> {
        self.store
            .with_writer(self.store.timeout(), move |conn| {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(sql_err)?;
                let keys = {
                    let mut stmt = tx
                        .prepare(
                            "DELETE FROM keypool_free WHERE rowid IN (SELECT rowid FROM keypool_free ORDER BY rowid LIMIT ?1) RETURNING key",
                        )
                        .map_err(sql_err)?;
                    let rows = stmt.query_map([n], |r| r.get::<_, String>(0)).map_err(sql_err)?;
                    rows.collect::<Result<Vec<String>, _>>().map_err(sql_err)?
                };
                tx.execute(
                    "UPDATE keypool_stats SET leased = leased + ?1, used = used + ?2",
                    params![keys.len() as i64, used],
                )
                .map_err(sql_err)?;
                tx.commit().map_err(sql_err)?;
                Ok(keys)
            })
            .await
    }

    async fn counts(&self) -> Result<PoolCounts, StoreError> {
        self.store
            .with_reader(|conn| {
                let row = conn
                    .query_row(
                        "SELECT (SELECT count(*) FROM keypool_free),
                                (SELECT coalesce(sum(next_seq), 0) FROM keypool_spaces),
                                leased, used, last_refill_at, last_refill_keys, last_refill_ms
                         FROM keypool_stats",
                        [],
                        |r| {
                            Ok((
                                r.get::<_, i64>(0)?,
                                r.get::<_, i64>(1)?,
                                r.get::<_, i64>(2)?,
                                r.get::<_, i64>(3)?,
                                r.get::<_, Option<i64>>(4)?,
                                r.get::<_, Option<i64>>(5)?,
                                r.get::<_, Option<i64>>(6)?,
                            ))
                        },
                    )
                    .map_err(sql_err)?;
                let last_refill = match row.4 {
                    Some(at) => Some(RefillRecord {
                        at: OffsetDateTime::from_unix_timestamp(at)
                            .map_err(sql_err)?
                            .format(&Rfc3339)
                            .map_err(sql_err)?,
                        keys: to_u64(row.5.unwrap_or(0)),
                        duration_ms: to_u64(row.6.unwrap_or(0)),
                    }),
                    None => None,
                };
                Ok(PoolCounts {
                    free: to_u64(row.0),
                    generated: to_u64(row.1),
                    leased: to_u64(row.2),
                    used: to_u64(row.3),
                    last_refill,
                })
            })
            .await
    }
}

struct SqliteRefill {
    store: SqliteStore,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

#[async_trait]
impl RefillSession for SqliteRefill {
    async fn batch(&mut self, space: &KeySpace, count: u64) -> Result<u64, StoreError> {
        let space = space.clone();
        let length = space.length();
        let count_i = i64::try_from(count).map_err(sql_err)?;
        let size = i64::try_from(space.size()).unwrap_or(i64::MAX);
        self.store
            .with_writer(BATCH_TIMEOUT, move |conn| {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(sql_err)?;
                let start: Option<i64> = tx
                    .query_row(
                        "UPDATE keypool_spaces SET next_seq = next_seq + ?2
                         WHERE key_length = ?1 AND next_seq + ?2 <= ?3
                         RETURNING next_seq - ?2",
                        params![length, count_i, size],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(sql_err)?;
                let Some(start) = start else {
                    return Err(sql_err(format!(
                        "the {length}-character keyspace is exhausted; raise keypool.key_length"
                    )));
                };
                let keys = spell_range(&space, to_u64(start), count);
                {
                    let mut insert = tx
                        .prepare_cached("INSERT INTO keypool_free (key) VALUES (?1)")
                        .map_err(sql_err)?;
                    for key in &keys {
                        insert.execute([key]).map_err(sql_err)?;
                    }
                }
                tx.commit().map_err(sql_err)?;
                Ok(keys.len() as u64)
            })
            .await
    }

    async fn record(&mut self, keys: u64, duration_ms: u64) -> Result<(), StoreError> {
        let keys = i64::try_from(keys).unwrap_or(i64::MAX);
        let ms = i64::try_from(duration_ms).unwrap_or(i64::MAX);
        self.store
            .with_writer(self.store.timeout(), move |conn| {
                conn.execute(
                    "UPDATE keypool_stats SET last_refill_at = unixepoch(), last_refill_keys = ?1, last_refill_ms = ?2",
                    params![keys, ms],
                )
                .map(|_| ())
                .map_err(sql_err)
            })
            .await
    }
}
