//! The shared cache tier: Redis through a bb8 pool of multiplexed connections.
//!
//! Keys are `<key_prefix>l:<code>`, values the compact encoding of
//! [`codec`](super::codec), every key written with a TTL (the configured one,
//! or less when the link expires sooner). Every command, pool checkout
//! included, runs under `redis.timeout_ms`.

use std::time::Duration;

use async_trait::async_trait;
use bb8_redis::redis::{self, AsyncCommands};
use bb8_redis::RedisConnectionManager;

use crate::config::RedisConfig;
use crate::error::{with_timeout, StoreError};
use crate::link::{now_unix, Link};
use crate::store::{codec, LinkCache};

const NAME: &str = "redis";

/// Redis-backed [`LinkCache`].
#[derive(Clone)]
pub struct RedisCache {
    pool: bb8::Pool<RedisConnectionManager>,
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
        let manager = RedisConnectionManager::new(url).map_err(redis_err)?;
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
        let raw: Option<Vec<u8>> = with_timeout(NAME, self.timeout, async {
            let mut conn = self.pool.get().await.map_err(redis_err)?;
            conn.get(&key).await.map_err(redis_err)
        })
        .await?;
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
        with_timeout(NAME, self.timeout, async {
            let mut conn = self.pool.get().await.map_err(redis_err)?;
            conn.set_ex::<_, _, ()>(&key, value, ttl)
                .await
                .map_err(redis_err)
        })
        .await
    }

    async fn forget(&self, code: &str) -> Result<(), StoreError> {
        let key = self.key(code);
        let channel = self.invalidation_channel();
        with_timeout(NAME, self.timeout, async {
            let mut conn = self.pool.get().await.map_err(redis_err)?;
            redis::pipe()
                .del(&key)
                .ignore()
                .publish(&channel, code)
                .ignore()
                .query_async::<()>(&mut *conn)
                .await
                .map_err(redis_err)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        with_timeout(NAME, self.timeout, async {
            let mut conn = self.pool.get().await.map_err(redis_err)?;
            redis::cmd("PING")
                .query_async::<()>(&mut *conn)
                .await
                .map_err(redis_err)
        })
        .await
    }
}
