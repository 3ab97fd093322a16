//! The distributed source of truth: PostgreSQL through a bb8 pool.
//!
//! tokio-postgres has no timeouts of its own, so every call (pool checkout
//! included) runs under `postgres.timeout_ms`. Each pooled connection
//! prepares the lookup statement once when it is opened, so a lookup is one
//! round trip with no parse or plan.

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use bb8_postgres::PostgresConnectionManager;
use time::OffsetDateTime;
use tokio_postgres::{NoTls, Statement};

use crate::config::PostgresConfig;
use crate::error::{with_timeout, StoreError};
use crate::link::{Link, RedirectStatus};
use crate::migrate;
use crate::store::{ClickDelta, DailyClicks, InsertReport, LinkPatch, LinkStore, MAX_LIST};

const NAME: &str = "postgres";

/// Advisory-lock key that serialises migrations across processes
/// (the bytes of "edgelink" read as an i64).
const MIGRATION_LOCK: i64 = 0x6564_6765_6c69_6e6b;

/// Most time a bulk write (an import batch) may take.
const BULK_TIMEOUT: Duration = Duration::from_secs(30);

/// The budget of inserting `rows` links: the query timeout plus 10 ms a row,
/// at most [`BULK_TIMEOUT`] (never less than the timeout). One link (an API
/// creation) gets about the timeout, so a creation fails as fast as a lookup.
fn insert_budget(timeout: Duration, rows: usize) -> Duration {
    let per_row = Duration::from_millis(10).saturating_mul(u32::try_from(rows).unwrap_or(u32::MAX));
    (timeout + per_row).min(BULK_TIMEOUT).max(timeout)
}

const GET_LINK: &str =
    "SELECT target, redirect, created_at, expires_at, disabled FROM links WHERE code = $1";

const FIND_LINK: &str = "SELECT target, redirect, created_at, expires_at, disabled, code \
     FROM links WHERE code = $1 AND deleted_at IS NULL";

const LIST_LINKS: &str = "SELECT target, redirect, created_at, expires_at, disabled, code \
     FROM links WHERE deleted_at IS NULL AND code > $1 ORDER BY code LIMIT $2";

const UPDATE_LINK: &str = "UPDATE links SET \
     target = coalesce($2, target), \
     redirect = coalesce($3, redirect), \
     expires_at = CASE WHEN $4 THEN $5 ELSE expires_at END, \
     disabled = coalesce($6, disabled) \
     WHERE code = $1 AND deleted_at IS NULL \
     RETURNING target, redirect, created_at, expires_at, disabled, code";

/// Adds a flush once: the edge's row in click_edges is raised to the
/// flush's seq in the same statement, and the counts are added only if it
/// was below. A retry of the same seq waits for the row lock of an attempt
/// still running, then finds its seq there. Returns one row, whether the
/// flush was applied.
const ADD_CLICKS: &str = "WITH flush AS ( \
         INSERT INTO click_edges AS e (edge, seq) VALUES ($1, $2) \
         ON CONFLICT (edge) DO UPDATE SET seq = excluded.seq, applied_at = now() \
         WHERE e.seq < excluded.seq RETURNING 1 \
     ), added AS ( \
         INSERT INTO link_clicks (code, day, human, bot) \
         SELECT * FROM unnest($3::text[], $4::date[], $5::int8[], $6::int8[]) \
         WHERE EXISTS (SELECT 1 FROM flush) \
         ON CONFLICT (code, day) DO UPDATE SET \
             human = link_clicks.human + excluded.human, \
             bot = link_clicks.bot + excluded.bot \
     ) SELECT EXISTS (SELECT 1 FROM flush)";

const INSERT_LINKS: &str = "INSERT INTO links (code, target, redirect, created_at, expires_at, disabled) \
     SELECT * FROM unnest($1::text[], $2::text[], $3::int2[], $4::timestamptz[], $5::timestamptz[], $6::bool[]) \
     ON CONFLICT (code) DO NOTHING RETURNING code";

/// A pooled connection with its prepared statements.
pub struct PgConn {
    pub client: tokio_postgres::Client,
    get_link: Statement,
    /// A call on it timed out: the server may be gone without a word (a
    /// failover, a partition), so the pool drops it rather than queue the
    /// next call behind the lost one.
    broken: std::sync::atomic::AtomicBool,
}

/// Opens connections through bb8-postgres's manager and prepares statements.
pub struct PgManager {
    inner: PostgresConnectionManager<NoTls>,
}

