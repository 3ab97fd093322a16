//! EdgeLink's roles assembled into one process: what the `edgelink` binary
//! and the workspace's cross-role tests share. Each role is its own crate
//! (`edgelink-edge`, `-origin`, `-keypool`, `-autoscaler`); the binary's
//! subcommands (`src/cmd/`) start them.

pub mod embedded;
