use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::Problems;

/// Listeners and connection limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Public listener (redirects, health).
    pub listen: SocketAddr,
    /// Admin listener (`/metrics`); keep it off the public network.
    pub admin_listen: SocketAddr,
    /// How connections are spread over threads; see [`Threading`].
    pub threading: Threading,
    /// Threads serving the public listener; 0 means one per CPU.
    pub workers: usize,
    /// Open connections beyond this are closed at accept.
    pub max_connections: usize,
    /// Listen backlog handed to the kernel.
    pub backlog: u32,
    /// A client must send its full request head within this time (from
    /// its first byte; on a new connection, from the accept).
    pub header_read_timeout_ms: u64,
    /// An HTTP/1 connection with no request under way is closed after this.
    pub keepalive_timeout_ms: u64,
    /// An HTTP/2 connection with no stream open and none started is closed
    /// (GOAWAY) after this; PINGs do not count as activity.
    pub h2_idle_timeout_ms: u64,
    /// Longest wait for the next piece of a request body (408 beyond).
    pub body_read_timeout_ms: u64,
    /// A whole request body must arrive within this (408 beyond).
    pub body_timeout_ms: u64,
    /// Longest a response write may wait for the client to take bytes
    /// (the connection is closed beyond): a client that stops reading.
    pub write_timeout_ms: u64,
    /// Largest request head accepted (HTTP/1 read buffer, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// HTTP/2 streams per connection.
    pub h2_max_concurrent_streams: u32,
    /// On shutdown, in-flight requests get this long to finish.
    pub drain_timeout_ms: u64,
    /// On shutdown, `/readyz` answers 503 for this long before the listeners
    /// stop accepting, so load balancers take the node out first.
    pub shutdown_grace_ms: u64,
    /// Whether `/readyz` answers 503 while the source of truth is down.
    /// `false` where every edge shares that source (Kubernetes readiness):
    /// failing them all at once would take away the stale-if-error answers
    /// they can still give; they then say 200 `degraded`.
    pub ready_needs_source: bool,
}

/// How the edge spreads connections over threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Threading {
    /// One single-threaded runtime per worker, each with its own
    /// `SO_REUSEPORT` listener on the same address; the kernel spreads new
    /// connections and a connection stays on its thread (nginx's model: no
    /// cross-thread wake-ups on the request path).
    PerCore,
    /// One multi-threaded, work-stealing runtime and one listener: evens out
    /// a few very busy connections at the cost of cross-thread wake-ups.
    WorkStealing,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            threading: Threading::PerCore,
            workers: 0,
            max_connections: 10_000,
            backlog: 4096,
            header_read_timeout_ms: 5_000,
            keepalive_timeout_ms: 15_000,
            h2_idle_timeout_ms: 60_000,
            body_read_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            write_timeout_ms: 30_000,
            max_header_bytes: 16 * 1024,
            h2_max_concurrent_streams: 256,
            drain_timeout_ms: 10_000,
            shutdown_grace_ms: 0,
            ready_needs_source: true,
        }
    }
}

impl ServerConfig {
    /// Worker threads to run: `workers`, or one per CPU when 0.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// Public listeners to bind: one per worker in per-core mode.
    pub fn public_listeners(&self) -> usize {
        match self.threading {
            Threading::PerCore => self.worker_count(),
            Threading::WorkStealing => 1,
        }
    }

    pub(super) fn validate(&self, problems: &mut Problems) {
        problems.need(
            (1..=1_000_000).contains(&self.max_connections),
            "server.max_connections must be 1..=1000000",
        );
        problems.need(
            self.backlog > 0 && self.backlog <= 65_535,
            "server.backlog must be 1..=65535",
        );
        problems.need(
            (1..=300_000).contains(&self.header_read_timeout_ms),
            "server.header_read_timeout_ms must be 1..=300000",
        );
        for (key, ms) in [
            ("keepalive_timeout_ms", self.keepalive_timeout_ms),
            ("h2_idle_timeout_ms", self.h2_idle_timeout_ms),
            ("body_read_timeout_ms", self.body_read_timeout_ms),
            ("body_timeout_ms", self.body_timeout_ms),
            ("write_timeout_ms", self.write_timeout_ms),
        ] {
            problems.need(
                (1..=3_600_000).contains(&ms),
                format!("server.{key} must be 1..=3600000"),
            );
        }
        problems.need(
            (8 * 1024..=1024 * 1024).contains(&self.max_header_bytes),
            "server.max_header_bytes must be 8192..=1048576",
        );
        problems.need(
            self.h2_max_concurrent_streams > 0,
            "server.h2_max_concurrent_streams must be > 0",
        );
        problems.need(
            self.drain_timeout_ms <= 600_000,
            "server.drain_timeout_ms must be <= 600000",
        );
        problems.need(self.workers <= 1024, "server.workers must be <= 1024");
        problems.need(
            self.listen != self.admin_listen,
            "server.listen and server.admin_listen must differ",
        );
    }
}