impl bb8::ManageConnection for PgManager {
    type Connection = PgConn;
    type Error = tokio_postgres::Error;

    async fn connect(&self) -> Result<PgConn, Self::Error> {
        let client = self.inner.connect().await?;
        let get_link = client.prepare(GET_LINK).await?;
        Ok(PgConn {
            client,
            get_link,
            broken: std::sync::atomic::AtomicBool::new(false),
        })
    }

    async fn is_valid(&self, conn: &mut PgConn) -> Result<(), Self::Error> {
        conn.client.simple_query("").await.map(|_| ())
    }

    fn has_broken(&self, conn: &mut PgConn) -> bool {
        *conn.broken.get_mut() || conn.client.is_closed()
    }
}

/// PostgreSQL-backed [`LinkStore`].
#[derive(Clone)]
pub struct PgStore {
    pool: bb8::Pool<PgManager>,
    config: tokio_postgres::Config,
    timeout: Duration,
}

fn pg_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::unavailable(NAME, e)
}

/// Parses the URL and fills in what EdgeLink sets by default.
pub fn client_config(config: &PostgresConfig) -> Result<tokio_postgres::Config, StoreError> {
    let url = config
        .url
        .as_deref()
        .ok_or_else(|| pg_err("postgres.url is not set"))?;
    let mut pg = tokio_postgres::Config::from_str(url).map_err(pg_err)?;
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(Duration::from_millis(config.connect_timeout_ms));
    }
    if pg.get_application_name().is_none() {
        pg.application_name("edgelink");
    }
    Ok(pg)
}

/// A plain pooled `tokio_postgres::Client` for the other crates' tables (key
/// pool, API keys), with the same pool policy and URL handling as the link
/// store; connections open lazily.
pub fn plain_pool(
    config: &PostgresConfig,
) -> Result<bb8::Pool<PostgresConnectionManager<NoTls>>, StoreError> {
    let pg = client_config(config)?;
    Ok(
        super::pool_builder(config.pool_size, config.connect_timeout_ms)
            .build_unchecked(PostgresConnectionManager::new(pg, NoTls)),
    )
}

impl PgStore {
    /// Builds the pool. Connections open lazily, so this succeeds while the
    /// server is down; call [`PgStore::migrate`] to require it up.
    pub async fn connect(config: &PostgresConfig) -> Result<PgStore, StoreError> {
        let pg = client_config(config)?;
        let manager = PgManager {
            inner: PostgresConnectionManager::new(pg.clone(), NoTls),
        };
        let pool = super::pool_builder(config.pool_size, config.connect_timeout_ms)
            .build_unchecked(manager);
        Ok(PgStore {
            pool,
            config: pg,
            timeout: Duration::from_millis(config.timeout_ms),
        })
    }

    /// Applies pending migrations on a dedicated connection, under an
    /// advisory lock so concurrent starters take turns.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let deadline = Duration::from_secs(60);
        with_timeout(NAME, deadline, async {
            let (mut client, conn) = self.config.connect(NoTls).await.map_err(pg_err)?;
            let driver = tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "migration connection closed");
                }
            });
            let result = migrate_on(&mut client).await;
            drop(client);
            let _ = driver.await;
            result
        })
        .await
    }

    /// Whether every migration this binary knows is applied (`false` also
    /// when the migrations table does not exist yet). On a connection of
    /// its own: pooled ones prepare statements on tables that may not
    /// exist yet.
    pub async fn schema_current(&self) -> Result<bool, StoreError> {
        let latest = migrate::POSTGRES.last().map_or(0, |m| m.version);
        with_timeout(NAME, self.timeout, async {
            let (client, conn) = self.config.connect(NoTls).await.map_err(pg_err)?;
            let driver = tokio::spawn(async move {
                let _ = conn.await;
            });
            let exists: bool = client
                .query_one("SELECT to_regclass('edgelink_migrations') IS NOT NULL", &[])
                .await
                .map_err(pg_err)?
                .get(0);
            let version: i32 = if exists {
                client
                    .query_one(
                        "SELECT coalesce(max(version), 0) FROM edgelink_migrations",
                        &[],
                    )
                    .await
                    .map_err(pg_err)?
                    .get(0)
            } else {
                0
            };
            drop(client);
            let _ = driver.await;
            Ok(version >= latest)
        })
        .await
    }

    /// Runs `f` on a pooled connection within `budget` (checkout
    /// included); a connection whose call runs out of time is discarded.
    async fn with_conn<T>(
        &self,
        budget: Duration,
        f: impl for<'c> AsyncFnOnce(&'c PgConn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let deadline = tokio::time::Instant::now() + budget;
        let timed_out = || StoreError::Timeout {
            backend: NAME,
            timeout: budget,
        };
        let conn = tokio::time::timeout_at(deadline, self.pool.get())
            .await
            .map_err(|_| timed_out())?
            .map_err(pg_err)?;
        match tokio::time::timeout_at(deadline, f(&conn)).await {
            Ok(result) => result,
            Err(_) => {
                conn.broken
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                Err(timed_out())
            }
        }
    }
}

