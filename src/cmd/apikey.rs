//! `edgelink apikey`: create and revoke the creation API's keys.

use std::process::ExitCode;
use std::sync::Arc;

use edgelink_core::config::{Config, ConfigError, StorageMode};
use edgelink_core::store::sqlite::SqliteStore;

use super::{apply_store, checked, load, one_shot, open_store, runtime};
use crate::cli::ApikeyAction;
use crate::Failure;

/// `edgelink apikey create|revoke`.
pub(crate) fn run(action: ApikeyAction) -> Result<ExitCode, Failure> {
    let (common, store) = match &action {
        ApikeyAction::Create { common, store, .. } | ApikeyAction::Revoke { common, store, .. } => {
            (common, store)
        }
    };
    let (config, mode) = load(common, |c| apply_store(c, store))?;
    if let Some(code) = checked(common.check) {
        return Ok(code);
    }
    runtime(1)?.block_on(apikey(&config, mode, action))
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
