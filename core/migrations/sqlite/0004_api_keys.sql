-- API keys and idempotency keys (see the PostgreSQL migration).
CREATE TABLE api_keys (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    prefix      TEXT NOT NULL UNIQUE,
    hash        BLOB NOT NULL UNIQUE CHECK (length(hash) = 32),
    created_at  INTEGER NOT NULL DEFAULT (unixepoch()),
    revoked_at  INTEGER
);

CREATE TABLE idempotency_keys (
    api_key_id  INTEGER NOT NULL REFERENCES api_keys (id),
    key         TEXT NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request     BLOB NOT NULL CHECK (length(request) = 32),
    code        TEXT NOT NULL,
    created_at  INTEGER NOT NULL DEFAULT (unixepoch()),
    PRIMARY KEY (api_key_id, key)
) WITHOUT ROWID;
