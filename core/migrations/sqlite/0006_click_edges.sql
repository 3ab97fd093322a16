-- One row per edge process instead of one per flush (see the PostgreSQL
-- migration 7). The embedded store has one process, which has just
-- stopped writing to click_flushes, so the old table goes.
CREATE TABLE click_edges (
    edge        TEXT PRIMARY KEY,
    seq         INTEGER NOT NULL,
    applied_at  INTEGER NOT NULL DEFAULT (unixepoch())
) WITHOUT ROWID;
CREATE INDEX click_edges_applied_at ON click_edges (applied_at);
DROP TABLE click_flushes;
