-- The key pool (keypool crate), embedded: the same tables as PostgreSQL's.
-- SQLite has one writer at a time, so leasing inside a write transaction is
-- race-free without row locks.

-- A rowid table on purpose: leases take keys in insertion order, which is
-- permutation order (random-looking); a WITHOUT ROWID table would hand them
-- out sorted (0009..., 000A..., ...).
CREATE TABLE keypool_free (
    key TEXT NOT NULL PRIMARY KEY
);

CREATE TABLE keypool_spaces (
    key_length  INTEGER PRIMARY KEY CHECK (key_length BETWEEN 4 AND 10),
    secret      BLOB NOT NULL CHECK (length(secret) = 16),
    next_seq    INTEGER NOT NULL DEFAULT 0 CHECK (next_seq >= 0),
    created_at  INTEGER NOT NULL DEFAULT (unixepoch())
);

CREATE TABLE keypool_stats (
    id                INTEGER PRIMARY KEY CHECK (id = 1),
    generated         INTEGER NOT NULL DEFAULT 0,
    leased            INTEGER NOT NULL DEFAULT 0,
    used              INTEGER NOT NULL DEFAULT 0,
    last_refill_at    INTEGER,
    last_refill_keys  INTEGER,
    last_refill_ms    INTEGER
);
INSERT INTO keypool_stats (id) VALUES (1);
