//! `edgelink serve`: the edge with the key pool and the creation API
//! mounted, all in one process on SQLite (the embedded default).

use std::process::ExitCode;

use edgelink_core::config::{Config, OriginConfig, StorageMode};

use super::apply_listen;
use super::edge::edge_role;
use crate::cli::{Common, Listen, SqliteArg};
use crate::Failure;

/// `edgelink serve`.
pub(crate) fn run(common: Common, listen: Listen, sqlite: SqliteArg) -> Result<ExitCode, Failure> {
    let flags = move |c: &mut Config| {
        apply_listen(c, &listen);
        if let Some(p) = &sqlite.sqlite {
            c.sqlite.path = p.clone();
        }
        // All in one process, short URLs point at this listener
        // unless a public URL was configured.
        if c.origin.public_url == OriginConfig::default().public_url {
            c.origin.public_url = format!("http://{}", c.server.listen);
        }
        StorageMode::Embedded
    };
    edge_role(common, flags)
}
