//! Configuration shared by every role: one serde struct, defaults for every
//! field, `validate()` before use.
//!
//! Sources, later wins: built-in defaults, the TOML file (`--config`),
//! `EDGELINK_<SECTION>_<KEY>` environment variables (e.g.
//! `EDGELINK_CACHE_TTL_SECS=60`, `EDGELINK_POSTGRES_URL=...`), then flags.
//! The environment is read through [`Env`] so tests pass a map.
//!
//! This file holds the whole [`Config`], how it is loaded, and the order
//! its sections are checked in (the order `--check` reports problems in),
//! with the one check that spans two sections. Each section has a file of
//! its own: its struct, its defaults and its checks, side by side.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod admin;
mod analytics;
mod breaker;
mod cache;
mod keypool;
mod limits;
mod origin;
mod postgres;
mod proxy;
mod redirect;
mod redis;
mod server;
mod sqlite;
mod telemetry;
mod tls;

pub use admin::{AdminConfig, BootstrapConfig};
pub use analytics::{AnalyticsConfig, FlushPriority};
pub use breaker::BreakerConfig;
pub use cache::CacheConfig;
pub use keypool::KeypoolConfig;
pub use limits::LimitsConfig;
pub use origin::OriginConfig;
pub use postgres::PostgresConfig;
pub use proxy::{upstream_base, Balance, ProxyConfig};
pub use redirect::RedirectConfig;
pub use redis::RedisConfig;
pub use server::{ServerConfig, Threading};
pub use sqlite::SqliteConfig;
pub use telemetry::{AccessLogConfig, TracingConfig};
pub use tls::{CertificateFiles, TlsConfig};

/// The prefix of every environment override.
pub const ENV_PREFIX: &str = "EDGELINK_";

/// Sections an environment variable may address.
const SECTIONS: [&str; 17] = [
    "server",
    "tracing",
    "access_log",
    "breaker",
    "analytics",
    "tls",
    "proxy",
    "limits",
    "cache",
    "redirect",
    "sqlite",
    "postgres",
    "redis",
    "keypool",
    "admin",
    "origin",
    "bootstrap",
];

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub cache: CacheConfig,
    pub redirect: RedirectConfig,
    pub sqlite: SqliteConfig,
    pub postgres: PostgresConfig,
    pub redis: RedisConfig,
    pub keypool: KeypoolConfig,
    pub admin: AdminConfig,
    pub origin: OriginConfig,
    pub bootstrap: BootstrapConfig,
    pub tls: TlsConfig,
    pub proxy: ProxyConfig,
    pub limits: LimitsConfig,
    pub breaker: BreakerConfig,
    pub analytics: AnalyticsConfig,
    pub tracing: TracingConfig,
    pub access_log: AccessLogConfig,
}

// === impl Config ===

/// A configuration that cannot be used; the binary exits with 64 on it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// Which storage a role needs; decides what `validate_for` requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageMode {
    /// SQLite only.
    Embedded,
    /// PostgreSQL required, Redis optional.
    Distributed,
}

impl Config {
    /// Defaults, then the file if given, then the environment. Flags are
    /// applied by the caller afterwards, then [`Config::validate_for`].
    pub fn load(file: Option<&std::path::Path>, env: &dyn Env) -> Result<Config, ConfigError> {
        let mut value = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    origin: path.display().to_string(),
                    message: e.to_string(),
                })?;
                // Check the file alone first so its errors name the file.
                Config::deserialize(toml::Value::Table(table.clone())).map_err(|e| {
                    ConfigError::Parse {
                        origin: path.display().to_string(),
                        message: e.to_string(),
                    }
                })?;
                table
            }
            None => toml::Table::new(),
        };
        apply_env(&mut value, env)?;
        Config::deserialize(toml::Value::Table(value)).map_err(|e| ConfigError::Parse {
            origin: "environment".to_owned(),
            message: e.to_string(),
        })
    }

    /// Checks every value for range and coherence.
    pub fn validate_for(&self, mode: StorageMode) -> Result<(), ConfigError> {
        let mut problems = Problems::default();
        self.server.validate(&mut problems);
        self.cache.validate(&mut problems);
        self.redirect.validate(&mut problems);
        self.keypool.validate(&mut problems);
        self.origin.validate(&mut problems);
        self.admin.validate(&mut problems);
        match mode {
            StorageMode::Embedded => self.sqlite.validate(&mut problems),
            StorageMode::Distributed => {
                self.postgres.validate(&mut problems);
                self.redis.validate(&mut problems);
            }
        }
        // The sections the edge reads: TLS, proxy and limits.
        self.tls.validate(&mut problems);
        if let Some(addr) = self.tls.redirect_listen {
            problems.need(
                addr != self.server.listen && addr != self.server.admin_listen,
                "tls.redirect_listen must differ from the other listeners",
            );
        }
        self.proxy.validate(&mut problems);
        self.tracing.validate(&mut problems);
        self.access_log.validate(&mut problems);
        self.analytics.validate(&mut problems);
        self.breaker.validate(&mut problems);
        self.limits.validate(&mut problems);
        problems.into_result()
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.server.header_read_timeout_ms)
    }
}

