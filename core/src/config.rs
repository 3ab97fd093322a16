//! Configuration shared by every role: one serde struct, defaults for every
//! field, `validate()` before use.
//!
//! Sources, later wins: built-in defaults, the TOML file (`--config`),
//! `EDGELINK_<SECTION>_<KEY>` environment variables (e.g.
//! `EDGELINK_CACHE_TTL_SECS=60`, `EDGELINK_POSTGRES_URL=...`), then flags.
//! The environment is read through [`Env`] so tests pass a map.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::link::RedirectStatus;

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

/// Listeners and connection limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Public listener (redirects, health).
    pub listen: SocketAddr,
    /// Admin listener (`/metrics`); keep it off the public network.
    pub admin_listen: SocketAddr,
    /// How connections are spread over threads; see [`Threading`].
    pub threading: Threading,
    /// Threads serving the public listener; 0 means one per CPU.
    pub workers: usize,
    /// Open connections beyond this are closed at accept.
    pub max_connections: usize,
    /// Listen backlog handed to the kernel.
    pub backlog: u32,
    /// A client must send its full request head within this time (from
    /// its first byte; on a new connection, from the accept).
    pub header_read_timeout_ms: u64,
    /// An HTTP/1 connection with no request under way is closed after this.
    pub keepalive_timeout_ms: u64,
    /// An HTTP/2 connection with no stream open and none started is closed
    /// (GOAWAY) after this; PINGs do not count as activity.
    pub h2_idle_timeout_ms: u64,
    /// Longest wait for the next piece of a request body (408 beyond).
    pub body_read_timeout_ms: u64,
    /// A whole request body must arrive within this (408 beyond).
    pub body_timeout_ms: u64,
    /// Longest a response write may wait for the client to take bytes
    /// (the connection is closed beyond): a client that stops reading.
    pub write_timeout_ms: u64,
    /// Largest request head accepted (HTTP/1 read buffer, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// HTTP/2 streams per connection.
    pub h2_max_concurrent_streams: u32,
    /// On shutdown, in-flight requests get this long to finish.
    pub drain_timeout_ms: u64,
    /// On shutdown, `/readyz` answers 503 for this long before the listeners
    /// stop accepting, so load balancers take the node out first.
    pub shutdown_grace_ms: u64,
    /// Whether `/readyz` answers 503 while the source of truth is down.
    /// `false` where every edge shares that source (Kubernetes readiness):
    /// failing them all at once would take away the stale-if-error answers
    /// they can still give; they then say 200 `degraded`.
    pub ready_needs_source: bool,
}

/// How the edge spreads connections over threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Threading {
    /// One single-threaded runtime per worker, each with its own
    /// `SO_REUSEPORT` listener on the same address; the kernel spreads new
    /// connections and a connection stays on its thread (nginx's model: no
    /// cross-thread wake-ups on the request path).
    PerCore,
    /// One multi-threaded, work-stealing runtime and one listener: evens out
    /// a few very busy connections at the cost of cross-thread wake-ups.
    WorkStealing,
}

impl ServerConfig {
    /// Worker threads to run: `workers`, or one per CPU when 0.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// Public listeners to bind: one per worker in per-core mode.
    pub fn public_listeners(&self) -> usize {
        match self.threading {
            Threading::PerCore => self.worker_count(),
            Threading::WorkStealing => 1,
        }
    }
}

/// Tier 0: the in-process cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Entries held at most (found, gone and unknown codes alike).
    pub max_entries: u64,
    /// Lifetime of a found link; the backstop for updates made elsewhere.
    pub ttl_secs: u64,
    /// Lifetime of an "unknown code" answer.
    pub negative_ttl_secs: u64,
    /// How long past its TTL a link (or a 410) may still be served while
    /// the backends cannot be asked (stale-if-error); 0 turns it off.
    /// Unknown codes are never served stale.
    pub stale_if_error_secs: u64,
}

/// How redirects are answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedirectConfig {
    /// Status for links that do not name one (imports without a status).
    pub default_status: RedirectStatus,
    /// `Cache-Control: max-age` for permanent (301/308) redirects.
    pub permanent_max_age_secs: u64,
}

/// The embedded store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqliteConfig {
    pub path: PathBuf,
    /// Read connections (WAL lets them run beside the one writer).
    pub readers: usize,
    /// Budget of one query, including waiting for a connection.
    pub timeout_ms: u64,
}

/// The distributed source of truth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://user@host:port/db`; required by the distributed roles.
    pub url: Option<String>,
    pub pool_size: u32,
    /// Budget of one query, including pool checkout.
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
}

/// The shared cache tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port/db`; without it the edge goes from tier 0 to the source of truth.
    pub url: Option<String>,
    pub pool_size: u32,
    /// Budget of one command, including pool checkout.
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// TTL of every key written.
    pub ttl_secs: u64,
    /// Prefix of every key, so several deployments or tests share one server.
    pub key_prefix: String,
}

