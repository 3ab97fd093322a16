//! `edgelink migrate`: apply the schema, or wait for another process to.

use std::process::ExitCode;

use edgelink_core::config::{Config, ConfigError, StorageMode};
use edgelink_core::store::postgres::PgStore;

use super::{apply_store, checked, load, open_store, runtime};
use crate::cli::{Common, StoreArgs};
use crate::Failure;

/// `edgelink migrate`.
pub(crate) fn run(
    common: Common,
    store: StoreArgs,
    wait: Option<u64>,
) -> Result<ExitCode, Failure> {
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
