//! One active autoscaler: a PostgreSQL session advisory lock held on a
//! connection of its own. The lock is the session's, so it goes when the
//! holder's connection does (a crash, a kill, a partition the server
//! notices); a passive replica takes it on its next try.
//!
//! The holder checks its connection every evaluation and stops acting the
//! moment the check fails: it may then be passive while PostgreSQL still
//! holds its old session for a while, never active alongside another.

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

#[derive(Debug)]
pub enum Lease {
    /// No lease configured: always active.
    None,
    Postgres(Box<PgLease>),
}

impl Lease {
    /// Whether this autoscaler may act now (acquiring the lease if free).
    pub async fn hold(&mut self) -> bool {
        match self {
            Lease::None => true,
            Lease::Postgres(l) => l.hold().await,
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
