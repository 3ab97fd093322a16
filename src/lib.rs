//! EdgeLink's roles assembled into one process: what the `edgelink` binary
//! shares with tests that run a role in-process. Each role is its own crate
//! (`edgelink-edge`, `-origin`, `-keypool`, `-autoscaler`); the binary's
//! subcommands (`src/cmd/`) start them.
//!
//! # Layout
//!
//! - [`embedded`]: the all-in-one process (`edgelink serve`): the key pool
//!   and the creation API mounted on the edge, on one SQLite file.

pub mod embedded;
