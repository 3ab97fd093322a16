//! EdgeLink core: what every role shares.
//!
//! # Layout
//!
//! - [`code`]: short-code rules (`[A-Za-z0-9_-]`, 1..=64 bytes), checked
//!   before any storage is touched.
//! - [`link`]: the link model, redirect statuses, target URL normalisation.
//! - [`config`]: the configuration of every role (TOML file, `EDGELINK_*`
//!   environment, flags) and its validation, one file per section.
//! - [`error`]: storage errors and the per-call timeout helper.
//! - [`store`]: the storage seams ([`store::LinkStore`], [`store::LinkCache`])
//!   and their backends: [`store::sqlite`] (embedded default),
//!   [`store::postgres`] (distributed source of truth), [`store::redis`]
//!   (shared cache tier, value encoding in [`store::codec`]).
//! - [`migrate`]: versioned schema migrations for both SQL backends.
//! - [`import`]: CSV import in batches.
//! - [`ipnet`]: address blocks (`10.0.0.0/8`), for trusted proxies.
//! - [`net`]: what every role serves HTTP with: socket2 listeners, the
//!   hyper accept loop (connection cap, timeouts, a drain that answers every
//!   request read), the framing guard under hyper ([`net::framing`], its
//!   scanner in `framing/scan.rs`), the hand-over type [`net::Replay`], a hook
//!   for a lane in front of it ([`net::server::Lane`]; the edge's express
//!   lane lives in the edge, the only role that has one), and request bodies
//!   read under the client's limits, a client's fault being its own 4xx
//!   ([`net::ClientFault`]).
//! - [`retry`]: jittered exponential backoff for reconnects and retries.
//! - [`breaker`]: circuit breakers, and [`breaker::Guarded`] to put one in
//!   front of a store or cache.
//! - [`trace`]: B3 propagation, sampled spans, OTLP/HTTP JSON export.
//! - [`shutdown`], [`telemetry`]: process plumbing.
//! - `testing` (the `testing` feature, enabled only from the workspace's
//!   dev-dependencies): fresh-database and Redis-prefix helpers for tests
//!   against the real services, and the fault tests' own `redis-server`
//!   and TCP fault proxy.

pub mod breaker;
pub mod code;
pub mod config;
pub mod error;
pub mod import;
pub mod ipnet;
pub mod link;
pub mod migrate;
pub mod net;
pub mod retry;
pub mod shutdown;
pub mod store;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod trace;

pub use code::{is_valid_code, MAX_CODE_LEN};
pub use config::Config;
pub use error::StoreError;
pub use link::{Link, LinkState, RedirectStatus};
pub use store::{LinkCache, LinkStore, Stores};
