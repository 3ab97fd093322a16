-- Click counts, per link and UTC day, human and bot. Every edge adds its
-- counts in batches ("flushes"); a flush is applied at most once: its
-- (edge, seq) goes into click_flushes in the same statement, and a retry of
-- a flush that was applied finds it there and adds nothing.
CREATE TABLE link_clicks (
    code   text COLLATE "C" NOT NULL,
    day    date NOT NULL,
    human  bigint NOT NULL DEFAULT 0 CHECK (human >= 0),
    bot    bigint NOT NULL DEFAULT 0 CHECK (bot >= 0),
    PRIMARY KEY (code, day)
);

CREATE TABLE click_flushes (
    edge        text NOT NULL,
    seq         bigint NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (edge, seq)
);
CREATE INDEX click_flushes_applied_at ON click_flushes (applied_at);
