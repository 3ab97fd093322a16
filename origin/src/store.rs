//! What the origin keeps besides links: API keys (hashes only) and the
//! Idempotency-Key bindings. PostgreSQL distributed, SQLite embedded; the
//! same tables as the links, so a binding and its link share one database.

use std::time::Duration;

use async_trait::async_trait;
use bb8_postgres::PostgresConnectionManager;
use edgelink_core::config::PostgresConfig;
use edgelink_core::error::with_timeout;
use edgelink_core::store::sqlite::rusqlite::{params, OptionalExtension};
use edgelink_core::store::sqlite::SqliteStore;
use edgelink_core::StoreError;
use tokio_postgres::NoTls;

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// An earlier request bound to an Idempotency-Key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub request: Digest,
    pub code: String,
    /// How long ago the binding was made, in whole seconds.
    pub age_secs: i64,
}

#[async_trait]
pub trait OriginStore: Send + Sync + 'static {
    /// Stores a new API key's hash under `name`; `prefix` (unique) names it
    /// in listings and revocation.
    async fn add_api_key(&self, name: &str, prefix: &str, hash: Digest) -> Result<(), StoreError>;

    /// Revokes the active key with `prefix`; `Ok(false)` when there is none.
    async fn revoke_api_key(&self, prefix: &str) -> Result<bool, StoreError>;

    /// The id of the active (not revoked) key with this hash.
    async fn api_key_id(&self, hash: Digest) -> Result<Option<i64>, StoreError>;

    /// Binds `(key_id, idem)` to `request` and `code` unless it is bound
    /// already, in which case the earlier binding is returned unchanged.
    async fn bind(
        &self,
        key_id: i64,
        idem: &str,
        request: Digest,
        code: &str,
    ) -> Result<Option<Binding>, StoreError>;

    /// Drops a binding whose link could not be created (so a retry starts over).
    async fn unbind(&self, key_id: i64, idem: &str) -> Result<(), StoreError>;
}

fn digest(backend: &'static str, bytes: Vec<u8>) -> Result<Digest, StoreError> {
    bytes
        .try_into()
        .map_err(|_| StoreError::corrupt(backend, "stored request digest is not 32 bytes"))
}

// === PostgreSQL ===

const PG: &str = "postgres";

fn pg_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::unavailable(PG, e)
}

#[derive(Clone)]
pub struct PgOrigin {
    pool: bb8::Pool<PostgresConnectionManager<NoTls>>,
    timeout: Duration,
}

impl PgOrigin {
    pub fn connect(config: &PostgresConfig) -> Result<PgOrigin, StoreError> {
        Ok(PgOrigin {
            pool: edgelink_core::store::postgres::plain_pool(config)?,
            timeout: Duration::from_millis(config.timeout_ms),
        })
    }

    async fn run<T>(
        &self,
        f: impl AsyncFnOnce(&tokio_postgres::Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, StoreError> {
        with_timeout(PG, self.timeout, async {
            let conn = self.pool.get().await.map_err(pg_err)?;
            f(&conn).await.map_err(pg_err)
        })
        .await
    }
}

#[async_trait]
impl OriginStore for PgOrigin {
    async fn add_api_key(&self, name: &str, prefix: &str, hash: Digest) -> Result<(), StoreError> {
        self.run(async |c| {
            c.execute(
                "INSERT INTO api_keys (name, prefix, hash) VALUES ($1, $2, $3) ON CONFLICT (hash) DO NOTHING",
                &[&name, &prefix, &hash.as_slice()],
            )
            .await
            .map(|_| ())
        })
        .await
    }

    async fn revoke_api_key(&self, prefix: &str) -> Result<bool, StoreError> {
        self.run(async |c| {
            c.execute(
                "UPDATE api_keys SET revoked_at = now() WHERE prefix = $1 AND revoked_at IS NULL",
                &[&prefix],
            )
            .await
            .map(|n| n > 0)
        })
        .await
    }

    async fn api_key_id(&self, hash: Digest) -> Result<Option<i64>, StoreError> {
        self.run(async |c| {
            c.query_opt(
                "SELECT id FROM api_keys WHERE hash = $1 AND revoked_at IS NULL",
                &[&hash.as_slice()],
            )
            .await
            .map(|r| r.map(|r| r.get(0)))
        })
        .await
    }

    async fn bind(
        &self,
        key_id: i64,
        idem: &str,
        request: Digest,
        code: &str,
    ) -> Result<Option<Binding>, StoreError> {
        let row = self
            .run(async |c| {
                c.query_one(
                    "WITH new AS (
                         INSERT INTO idempotency_keys (api_key_id, key, request, code)
                         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING 1
                     )
                     SELECT EXISTS (SELECT 1 FROM new), k.request, k.code,
                            extract(epoch FROM now() - k.created_at)::bigint
                     FROM (SELECT 1) AS one
                     LEFT JOIN idempotency_keys k ON k.api_key_id = $1 AND k.key = $2",
                    &[&key_id, &idem, &request.as_slice(), &code],
                )
                .await
            })
            .await?;
        let inserted: bool = row.get(0);
        if inserted {
            return Ok(None);
        }
        let request: Option<Vec<u8>> = row.get(1);
        let code: Option<String> = row.get(2);
        let age_secs: Option<i64> = row.get(3);
        match (request, code) {
            (Some(r), Some(code)) => Ok(Some(Binding {
                request: digest(PG, r)?,
                code,
                age_secs: age_secs.unwrap_or(0),
            })),
            // Bound by a transaction that has not committed yet: not visible
            // to this statement's snapshot. Report it as busy.
            _ => Err(StoreError::Busy {
                backend: PG,
                message: "an earlier request with this Idempotency-Key is still running".into(),
            }),
        }
    }

    async fn unbind(&self, key_id: i64, idem: &str) -> Result<(), StoreError> {
        self.run(async |c| {
            c.execute(
                "DELETE FROM idempotency_keys WHERE api_key_id = $1 AND key = $2",
                &[&key_id, &idem],
            )
            .await
            .map(|_| ())
        })
        .await
    }
}

// === SQLite ===

const SQLITE: &str = "sqlite";

fn sql_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::unavailable(SQLITE, e)
}