async fn migrate_on(client: &mut tokio_postgres::Client) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(pg_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_err)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS edgelink_migrations (
             version integer PRIMARY KEY,
             name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(pg_err)?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM edgelink_migrations", &[])
        .await
        .map_err(pg_err)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for m in migrate::pending(migrate::POSTGRES, &applied).map_err(pg_err)? {
        tx.batch_execute(m.sql)
            .await
            .map_err(|e| pg_err(format!("migration {}: {e}", m.version)))?;
        tx.execute(
            "INSERT INTO edgelink_migrations (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name],
        )
        .await
        .map_err(pg_err)?;
        tracing::info!(
            version = m.version,
            name = m.name,
            "applied postgres migration"
        );
    }
    tx.commit().await.map_err(pg_err)
}

fn row_to_link(code: &str, row: &tokio_postgres::Row) -> Result<Link, StoreError> {
    let redirect: i16 = row.try_get(1).map_err(pg_err)?;
    let redirect = u16::try_from(redirect)
        .ok()
        .and_then(RedirectStatus::from_code)
        .ok_or_else(|| StoreError::corrupt(NAME, format!("link {code}: redirect {redirect}")))?;
    Ok(Link {
        code: code.to_owned(),
        target: row.try_get(0).map_err(pg_err)?,
        redirect,
        created_at: row.try_get(2).map_err(pg_err)?,
        expires_at: row.try_get(3).map_err(pg_err)?,
        disabled: row.try_get(4).map_err(pg_err)?,
    })
}

#[async_trait]
impl LinkStore for PgStore {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn get(&self, code: &str) -> Result<Option<Link>, StoreError> {
        self.with_conn(self.timeout, async |c| {
            let row = c
                .client
                .query_opt(&c.get_link, &[&code])
                .await
                .map_err(pg_err)?;
            row.map(|r| row_to_link(code, &r)).transpose()
        })
        .await
    }

    async fn insert_links(&self, links: &[Link]) -> Result<InsertReport, StoreError> {
        let codes: Vec<&str> = links.iter().map(|l| l.code.as_str()).collect();
        let targets: Vec<&str> = links.iter().map(|l| l.target.as_str()).collect();
        let redirects: Vec<i16> = links.iter().map(|l| l.redirect.code() as i16).collect();
        let created: Vec<OffsetDateTime> = links.iter().map(|l| l.created_at).collect();
        let expires: Vec<Option<OffsetDateTime>> = links.iter().map(|l| l.expires_at).collect();
        let disabled: Vec<bool> = links.iter().map(|l| l.disabled).collect();
        let rows = self
            .with_conn(insert_budget(self.timeout, links.len()), async |c| {
                c.client
                    .query(
                        INSERT_LINKS,
                        &[&codes, &targets, &redirects, &created, &expires, &disabled],
                    )
                    .await
                    .map_err(pg_err)
            })
            .await?;
        let mut written: HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
        let mut report = InsertReport::default();
        for (i, link) in links.iter().enumerate() {
            if written.remove(&link.code) {
                report.inserted += 1;
            } else {
                report.existing.push(i);
            }
        }
        Ok(report)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.with_conn(self.timeout, async |c| {
            c.client.simple_query("").await.map(|_| ()).map_err(pg_err)
        })
        .await
    }

    async fn find(&self, code: &str) -> Result<Option<Link>, StoreError> {
        self.with_conn(self.timeout, async |c| {
            let row = c
                .client
                .query_opt(FIND_LINK, &[&code])
                .await
                .map_err(pg_err)?;
            row.map(|r| row_to_link(code, &r)).transpose()
        })
        .await
    }

