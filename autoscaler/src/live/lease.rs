//! One active autoscaler, by either of two leases.
//!
//! - [`PgLease`]: a PostgreSQL session advisory lock held on a connection
//!   of its own. The lock is the session's, so it goes when the holder's
//!   connection does (a crash, a kill, a partition the server notices); a
//!   passive replica takes it on its next try. The holder checks its
//!   connection every evaluation and stops acting the moment the check
//!   fails: it may then be passive while PostgreSQL still holds its old
//!   session for a while, never active alongside another.
//! - [`KubeLease`]: a `coordination.k8s.io/v1` Lease, as Kubernetes'
//!   controllers elect a leader: the holder renews it every evaluation
//!   (an optimistic-concurrency replace, so two writers cannot both win);
//!   another takes it over only once it has gone unrenewed for its
//!   duration, which must be several evaluation intervals.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease as K8sLease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use tokio_postgres::{Client, NoTls};

#[derive(Debug)]
pub enum Lease {
    /// No lease configured: always active.
    None,
    Postgres(Box<PgLease>),
    Kubernetes(Box<KubeLease>),
}

impl Lease {
    /// Whether this autoscaler may act now (acquiring the lease if free).
    pub async fn hold(&mut self) -> bool {
        match self {
            Lease::None => true,
            Lease::Postgres(l) => l.hold().await,
            Lease::Kubernetes(l) => l.hold().await,
        }
    }
}

/// A Kubernetes Lease object; see the module docs.
pub struct KubeLease {
    api: kube::Api<K8sLease>,
    name: String,
    identity: String,
    duration: Duration,
    timeout: Duration,
    held: bool,
}

impl std::fmt::Debug for KubeLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeLease")
            .field("name", &self.name)
            .field("identity", &self.identity)
            .field("held", &self.held)
            .finish()
    }
}

impl KubeLease {
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
        timeout: Duration,
    ) -> KubeLease {
        KubeLease {
            api: kube::Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration,
            timeout,
            held: false,
        }
    }

    /// Renews the lease if this autoscaler holds it, takes it if it is
    /// free or expired; whether it holds it now. Any error: not held.
    pub async fn hold(&mut self) -> bool {
        let held = match tokio::time::timeout(self.timeout, self.try_hold()).await {
            Ok(Ok(held)) => held,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "lease: passive until the API server answers");
                false
            }
            Err(_) => {
                tracing::warn!("lease: the API server did not answer in time: passive");
                false
            }
        };
        if held && !self.held {
            tracing::info!(lease = %self.name, identity = %self.identity, "lease acquired: this autoscaler is active");
        } else if !held && self.held {
            tracing::warn!(lease = %self.name, "lease lost: passive");
        }
        self.held = held;
        held
    }

    async fn try_hold(&self) -> Result<bool, kube::Error> {
        use k8s_openapi::jiff::Timestamp;
        let now = Timestamp::now();
        let secs = i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX);
        let conflict = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.is_conflict());
        let Some(current) = self.api.get_opt(&self.name).await? else {
            let lease = K8sLease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self
                .api
                .create(&kube::api::PostParams::default(), &lease)
                .await
            {
                Ok(_) => Ok(true),
                // Another replica created it first.
                Err(e) if conflict(&e) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let span = spec
            .lease_duration_seconds
            .map_or(self.duration, |s| Duration::from_secs(s.max(0) as u64));
        let expired = spec
            .renew_time
            .as_ref()
            .is_none_or(|MicroTime(t)| now.duration_since(*t).unsigned_abs() > span && *t < now);
        if !(ours || spec.holder_identity.is_none() || expired) {
            return Ok(false);
        }
        let mut lease = current;
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(secs),
            acquire_time: if ours {
                spec.acquire_time
            } else {
                Some(MicroTime(now))
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(spec.lease_transitions.unwrap_or(0) + i32::from(!ours)),
            ..spec
        });
        // The resourceVersion read above makes this a compare-and-swap.
        match self
            .api
            .replace(&self.name, &kube::api::PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

pub struct PgLease {
    url: String,
    key: i64,
    timeout: Duration,
    client: Option<Client>,
    held: bool,
}

impl std::fmt::Debug for PgLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLease")
            .field("key", &self.key)
            .field("held", &self.held)
            .finish()
    }
}

impl PgLease {
    pub fn new(url: &str, key: i64, timeout: Duration) -> PgLease {
        PgLease {
            url: url.to_owned(),
            key,
            timeout,
            client: None,
            held: false,
        }
    }

