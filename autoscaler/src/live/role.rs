//! The sidecar as a role: its listener, what it acts through ([`Deps`]),
//! why it can fail ([`AutoscaleError`]), and [`run`], the evaluation loop
//! and admin listener until shutdown.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgelink_core::net::{self, server, Body};
use edgelink_core::shutdown::CancellationToken;
use http::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use super::actuator::{self, Actuator};
use super::config::{Config, LeaseConfig, SignalsConfig};
use super::lease::{self, Lease, PgLease};
use super::meters::Metrics;
use super::signals::{Endpoints, Prometheus, Scraper};
use super::wal::Wal;
use super::{open_append, unix_now, Autoscaler, Decision};
use crate::policy::PeakHours;

fn recorder() -> PrometheusRecorder {
    PrometheusBuilder::new().build_recorder()
}

/// The sidecar's socket: its admin listener (`/status`, `/metrics`,
/// `/healthz`).
#[derive(Debug)]
pub struct Listeners {
    pub admin: std::net::TcpListener,
}

/// What the sidecar acts through: the fleet's actuator, and the state
/// directory it keeps its log, history and (process actuator) edges in.
pub struct Deps {
    pub actuator: Actuator,
    pub state_dir: PathBuf,
}

impl Deps {
    /// The state directory (created) and the actuator `config` names.
    pub async fn open(config: &Config) -> Result<Deps, AutoscaleError> {
        let s = &config.autoscaler;
        let state_dir = std::fs::create_dir_all(&s.state_dir)
            .and_then(|()| s.state_dir.canonicalize())
            .map_err(|source| AutoscaleError::StateDir {
                path: s.state_dir.clone(),
                source,
            })?;
        let actuator = Actuator::open(
            &config.actuator,
            &state_dir,
            Duration::from_millis(s.actuator_timeout_ms),
        )
        .await
        .map_err(AutoscaleError::Actuator)?;
        Ok(Deps {
            actuator,
            state_dir,
        })
    }
}

