-- Links: the source of truth. Codes compare byte-wise (COLLATE "C"): they are
-- case-sensitive ASCII, and the C collation makes the primary-key index cheaper.
CREATE TABLE links (
    code        text COLLATE "C" PRIMARY KEY
                CHECK (code ~ '^[A-Za-z0-9_-]{1,64}$'),
    target      text NOT NULL CHECK (octet_length(target) BETWEEN 1 AND 8192),
    redirect    smallint NOT NULL DEFAULT 302 CHECK (redirect IN (301, 302, 307, 308)),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    disabled    boolean NOT NULL DEFAULT false
);
