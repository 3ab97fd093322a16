-- Click counts and applied flushes (see the PostgreSQL migration). Days are
-- Julian day numbers.
CREATE TABLE link_clicks (
    code   TEXT NOT NULL,
    day    INTEGER NOT NULL,
    human  INTEGER NOT NULL DEFAULT 0 CHECK (human >= 0),
    bot    INTEGER NOT NULL DEFAULT 0 CHECK (bot >= 0),
    PRIMARY KEY (code, day)
) WITHOUT ROWID;

CREATE TABLE click_flushes (
    edge        TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    applied_at  INTEGER NOT NULL DEFAULT (unixepoch()),
    PRIMARY KEY (edge, seq)
) WITHOUT ROWID;
CREATE INDEX click_flushes_applied_at ON click_flushes (applied_at);