/// Why the sidecar could not run.
#[derive(Debug, thiserror::Error)]
pub enum AutoscaleError {
    #[error("state directory {}: {source}", path.display())]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unknown policy {0}")]
    Policy(String),
    #[error("actuator: {0}")]
    Actuator(String),
    #[error("action log: {0}")]
    Wal(#[source] std::io::Error),
    #[error("decision log: {0}")]
    DecisionLog(#[source] std::io::Error),
    #[error("lease: {0}")]
    Lease(String),
    #[error("signals: {0}")]
    Signals(String),
    #[error("listener: {0}")]
    Listener(#[source] std::io::Error),
}

/// Runs the autoscaler until `shutdown`; the process actuator's edges are
/// drained before it returns (the systemd actuator's run on).
pub async fn run(
    listeners: Listeners,
    config: Config,
    deps: Deps,
    shutdown: CancellationToken,
) -> Result<(), AutoscaleError> {
    let s = &config.autoscaler;
    let Deps {
        actuator,
        state_dir,
    } = deps;
    let recorder = recorder();
    let prometheus_handle = recorder.handle();
    let metrics = Metrics::new(&recorder, s.max_replicas);
    let model = crate::sim::Model {
        capacity: s.node_capacity,
        startup_secs: s.startup_seconds,
        scrape_secs: s.interval_secs,
        train_secs: 0,
        min: s.min_replicas,
        max: s.max_replicas,
        utc_offset: s.utc_offset_hours * 3_600,
    };
    let peak = crate::parse_peak_hours(&s.peak_hours).unwrap_or(PeakHours { from: 9, to: 18 });
    let policy = crate::policies(&s.policy, &model, peak)
        .ok_or_else(|| AutoscaleError::Policy(s.policy.clone()))?;
    let timeout = Duration::from_millis(s.scrape_timeout_ms);
    let wal = Wal::open(&state_dir.join("actions.wal")).map_err(AutoscaleError::Wal)?;
    if let Some(p) = wal.pending() {
        tracing::warn!(
            seq = p.seq,
            from = p.from,
            to = p.to,
            "an action was interrupted; it is reconciled once this autoscaler is active"
        );
    }
    let lease = match &config.lease {
        LeaseConfig::None => Lease::None,
        LeaseConfig::Postgres { url, key } => Lease::Postgres(Box::new(PgLease::new(
            url.as_deref().unwrap_or_default(),
            *key,
            timeout,
        ))),
        LeaseConfig::Kubernetes {
            namespace,
            name,
            identity,
            duration_secs,
            api_url,
        } => Lease::Kubernetes(Box::new(lease::KubeLease::new(
            actuator::kube_client(api_url.as_deref(), timeout).map_err(AutoscaleError::Lease)?,
            namespace,
            name,
            identity.as_deref().unwrap_or_default(),
            Duration::from_secs(*duration_secs),
            timeout,
        ))),
    };
    let prometheus = match &config.signals {
        SignalsConfig::Prometheus { url, .. } => Some(Prometheus::new(url, timeout)),
        _ => None,
    };
    let endpoints = match &config.signals {
        SignalsConfig::Kubernetes {
            namespace,
            service,
            port,
            api_url,
        } => Some(Endpoints::new(
            actuator::kube_client(api_url.as_deref(), timeout).map_err(AutoscaleError::Signals)?,
            namespace,
            service,
            *port,
            timeout,
        )),
        _ => None,
    };
    let decisions =
        open_append(&state_dir.join("decisions.log")).map_err(AutoscaleError::DecisionLog)?;
    let status = Arc::new(Mutex::new(Decision::default()));
    let interval = Duration::from_secs(s.interval_secs);
    let mut scaler = Autoscaler {
        state_dir,
        policy,
        actuator,
        wal,
        lease,
        scraper: Scraper::new(timeout),
        prometheus,
        endpoints,
        metrics,
        origin: 0,
        was_active: false,
        last_saved: unix_now(),
        decisions,
        status: status.clone(),
        config,
    };
    scaler.load_history(unix_now());

    let listener =
        tokio::net::TcpListener::from_std(listeners.admin).map_err(AutoscaleError::Listener)?;
    tracing::info!(
        admin = %listener.local_addr().map_err(AutoscaleError::Listener)?,
        policy = %scaler.config.autoscaler.policy,
        actuator = scaler.actuator.name(),
        "autoscaler running"
    );
    let handler = {
        let (prometheus, status) = (prometheus_handle.clone(), status.clone());
        move |req: Request<hyper::body::Incoming>, _peer| {
            let (prometheus, status) = (prometheus.clone(), status.clone());
            async move { route(&req, &prometheus, &status) }
        }
    };
    let admin = tokio::spawn(server::serve(
        listener,
        server::Options::internal(&edgelink_core::config::ServerConfig::default()),
        handler,
        shutdown.clone(),
    ));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {
                scaler.evaluate().await;
                prometheus_handle.run_upkeep();
            }
        }
    }
    scaler.last_saved = 0;
    scaler.save_history(unix_now());
    match &mut scaler.actuator {
        Actuator::Process(p) if scaler.was_active => {
            tracing::info!("draining the edges this autoscaler started");
            p.stop_all().await;
        }
        Actuator::Systemd(s) => tracing::info!(
            edges = s.targets().len(),
            "the edges run on as systemd units: an autoscaler that starts adopts them"
        ),
        _ => {}
    }
    let _ = admin.await;
    tracing::info!("autoscaler stopped");
    Ok(())
}

fn route(
    req: &Request<hyper::body::Incoming>,
    prometheus: &PrometheusHandle,
    status: &Mutex<Decision>,
) -> Response<Body> {
    let path = req.uri().path();
    if (req.method(), path) == (&Method::GET, "/status") {
        let d = status.lock().map(|d| d.clone()).unwrap_or_default();
        return net::json(
            StatusCode::OK,
            &serde_json::to_value(&d).unwrap_or_default(),
        );
    }
    net::admin_basics(req.method(), path, || prometheus.render())
        .unwrap_or_else(|| net::json_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"))
}
