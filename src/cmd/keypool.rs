//! `edgelink keypool`: the key pool's refill worker and admin endpoints.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use edgelink_core::config::{Config, StorageMode};
use edgelink_core::shutdown::{cancel_on_signal, CancellationToken};
use edgelink_core::store::postgres::PgStore;

use super::{checked, load, runtime};
use crate::cli::Common;
use crate::Failure;

/// `edgelink keypool`.
pub(crate) fn run(
    common: Common,
    admin_listen: Option<SocketAddr>,
    postgres_url: Option<String>,
) -> Result<ExitCode, Failure> {
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
        let listeners = edgelink_keypool::Listeners { admin };
        let deps = edgelink_keypool::Deps { store };
        edgelink_keypool::run(listeners, Arc::new(config), deps, shutdown).await?;
        Ok(ExitCode::SUCCESS)
    })
}
