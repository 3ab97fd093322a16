//! Invalidations: codes whose links changed, to drop from tier 0.
//!
//! They come from the origin in the same process (embedded `serve`: an
//! in-process channel) or from the shared cache's pub/sub channel
//! (`<redis.key_prefix>invalidate`, distributed: every origin publishes there,
//! every edge subscribes). A subscription that drops is re-established with
//! jittered exponential backoff; whatever was published while it was down is
//! unknown, so on every re-subscription tier 0 is emptied (the next requests
//! go to Redis, which the origin already cleared, then PostgreSQL).

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What to drop from tier 0.
#[derive(Debug)]
pub enum Invalidation {
    Code(String),
    /// Everything: invalidations may have been missed.
    All,
    /// Answered once everything sent before it has been applied (an
    /// in-process origin waits for it, so its response follows the drop).
    Barrier(tokio::sync::oneshot::Sender<()>),
}

/// Follows `channel` on the Redis at `url` until `shutdown`, sending each
/// published code to `tx`.
pub async fn follow_redis(
    url: String,
    channel: String,
    tx: mpsc::Sender<Invalidation>,
    shutdown: CancellationToken,
) {
    let mut failures: u32 = 0;
    let mut subscribed_before = false;
    loop {
        let session = async {
            let client = bb8_redis::redis::Client::open(url.as_str())?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, bb8_redis::redis::RedisError>(pubsub)
        };
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = tokio::time::timeout(Duration::from_secs(5), session) => r,
        };
        match outcome {
            Ok(Ok(mut pubsub)) => {
                if subscribed_before && tx.send(Invalidation::All).await.is_err() {
                    return;
                }
                subscribed_before = true;
                failures = 0;
                tracing::info!(%channel, "following tier-0 invalidations");
                let mut messages = pubsub.on_message();
                loop {
                    let msg = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        m = messages.next() => m,
                    };
                    let Some(msg) = msg else { break };
                    match msg.get_payload::<String>() {
                        Ok(code) => {
                            if tx.send(Invalidation::Code(code)).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "ignored a malformed invalidation"),
                    }
                }
                tracing::warn!(%channel, "invalidation subscription lost; re-subscribing");
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot subscribe to invalidations"),
            Err(_) => tracing::warn!("subscribing to invalidations timed out"),
        }
        failures = failures.saturating_add(1);
        let wait = edgelink_core::retry::backoff(failures);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
