-- API keys of the creation API. Only a SHA-256 of each key is kept (keys are
-- 190-bit random strings, so a fast hash is enough); the prefix tells keys
-- apart in listings and revocation.
CREATE TABLE api_keys (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    prefix      text NOT NULL UNIQUE,
    hash        bytea NOT NULL UNIQUE CHECK (octet_length(hash) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- Idempotency-Key: which link a (key, Idempotency-Key) pair created, and a
-- hash of the request, so a retry gets the same link and a different request
-- under the same key is refused.
CREATE TABLE idempotency_keys (
    api_key_id  bigint NOT NULL REFERENCES api_keys (id),
    key         text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request     bytea NOT NULL CHECK (octet_length(request) = 32),
    code        text COLLATE "C" NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (api_key_id, key)
);
