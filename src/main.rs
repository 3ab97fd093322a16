//! `edgelink`: one binary, one subcommand per role. This file only parses
//! flags, loads and validates config, sets up logging and the runtime, binds,
//! and hands over to the role's `run`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use edgelink_core::config::{
    Config, ConfigError, OriginConfig, ProcessEnv, ServerConfig, StorageMode, Threading,
};
use edgelink_core::import::{import_csv, ImportError, ImportOptions};
use edgelink_core::shutdown::{cancel_on_signal, CancellationToken};
use edgelink_core::store::postgres::PgStore;
use edgelink_core::store::sqlite::SqliteStore;
use edgelink_core::{LinkStore, Stores};

/// Exit code for a bad command line or configuration (sysexits EX_USAGE).
const EXIT_CONFIG: u8 = 64;
/// Exit code for an import that skipped malformed rows (sysexits EX_DATAERR).
const EXIT_DATA: u8 = 65;

#[derive(Parser, Debug)]
#[command(
    name = "edgelink",
    version,
    about = "EdgeLink: a fast link-shortener serving stack"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
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
enum AutoscaleAction {
    /// Replay a per-second request-rate trace through scaling policies and
    /// report cost (replica-hours) and SLO violations.
    Simulate {
        /// Trace file: one integer per second, whitespace-separated (gzip if .gz).
        #[arg(long, value_name = "FILE")]
        trace: PathBuf,
        /// hpa, scheduled, hpa+spike, hpa+forecast, layered, layered-naive, layered+scheduled,
        /// static-peak, oracle, or all.
        #[arg(long, default_value = "all")]
        policy: String,
        /// Requests/s of the trace's busiest minute after scaling.
        #[arg(long, default_value_t = 200_000.0)]
        scale: f64,
        /// Requests/s one edge replica serves.
        #[arg(long, default_value_t = 10_000.0)]
        node_capacity: f64,
        /// Seconds from asking for a replica until it serves.
        #[arg(long, default_value_t = 120)]
        startup_seconds: u64,
        /// Days at the start that policies learn from but are not scored on.
        #[arg(long, default_value_t = 14)]
        train_days: u64,
        /// The trace's local time zone, hours east of UTC (NASA 1995: -4).
        #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
        utc_offset_hours: i64,
        /// Local peak hours for the scheduled thresholds, FROM-TO.
        #[arg(long, default_value = "9-18")]
        peak_hours: String,
        #[arg(long, default_value_t = 1)]
        min_replicas: u32,
        #[arg(long, default_value_t = 1000)]
        max_replicas: u32,
        /// One JSON object per policy instead of a table.
        #[arg(long)]
        json: bool,
    },
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

#[derive(Subcommand, Debug)]
enum ApikeyAction {
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
struct Common {
    /// TOML config file; `EDGELINK_<SECTION>_<KEY>` variables override it, flags override both.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate the configuration and exit (0 when valid, 64 when not).
    #[arg(long)]
    check: bool,
}

#[derive(Args, Debug, Clone)]
struct Listen {
    /// Public listener [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Admin listener for /metrics [default: 127.0.0.1:9090].
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<SocketAddr>,
}

#[derive(Args, Debug, Clone)]
struct SqliteArg {
    /// SQLite database file [default: ./edgelink.db].
    #[arg(long, value_name = "PATH")]
    sqlite: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
struct Distributed {
    /// PostgreSQL URL, e.g. postgres://user@127.0.0.1:5432/db.
    #[arg(long, value_name = "URL")]
    postgres_url: Option<String>,
    /// Redis URL, e.g. redis://127.0.0.1:6379/0 (optional).
    #[arg(long, value_name = "URL")]
    redis_url: Option<String>,
}

#[derive(Args, Debug)]
struct StoreArgs {
    /// SQLite database file (the default store) [default: ./edgelink.db].
    #[arg(long, value_name = "PATH", conflicts_with = "postgres_url")]
    sqlite: Option<PathBuf>,
    /// PostgreSQL URL; when set (here or by config), PostgreSQL is the store.
    #[arg(long, value_name = "URL")]
    postgres_url: Option<String>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_CONFIG } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    edgelink_core::telemetry::init();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(Failure::Config(e)) => {
            eprintln!("edgelink: bad configuration: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Run(e)) => {
            eprintln!("edgelink: {e:#}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    Config(ConfigError),
    Run(anyhow::Error),
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::Config(e)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Run(e)
    }
}

/// Loads the config (file, environment, then flags) and validates it for
/// the storage mode the flags settle on.
fn load(
    common: &Common,
    flags: impl FnOnce(&mut Config) -> StorageMode,
) -> Result<(Config, StorageMode), ConfigError> {
    let mut config = Config::load(common.config.as_deref(), &ProcessEnv)?;
    let mode = flags(&mut config);
    config.validate_for(mode)?;
    Ok((config, mode))
}

/// Reads the configuration again the way it was read at start (file,
/// environment, the same flags), validated: what SIGHUP applies.
fn reloader(
    common: Common,
    flags: impl Fn(&mut Config) -> StorageMode + Send + Sync + 'static,
) -> Box<dyn Fn() -> Result<Config, String> + Send + Sync> {
    Box::new(move || {
        load(&common, &flags)
            .map(|(config, _)| config)
            .map_err(|e| e.to_string())
    })
}

fn apply_listen(config: &mut Config, listen: &Listen) {
    if let Some(a) = listen.listen {
        config.server.listen = a;
    }
    if let Some(a) = listen.admin_listen {
        config.server.admin_listen = a;
    }
}

fn apply_distributed(config: &mut Config, listen: &Listen, d: &Distributed) -> StorageMode {
    apply_listen(config, listen);
    if let Some(u) = &d.postgres_url {
        config.postgres.url = Some(u.clone());
    }
    if let Some(u) = &d.redis_url {
        config.redis.url = Some(u.clone());
    }
    StorageMode::Distributed
}

fn apply_store(config: &mut Config, store: &StoreArgs) -> StorageMode {
    if let Some(p) = &store.sqlite {
        config.sqlite.path = p.clone();
        config.postgres.url = None;
    }
    if let Some(u) = &store.postgres_url {
        config.postgres.url = Some(u.clone());
    }
    if config.postgres.url.is_some() {
        StorageMode::Distributed
    } else {
        StorageMode::Embedded
    }
}

/// The runtime for the CLI helpers (import, migrate): one worker is plenty.
fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if workers > 0 {
        b.worker_threads(workers);
    }
    Ok(b.enable_all().thread_name("edgelink").build()?)
}

/// The runtime a serving role runs on. Per-core: this thread runs the first
/// public listener and `edgelink_edge::run` starts one thread per further
/// listener. Work-stealing: one multi-threaded runtime.
fn serving_runtime(server: &ServerConfig) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(match server.threading {
        Threading::PerCore => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        Threading::WorkStealing => runtime(server.worker_count())?,
    })
}

/// `serve` and `edge`: load and check the configuration (certificates
/// included), then serve with SIGHUP reloading it the same way.
fn edge_role(
    common: Common,
    flags: impl Fn(&mut Config) -> StorageMode + Send + Sync + 'static,
) -> Result<ExitCode, Failure> {
    let (config, mode) = load(&common, &flags)?;
    check_certificates(&config)?;
    if let Some(code) = checked(common.check) {
        return Ok(code);
    }
    serve_edge(config, mode, reloader(common, flags))
}

/// The certificates of `[tls]` must load (readable PEM, keys matching)
/// for the configuration to be valid, so `--check` catches them too.
fn check_certificates(config: &Config) -> Result<(), ConfigError> {
    if config.tls.certificates.is_empty() {
        return Ok(());
    }
    edgelink_edge::tls::Certificates::load(&config.tls.certificates)
        .map(drop)
        .map_err(|e| ConfigError::Invalid(format!("tls.certificates: {e}")))
}

fn checked(check: bool) -> Option<ExitCode> {
    check.then(|| {
        println!("configuration is valid");
        ExitCode::SUCCESS
    })
}

fn dispatch(command: Command) -> Result<ExitCode, Failure> {
    match command {
        Command::Autoscale {
            action: AutoscaleAction::Run { config, check },
        } => {
            use edgelink_autoscaler::live;
            let config = live::config::Config::load(&config).map_err(|e| {
                Failure::Config(ConfigError::Invalid(format!(
                    "autoscaler configuration: {e}"
                )))
            })?;
            if check {
                println!("configuration ok");
                return Ok(ExitCode::SUCCESS);
            }
            runtime(2)?.block_on(async move {
                let addr = config.autoscaler.admin_listen;
                let admin = edgelink_core::net::listener::bind(addr, 128)
                    .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
                let shutdown = CancellationToken::new();
                cancel_on_signal(shutdown.clone());
                live::run(config, admin, shutdown).await?;
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Autoscale {
            action:
                AutoscaleAction::Simulate {
                    trace,
                    policy,
                    scale,
                    node_capacity,
                    startup_seconds,
                    train_days,
                    utc_offset_hours,
                    peak_hours,
                    min_replicas,
                    max_replicas,
                    json,
                },
        } => {
            use edgelink_autoscaler::{policies, sim, NAMES};
            let bad = |m: String| Failure::Config(ConfigError::Invalid(m));
            let peak = edgelink_autoscaler::parse_peak_hours(&peak_hours).ok_or_else(|| {
                bad(format!(
                    "--peak-hours {peak_hours:?}: want FROM-TO, e.g. 9-18"
                ))
            })?;
            if !(scale > 0.0 && node_capacity > 0.0) || min_replicas > max_replicas {
                return Err(bad(
                    "--scale and --node-capacity must be > 0, --min-replicas <= --max-replicas"
                        .into(),
                ));
            }
            let trace = sim::Trace::load(&trace, scale)
                .map_err(|e| Failure::Run(anyhow::anyhow!("{}: {e}", trace.display())))?;
            let model = sim::Model {
                capacity: node_capacity,
                startup_secs: startup_seconds,
                scrape_secs: 15,
                train_secs: train_days * 86_400,
                min: min_replicas,
                max: max_replicas,
                utc_offset: utc_offset_hours * 3_600,
            };
            let names: Vec<&str> = match policy.as_str() {
                "all" => std::iter::once("static-peak")
                    .chain(NAMES)
                    .chain(std::iter::once("oracle"))
                    .collect(),
                one => vec![one],
            };
            let mut reports = Vec::new();
            for name in names {
                reports.push(match name {
                    "static-peak" => sim::static_peak(&trace, &model),
                    "oracle" => sim::oracle(&trace, &model),
                    _ => {
                        let mut p = policies(name, &model, peak)
                            .ok_or_else(|| bad(format!("--policy {name:?}: unknown")))?;
                        sim::simulate(&trace, &model, name, p.as_mut())
                    }
                });
            }
            if json {
                for r in &reports {
                    println!(
                        "{}",
                        serde_json::to_string(r).map_err(|e| Failure::Run(e.into()))?
                    );
                }
            } else {
                println!("| policy | replica-hours | SLO-violation minutes | unserved | actions | reversals |");
                println!("|---|---|---|---|---|---|");
                for r in &reports {
                    println!(
                        "| {} | {:.0} | {} | {:.4}% | {} | {} |",
                        r.policy,
                        r.replica_hours,
                        r.violation_minutes,
                        r.unserved_fraction * 100.0,
                        r.actions,
                        r.reversals
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve {
            common,
            listen,
            sqlite,
        } => {
            let flags = move |c: &mut Config| {
                apply_listen(c, &listen);
                if let Some(p) = &sqlite.sqlite {
                    c.sqlite.path = p.clone();
                }
                // All in one process, short URLs point at this listener
                // unless a public URL was configured.
                if c.origin.public_url == OriginConfig::default().public_url {
                    c.origin.public_url = format!("http://{}", c.server.listen);
                }
                StorageMode::Embedded
            };
            edge_role(common, flags)
        }
        Command::Edge {
            common,
            listen,
            distributed,
        } => edge_role(common, move |c: &mut Config| {
            apply_distributed(c, &listen, &distributed)
        }),
        Command::Keypool {
            common,
            admin_listen,
            postgres_url,
        } => {
            let (config, _) = load(&common, |c| {
                if let Some(a) = admin_listen {
                    c.server.admin_listen = a;
                }
                if let Some(u) = &postgres_url {
                    c.postgres.url = Some(u.clone());
                }
                StorageMode::Distributed
            })?;
            if let Some(code) = checked(common.check) {
                return Ok(code);
            }
            serve_keypool(config)
        }
        Command::Origin {
            common,
            listen,
            distributed,
        } => {
            let (config, _) = load(&common, |c| apply_distributed(c, &listen, &distributed))?;
            if let Some(code) = checked(common.check) {
                return Ok(code);
            }
            serve_origin(config)
        }
        Command::Apikey { action } => {
            let (common, store) = match &action {
                ApikeyAction::Create { common, store, .. }
                | ApikeyAction::Revoke { common, store, .. } => (common, store),
            };
            let (config, mode) = load(common, |c| apply_store(c, store))?;
            if let Some(code) = checked(common.check) {
                return Ok(code);
            }
            runtime(1)?.block_on(apikey(&config, mode, action))
        }
        Command::Migrate {
            common,
            store,
            wait,
        } => {
            let (config, mode) = load(&common, |c| apply_store(c, &store))?;
            if let Some(code) = checked(common.check) {
                return Ok(code);
            }
            if let Some(secs) = wait {
                if mode != StorageMode::Distributed {
                    return Err(Failure::Config(ConfigError::Invalid(
                        "--wait is for PostgreSQL (--postgres-url); SQLite is migrated by the process that opens it".into(),
                    )));
                }
                return runtime(1)?.block_on(wait_for_schema(&config, secs));
            }
            runtime(1)?.block_on(async {
                open_store(&config, mode).await?;
                println!("migrations applied");
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Import {
            file,
            batch_size,
            common,
            store,
        } => {
            let (config, mode) = load(&common, |c| apply_store(c, &store))?;
            if batch_size == 0 || batch_size > 100_000 {
                return Err(ConfigError::Invalid("--batch-size must be 1..=100000".into()).into());
            }
            if let Some(code) = checked(common.check) {
                return Ok(code);
            }
            let options = ImportOptions {
                batch_size,
                default_status: config.redirect.default_status,
            };
            runtime(1)?.block_on(import(&config, mode, &file, &options))
        }
    }
}

fn serve_edge(
    config: Config,
    mode: StorageMode,
    reload: Box<dyn Fn() -> Result<Config, String> + Send + Sync>,
) -> Result<ExitCode, Failure> {
    let rt = serving_runtime(&config.server)?;
    rt.block_on(async move {
        let stores = match mode {
            StorageMode::Embedded => Stores::open_embedded(&config).await,
            StorageMode::Distributed => Stores::open_distributed(&config).await,
        }
        .map_err(|e| anyhow::anyhow!("cannot open storage: {e}"))?;
        let listeners = edgelink_edge::Listeners::bind(&config).map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {} / {}: {e}",
                config.server.listen,
                config.server.admin_listen
            )
        })?;
        let shutdown = CancellationToken::new();
        cancel_on_signal(shutdown.clone());
        let mut mounts = match &stores.embedded {
            Some(sqlite) => {
                embedded_mounts(&config, &stores, sqlite.clone(), shutdown.clone()).await?
            }
            None => edgelink_edge::Mounts::default(),
        };
        mounts.reload = Some(edgelink_edge::Reload {
            load: reload,
            requests: reload_on_sighup(shutdown.clone()),
        });
        edgelink_edge::run_with(listeners, Arc::new(config), stores, mounts, shutdown)
            .await
            .map_err(anyhow::Error::from)?;
        Ok(ExitCode::SUCCESS)
    })
}

/// One message per SIGHUP, until shutdown.
fn reload_on_sighup(shutdown: CancellationToken) -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGHUP; reloads are off");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    // A reload already waiting covers this one too.
                    let _ = tx.try_send(());
                }
            }
        }
    });
    #[cfg(not(unix))]
    let _ = (tx, shutdown);
    rx
}

/// The rest of the all-in-one process beside the edge: the key pool (its
/// refill worker and admin endpoints) and the creation API, on SQLite;
/// changes reach tier 0 through an in-process channel.
async fn embedded_mounts(
    config: &Config,
    stores: &Stores,
    sqlite: SqliteStore,
    shutdown: CancellationToken,
) -> anyhow::Result<edgelink_edge::Mounts> {
    use edgelink_edge::invalidate::Invalidation;
    use edgelink_origin::api::Invalidator;
    struct Channel(tokio::sync::mpsc::Sender<Invalidation>);
    #[async_trait::async_trait]
    impl Invalidator for Channel {
        /// Returns once the edge has dropped the code, so the API's answer
        /// is never followed by the old redirect (bounded by 1 s).
        async fn invalidate(&self, code: &str) {
            let (done, applied) = tokio::sync::oneshot::channel();
            let sent = async {
                self.0
                    .send(Invalidation::Code(code.to_owned()))
                    .await
                    .ok()?;
                self.0.send(Invalidation::Barrier(done)).await.ok()?;
                applied.await.ok()
            };
            if tokio::time::timeout(std::time::Duration::from_secs(1), sent)
                .await
                .is_err()
            {
                tracing::warn!(code, "tier 0 did not confirm the invalidation within 1 s");
            }
        }
    }
    let recorder = edgelink_keypool::recorder();
    let pool = edgelink_keypool::Keypool::open(
        Arc::new(edgelink_keypool::sqlite::SqlitePool::new(sqlite.clone())),
        config,
        edgelink_keypool::metrics::KeypoolMetrics::new(&recorder),
    )
    .await?;
    tokio::spawn(pool.refiller.clone().run(shutdown));
    let (tx, rx) = tokio::sync::mpsc::channel(10_000);
    let mut api = edgelink_origin::build(
        config,
        stores.source.clone(),
        None,
        Arc::new(edgelink_origin::store::SqliteOrigin::new(sqlite)),
        pool.leaser(config.keypool.lease_batch),
        Arc::new(Channel(tx)),
    )
    .await
    .map_err(|e| anyhow::anyhow!("bootstrap API key: {e}"))?;
    if config.tracing.otlp_endpoint.is_some() {
        // The edge's request span is the task's current one; the storage
        // calls of the API mounted here hang under it.
        api.links = Arc::new(edgelink_core::trace::Traced(api.links.clone()));
    }
    let api = Arc::new(api);
    let admin = pool.admin.clone();
    Ok(edgelink_edge::Mounts {
        api: Some(Arc::new(move |req| {
            let api = api.clone();
            Box::pin(async move { edgelink_origin::route(&api, req).await })
        })),
        admin: Some(Arc::new(move |req: http::Request<_>| {
            let admin = admin.clone();
            Box::pin(async move {
                let (parts, body) = req.into_parts();
                admin
                    .handle(&parts.method, parts.uri.path(), &parts.headers, body)
                    .await
            })
        })),
        metrics: vec![recorder.handle()],
        invalidations: Some(rx),
        reload: None,
    })
}

fn serve_keypool(config: Config) -> Result<ExitCode, Failure> {
    runtime(2)?.block_on(async move {
        let storage = |e| anyhow::anyhow!("cannot open storage: {e}");
        PgStore::connect(&config.postgres)
            .await
            .map_err(storage)?
            .migrate()
            .await
            .map_err(storage)?;
        let store = Arc::new(
            edgelink_keypool::postgres::PgPool::connect(&config.postgres).map_err(storage)?,
        );
        let admin = edgelink_core::net::listener::bind(
            config.server.admin_listen,
            config.server.backlog,
        )
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.server.admin_listen))?;
        let shutdown = CancellationToken::new();
        cancel_on_signal(shutdown.clone());
        edgelink_keypool::run(admin, Arc::new(config), store, shutdown)
            .await
            .map_err(|e| anyhow::anyhow!("key pool: {e}"))?;
        Ok(ExitCode::SUCCESS)
    })
}

fn serve_origin(config: Config) -> Result<ExitCode, Failure> {
    let rt = runtime(config.server.worker_count())?;
    rt.block_on(async move {
        let storage = |e| anyhow::anyhow!("cannot open storage: {e}");
        let stores = Stores::open_distributed(&config).await.map_err(storage)?;
        let recorder = edgelink_keypool::recorder();
        let prometheus = recorder.handle();
        let pool = edgelink_keypool::Keypool::open(
            Arc::new(
                edgelink_keypool::postgres::PgPool::connect(&config.postgres).map_err(storage)?,
            ),
            &config,
            edgelink_keypool::metrics::KeypoolMetrics::new(&recorder),
        )
        .await
        .map_err(storage)?;
        let invalidator: Arc<dyn edgelink_origin::api::Invalidator> = match &stores.cache {
            Some(cache) => Arc::new(edgelink_origin::CacheInvalidator(cache.clone())),
            None => Arc::new(edgelink_origin::TtlOnly),
        };
        let api = edgelink_origin::build(
            &config,
            stores.source.clone(),
            stores.cache.clone(),
            Arc::new(edgelink_origin::store::PgOrigin::connect(&config.postgres).map_err(storage)?),
            pool.leaser(config.keypool.lease_batch),
            invalidator,
        )
        .await
        .map_err(|e| anyhow::anyhow!("bootstrap API key: {e}"))?;
        let breaker_metrics = metrics::with_local_recorder(&recorder, || {
            edgelink_core::breaker::BreakerMetrics::describe();
            edgelink_core::breaker::BreakerMetrics::register(stores.source.name())
        });
        let mut api = api.with_breaker_metrics(&config.breaker, breaker_metrics);
        api.faults =
            metrics::with_local_recorder(&recorder, edgelink_core::net::ClientFaults::register);
        if let Some(tracer) =
            edgelink_core::trace::Tracer::start(&config.tracing, "edgelink-origin")
        {
            api = api.with_tracer(tracer);
        }
        let s = &config.server;
        let bind = |addr| {
            edgelink_core::net::listener::bind(addr, s.backlog)
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
        };
        let (public, admin) = (bind(s.listen)?, bind(s.admin_listen)?);
        let shutdown = CancellationToken::new();
        cancel_on_signal(shutdown.clone());
        edgelink_origin::run(
            public,
            admin,
            Arc::new(config),
            Arc::new(api),
            prometheus,
            shutdown,
        )
        .await
        .map_err(anyhow::Error::from)?;
        Ok(ExitCode::SUCCESS)
    })
}

async fn apikey(
    config: &Config,
    mode: StorageMode,
    action: ApikeyAction,
) -> Result<ExitCode, Failure> {
    use edgelink_origin::store::{OriginStore, PgOrigin, SqliteOrigin};
    // Opening applies migrations, so the key tables exist.
    let store: Arc<dyn OriginStore> = match mode {
        StorageMode::Embedded => Arc::new(SqliteOrigin::new(
            SqliteStore::open(&one_shot(&config.sqlite))
                .await
                .map_err(anyhow::Error::from)?,
        )),
        StorageMode::Distributed => {
            open_store(config, mode).await?;
            Arc::new(PgOrigin::connect(&config.postgres).map_err(anyhow::Error::from)?)
        }
    };
    match action {
        ApikeyAction::Create { name, .. } => {
            if name.is_empty() || name.len() > 100 {
                return Err(
                    ConfigError::Invalid("--name must be 1..=100 characters".into()).into(),
                );
            }
            let (key, prefix, hash) = edgelink_origin::apikey::generate();
            store
                .add_api_key(&name, &prefix, hash)
                .await
                .map_err(anyhow::Error::from)?;
            eprintln!("created API key {prefix}... for {name:?}; it is shown once, store it now:");
            println!("{key}");
            Ok(ExitCode::SUCCESS)
        }
        ApikeyAction::Revoke { key, .. } => {
            let prefix = edgelink_origin::apikey::prefix(&key)
                .unwrap_or(&key)
                .to_owned();
            if store
                .revoke_api_key(&prefix)
                .await
                .map_err(anyhow::Error::from)?
            {
                println!("revoked {prefix}");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("edgelink: no active API key {prefix}");
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

/// SQLite settings for a one-shot command (import, migrate, apikey): it
/// waits up to 30 s for the file's single writer, which a running `serve`
/// may hold for a while (the key pool's first refill, a large import).
fn one_shot(sqlite: &edgelink_core::config::SqliteConfig) -> edgelink_core::config::SqliteConfig {
    let mut s = sqlite.clone();
    s.timeout_ms = s.timeout_ms.max(30_000);
    s
}

/// Polls until the PostgreSQL schema is current (`migrate --wait`).
async fn wait_for_schema(config: &Config, secs: u64) -> Result<ExitCode, Failure> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let pg = PgStore::connect(&config.postgres)
        .await
        .map_err(|e| Failure::Run(anyhow::anyhow!("postgres: {e}")))?;
    loop {
        match pg.schema_current().await {
            Ok(true) => {
                println!("schema is current");
                return Ok(ExitCode::SUCCESS);
            }
            Ok(false) => tracing::info!("schema not current yet: waiting for the migration"),
            Err(e) => tracing::warn!(error = %e, "cannot read the schema version yet"),
        }
        if std::time::Instant::now() >= deadline {
            eprintln!("edgelink: the schema was not brought up to date within {secs} s");
            return Ok(ExitCode::from(1));
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

async fn open_store(config: &Config, mode: StorageMode) -> anyhow::Result<Arc<dyn LinkStore>> {
    Ok(match mode {
        StorageMode::Embedded => Arc::new(SqliteStore::open(&one_shot(&config.sqlite)).await?),
        StorageMode::Distributed => {
            let pg = PgStore::connect(&config.postgres).await?;
            pg.migrate().await?;
            Arc::new(pg)
        }
    })
}

async fn import(
    config: &Config,
    mode: StorageMode,
    file: &std::path::Path,
    options: &ImportOptions,
) -> Result<ExitCode, Failure> {
    let store = open_store(config, mode).await?;
    let input: Box<dyn std::io::Read> = if file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(
            std::fs::File::open(file)
                .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", file.display()))?,
        )
    };
    let report = match import_csv(std::io::BufReader::new(input), store.as_ref(), options).await {
        Ok(r) => r,
        Err(e) => {
            if let ImportError::Store { partial, .. } = &e {
                for p in &partial.problems {
                    eprintln!("line {}: {}", p.line, p.message);
                }
            }
            return Err(anyhow::Error::from(e).into());
        }
    };
    for p in &report.problems {
        eprintln!("line {}: {}", p.line, p.message);
    }
    let hidden = (report.existing + report.rejected).saturating_sub(report.problems.len() as u64);
    if hidden > 0 {
        eprintln!("... and {hidden} more skipped rows");
    }
    println!(
        "imported {} of {} rows into {} ({} skipped: {} malformed, {} already existing)",
        report.inserted,
        report.rows,
        store.name(),
        report.existing + report.rejected,
        report.rejected,
        report.existing
    );
    Ok(if report.rejected > 0 {
        ExitCode::from(EXIT_DATA)
    } else {
        ExitCode::SUCCESS
    })
}