/// What is wrong with a configuration, in the order found; every section's
/// `validate` adds to it.
#[derive(Debug, Default)]
struct Problems(Vec<String>);

impl Problems {
    /// Records `msg` unless `ok`.
    fn need(&mut self, ok: bool, msg: impl Into<String>) {
        if !ok {
            self.push(msg);
        }
    }

    /// Records `msg` as is (a value that does not parse, for one).
    fn push(&mut self, msg: impl Into<String>) {
        self.0.push(msg.into());
    }

    /// All of them in one error, or `Ok` when there are none.
    fn into_result(self) -> Result<(), ConfigError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(self.0.join("; ")))
        }
    }
}

// === environment ===

/// Where environment variables come from; tests pass a map.
pub trait Env {
    /// Every variable whose name starts with `prefix`.
    fn vars_with_prefix(&self, prefix: &str) -> Vec<(String, String)>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn vars_with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(k, _)| k.starts_with(prefix))
            .collect()
    }
}

impl Env for BTreeMap<String, String> {
    fn vars_with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        self.iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// Applies `EDGELINK_<SECTION>_<KEY>` variables. Variables whose first word
/// is not a config section belong to someone else and are left alone; an
/// unknown key inside a known section is an error, so a typo is not silently
/// ignored. A value is read as the type the key has by default.
fn apply_env(table: &mut toml::Table, env: &dyn Env) -> Result<(), ConfigError> {
    let defaults = match toml::Value::try_from(Config::default()) {
        Ok(toml::Value::Table(t)) => t,
        _ => return Err(ConfigError::Invalid("defaults do not serialize".to_owned())),
    };
    let mut vars = env.vars_with_prefix(ENV_PREFIX);
    vars.sort();
    for (name, raw) in vars {
        let rest = name[ENV_PREFIX.len()..].to_ascii_lowercase();
        let Some((section, key)) = rest.split_once('_') else {
            continue;
        };
        if !SECTIONS.contains(&section) {
            continue;
        }
        let bad = |message: String| ConfigError::Parse {
            origin: format!("environment variable {name}"),
            message,
        };
        let default_section = defaults.get(section).and_then(toml::Value::as_table);
        let known = default_section.is_some_and(|t| t.contains_key(key))
            || optional_keys(section).contains(&key);
        if !known {
            return Err(bad(format!("there is no setting {section}.{key}")));
        }
        let value = match default_section.and_then(|t| t.get(key)) {
            Some(toml::Value::Integer(_)) => raw
                .trim()
                .parse::<i64>()
                .map(toml::Value::Integer)
                .map_err(|_| bad(format!("expected an integer, got {raw:?}")))?,
            Some(toml::Value::Array(_)) => toml::Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_owned()))
                    .collect(),
            ),
            Some(toml::Value::Float(_)) => raw
                .trim()
                .parse::<f64>()
                .map(toml::Value::Float)
                .map_err(|_| bad(format!("expected a number, got {raw:?}")))?,
            Some(toml::Value::Boolean(_)) => {
                raw.trim()
                    .parse::<bool>()
                    .map(toml::Value::Boolean)
                    .map_err(|_| bad(format!("expected true or false, got {raw:?}")))?
            }
            _ => toml::Value::String(raw),
        };
        let entry = table
            .entry(section.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(t) => {
                t.insert(key.to_owned(), value);
            }
            _ => return Err(bad(format!("[{section}] in the file is not a table"))),
        }
    }
    Ok(())
}

/// Keys whose default is `None` (absent from the serialized defaults).
fn optional_keys(section: &str) -> &'static [&'static str] {
    match section {
        "postgres" | "redis" => &["url"],
        "admin" => &["token"],
        "bootstrap" => &["api_key"],
        "tls" => &["redirect_listen"],
        "tracing" => &["otlp_endpoint", "service_name"],
        "access_log" => &["path"],
        _ => &[],
    }
}

#[cfg(test)]
mod tests;