/// The key pool: key shape, watermarks, batch sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeypoolConfig {
    /// Characters per generated key (base62), 4..=10.
    pub key_length: u8,
    /// The refill worker tops the pool up when fewer keys than this are free...
    pub low_watermark: u64,
    /// ...to this many.
    pub high_watermark: u64,
    /// Keys generated per transaction.
    pub batch_size: u64,
    /// How often the refill worker checks the free count.
    pub check_interval_ms: u64,
    /// The most keys one manual refill (`POST /admin/keypool/refill`) may ask for.
    pub max_refill: u64,
    /// Keys an origin leases at once into its in-memory buffer.
    pub lease_batch: u32,
}

/// The admin endpoints (`/admin/...` on the admin listener).
#[derive(Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Bearer token the admin endpoints require (`EDGELINK_ADMIN_TOKEN`);
    /// without one they are off (404).
    pub token: Option<String>,
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The creation API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OriginConfig {
    /// The public base URL of short links, e.g. `https://sho.rt`; links may
    /// not point at its host.
    pub public_url: String,
    /// Domains (and their subdomains) no link may point at. In the
    /// environment: comma-separated.
    pub blocked_domains: Vec<String>,
    pub alias_min_len: usize,
    pub alias_max_len: usize,
    /// The longest lifetime a link may be given.
    pub max_ttl_secs: u64,
    /// Largest request body of a single-link call.
    pub max_body_bytes: usize,
    /// Largest request body of `POST /api/v1/links/batch`.
    pub max_batch_body_bytes: usize,
    /// Most links one batch may create.
    pub max_batch_links: usize,
    /// Refuse targets whose host is a loopback, private, link-local or
    /// otherwise non-public address, or a `localhost` name.
    pub block_private_targets: bool,
}

/// Start-up helpers for automation.
#[derive(Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BootstrapConfig {
    /// An API key to register at start-up (`EDGELINK_BOOTSTRAP_API_KEY`),
    /// in the form `edgelink apikey create` prints.
    pub api_key: Option<String>,
}

impl std::fmt::Debug for BootstrapConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapConfig")
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// TLS on the public listener (rustls). With no certificate the public
/// listener speaks plain HTTP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chains and keys (PEM files), chosen by SNI among the DNS
    /// names of each certificate; the first answers clients that send no
    /// name or an unknown one. File only (`[[tls.certificates]]`).
    pub certificates: Vec<CertificateFiles>,
    /// A plain-HTTP listener that answers every request with a 308 to the
    /// same path over HTTPS (`/healthz` and `/readyz` are answered as is).
    pub redirect_listen: Option<SocketAddr>,
    /// The port written in those redirects (443 is left out of the URL).
    pub https_port: u16,
    /// Reload the certificates when a file in their directories changes
    /// (SIGHUP always reloads them).
    pub watch: bool,
}

/// One certificate chain and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The edge's reverse proxy to origin upstreams.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Origin base URLs (`http://host:port`); empty turns the proxy off.
    pub upstreams: Vec<String>,
    /// Path prefixes sent to the upstreams.
    pub prefixes: Vec<String>,
    /// How a request picks its upstream.
    pub balance: Balance,
    /// Whole-request budget from arrival to the upstream's response head,
    /// retries included; beyond it the client gets 504.
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// Further attempts after the first, where a retry is allowed.
    pub max_retries: u32,
    /// Retries in flight may be at most this share of requests in flight
    /// (at least 3), so retries cannot multiply an overload.
    pub retry_budget_percent: u32,
    /// First retry backoff; each next one doubles, all fully jittered.
    pub retry_backoff_ms: u64,
    /// Largest request body sent upstream (413 beyond).
    pub max_body_bytes: usize,
    /// Request bodies up to this size with a known length are kept so a
    /// failed attempt can be replayed; larger ones are streamed and are
    /// retried only when no byte was sent (connect failures).
    pub replay_body_bytes: usize,
    /// Idle upstream connections kept per host.
    pub pool_max_idle_per_host: usize,
    pub pool_idle_timeout_ms: u64,
    /// Consecutive 5xx answers or connect failures that eject a host.
    pub eject_consecutive_failures: u32,
    /// An ejection lasts this long times the number of times the host has
    /// been ejected, up to `eject_max_ms`.
    pub eject_base_ms: u64,
    pub eject_max_ms: u64,
    /// At most this share of hosts is ejected at once (one host always may).
    pub max_ejection_percent: u32,
    /// Path of the active health check; empty turns it off.
    pub health_check_path: String,
    pub health_check_interval_ms: u64,
    pub health_check_timeout_ms: u64,
    /// Failed checks in a row that mark a host unhealthy.
    pub unhealthy_threshold: u32,
    /// Passed checks in a row that bring it back.
    pub healthy_threshold: u32,
}

