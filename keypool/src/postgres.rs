//! The pool in PostgreSQL.
//!
//! Leasing is one statement: `DELETE ... WHERE key IN (SELECT key ... FOR
//! UPDATE SKIP LOCKED LIMIT n) RETURNING key`, so concurrent leasers each
//! lock and take different rows and never wait on one another. Refilling is
//! serialised across processes by a session advisory lock held on a
//! dedicated connection (closed, and so released, when the session ends,
//! whatever way it ends); each batch reserves its sequence range and inserts
//! its keys in one transaction, so a failed batch leaves nothing behind.

use std::time::Duration;

use async_trait::async_trait;
use bb8_postgres::PostgresConnectionManager;
use edgelink_core::config::PostgresConfig;
use edgelink_core::error::with_timeout;
use edgelink_core::StoreError;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio_postgres::NoTls;

use crate::keys::KeySpace;
use crate::store::{
    new_secret, space_from, spell_range, PoolCounts, PoolStore, RefillRecord, RefillSession,
};

const NAME: &str = "postgres";

/// Advisory-lock key of the refiller ("keypool!" read as an i64).
const REFILL_LOCK: i64 = 0x6b65_7970_6f6f_6c21;

/// Budget of one generation batch (100,000+ keys in one transaction).
const BATCH_TIMEOUT: Duration = Duration::from_secs(60);

const LEASE: &str = "WITH taken AS (
        DELETE FROM keypool_free
        WHERE key IN (SELECT key FROM keypool_free LIMIT $1 FOR UPDATE SKIP LOCKED)
        RETURNING key
    ), counted AS (
        UPDATE keypool_stats SET leased = leased + (SELECT count(*) FROM taken), used = used + $2
    )
    SELECT key FROM taken";

fn pg_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::unavailable(NAME, e)
}

/// PostgreSQL-backed [`PoolStore`] with a pool of its own.
#[derive(Clone)]
pub struct PgPool {
    pool: bb8::Pool<PostgresConnectionManager<NoTls>>,
    timeout: Duration,
}

impl PgPool {
    /// Builds the connection pool; connections open lazily. The schema comes
    /// from edgelink-core's migrations (`edgelink migrate`, or any role's
    /// start-up).
    pub fn connect(config: &PostgresConfig) -> Result<PgPool, StoreError> {
        Ok(PgPool {
            pool: edgelink_core::store::postgres::plain_pool(config)?,
            timeout: Duration::from_millis(config.timeout_ms),
        })
    }
}

#[async_trait]
impl PoolStore for PgPool {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn keyspace(&self, length: u8) -> Result<KeySpace, StoreError> {
        with_timeout(NAME, self.timeout, async {
            let conn = self.pool.get().await.map_err(pg_err)?;
            let secret = new_secret();
            conn.execute(
                "INSERT INTO keypool_spaces (key_length, secret) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&i16::from(length), &secret.as_slice()],
            )
            .await
            .map_err(pg_err)?;
            let row = conn
                .query_one(
                    "SELECT secret FROM keypool_spaces WHERE key_length = $1",
                    &[&i16::from(length)],
                )
                .await
                .map_err(pg_err)?;
            let stored: Vec<u8> = row.try_get(0).map_err(pg_err)?;
            space_from(NAME, length, &stored)
        })
        .await
    }

    async fn free(&self) -> Result<u64, StoreError> {
        with_timeout(NAME, self.timeout, async {
            let conn = self.pool.get().await.map_err(pg_err)?;
            let row = conn
                .query_one("SELECT count(*) FROM keypool_free", &[])
                .await
                .map_err(pg_err)?;
            Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
        })
        .await
    }

