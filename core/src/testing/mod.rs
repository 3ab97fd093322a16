//! Helpers for tests against the real services (DESIGN.md, "Services for
//! tests and CI"): a fresh PostgreSQL database per test and a unique Redis
//! key prefix; and for fault tests, pieces of their own to break: a
//! [`redis::RedisServer`] and a TCP [`fault::FaultProxy`]. Used by this
//! workspace's tests only.

pub mod fault;
pub mod redis;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio_postgres::NoTls;

/// The shared PostgreSQL; `EDGELINK_TEST_POSTGRES_URL` overrides.
pub fn pg_admin_url() -> String {
    std::env::var("EDGELINK_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A thread's scheduling policy, from its `/proc/.../stat` line: field 41,
/// counting from 1, after the command in parentheses (0 `SCHED_OTHER`,
/// 5 `SCHED_IDLE`).
pub fn sched_policy(stat: &str) -> Option<u32> {
    // Fields after the command's closing parenthesis start at field 3.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    rest.split(' ').nth(41 - 3)?.parse().ok()
}

/// The shared Redis; `EDGELINK_TEST_REDIS_URL` overrides.
pub fn redis_url() -> String {
    std::env::var("EDGELINK_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned())
}

/// The spans of an OTLP/HTTP JSON export body, each with its resource's
/// `service.name` added as `"service"` (what a collector stand-in keeps).
pub fn otlp_spans(body: &serde_json::Value) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for rs in body["resourceSpans"].as_array().into_iter().flatten() {
        let service = rs["resource"]["attributes"][0]["value"]["stringValue"].clone();
        for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
            for span in ss["spans"].as_array().into_iter().flatten() {
                let mut span = span.clone();
                span["service"] = service.clone();
                out.push(span);
            }
        }
    }
    out
}

/// A name no other test (in this or another process) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}{}_{nanos:x}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn admin_client() -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(&pg_admin_url(), NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// A fresh database on the shared server, dropped (connections and all)
/// when this value is.
#[derive(Debug)]
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    /// Panics with a pointer to the README when PostgreSQL is not running:
    /// these tests must fail, not skip, without it.
    pub async fn create() -> TestDb {
        let name = unique("edgelink_t_");
        let admin = admin_client().await.unwrap_or_else(|e| {
            panic!(
                "the test PostgreSQL ({}) must be running; see README, Testing: {e}",
                pg_admin_url()
            )
        });
        if let Err(e) = admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
        {
            panic!("CREATE DATABASE {name}: {e}");
        }
        let url = match pg_admin_url().rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => panic!("EDGELINK_TEST_POSTGRES_URL must name a database"),
        };
        TestDb { name, url }
    }

    /// A [`fault::FaultProxy`] in front of this database's server, and
    /// this database's URL through it.
    pub async fn behind_fault_proxy(&self) -> (fault::FaultProxy, String) {
        let mut url = url::Url::parse(&self.url).unwrap_or_else(|e| panic!("{}: {e}", self.url));
        let server = format!(
            "{}:{}",
            url.host_str().unwrap_or("127.0.0.1"),
            url.port().unwrap_or(5432)
        );
        let addr = tokio::net::lookup_host(&server)
            .await
            .ok()
            .and_then(|mut a| a.next())
            .unwrap_or_else(|| panic!("cannot resolve {server}"));
        let proxy = fault::FaultProxy::start(addr)
            .await
            .unwrap_or_else(|e| panic!("fault proxy: {e}"));
        let _ = url.set_host(Some("127.0.0.1"));
        let _ = url.set_port(Some(proxy.addr().port()));
        (proxy, url.to_string())
    }

    /// A plain client on this database.
    pub async fn client(&self) -> tokio_postgres::Client {
        match tokio_postgres::connect(&self.url, NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(conn);
                client
            }
            Err(e) => panic!("connect to {}: {e}", self.url),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime; a thread with its own runtime
        // can block on the DROP without stalling it.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(admin) = admin_client().await {
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    if let Err(e) = admin.batch_execute(&sql).await {
                        eprintln!("cleanup: {sql}: {e}");
                    }
                }
            });
        })
        .join();
    }
}