/// How the proxy picks an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// The fewer requests in flight of two hosts drawn at random.
    LeastOutstanding,
    RoundRobin,
}

/// The circuit breakers in front of every backend ([`crate::breaker`]);
/// one set of thresholds, one breaker per backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    pub enabled: bool,
    /// Failures in a row that open a breaker.
    pub consecutive_failures: u32,
    /// Or: this share of the calls in one window failed...
    pub failure_rate_percent: u32,
    /// ...over a fixed window of this length...
    pub window_ms: u64,
    /// ...that held at least this many calls.
    pub min_calls: u32,
    /// First open span; it doubles per failed probe up to `max_open_ms`
    /// and is jittered down to half. The cap bounds how long a recovered
    /// backend waits to be used again.
    pub open_ms: u64,
    pub max_open_ms: u64,
    /// Calls let through at once to probe a half-open backend.
    pub half_open_probes: u32,
}

/// Distributed tracing ([`crate::trace`]): off unless an endpoint is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracingConfig {
    /// OTLP/HTTP base URL (`http://collector:4318`); spans go to
    /// `<endpoint>/v1/traces` as JSON. None: tracing is off.
    pub otlp_endpoint: Option<String>,
    /// Share of requests traced when the caller sent no B3 sampling
    /// decision (a decision it sent is followed).
    pub sample_ratio: f64,
    /// `service.name` of the spans; default: `edgelink-<role>`.
    pub service_name: Option<String>,
    /// Finished spans waiting for export at most; more are dropped.
    pub max_queue: usize,
    pub export_timeout_ms: u64,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            otlp_endpoint: None,
            sample_ratio: 0.01,
            service_name: None,
            max_queue: 4_096,
            export_timeout_ms: 2_000,
        }
    }
}

/// The edge's access log: JSON lines, written by a task of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessLogConfig {
    /// File appended to (`-`: standard output). None: no access log.
    pub path: Option<PathBuf>,
    /// Lines waiting to be written at most; more are dropped and counted.
    pub max_queue: usize,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            path: None,
            max_queue: 8_192,
        }
    }
}

/// Click counting at the edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnalyticsConfig {
    /// Count redirects per link and UTC day, human and bot.
    pub enabled: bool,
    /// How often counts are flushed to the source of truth.
    pub flush_interval_ms: u64,
    /// (code, day) pairs held between flushes at most, counting those of a
    /// flush being retried; clicks for new pairs beyond it are dropped
    /// (`edgelink_clicks_dropped_total`).
    pub max_pending: usize,
    /// (code, day) pairs per write at most: a flush is written in pieces
    /// this size, spread over the first half of the interval.
    pub flush_batch: usize,
    /// The flush thread's CPU priority (read at start).
    pub flush_priority: FlushPriority,
}

/// How the click-flush thread competes for CPU with the threads that serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlushPriority {
    /// Linux `SCHED_IDLE`: it runs when a CPU has nothing else to do, and a
    /// serving thread that wakes takes the CPU from it at once. A flush
    /// (tens of milliseconds a second under uniform traffic) then never
    /// stands in front of requests on a shared CPU. On a machine kept
    /// entirely busy it gets only a sliver of CPU, its counts wait, and
    /// beyond `max_pending` clicks are dropped (counted): serving wins.
    Idle,
    /// The scheduler's default: it takes its turn beside the serving
    /// threads, and requests wait behind it on a shared CPU.
    Normal,
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        AnalyticsConfig {
            enabled: true,
            flush_interval_ms: 1_000,
            max_pending: 100_000,
            flush_batch: 500,
            flush_priority: FlushPriority::Idle,
        }
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            enabled: true,
            consecutive_failures: 5,
            failure_rate_percent: 50,
            window_ms: 10_000,
            min_calls: 20,
            open_ms: 500,
            max_open_ms: 4_000,
            half_open_probes: 1,
        }
    }
}

/// Request limits and abuse control on the public listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Longest request target (path and query) accepted; 414 beyond.
    pub max_uri_bytes: usize,
    /// Peers (addresses or CIDR blocks) whose `X-Forwarded-For` is believed;
    /// from anyone else the socket's address is the client.
    pub trusted_proxies: Vec<String>,
    /// Creation API requests per second per client IP (0: unlimited) and
    /// the burst above that rate.
    pub create_per_sec: f64,
    pub create_burst: u32,
    /// 404 answers per second per client IP (0: unlimited) and burst. A
    /// client over it gets 429 for any code not already in tier 0, so a
    /// scan of random codes cannot reach the database at full speed.
    pub not_found_per_sec: f64,
    pub not_found_burst: u32,
    /// API answers of 401 per second per client (0: unlimited) and burst.
    /// A client over it gets 429 for every API call before it reaches an
    /// origin, so a flood of made-up keys cannot reach the key store.
    pub unauthorized_per_sec: f64,
    pub unauthorized_burst: u32,
    /// IPv6 clients share a bucket per prefix of this length (an IPv6
    /// host usually has a whole /64); IPv4 clients have one each.
    pub ipv6_prefix_len: u8,
    /// Client IPs tracked at once per limit; the idle ones are dropped
    /// first, and beyond this new clients share one bucket.
    pub max_tracked_clients: usize,
}