    async fn begin_refill(&self) -> Result<Option<Box<dyn RefillSession>>, StoreError> {
        with_timeout(NAME, self.timeout, async {
            let client = self.pool.dedicated_connection().await.map_err(pg_err)?;
            let locked: bool = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&REFILL_LOCK])
                .await
                .map_err(pg_err)?
                .get(0);
            Ok(locked.then(|| Box::new(PgRefill { client }) as Box<dyn RefillSession>))
        })
        .await
    }

    async fn lease(&self, n: u32, used: i64) -> Result<Vec<String>, StoreError> {
        with_timeout(NAME, self.timeout, async {
            let conn = self.pool.get().await.map_err(pg_err)?;
            let rows = conn
                .query(LEASE, &[&i64::from(n), &used])
                .await
                .map_err(pg_err)?;
            rows.iter()
                .map(|r| r.try_get::<_, String>(0).map_err(pg_err))
                .collect()
        })
        .await
    }

    async fn counts(&self) -> Result<PoolCounts, StoreError> {
        with_timeout(NAME, self.timeout, async {
            let conn = self.pool.get().await.map_err(pg_err)?;
            let row = conn
                .query_one(
                    "SELECT (SELECT count(*) FROM keypool_free),
                            (SELECT coalesce(sum(next_seq), 0)::bigint FROM keypool_spaces),
                            leased, used, last_refill_at, last_refill_keys, last_refill_ms
                     FROM keypool_stats",
                    &[],
                )
                .await
                .map_err(pg_err)?;
            let n = |i: usize| -> Result<u64, StoreError> {
                Ok(u64::try_from(row.try_get::<_, i64>(i).map_err(pg_err)?).unwrap_or(0))
            };
            let at: Option<OffsetDateTime> = row.try_get(4).map_err(pg_err)?;
            let last_refill = match at {
                Some(at) => Some(RefillRecord {
                    at: at.format(&Rfc3339).map_err(pg_err)?,
                    keys: u64::try_from(
                        row.try_get::<_, Option<i64>>(5)
                            .map_err(pg_err)?
                            .unwrap_or(0),
                    )
                    .unwrap_or(0),
                    duration_ms: u64::try_from(
                        row.try_get::<_, Option<i64>>(6)
                            .map_err(pg_err)?
                            .unwrap_or(0),
                    )
                    .unwrap_or(0),
                }),
                None => None,
            };
            Ok(PoolCounts {
                free: n(0)?,
                generated: n(1)?,
                leased: n(2)?,
                used: n(3)?,
                last_refill,
            })
        })
        .await
    }
}

/// A refill session: the advisory lock lives as long as this connection.
struct PgRefill {
    client: tokio_postgres::Client,
}

#[async_trait]
impl RefillSession for PgRefill {
    async fn batch(&mut self, space: &KeySpace, count: u64) -> Result<u64, StoreError> {
        let length = i16::from(space.length());
        let count_i = i64::try_from(count).map_err(pg_err)?;
        let size = i64::try_from(space.size()).unwrap_or(i64::MAX);
        with_timeout(NAME, BATCH_TIMEOUT, async {
            let tx = self.client.transaction().await.map_err(pg_err)?;
            let start: Option<i64> = tx
                .query_opt(
                    "UPDATE keypool_spaces SET next_seq = next_seq + $2
                     WHERE key_length = $1 AND next_seq + $2 <= $3
                     RETURNING next_seq - $2",
                    &[&length, &count_i, &size],
                )
                .await
                .map_err(pg_err)?
                .map(|r| r.get(0));
            let Some(start) = start else {
                return Err(pg_err(format!(
                    "the {}-character keyspace is exhausted; raise keypool.key_length",
                    space.length()
                )));
            };
            let space = space.clone();
            let keys = tokio::task::spawn_blocking(move || {
                spell_range(&space, u64::try_from(start).unwrap_or(0), count)
            })
            .await
            .map_err(pg_err)?;
            let added = tx
                .execute(
                    "INSERT INTO keypool_free (key) SELECT unnest($1::text[])",
                    &[&keys],
                )
                .await
                .map_err(pg_err)?;
            tx.commit().await.map_err(pg_err)?;
            Ok(added)
        })
        .await
    }

    async fn record(&mut self, keys: u64, duration_ms: u64) -> Result<(), StoreError> {
        let keys = i64::try_from(keys).unwrap_or(i64::MAX);
        let ms = i64::try_from(duration_ms).unwrap_or(i64::MAX);
        with_timeout(NAME, Duration::from_secs(5), async {
            self.client
                .execute(
                    "UPDATE keypool_stats SET last_refill_at = now(), last_refill_keys = $1, last_refill_ms = $2",
                    &[&keys, &ms],
                )
                .await
                .map(|_| ())
                .map_err(pg_err)
        })
        .await
    }
}
