-- Links: the embedded source of truth. Times are Unix seconds (SQLite has no
-- timestamp type); WITHOUT ROWID keeps each row in the primary-key b-tree.
CREATE TABLE links (
    code        TEXT NOT NULL PRIMARY KEY
                CHECK (length(code) BETWEEN 1 AND 64 AND code NOT GLOB '*[^A-Za-z0-9_-]*'),
    target      TEXT NOT NULL CHECK (length(target) BETWEEN 1 AND 8192),
    redirect    INTEGER NOT NULL DEFAULT 302 CHECK (redirect IN (301, 302, 307, 308)),
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    disabled    INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1))
) WITHOUT ROWID;