// === impl defaults ===

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            certificates: Vec::new(),
            redirect_listen: None,
            https_port: 443,
            watch: true,
        }
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            upstreams: Vec::new(),
            prefixes: vec!["/api/".to_owned()],
            balance: Balance::LeastOutstanding,
            timeout_ms: 15_000,
            connect_timeout_ms: 1_000,
            max_retries: 2,
            retry_budget_percent: 20,
            retry_backoff_ms: 25,
            max_body_bytes: 1024 * 1024,
            replay_body_bytes: 64 * 1024,
            pool_max_idle_per_host: 64,
            pool_idle_timeout_ms: 90_000,
            eject_consecutive_failures: 5,
            eject_base_ms: 30_000,
            eject_max_ms: 300_000,
            max_ejection_percent: 50,
            health_check_path: "/healthz".to_owned(),
            health_check_interval_ms: 5_000,
            health_check_timeout_ms: 1_000,
            unhealthy_threshold: 2,
            healthy_threshold: 1,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_uri_bytes: 2048,
            trusted_proxies: Vec::new(),
            create_per_sec: 10.0,
            create_burst: 50,
            not_found_per_sec: 20.0,
            not_found_burst: 100,
            unauthorized_per_sec: 1.0,
            unauthorized_burst: 20,
            ipv6_prefix_len: 64,
            max_tracked_clients: 100_000,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            threading: Threading::PerCore,
            workers: 0,
            max_connections: 10_000,
            backlog: 4096,
            header_read_timeout_ms: 5_000,
            keepalive_timeout_ms: 15_000,
            h2_idle_timeout_ms: 60_000,
            body_read_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            write_timeout_ms: 30_000,
            max_header_bytes: 16 * 1024,
            h2_max_concurrent_streams: 256,
            drain_timeout_ms: 10_000,
            shutdown_grace_ms: 0,
            ready_needs_source: true,
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_entries: 1_000_000,
            ttl_secs: 300,
            negative_ttl_secs: 5,
            stale_if_error_secs: 3_600,
        }
    }
}

impl Default for RedirectConfig {
    fn default() -> Self {
        RedirectConfig {
            default_status: RedirectStatus::Found,
            permanent_max_age_secs: 3_600,
        }
    }
}

impl Default for SqliteConfig {
    fn default() -> Self {
        SqliteConfig {
            path: PathBuf::from("./edgelink.db"),
            readers: 4,
            timeout_ms: 1_000,
        }
    }
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: None,
            pool_size: 16,
            timeout_ms: 500,
            connect_timeout_ms: 2_000,
        }
    }
}

impl Default for KeypoolConfig {
    fn default() -> Self {
        KeypoolConfig {
            key_length: 7,
            low_watermark: 100_000,
            high_watermark: 300_000,
            batch_size: 100_000,
            check_interval_ms: 1_000,
            max_refill: 10_000_000,
            lease_batch: 1_000,
        }
    }
}

