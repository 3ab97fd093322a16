//! The all-in-one process (`edgelink serve`): the key pool and the
//! creation API mounted on the edge, on one SQLite file.

use std::sync::Arc;

use edgelink_core::config::Config;
use edgelink_core::shutdown::CancellationToken;
use edgelink_core::store::sqlite::SqliteStore;
use edgelink_core::Stores;

/// The rest of the all-in-one process beside the edge: the key pool (its
/// refill worker and admin endpoints) and the creation API, on SQLite;
/// changes reach tier 0 through an in-process channel.
pub async fn mounts(
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
        roles: vec!["origin", "keypool"],
        invalidations: Some(rx),
        reload: None,
    })
}
