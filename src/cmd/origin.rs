//! `edgelink origin`: the creation API on PostgreSQL, with keys from the
//! pool and invalidations through the shared cache.

use std::process::ExitCode;
use std::sync::Arc;

use edgelink_core::config::Config;
use edgelink_core::shutdown::{cancel_on_signal, CancellationToken};
use edgelink_core::Stores;

use super::{apply_distributed, checked, load, runtime};
use crate::cli::{Common, Distributed, Listen};
use crate::Failure;

/// `edgelink origin`.
pub(crate) fn run(
    common: Common,
    listen: Listen,
    distributed: Distributed,
) -> Result<ExitCode, Failure> {
    let (config, _) = load(&common, |c| apply_distributed(c, &listen, &distributed))?;
    if let Some(code) = checked(common.check) {
        return Ok(code);
    }
    serve_origin(config)
}

fn serve_origin(config: Config) -> Result<ExitCode, Failure> {
    let rt = runtime(config.server.worker_count())?;
    rt.block_on(async move {
        let storage = |e| anyhow::anyhow!("cannot open storage: {e}");
        let stores = Stores::open_distributed(&config).await.map_err(storage)?;
        let recorder = edgelink_keypool::recorder();
        let prometheus = recorder.handle();
        metrics::with_local_recorder(&recorder, || edgelink_core::telemetry::build_info("origin"));
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
        let listeners = edgelink_origin::Listeners { public, admin };
        let deps = edgelink_origin::Deps {
            api: Arc::new(api),
            prometheus,
        };
        edgelink_origin::run(listeners, Arc::new(config), deps, shutdown).await?;
        Ok(ExitCode::SUCCESS)
    })
}