impl Default for OriginConfig {
    fn default() -> Self {
        OriginConfig {
            public_url: "http://127.0.0.1:8080".to_owned(),
            blocked_domains: Vec::new(),
            alias_min_len: 3,
            alias_max_len: 64,
            max_ttl_secs: 10 * 365 * 86_400,
            max_body_bytes: 16 * 1024,
            max_batch_body_bytes: 1024 * 1024,
            max_batch_links: 100,
            block_private_targets: true,
        }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: None,
            pool_size: 8,
            timeout_ms: 100,
            connect_timeout_ms: 1_000,
            ttl_secs: 86_400,
            key_prefix: "el:".to_owned(),
        }
    }
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
        let mut problems = Vec::new();
        fn need(problems: &mut Vec<String>, ok: bool, msg: &str) {
            if !ok {
                problems.push(msg.to_owned());
            }
        }
        let s = &self.server;
        need(
            &mut problems,
            (1..=1_000_000).contains(&s.max_connections),
            "server.max_connections must be 1..=1000000",
        );
        need(
            &mut problems,
            s.backlog > 0 && s.backlog <= 65_535,
            "server.backlog must be 1..=65535",
        );
        need(
            &mut problems,
            (1..=300_000).contains(&s.header_read_timeout_ms),
            "server.header_read_timeout_ms must be 1..=300000",
        );
        for (key, ms) in [
            ("keepalive_timeout_ms", s.keepalive_timeout_ms),
            ("h2_idle_timeout_ms", s.h2_idle_timeout_ms),
            ("body_read_timeout_ms", s.body_read_timeout_ms),
            ("body_timeout_ms", s.body_timeout_ms),
            ("write_timeout_ms", s.write_timeout_ms),
        ] {
            need(
                &mut problems,
                (1..=3_600_000).contains(&ms),
                &format!("server.{key} must be 1..=3600000"),
            );
        }
        need(
            &mut problems,
            (8 * 1024..=1024 * 1024).contains(&s.max_header_bytes),
            "server.max_header_bytes must be 8192..=1048576",
        );
        need(
            &mut problems,
            s.h2_max_concurrent_streams > 0,
            "server.h2_max_concurrent_streams must be > 0",
        );
        need(
            &mut problems,
            s.drain_timeout_ms <= 600_000,
            "server.drain_timeout_ms must be <= 600000",
        );
        need(
            &mut problems,
            s.workers <= 1024,
            "server.workers must be <= 1024",
        );
        need(
            &mut problems,
            s.listen != s.admin_listen,
            "server.listen and server.admin_listen must differ",
        );
        let c = &self.cache;
        need(
            &mut problems,
            c.max_entries > 0,
            "cache.max_entries must be > 0",
        );
        need(&mut problems, c.ttl_secs > 0, "cache.ttl_secs must be > 0");
        need(
            &mut problems,
            c.negative_ttl_secs > 0 && c.negative_ttl_secs <= c.ttl_secs,
            "cache.negative_ttl_secs must be > 0 and <= cache.ttl_secs",
        );
        need(
            &mut problems,
            self.redirect.permanent_max_age_secs <= 31_536_000,
            "redirect.permanent_max_age_secs must be <= 31536000 (one year)",
        );
        let k = &self.keypool;
        need(
            &mut problems,
            (4..=10).contains(&k.key_length),
            "keypool.key_length must be 4..=10",
        );
        need(
            &mut problems,
            k.low_watermark < k.high_watermark,
            "keypool.low_watermark must be below keypool.high_watermark",
        );
        need(
            &mut problems,
            (1_000..=1_000_000).contains(&k.batch_size),
            "keypool.batch_size must be 1000..=1000000",
        );
        need(
            &mut problems,
            (10..=3_600_000).contains(&k.check_interval_ms),
            "keypool.check_interval_ms must be 10..=3600000",
        );
        need(
            &mut problems,
            k.max_refill > 0 && k.high_watermark <= 1_000_000_000,
            "keypool.max_refill must be > 0 and keypool.high_watermark <= 1000000000",
        );
        need(
            &mut problems,
            (1..=100_000).contains(&k.lease_batch),
            "keypool.lease_batch must be 1..=100000",
        );
        let o = &self.origin;
        match url::Url::parse(&o.public_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
            _ => problems.push("origin.public_url must be an http(s) URL with a host".to_owned()),
        }
        need(
            &mut problems,
            1 <= o.alias_min_len && o.alias_min_len <= o.alias_max_len && o.alias_max_len <= 64,
            "origin.alias_min_len and alias_max_len must satisfy 1 <= min <= max <= 64",
        );
        need(
            &mut problems,
            o.max_ttl_secs > 0,
            "origin.max_ttl_secs must be > 0",
        );
        need(
            &mut problems,
            (1024..=1024 * 1024).contains(&o.max_body_bytes),
            "origin.max_body_bytes must be 1024..=1048576",
        );
        need(
            &mut problems,
            (1024..=16 * 1024 * 1024).contains(&o.max_batch_body_bytes),
            "origin.max_batch_body_bytes must be 1024..=16777216",
        );
        need(
            &mut problems,
            (1..=1_000).contains(&o.max_batch_links),
            "origin.max_batch_links must be 1..=1000",
        );
        if let Some(token) = &self.admin.token {
            need(
                &mut problems,
                token.len() >= 16 && token.bytes().all(|b| b.is_ascii_graphic()),
                "admin.token must be at least 16 visible ASCII characters",
            );
        }
        match mode {
            StorageMode::Embedded => {
                let q = &self.sqlite;
                need(
                    &mut problems,
                    !q.path.as_os_str().is_empty(),
                    "sqlite.path must not be empty",
                );
                need(
                    &mut problems,
                    (1..=64).contains(&q.readers),
                    "sqlite.readers must be 1..=64",
                );
                need(
                    &mut problems,
                    (1..=60_000).contains(&q.timeout_ms),
                    "sqlite.timeout_ms must be 1..=60000",
                );
            }
            StorageMode::Distributed => {
                let p = &self.postgres;
                match &p.url {
                    None => problems.push(
                        "postgres.url is required (--postgres-url or EDGELINK_POSTGRES_URL)"
                            .to_owned(),
                    ),
                    Some(url) => {
                        if let Err(e) = tokio_postgres::Config::from_str(url) {
                            problems.push(format!("postgres.url is not a PostgreSQL URL: {e}"));
                        }
                    }
                }
                need(
                    &mut problems,
                    (1..=1024).contains(&p.pool_size),
                    "postgres.pool_size must be 1..=1024",
                );
                need(
                    &mut problems,
                    (1..=60_000).contains(&p.timeout_ms),
                    "postgres.timeout_ms must be 1..=60000",
                );
                need(
                    &mut problems,
                    (1..=60_000).contains(&p.connect_timeout_ms),
                    "postgres.connect_timeout_ms must be 1..=60000",
                );
                let r = &self.redis;
                if let Some(url) = &r.url {
                    if let Err(e) = bb8_redis::redis::Client::open(url.as_str()) {
                        problems.push(format!("redis.url is not a Redis URL: {e}"));
                    }
                }
                need(
                    &mut problems,
                    (1..=1024).contains(&r.pool_size),
                    "redis.pool_size must be 1..=1024",
                );
                need(
                    &mut problems,
                    (1..=60_000).contains(&r.timeout_ms),
                    "redis.timeout_ms must be 1..=60000",
                );
                need(
                    &mut problems,
                    (1..=60_000).contains(&r.connect_timeout_ms),
                    "redis.connect_timeout_ms must be 1..=60000",
                );
                need(&mut problems, r.ttl_secs > 0, "redis.ttl_secs must be > 0");
                need(
                    &mut problems,
                    r.key_prefix.len() <= 64,
                    "redis.key_prefix must be at most 64 bytes",
                );
            }
        }
        self.validate_edge(&mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems.join("; ")))
        }
    }

    /// The sections the edge reads: TLS, proxy and limits.
    fn validate_edge(&self, problems: &mut Vec<String>) {
        let mut need = |ok: bool, msg: String| {
            if !ok {
                problems.push(msg);
            }
        };
        let t = &self.tls;
        need(t.https_port > 0, "tls.https_port must be > 0".into());
        if let Some(addr) = t.redirect_listen {
            need(
                !t.certificates.is_empty(),
                "tls.redirect_listen needs tls.certificates".into(),
            );
            need(
                addr != self.server.listen && addr != self.server.admin_listen,
                "tls.redirect_listen must differ from the other listeners".into(),
            );
        }
        let p = &self.proxy;
        for u in &p.upstreams {
            need(
                upstream_base(u).is_some(),
                format!("proxy.upstreams: {u:?} is not an http://host:port base URL"),
            );
        }
        for prefix in &p.prefixes {
            need(
                prefix.starts_with('/') && prefix.len() > 1,
                format!("proxy.prefixes: {prefix:?} must start with / and name a path"),
            );
        }
        need(
            (1..=600_000).contains(&p.timeout_ms),
            "proxy.timeout_ms must be 1..=600000".into(),
        );
        need(
            (1..=60_000).contains(&p.connect_timeout_ms),
            "proxy.connect_timeout_ms must be 1..=60000".into(),
        );
        need(
            p.max_retries <= 10,
            "proxy.max_retries must be <= 10".into(),
        );
        need(
            p.retry_budget_percent <= 100,
            "proxy.retry_budget_percent must be <= 100".into(),
        );
        need(
            p.replay_body_bytes <= p.max_body_bytes,
            "proxy.replay_body_bytes must be <= proxy.max_body_bytes".into(),
        );
        need(
            p.eject_consecutive_failures > 0,
            "proxy.eject_consecutive_failures must be > 0".into(),
        );
        need(
            p.eject_base_ms > 0 && p.eject_base_ms <= p.eject_max_ms,
            "proxy.eject_base_ms must be > 0 and <= proxy.eject_max_ms".into(),
        );
        need(
            p.max_ejection_percent <= 100,
            "proxy.max_ejection_percent must be <= 100".into(),
        );
        need(
            p.health_check_path.is_empty() || p.health_check_path.starts_with('/'),
            "proxy.health_check_path must be empty or start with /".into(),
        );
        need(
            p.health_check_interval_ms >= 100 && p.health_check_timeout_ms > 0,
            "proxy.health_check_interval_ms must be >= 100 and proxy.health_check_timeout_ms > 0"
                .into(),
        );
        need(
            p.unhealthy_threshold > 0 && p.healthy_threshold > 0,
            "proxy.unhealthy_threshold and proxy.healthy_threshold must be > 0".into(),
        );
        let t = &self.tracing;
        if let Some(endpoint) = &t.otlp_endpoint {
            need(
                upstream_base(endpoint).is_some(),
                format!("tracing.otlp_endpoint: {endpoint:?} is not an http://host:port base URL"),
            );
        }
        need(
            t.sample_ratio.is_finite() && (0.0..=1.0).contains(&t.sample_ratio),
            "tracing.sample_ratio must be 0..=1".into(),
        );
        need(
            (1..=1_000_000).contains(&t.max_queue) && (1..=60_000).contains(&t.export_timeout_ms),
            "tracing.max_queue must be 1..=1000000 and tracing.export_timeout_ms 1..=60000".into(),
        );
        need(
            (1..=1_000_000).contains(&self.access_log.max_queue),
            "access_log.max_queue must be 1..=1000000".into(),
        );
        let a = &self.analytics;
        need(
            (10..=600_000).contains(&a.flush_interval_ms),
            "analytics.flush_interval_ms must be 10..=600000".into(),
        );
        need(
            (1..=100_000_000).contains(&a.max_pending),
            "analytics.max_pending must be 1..=100000000".into(),
        );
        need(
            (1..=1_000_000).contains(&a.flush_batch),
            "analytics.flush_batch must be 1..=1000000".into(),
        );
        let b = &self.breaker;
        need(
            b.consecutive_failures > 0 && b.min_calls > 0 && b.half_open_probes > 0,
            "breaker.consecutive_failures, breaker.min_calls and breaker.half_open_probes must be > 0"
                .into(),
        );
        need(
            (1..=100).contains(&b.failure_rate_percent),
            "breaker.failure_rate_percent must be 1..=100".into(),
        );
        need(
            b.window_ms > 0 && b.open_ms > 0 && b.open_ms <= b.max_open_ms,
            "breaker.window_ms and breaker.open_ms must be > 0, with breaker.open_ms <= breaker.max_open_ms"
                .into(),
        );
        let l = &self.limits;
        need(
            (16..=65_536).contains(&l.max_uri_bytes),
            "limits.max_uri_bytes must be 16..=65536".into(),
        );
        for cidr in &l.trusted_proxies {
            need(
                cidr.parse::<crate::ipnet::IpNet>().is_ok(),
                format!("limits.trusted_proxies: {cidr:?} is not an address or CIDR block"),
            );
        }
        for (name, rate, burst) in [
            ("create", l.create_per_sec, l.create_burst),
            ("not_found", l.not_found_per_sec, l.not_found_burst),
            ("unauthorized", l.unauthorized_per_sec, l.unauthorized_burst),
        ] {
            need(
                rate.is_finite() && rate >= 0.0 && (rate == 0.0 || burst >= 1),
                format!("limits.{name}_per_sec must be >= 0, with limits.{name}_burst >= 1"),
            );
        }
        need(
            (1..=128).contains(&l.ipv6_prefix_len),
            "limits.ipv6_prefix_len must be 1..=128".into(),
        );
        need(
            (1..=10_000_000).contains(&l.max_tracked_clients),
            "limits.max_tracked_clients must be 1..=10000000".into(),
        );
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.server.header_read_timeout_ms)
    }
}

