//! One file per subcommand; here what they share: loading the
//! configuration (file, environment, flags) and the runtimes.

pub(crate) mod apikey;
pub(crate) mod autoscale;
pub(crate) mod edge;
pub(crate) mod import;
pub(crate) mod keypool;
pub(crate) mod migrate;
pub(crate) mod origin;
pub(crate) mod serve;

use std::process::ExitCode;
use std::sync::Arc;

use edgelink_core::config::{
    Config, ConfigError, ProcessEnv, ServerConfig, StorageMode, Threading,
};
use edgelink_core::store::postgres::PgStore;
use edgelink_core::store::sqlite::SqliteStore;
use edgelink_core::LinkStore;

use crate::cli::{Common, Distributed, Listen, StoreArgs};

/// Loads the config (file, environment, then flags) and validates it for
/// the storage mode the flags settle on.
pub(crate) fn load(
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
pub(crate) fn reloader(
    common: Common,
    flags: impl Fn(&mut Config) -> StorageMode + Send + Sync + 'static,
) -> Box<dyn Fn() -> Result<Config, String> + Send + Sync> {
    Box::new(move || {
        load(&common, &flags)
            .map(|(config, _)| config)
            .map_err(|e| e.to_string())
    })
}

pub(crate) fn apply_listen(config: &mut Config, listen: &Listen) {
    if let Some(a) = listen.listen {
        config.server.listen = a;
    }
    if let Some(a) = listen.admin_listen {
        config.server.admin_listen = a;
    }
}

pub(crate) fn apply_distributed(
    config: &mut Config,
    listen: &Listen,
    d: &Distributed,
) -> StorageMode {
    apply_listen(config, listen);
    if let Some(u) = &d.postgres_url {
        config.postgres.url = Some(u.clone());
    }
    if let Some(u) = &d.redis_url {
        config.redis.url = Some(u.clone());
    }
    StorageMode::Distributed
}

pub(crate) fn apply_store(config: &mut Config, store: &StoreArgs) -> StorageMode {
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
pub(crate) fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if workers > 0 {
        b.worker_threads(workers);
    }
    Ok(b.enable_all().thread_name("edgelink").build()?)
}

/// The runtime a serving role runs on. Per-core: this thread runs the first
/// public listener and `edgelink_edge::run` starts one thread per further
/// listener. Work-stealing: one multi-threaded runtime.
pub(crate) fn serving_runtime(server: &ServerConfig) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(match server.threading {
        Threading::PerCore => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        Threading::WorkStealing => runtime(server.worker_count())?,
    })
}

/// With `--check`: says the configuration is valid, and the exit code.
pub(crate) fn checked(check: bool) -> Option<ExitCode> {
    check.then(|| {
        println!("configuration is valid");
        ExitCode::SUCCESS
    })
}

/// SQLite settings for a one-shot command (import, migrate, apikey): it
/// waits up to 30 s for the file's single writer, which a running `serve`
/// may hold for a while (the key pool's first refill, a large import).
pub(crate) fn one_shot(
    sqlite: &edgelink_core::config::SqliteConfig,
) -> edgelink_core::config::SqliteConfig {
    let mut s = sqlite.clone();
    s.timeout_ms = s.timeout_ms.max(30_000);
    s
}

pub(crate) async fn open_store(
    config: &Config,
    mode: StorageMode,
) -> anyhow::Result<Arc<dyn LinkStore>> {
    Ok(match mode {
        StorageMode::Embedded => Arc::new(SqliteStore::open(&one_shot(&config.sqlite)).await?),
        StorageMode::Distributed => {
            let pg = PgStore::connect(&config.postgres).await?;
            pg.migrate().await?;
            Arc::new(pg)
        }
    })
}
