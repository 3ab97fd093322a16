-- Deleting a link leaves a tombstone (see the PostgreSQL migration).
ALTER TABLE links ADD COLUMN deleted_at INTEGER;
