-- The key pool (keypool crate): keys generated ahead of time, leased by
-- origins in batches with FOR UPDATE SKIP LOCKED.

-- Free keys. A key leaves this table exactly once (leased) and is never
-- generated again: keys are a permutation of a sequence that only grows.
CREATE TABLE keypool_free (
    key text COLLATE "C" PRIMARY KEY
);

-- One keyspace per key length: the secret that orders it and the next
-- sequence number to spell. Refillers reserve ranges by moving next_seq.
CREATE TABLE keypool_spaces (
    key_length  smallint PRIMARY KEY CHECK (key_length BETWEEN 4 AND 10),
    secret      bytea NOT NULL CHECK (octet_length(secret) = 16),
    next_seq    bigint NOT NULL DEFAULT 0 CHECK (next_seq >= 0),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Counters and the last refill, one row.
CREATE TABLE keypool_stats (
    id                boolean PRIMARY KEY DEFAULT true CHECK (id),
    generated         bigint NOT NULL DEFAULT 0,
    leased            bigint NOT NULL DEFAULT 0,
    used              bigint NOT NULL DEFAULT 0,
    last_refill_at    timestamptz,
    last_refill_keys  bigint,
    last_refill_ms    bigint
);
INSERT INTO keypool_stats DEFAULT VALUES;
