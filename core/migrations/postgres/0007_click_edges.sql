-- One row per edge process instead of one per flush: an edge writes its
-- flushes one at a time, in increasing sequence numbers, and retries the
-- oldest until it is taken, so the highest sequence applied for an edge
-- says which of its writes were applied. A write is applied when its seq is
-- above the edge's row (raising it in the same statement); a retry after a
-- lost answer finds its seq there and adds nothing. Flushes are now written
-- in batches of analytics.flush_batch pairs, tens a second under uniform
-- traffic, and click_flushes would have held a row for each for two days.
CREATE TABLE click_edges (
    edge        text PRIMARY KEY,
    seq         bigint NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX click_edges_applied_at ON click_edges (applied_at);
-- click_flushes stays while an edge of an earlier version may still be
-- writing to it (a rolling upgrade); new edges delete its old rows as they
-- delete their own, and a later migration drops it.
