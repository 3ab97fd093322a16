//! `edgelink edge`: the edge on the distributed tiers (Redis, PostgreSQL);
//! and the edge role `serve` shares, with SIGHUP reloading its
//! configuration the way it was read.

use std::process::ExitCode;
use std::sync::Arc;

use edgelink_core::config::{Config, ConfigError, StorageMode};
use edgelink_core::shutdown::{cancel_on_signal, CancellationToken};
use edgelink_core::Stores;

use super::{apply_distributed, checked, load, reloader, serving_runtime};
use crate::cli::{Common, Distributed, Listen};
use crate::Failure;

/// `edgelink edge`.
pub(crate) fn run(
    common: Common,
    listen: Listen,
    distributed: Distributed,
) -> Result<ExitCode, Failure> {
    edge_role(common, move |c: &mut Config| {
        apply_distributed(c, &listen, &distributed)
    })
}

/// `serve` and `edge`: load and check the configuration (certificates
/// included), then serve with SIGHUP reloading it the same way.
pub(super) fn edge_role(
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

fn serve_edge(
    config: Config,
    mode: StorageMode,
    reload: Box<dyn Fn() -> Result<Config, String> + Send + Sync>,
) -> Result<ExitCode, Failure> {
    let rt = serving_runtime(&config.server)?;
    rt.block_on(async move {
        let stores = match mode {
            StorageMode::Embedded => Stores::open_embedded(&config).await,
            StorageMode::Distributed => Stores::connect_distributed(&config).await,
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
                edgelink::embedded::mounts(&config, &stores, sqlite.clone(), shutdown.clone())
                    .await?
            }
            None => edgelink_edge::Mounts::default(),
        };
        mounts.reload = Some(edgelink_edge::Reload {
            load: reload,
            requests: reload_on_sighup(shutdown.clone()),
        });
        let deps = edgelink_edge::Deps { stores, mounts };
        edgelink_edge::run(listeners, Arc::new(config), deps, shutdown).await?;
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