    async fn update(&self, code: &str, patch: &LinkPatch) -> Result<Option<Link>, StoreError> {
        let redirect = patch.redirect.map(|r| r.code() as i16);
        let set_expiry = patch.expires_at.is_some();
        let expires_at = patch.expires_at.flatten();
        self.with_conn(self.timeout, async |c| {
            let row = c
                .client
                .query_opt(
                    UPDATE_LINK,
                    &[
                        &code,
                        &patch.target,
                        &redirect,
                        &set_expiry,
                        &expires_at,
                        &patch.disabled,
                    ],
                )
                .await
                .map_err(pg_err)?;
            row.map(|r| row_to_link(code, &r)).transpose()
        })
        .await
    }

    async fn delete(&self, code: &str) -> Result<bool, StoreError> {
        self.with_conn(self.timeout, async |c| {
            let n = c
                .client
                .execute(
                    "UPDATE links SET deleted_at = now(), disabled = true \
                     WHERE code = $1 AND deleted_at IS NULL",
                    &[&code],
                )
                .await
                .map_err(pg_err)?;
            Ok(n > 0)
        })
        .await
    }

    async fn list(&self, after: Option<&str>, limit: u32) -> Result<Vec<Link>, StoreError> {
        let after = after.unwrap_or("");
        let limit = i64::from(limit.min(MAX_LIST));
        self.with_conn(self.timeout, async |c| {
            let rows = c
                .client
                .query(LIST_LINKS, &[&after, &limit])
                .await
                .map_err(pg_err)?;
            rows.iter()
                .map(|r| {
                    let code: String = r.try_get(5).map_err(pg_err)?;
                    row_to_link(&code, r)
                })
                .collect()
        })
        .await
    }

    async fn add_clicks(
        &self,
        edge: &str,
        seq: u64,
        deltas: &[ClickDelta],
    ) -> Result<bool, StoreError> {
        let seq = i64::try_from(seq).map_err(pg_err)?;
        // One statement, so all or nothing; rows are locked in (code, day)
        // order, so edges flushing the same links cannot deadlock.
        let mut sorted: Vec<&ClickDelta> = deltas.iter().collect();
        sorted.sort_by(|a, b| a.key_cmp(b));
        let codes: Vec<&str> = sorted.iter().map(|d| d.code.as_str()).collect();
        let days: Vec<time::Date> = sorted.iter().map(|d| d.day).collect();
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let humans: Vec<i64> = sorted.iter().map(|d| count(d.human)).collect();
        let bots: Vec<i64> = sorted.iter().map(|d| count(d.bot)).collect();
        self.with_conn(insert_budget(self.timeout, deltas.len()), async |c| {
            let rows = c
                .client
                .query(ADD_CLICKS, &[&edge, &seq, &codes, &days, &humans, &bots])
                .await
                .map_err(pg_err)?;
            let applied: bool = rows
                .first()
                .map_or(Ok(false), |r| r.try_get(0))
                .map_err(pg_err)?;
            if applied && seq % 1_000 == 0 {
                // An edge's row is only needed while it could still retry:
                // gone two days after its last flush (edges get a new name
                // each start). click_flushes: rows of edges of an earlier
                // version (migration 7).
                let _ = c
                    .client
                    .batch_execute(
                        "DELETE FROM click_edges WHERE applied_at < now() - interval '2 days'; \
                         DELETE FROM click_flushes WHERE applied_at < now() - interval '2 days'",
                    )
                    .await;
            }
            Ok(applied)
        })
        .await
    }

    async fn clicks(
        &self,
        code: &str,
        from: time::Date,
        to: time::Date,
    ) -> Result<Vec<DailyClicks>, StoreError> {
        self.with_conn(self.timeout, async |c| {
            let rows = c
                .client
                .query(
                    "SELECT day, human, bot FROM link_clicks \
                     WHERE code = $1 AND day BETWEEN $2 AND $3 ORDER BY day",
                    &[&code, &from, &to],
                )
                .await
                .map_err(pg_err)?;
            rows.iter()
                .map(|r| {
                    let human: i64 = r.try_get(1).map_err(pg_err)?;
                    let bot: i64 = r.try_get(2).map_err(pg_err)?;
                    Ok(DailyClicks {
                        day: r.try_get(0).map_err(pg_err)?,
                        human: u64::try_from(human).unwrap_or(0),
                        bot: u64::try_from(bot).unwrap_or(0),
                    })
                })
                .collect()
        })
        .await
    }
}