#[derive(Clone)]
pub struct SqliteOrigin {
    store: SqliteStore,
}

impl SqliteOrigin {
    pub fn new(store: SqliteStore) -> SqliteOrigin {
        SqliteOrigin { store }
    }
}

#[async_trait]
impl OriginStore for SqliteOrigin {
    async fn add_api_key(&self, name: &str, prefix: &str, hash: Digest) -> Result<(), StoreError> {
        let (name, prefix) = (name.to_owned(), prefix.to_owned());
        self.store
            .with_writer(self.store.timeout(), move |c| {
                c.execute(
                    "INSERT INTO api_keys (name, prefix, hash) VALUES (?1, ?2, ?3) ON CONFLICT (hash) DO NOTHING",
                    params![name, prefix, hash.as_slice()],
                )
                .map(|_| ())
                .map_err(sql_err)
            })
            .await
    }

    async fn revoke_api_key(&self, prefix: &str) -> Result<bool, StoreError> {
        let prefix = prefix.to_owned();
        self.store
            .with_writer(self.store.timeout(), move |c| {
                c.execute(
                    "UPDATE api_keys SET revoked_at = unixepoch() WHERE prefix = ?1 AND revoked_at IS NULL",
                    [prefix],
                )
                .map(|n| n > 0)
                .map_err(sql_err)
            })
            .await
    }

    async fn api_key_id(&self, hash: Digest) -> Result<Option<i64>, StoreError> {
        self.store
            .with_reader(move |c| {
                c.query_row(
                    "SELECT id FROM api_keys WHERE hash = ?1 AND revoked_at IS NULL",
                    [hash.as_slice()],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql_err)
            })
            .await
    }

    async fn bind(
        &self,
        key_id: i64,
        idem: &str,
        request: Digest,
        code: &str,
    ) -> Result<Option<Binding>, StoreError> {
        let (idem, code) = (idem.to_owned(), code.to_owned());
        self.store
            .with_writer(self.store.timeout(), move |c| {
                let inserted = c
                    .execute(
                        "INSERT INTO idempotency_keys (api_key_id, key, request, code) \
                         VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                        params![key_id, idem, request.as_slice(), code],
                    )
                    .map_err(sql_err)?;
                if inserted > 0 {
                    return Ok(None);
                }
                let (r, code, age_secs): (Vec<u8>, String, i64) = c
                    .query_row(
                        "SELECT request, code, unixepoch() - created_at FROM idempotency_keys \
                         WHERE api_key_id = ?1 AND key = ?2",
                        params![key_id, idem],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .map_err(sql_err)?;
                Ok(Some(Binding {
                    request: digest(SQLITE, r)?,
                    code,
                    age_secs,
                }))
            })
            .await
    }

    async fn unbind(&self, key_id: i64, idem: &str) -> Result<(), StoreError> {
        let idem = idem.to_owned();
        self.store
            .with_writer(self.store.timeout(), move |c| {
                c.execute(
                    "DELETE FROM idempotency_keys WHERE api_key_id = ?1 AND key = ?2",
                    params![key_id, idem],
                )
                .map(|_| ())
                .map_err(sql_err)
            })
            .await
    }
}
