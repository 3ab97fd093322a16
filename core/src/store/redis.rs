//! The shared cache tier: Redis through a bb8 pool of multiplexed connections.
//!
//! Keys are `<key_prefix>l:<code>`, values the compact encoding of
//! [`codec`](super::codec), every key written with a TTL (the configured one,
//! or less when the link expires sooner). Every command, pool checkout
//! included, runs under `redis.timeout_ms`.
//!
//! A multiplexed connection never reconnects by itself, and bb8-redis's
//! manager never reports one broken, so after a Redis restart its pool
//! would hand out dead connections for good. [`RedisManager`] marks a
//! connection broken when a command on it fails at the connection level or
//! times out, and the pool opens a new one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bb8_redis::redis::aio::MultiplexedConnection;
use bb8_redis::redis::{self, AsyncCommands, RedisError};

use crate::config::RedisConfig;
use crate::error::StoreError;
use crate::link::{now_unix, Link};
use crate::store::{codec, LinkCache};

const NAME: &str = "redis";

/// A pooled connection and whether a failure on it condemned it.
pub struct RedisConn {
    conn: MultiplexedConnection,
    broken: AtomicBool,
}

/// Opens multiplexed connections; drops those a failure condemned.
pub struct RedisManager {
    client: redis::Client,
}

impl bb8::ManageConnection for RedisManager {
    type Connection = RedisConn;
    type Error = RedisError;

    async fn connect(&self) -> Result<RedisConn, RedisError> {
        Ok(RedisConn {
            conn: self.client.get_multiplexed_async_connection().await?,
            broken: AtomicBool::new(false),
        })
    }

    async fn is_valid(&self, c: &mut RedisConn) -> Result<(), RedisError> {
        redis::cmd("PING").query_async::<()>(&mut c.conn).await
    }

    fn has_broken(&self, c: &mut RedisConn) -> bool {
        *c.broken.get_mut()
    }
}

/// Redis-backed [`LinkCache`].
#[derive(Clone)]
pub struct RedisCache {
    pool: bb8::Pool<RedisManager>,
    timeout: Duration,
    ttl_secs: u64,
    prefix: String,
}

fn redis_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::unavailable(NAME, e)
}

impl RedisCache {
    /// Builds the pool. Connections open lazily, so the edge starts (and
    /// serves from PostgreSQL) while Redis is down.
    pub async fn connect(config: &RedisConfig) -> Result<RedisCache, StoreError> {
        let url = config
            .url
            .as_deref()
            .ok_or_else(|| redis_err("redis.url is not set"))?;
        let manager = RedisManager {
            client: redis::Client::open(url).map_err(redis_err)?,
        };
        let pool = super::pool_builder(config.pool_size, config.connect_timeout_ms)
            .build_unchecked(manager);
        Ok(RedisCache {
            pool,
            timeout: Duration::from_millis(config.timeout_ms),
            ttl_secs: config.ttl_secs,
            prefix: config.key_prefix.clone(),
        })
    }

    /// The Redis key of a code.
    pub fn key(&self, code: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + 2 + code.len());
        key.push_str(&self.prefix);
        key.push_str("l:");
        key.push_str(code);
        key
    }

    /// The pub/sub channel invalidations go out on: `<prefix>invalidate`.
    pub fn invalidation_channel(&self) -> String {
        format!("{}invalidate", self.prefix)
    }

    /// Runs one command (pipeline) on a pooled connection within the
    /// timeout, checkout included; a connection-level failure or a timeout
    /// condemns the connection.
    async fn run<T>(
        &self,
        f: impl AsyncFnOnce(&mut MultiplexedConnection) -> Result<T, RedisError>,
    ) -> Result<T, StoreError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let timed_out = || StoreError::Timeout {
            backend: NAME,
            timeout: self.timeout,
        };
        let conn = tokio::time::timeout_at(deadline, self.pool.get())
            .await
            .map_err(|_| timed_out())?
            .map_err(redis_err)?;
        // Commands take `&mut`; a multiplexed connection is a cheap handle
        // onto one socket, so each call works on a clone.
        let mut handle = conn.conn.clone();
        match tokio::time::timeout_at(deadline, f(&mut handle)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
                    conn.broken.store(true, Ordering::Relaxed);
                }
                Err(redis_err(e))
            }
            Err(_) => {
                conn.broken.store(true, Ordering::Relaxed);
                Err(timed_out())
            }
        }
    }

    /// TTL for a link: the configured one, cut short by the link's expiry.
    fn ttl_for(&self, link: &Link, now: i64) -> u64 {
        match link.expires_at.map(|e| e.unix_timestamp() - now) {
            Some(left) if left > 0 => self.ttl_secs.min(left as u64),
            _ => self.ttl_secs,
        }
    }
}

#[async_trait]
impl LinkCache for RedisCache {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn get(&self, code: &str) -> Result<Option<Link>, StoreError> {
        let key = self.key(code);
        let raw: Option<Vec<u8>> = self.run(async |c| c.get(&key).await).await?;
        match raw {
            None => Ok(None),
            Some(bytes) => codec::decode(code, &bytes)
                .map(Some)
                .map_err(|e| StoreError::corrupt(NAME, format!("{key}: {e}"))),
        }
    }

    async fn put(&self, link: &Link) -> Result<(), StoreError> {
        let key = self.key(&link.code);
        let value = codec::encode(link);
        let ttl = self.ttl_for(link, now_unix());
        self.run(async |c| c.set_ex::<_, _, ()>(&key, value, ttl).await)
            .await
    }

    async fn forget(&self, code: &str) -> Result<(), StoreError> {
        let key = self.key(code);
        let channel = self.invalidation_channel();
        self.run(async |c| {
            redis::pipe()
                .del(&key)
                .ignore()
                .publish(&channel, code)
                .ignore()
                .query_async::<()>(c)
                .await
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.run(async |c| redis::cmd("PING").query_async::<()>(c).await)
            .await
    }
}
