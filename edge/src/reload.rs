//! Configuration reloads (SIGHUP): the new settings are read and
//! validated by the caller, then swapped in whole.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use edgelink_core::config::Config;
use edgelink_core::shutdown::CancellationToken;

use crate::app::App;
use crate::live::Live;
use crate::mounts::Reload;

/// Applies each reload request until shutdown.
pub(crate) async fn follow_reloads(
    app: Arc<App>,
    reload: Option<Reload>,
    shutdown: CancellationToken,
) {
    let Some(Reload { load, mut requests }) = reload else {
        return;
    };
    loop {
        let request = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = requests.recv() => r,
        };
        if request.is_none() {
            return;
        }
        match load() {
            Ok(config) => app.apply(&config, &shutdown).await,
            Err(e) => {
                app.metrics.reloads_failed.increment(1);
                tracing::error!(error = %e, "configuration not reloaded; keeping the running one");
            }
        }
    }
}

impl App {
    /// Swaps in a reloaded configuration (already validated).
    async fn apply(&self, config: &Config, shutdown: &CancellationToken) {
        let live = Live::new(config, Some(&self.live.load()), &self.metrics, shutdown);
        self.live.store(Arc::new(live));
        self.resolver.set_redirect(&config.redirect).await;
        self.counting
            .store(config.analytics.enabled, Ordering::Relaxed);
        if let Some(certs) = &self.certs {
            if let Err(e) = certs.reload_from(&config.tls.certificates) {
                tracing::error!(error = %e, "certificates not reloaded; keeping the old ones");
            }
        }
        self.metrics.reloads.increment(1);
        tracing::info!("configuration reloaded");
    }
}
