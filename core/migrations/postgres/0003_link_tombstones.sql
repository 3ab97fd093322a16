-- Deleting a link leaves a tombstone: the row stays, disabled, so the code
-- answers 410 and is never given to another link (old shares of it must not
-- start pointing somewhere new).
ALTER TABLE links ADD COLUMN deleted_at timestamptz;