/// `http://host:port` (a trailing `/` allowed) as a URI with no path, or
/// `None` when `s` is something else.
pub fn upstream_base(s: &str) -> Option<http::Uri> {
    let uri: http::Uri = s.trim_end_matches('/').parse().ok()?;
    let plain = uri.scheme_str() == Some("http")
        && uri.authority().is_some()
        && matches!(uri.path(), "" | "/")
        && uri.query().is_none();
    plain.then_some(uri)
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
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid_for_embedded_mode() {
        Config::default()
            .validate_for(StorageMode::Embedded)
            .unwrap();
    }

    #[test]
    fn distributed_mode_needs_postgres() {
        let err = Config::default()
            .validate_for(StorageMode::Distributed)
            .unwrap_err();
        assert!(
            err.to_string().contains("postgres.url is required"),
            "{err}"
        );
    }

    #[test]
    fn file_then_env_override() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[cache]\nttl_secs = 60\n[redis]\nkey_prefix = \"file:\"\n",
        )
        .unwrap();
        let cfg = Config::load(
            Some(&path),
            &env(&[
                ("EDGELINK_CACHE_TTL_SECS", "90"),
                ("EDGELINK_POSTGRES_URL", "postgres://u@127.0.0.1/db"),
                ("EDGELINK_SERVER_LISTEN", "127.0.0.1:1234"),
                ("EDGELINK_ADMIN_TOKEN", "s3cret-token-0123456789"),
                ("EDGELINK_KEYPOOL_KEY_LENGTH", "8"),
                ("EDGELINK_TRACE_LEVEL", "not ours, ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.admin.token.as_deref(), Some("s3cret-token-0123456789"));
        assert!(
            !format!("{cfg:?}").contains("s3cret"),
            "the token never shows in Debug output"
        );
        assert_eq!(cfg.keypool.key_length, 8);
        assert_eq!(cfg.cache.ttl_secs, 90);
        assert_eq!(cfg.redis.key_prefix, "file:");
        assert_eq!(
            cfg.postgres.url.as_deref(),
            Some("postgres://u@127.0.0.1/db")
        );
        assert_eq!(cfg.server.listen, "127.0.0.1:1234".parse().unwrap());
        cfg.validate_for(StorageMode::Distributed).unwrap();
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let e = Config::load(None, &env(&[("EDGELINK_CACHE_TTL", "5")])).unwrap_err();
        assert!(e.to_string().contains("cache.ttl"), "{e}");
        let e = Config::load(None, &env(&[("EDGELINK_CACHE_TTL_SECS", "soon")])).unwrap_err();
        assert!(e.to_string().contains("integer"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[cache]\nttl_sec = 60\n").unwrap();
        let e = Config::load(Some(&path), &env(&[])).unwrap_err();
        assert!(e.to_string().contains("c.toml"), "{e}");

        std::fs::write(&path, "[redirect]\ndefault_status = 303\n").unwrap();
        assert!(Config::load(Some(&path), &env(&[])).is_err());
    }

    #[test]
    fn the_click_flush_runs_at_idle_priority_unless_told_otherwise() {
        let cfg = Config::load(None, &env(&[])).unwrap();
        assert_eq!(cfg.analytics.flush_priority, FlushPriority::Idle);
        let vars = env(&[("EDGELINK_ANALYTICS_FLUSH_PRIORITY", "normal")]);
        let cfg = Config::load(None, &vars).unwrap();
        assert_eq!(cfg.analytics.flush_priority, FlushPriority::Normal);
        let vars = env(&[("EDGELINK_ANALYTICS_FLUSH_PRIORITY", "low")]);
        let e = Config::load(None, &vars).unwrap_err();
        assert!(e.to_string().contains("flush_priority"), "{e}");
    }

    #[test]
    fn a_click_flush_batch_is_bounded() {
        let cfg = Config::load(None, &env(&[])).unwrap();
        assert_eq!(cfg.analytics.flush_batch, 500);
        let vars = env(&[("EDGELINK_ANALYTICS_FLUSH_BATCH", "500")]);
        assert_eq!(
            Config::load(None, &vars).unwrap().analytics.flush_batch,
            500
        );
        for bad in ["0", "1000001"] {
            let vars = env(&[("EDGELINK_ANALYTICS_FLUSH_BATCH", bad)]);
            let e = Config::load(None, &vars)
                .unwrap()
                .validate_for(StorageMode::Embedded)
                .unwrap_err();
            assert!(e.to_string().contains("flush_batch"), "{bad}: {e}");
        }
    }

    #[test]
    fn threading_decides_how_many_public_listeners_to_bind() {
        let cfg = Config::load(
            None,
            &env(&[
                ("EDGELINK_SERVER_THREADING", "work-stealing"),
                ("EDGELINK_SERVER_WORKERS", "3"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.server.threading, Threading::WorkStealing);
        assert_eq!(cfg.server.public_listeners(), 1);
        let cfg = Config::load(None, &env(&[("EDGELINK_SERVER_WORKERS", "3")])).unwrap();
        assert_eq!(cfg.server.threading, Threading::PerCore, "the default");
        assert_eq!(cfg.server.public_listeners(), 3);
        assert!(Config::default().server.worker_count() >= 1);
        let e = Config::load(None, &env(&[("EDGELINK_SERVER_THREADING", "fast")])).unwrap_err();
        assert!(e.to_string().contains("per-core"), "{e}");
    }

    #[test]
    fn validation_reports_every_problem() {
        let mut cfg = Config::default();
        cfg.cache.max_entries = 0;
        cfg.server.max_header_bytes = 10;
        cfg.server.max_connections = usize::MAX;
        cfg.postgres.url = Some("not a url".to_owned());
        cfg.redis.url = Some("nope://x".to_owned());
        cfg.keypool.low_watermark = cfg.keypool.high_watermark;
        cfg.admin.token = Some("short".to_owned());
        let msg = cfg
            .validate_for(StorageMode::Distributed)
            .unwrap_err()
            .to_string();
        for needle in [
            "max_connections",
            "cache.max_entries",
            "max_header_bytes",
            "postgres.url",
            "redis.url",
            "keypool.low_watermark",
            "admin.token",
        ] {
            assert!(msg.contains(needle), "{needle} missing from {msg}");
        }
    }
}
