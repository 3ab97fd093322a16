//! Versioned schema migrations for both SQL backends.
//!
//! Each backend has an ordered list; a table `edgelink_migrations` records what
//! was applied. Applying is idempotent and serialised (PostgreSQL: an advisory
//! lock held by the migrating transaction; SQLite: `BEGIN IMMEDIATE`), so
//! several processes may start at once. A database that has a version this
//! binary does not know is refused rather than run against.

/// One schema step.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

pub const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        name: "links",
        sql: include_str!("../migrations/postgres/0001_links.sql"),
    },
    Migration {
        version: 2,
        name: "keypool",
        sql: include_str!("../migrations/postgres/0002_keypool.sql"),
    },
    Migration {
        version: 3,
        name: "link_tombstones",
        sql: include_str!("../migrations/postgres/0003_link_tombstones.sql"),
    },
    Migration {
        version: 4,
        name: "api_keys",
        sql: include_str!("../migrations/postgres/0004_api_keys.sql"),
    },
    Migration {
        version: 5,
        name: "clicks",
        sql: include_str!("../migrations/postgres/0005_clicks.sql"),
    },
    Migration {
        version: 6,
        name: "click_fillfactor",
        sql: include_str!("../migrations/postgres/0006_click_fillfactor.sql"),
    },
    Migration {
        version: 7,
        name: "click_edges",
        sql: include_str!("../migrations/postgres/0007_click_edges.sql"),
    },
];

pub const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "links",
        sql: include_str!("../migrations/sqlite/0001_links.sql"),
    },
    Migration {
        version: 2,
        name: "keypool",
        sql: include_str!("../migrations/sqlite/0002_keypool.sql"),
    },
    Migration {
        version: 3,
        name: "link_tombstones",
        sql: include_str!("../migrations/sqlite/0003_link_tombstones.sql"),
    },
    Migration {
        version: 4,
        name: "api_keys",
        sql: include_str!("../migrations/sqlite/0004_api_keys.sql"),
    },
    Migration {
        version: 5,
        name: "clicks",
        sql: include_str!("../migrations/sqlite/0005_clicks.sql"),
    },
    Migration {
        version: 6,
        name: "click_edges",
        sql: include_str!("../migrations/sqlite/0006_click_edges.sql"),
    },
];

/// Newest version this binary knows for a list.
pub fn latest(list: &[Migration]) -> i32 {
    list.iter().map(|m| m.version).max().unwrap_or(0)
}

/// The migrations of `list` that are not in `applied`, in order. Errors when
/// the database is ahead of this binary.
pub fn pending<'a>(list: &'a [Migration], applied: &[i32]) -> Result<Vec<&'a Migration>, String> {
    if let Some(max) = applied.iter().max() {
        if *max > latest(list) {
            return Err(format!(
                "database schema is at version {max}, newer than this binary's {}; upgrade the binary",
                latest(list)
            ));
        }
    }
    Ok(list
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_ordered_and_unique() {
        for list in [POSTGRES, SQLITE] {
            let versions: Vec<i32> = list.iter().map(|m| m.version).collect();
            let mut sorted = versions.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(versions, sorted);
        }
    }

    #[test]
    fn pending_skips_applied_and_refuses_newer_schemas() {
        assert_eq!(pending(POSTGRES, &[]).unwrap().len(), POSTGRES.len());
        assert_eq!(pending(POSTGRES, &[1]).unwrap()[0].version, 2);
        assert!(pending(POSTGRES, &[1, 2, 3, 4, 5, 6, 7])
            .unwrap()
            .is_empty());
        assert_eq!(
            pending(POSTGRES, &[1, 2, 3, 4, 5, 6]).unwrap()[0].name,
            "click_edges"
        );
        assert_eq!(pending(POSTGRES, &[1, 2, 3, 4]).unwrap()[0].name, "clicks");
        assert!(pending(POSTGRES, &[1, 99]).is_err());
    }
}