    async fn connect(&self) -> Result<Client, String> {
        let (client, connection) =
            tokio::time::timeout(self.timeout, tokio_postgres::connect(&self.url, NoTls))
                .await
                .map_err(|_| "timed out".to_owned())?
                .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "lease connection ended");
            }
        });
        Ok(client)
    }

    /// Tries to take the lock if not held; checks the connection if held.
    pub async fn hold(&mut self) -> bool {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            if self.held {
                tracing::warn!("lease lost: its connection closed");
            }
            self.held = false;
            self.client = match self.connect().await {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot connect for the lease");
                    return false;
                }
            };
        }
        let Some(client) = &self.client else {
            return false;
        };
        let key = self.key;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&key];
        let query = if self.held {
            // Still our session? (The lock is the session's.)
            client.query_one("SELECT true", &[])
        } else {
            client.query_one("SELECT pg_try_advisory_lock($1)", &params)
        };
        match tokio::time::timeout(self.timeout, query).await {
            Ok(Ok(row)) => {
                let now = row.try_get::<_, bool>(0).unwrap_or(false);
                if now && !self.held {
                    tracing::info!(key = self.key, "lease acquired: this autoscaler is active");
                }
                self.held = now;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "lease check failed: passive until it succeeds");
                self.held = false;
                self.client = None;
            }
            Err(_) => {
                tracing::warn!("lease check timed out: passive until it succeeds");
                self.held = false;
                self.client = None;
            }
        }
        self.held
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::Mutex;

    use serde_json::{json, Value};

    /// The fake API server's Lease endpoints, with their optimistic
    /// concurrency (a replace naming an old resourceVersion is 409).
    async fn fake_lease_api() -> String {
        use crate::live::fake_api::{serve, status};
        let state: Mutex<(Option<Value>, u64)> = Mutex::new((None, 0));
        serve(move |req| {
            let base = "/apis/coordination.k8s.io/v1/namespaces/edgelink/leases";
            let one = format!("{base}/edgelink-autoscaler");
            let mut st = state.lock().unwrap();
            match (req.method.as_str(), req.path.as_str()) {
                ("GET", p) if p == one => match &st.0 {
                    Some(v) => (200, v.clone()),
                    None => status(404, "NotFound"),
                },
                ("POST", p) if p == base => {
                    if st.0.is_some() {
                        return status(409, "AlreadyExists");
                    }
                    st.1 += 1;
                    let mut v: Value = serde_json::from_str(&req.body).unwrap();
                    v["metadata"]["resourceVersion"] = json!(st.1.to_string());
                    st.0 = Some(v.clone());
                    (201, v)
                }
                ("PUT", p) if p == one => {
                    let mut v: Value = serde_json::from_str(&req.body).unwrap();
                    let stored =
                        st.0.as_ref()
                            .map(|s| s["metadata"]["resourceVersion"].clone());
                    if stored != Some(v["metadata"]["resourceVersion"].clone()) {
                        return status(409, "Conflict");
                    }
                    st.1 += 1;
                    v["metadata"]["resourceVersion"] = json!(st.1.to_string());
                    st.0 = Some(v.clone());
                    (200, v)
                }
                _ => status(404, "NotFound"),
            }
        })
        .await
    }

    fn lease(url: &str, identity: &str) -> KubeLease {
        let client = crate::live::actuator::kube_client(Some(url), Duration::from_secs(5)).unwrap();
        KubeLease::new(
            client,
            "edgelink",
            "edgelink-autoscaler",
            identity,
            Duration::from_secs(1),
            Duration::from_secs(5),
        )
    }

    #[tokio::test]
    async fn a_kubernetes_lease_keeps_a_second_autoscaler_passive_until_it_expires() {
        let url = fake_lease_api().await;
        let (mut a, mut b) = (lease(&url, "a"), lease(&url, "b"));
        assert!(a.hold().await, "a creates the lease");
        assert!(!b.hold().await, "b waits");
        assert!(a.hold().await, "a renews");
        assert!(!b.hold().await, "b still waits");
        // a stops renewing (a crash): after the duration, b takes over.
        tokio::time::sleep(Duration::from_millis(1_300)).await;
        assert!(b.hold().await, "b takes the expired lease");
        assert!(!a.hold().await, "a, back, finds b holding it");
        assert!(b.hold().await);
        let got = b.api.get("edgelink-autoscaler").await.unwrap();
        let spec = got.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("b"));
        assert_eq!(spec.lease_transitions, Some(1));
    }
}
