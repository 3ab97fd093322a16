//! The edge's background loops: gauges (certificate expiries among them)
//! and index sweeps every second, tier-0 invalidations as they arrive,
//! and the store the click flusher writes to.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use edgelink_core::config::Config;
use edgelink_core::shutdown::CancellationToken;
use edgelink_core::Stores;
use metrics::Gauge;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::app::App;
use crate::{clicks, invalidate, tls};

/// The click flusher of `app`, writing to the store [`click_store`] picks.
pub(crate) async fn flusher(config: &Config, stores: &Stores, app: &App) -> clicks::Flusher {
    let (click_store, own_pool) = click_store(config, stores).await;
    let flusher = clicks::Flusher::new(
        app.resolver.index().clone(),
        click_store,
        config.analytics.max_pending,
        config.analytics.flush_batch,
        app.metrics.clicks.clone(),
    );
    if own_pool {
        return flusher;
    }
    // SQLite (or a PostgreSQL pool shared with lookups): its writes
    // run at the serving threads' priority, never the flusher's.
    flusher.write_on(tokio::runtime::Handle::current())
}

/// The store the click flusher writes to, and whether it is a pool of the
/// flusher's own. A pooled PostgreSQL connection is driven by the runtime
/// that opened it, and the flusher has a runtime of its own on a thread
/// that may run at idle priority: a connection it opened in the shared
/// pool would go on to carry requests' lookups on that thread. So with
/// PostgreSQL as the source of truth the flusher gets a pool of its own
/// (at most two connections). SQLite's writes hold the one writer that
/// link creation needs, so they are not made from the flusher's thread
/// (see [`clicks::Flusher::write_on`]).
async fn click_store(
    config: &Config,
    stores: &Stores,
) -> (Arc<dyn edgelink_core::LinkStore>, bool) {
    if stores.source.name() != "postgres" {
        return (stores.source.clone(), false);
    }
    let mut pg = config.postgres.clone();
    pg.pool_size = pg.pool_size.min(2);
    match edgelink_core::store::postgres::PgStore::connect(&pg).await {
        Ok(store) => (Arc::new(store), true),
        Err(e) => {
            tracing::warn!(error = %e, "click flushes share the edge's PostgreSQL pool");
            (stores.source.clone(), false)
        }
    }
}

/// Periodic work: the request-rate and cache-size gauges, index sweeps and
/// the histogram upkeep the Prometheus recorder needs.
pub(crate) async fn background(
    app: Arc<App>,
    prometheus: PrometheusHandle,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    let mut last = Answered::now(&app);
    let mut expiries = CertificateGauges::default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Answered::now(&app);
        let secs = now.at.duration_since(last.at).as_secs_f64();
        if secs > 0.0 {
            app.metrics
                .request_rate
                .set(now.count.saturating_sub(last.count) as f64 / secs);
        }
        last = now;
        let proxy = app.live.load().proxy.clone();
        let counts = proxy.map_or([0; 3], |p| p.breaker_counts());
        for (gauge, count) in app.metrics.proxy.upstreams.iter().zip(counts) {
            gauge.set(count as f64);
        }
        if let Some(certs) = &app.certs {
            expiries.follow(&app, certs.expiries());
        }
        app.resolver.sweep_index(n);
        let entries = app.resolver.cache_entries().await;
        app.metrics.cache_entries.set(entries as f64);
        n += 1;
        if n % 5 == 0 {
            prometheus.run_upkeep();
        }
    }
}

/// `edgelink_tls_certificate_expiry_seconds`, one series per certificate
/// file, following reloads: a file no longer served is set to NaN (the
/// recorder cannot drop a series), which no expiry alert matches.
#[derive(Default)]
struct CertificateGauges {
    seen: Option<tls::Expiries>,
    gauges: HashMap<PathBuf, Gauge>,
}

impl CertificateGauges {
    fn follow(&mut self, app: &App, now: tls::Expiries) {
        if self.seen.as_ref().is_some_and(|s| Arc::ptr_eq(s, &now)) {
            return;
        }
        for gauge in self.gauges.values() {
            gauge.set(f64::NAN);
        }
        for (file, not_after) in now.iter() {
            self.gauges
                .entry(file.clone())
                .or_insert_with(|| app.metrics.certificate_expiry(file))
                .set(*not_after as f64);
        }
        self.seen = Some(now);
    }
}

/// Where tier 0's invalidations come from: an origin in this process
/// (`mounted`), else, with a shared cache, its pub/sub channel.
pub(crate) fn invalidations(
    mounted: Option<tokio::sync::mpsc::Receiver<invalidate::Invalidation>>,
    config: &Config,
    stores: &Stores,
    shutdown: &CancellationToken,
) -> Option<tokio::sync::mpsc::Receiver<invalidate::Invalidation>> {
    match (mounted, &config.redis.url) {
        (Some(rx), _) => Some(rx),
        (None, Some(url)) if stores.cache.is_some() => {
            let (tx, rx) = tokio::sync::mpsc::channel(10_000);
            tokio::spawn(invalidate::follow_redis(
                url.clone(),
                format!("{}invalidate", config.redis.key_prefix),
                tx,
                shutdown.clone(),
            ));
            Some(rx)
        }
        _ => None,
    }
}

/// How many requests the edge had answered, and when that was read.
struct Answered {
    at: std::time::Instant,
    count: u64,
}

impl Answered {
    fn now(app: &App) -> Answered {
        Answered {
            at: std::time::Instant::now(),
            count: app.metrics.answered.sum(),
        }
    }
}

/// Drops every code that arrives from tier 0, until shutdown (or until
/// every sender is gone).
pub(crate) async fn apply_invalidations(
    app: Arc<App>,
    invalidations: Option<tokio::sync::mpsc::Receiver<invalidate::Invalidation>>,
    shutdown: CancellationToken,
) {
    let Some(mut rx) = invalidations else { return };
    loop {
        let inv = tokio::select! {
            _ = shutdown.cancelled() => return,
            inv = rx.recv() => inv,
        };
        let Some(inv) = inv else { return };
        match inv {
            invalidate::Invalidation::Code(code) => app.resolver.invalidate(&code).await,
            invalidate::Invalidation::All => app.resolver.invalidate_all().await,
            invalidate::Invalidation::Barrier(done) => {
                let _ = done.send(());
            }
        }
    }
}
