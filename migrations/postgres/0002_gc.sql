-- Garbage collection of the binary cache (PostgreSQL). Keep in step with ../sqlite/0002_gc.sql.

-- NAR files garbage collection has decided to delete and may be deleting right now. While a row
-- exists, the object under `file_key` can vanish at any moment, so no `nars` row may be recorded
-- for that key (recording checks this table in its transaction). A row is removed in the same
-- transaction that deletes its object, so a later upload of the same file is safe.
CREATE TABLE nar_deletions (
    cache_id BIGINT NOT NULL REFERENCES caches (id) ON DELETE CASCADE,
    file_key TEXT NOT NULL,
    -- Size of the object when it was claimed, in bytes (for reports).
    file_size BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (cache_id, file_key)
);

-- Collection looks for NAR files no path uses that are older than the grace period.
CREATE INDEX nars_by_age ON nars (cache_id, created_at);
