//! `/readyz`: whether this edge should get traffic, from its drain and
//! its backends' pings (through their breakers).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use edgelink_core::shutdown::CancellationToken;

use http::{Response, StatusCode};

use crate::app::App;
use crate::respond::{self, Body};

impl App {
    /// 200 when the source of truth answers (`degraded` in the body when the
    /// shared cache does not, or a breaker is not closed), 503 when it does
    /// not (unless `server.ready_needs_source` is off: 200 `degraded`) or
    /// while draining. Each backend's ping goes through its breaker,
    /// so an open one is reported at once (and a half-open one probed).
    pub(crate) async fn ready(&self) -> Response<Body> {
        if self.draining.load(Ordering::Relaxed) {
            return respond::json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({ "status": "draining" }),
            );
        }
        let (tier1, tier2) = self.resolver.ping().await;
        let (tier1_name, tier2_name) = self.resolver.tier_names();
        let state = |r: &Result<(), edgelink_core::StoreError>| match r {
            Ok(()) => "up".to_owned(),
            Err(e) => format!("down: {e}"),
        };
        let mut backends = serde_json::Map::new();
        backends.insert(tier2_name.to_owned(), state(&tier2).into());
        if let (Some(name), Some(r)) = (tier1_name, &tier1) {
            backends.insert(name.to_owned(), state(r).into());
        }
        let mut breakers = serde_json::Map::new();
        let mut any_open = false;
        for (name, state) in self.resolver.breaker_states() {
            any_open |= state != edgelink_core::breaker::State::Closed;
            breakers.insert(name.to_owned(), state.name().into());
        }
        let (status, word) = match (&tier2, &tier1) {
            (Err(_), _) if self.ready_needs_source => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            (Err(_), _) => (StatusCode::OK, "degraded"),
            (Ok(()), Some(Err(_))) => (StatusCode::OK, "degraded"),
            (Ok(()), _) if any_open => (StatusCode::OK, "degraded"),
            (Ok(()), _) => (StatusCode::OK, "ready"),
        };
        respond::json(
            status,
            &serde_json::json!({ "status": word, "backends": backends, "breakers": breakers }),
        )
    }
}

/// On `signalled` (SIGTERM): marks `app` draining at once (`/readyz`
/// answers 503), then cancels `stop_accepting` `grace` later, so load
/// balancers stop sending before the listeners close.
pub(crate) async fn drain_after(
    app: Arc<App>,
    signalled: CancellationToken,
    grace: Duration,
    stop_accepting: CancellationToken,
) {
    signalled.cancelled().await;
    app.draining.store(true, Ordering::Relaxed);
    if !grace.is_zero() {
        tracing::info!(?grace, "draining: /readyz answers 503; still accepting");
        tokio::time::sleep(grace).await;
    }
    stop_accepting.cancel();
}
