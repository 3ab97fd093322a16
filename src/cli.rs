//! The command line: one subcommand per role and per one-shot task.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "edgelink",
    version,
    about = "EdgeLink: a fast link-shortener serving stack"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// All in one process on an embedded SQLite file (the default setup).
    Serve {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        listen: Listen,
        #[command(flatten)]
        sqlite: SqliteArg,
    },
    /// The redirect edge on the distributed tiers (Redis, PostgreSQL).
    Edge {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        listen: Listen,
        #[command(flatten)]
        distributed: Distributed,
    },
    /// The key pool's refill worker and admin endpoints, on PostgreSQL.
    Keypool {
        #[command(flatten)]
        common: Common,
        /// Admin listener for /admin/keypool and /metrics [default: 127.0.0.1:9090].
        #[arg(long, value_name = "ADDR")]
        admin_listen: Option<SocketAddr>,
        /// PostgreSQL URL, e.g. postgres://user@127.0.0.1:5432/db.
        #[arg(long, value_name = "URL")]
        postgres_url: Option<String>,
    },
    /// The creation API (`/api/v1`) on PostgreSQL, taking keys from the pool.
    Origin {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        listen: Listen,
        #[command(flatten)]
        distributed: Distributed,
    },
    /// Manage API keys of the creation API.
    Apikey {
        #[command(subcommand)]
        action: ApikeyAction,
    },
    /// Apply schema migrations to the configured store and exit.
    Migrate {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        store: StoreArgs,
        /// Apply nothing: wait up to SECS for another process (a migration
        /// Job) to bring the PostgreSQL schema up to date; exit 0 when it
        /// is, 1 when the time runs out (for init containers).
        #[arg(long, value_name = "SECS")]
        wait: Option<u64>,
    },
    /// The autoscaler: its simulator and the live sidecar.
    Autoscale {
        #[command(subcommand)]
        action: AutoscaleAction,
    },
    /// Load links from a CSV file: code,url[,status[,expires_at]] (header optional).
    Import {
        /// The CSV file; `-` reads standard input.
        file: PathBuf,
        /// Rows written per transaction.
        #[arg(long, default_value_t = edgelink_core::import::DEFAULT_BATCH)]
        batch_size: usize,
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum AutoscaleAction {
    /// Replay a per-second request-rate trace through scaling policies and
    /// report cost (replica-hours) and SLO violations.
    Simulate(SimulateArgs),
    /// Run the autoscaler: read the edges' load, decide, scale (see
    /// deploy/autoscaler.example.toml).
    Run {
        /// The autoscaler's TOML configuration.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Check the configuration and exit.
        #[arg(long)]
        check: bool,
    },
}

/// `autoscale simulate`'s flags.
#[derive(Args, Debug)]
pub(crate) struct SimulateArgs {
    /// Trace file: one integer per second, whitespace-separated (gzip if .gz).
    #[arg(long, value_name = "FILE")]
    pub(crate) trace: PathBuf,
    /// hpa, scheduled, hpa+spike, hpa+forecast, layered, layered-naive, layered+scheduled,
    /// static-peak, oracle, or all.
    #[arg(long, default_value = "all")]
    pub(crate) policy: String,
    /// Requests/s of the trace's busiest minute after scaling.
    #[arg(long, default_value_t = 200_000.0)]
    pub(crate) scale: f64,
    /// Requests/s one edge replica serves.
    #[arg(long, default_value_t = 10_000.0)]
    pub(crate) node_capacity: f64,
    /// Seconds from asking for a replica until it serves.
    #[arg(long, default_value_t = 120)]
    pub(crate) startup_seconds: u64,
    /// Days at the start that policies learn from but are not scored on.
    #[arg(long, default_value_t = 14)]
    pub(crate) train_days: u64,
    /// The trace's local time zone, hours east of UTC (NASA 1995: -4).
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub(crate) utc_offset_hours: i64,
    /// Local peak hours for the scheduled thresholds, FROM-TO.
    #[arg(long, default_value = "9-18")]
    pub(crate) peak_hours: String,
    #[arg(long, default_value_t = 1)]
    pub(crate) min_replicas: u32,
    #[arg(long, default_value_t = 1000)]
    pub(crate) max_replicas: u32,
    /// One JSON object per policy instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Subcommand, Debug)]
pub(crate) enum ApikeyAction {
    /// Create a key and print it (once: only its hash is stored).
    Create {
        /// Who or what the key is for.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke a key, named by its prefix (el_ and 8 characters) or the key itself.
    Revoke {
        key: String,
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Args, Debug, Clone)]
pub(crate) struct Common {
    /// TOML config file; `EDGELINK_<SECTION>_<KEY>` variables override it, flags override both.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Validate the configuration and exit (0 when valid, 64 when not).
    #[arg(long)]
    pub(crate) check: bool,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct Listen {
    /// Public listener [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<SocketAddr>,
    /// Admin listener for /metrics [default: 127.0.0.1:9090].
    #[arg(long, value_name = "ADDR")]
    pub(crate) admin_listen: Option<SocketAddr>,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct SqliteArg {
    /// SQLite database file [default: ./edgelink.db].
    #[arg(long, value_name = "PATH")]
    pub(crate) sqlite: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct Distributed {
    /// PostgreSQL URL, e.g. postgres://user@127.0.0.1:5432/db.
    #[arg(long, value_name = "URL")]
    pub(crate) postgres_url: Option<String>,
    /// Redis URL, e.g. redis://127.0.0.1:6379/0 (optional).
    #[arg(long, value_name = "URL")]
    pub(crate) redis_url: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct StoreArgs {
    /// SQLite database file (the default store) [default: ./edgelink.db].
    #[arg(long, value_name = "PATH", conflicts_with = "postgres_url")]
    pub(crate) sqlite: Option<PathBuf>,
    /// PostgreSQL URL; when set (here or by config), PostgreSQL is the store.
    #[arg(long, value_name = "URL")]
    pub(crate) postgres_url: Option<String>,
}
