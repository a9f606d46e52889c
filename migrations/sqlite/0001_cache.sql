-- The binary cache's index (SQLite). Timestamps are UTC milliseconds since the Unix epoch.
-- Keep in step with ../postgres/0001_cache.sql: same tables, columns and constraints.

-- Named caches; each is a Nix binary cache served under /cache/<name>.
CREATE TABLE caches (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    is_public INTEGER NOT NULL CHECK (is_public IN (0, 1)),
    priority INTEGER NOT NULL,
    -- The cache's Ed25519 secret key in Nix's `name:base64` form. Never returned by any API.
    signing_key TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

-- Verified NAR files in the blob store (one row per object under <cache>/nar/).
CREATE TABLE nars (
    id INTEGER PRIMARY KEY,
    cache_id INTEGER NOT NULL REFERENCES caches (id) ON DELETE CASCADE,
    file_key TEXT NOT NULL,
    compression TEXT NOT NULL,
    file_hash TEXT NOT NULL,
    file_size INTEGER NOT NULL,
    nar_hash TEXT NOT NULL,
    nar_size INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (cache_id, file_key)
);

-- Store paths a cache serves. A row exists only once its NAR and all its references are present.
CREATE TABLE paths (
    id INTEGER PRIMARY KEY,
    cache_id INTEGER NOT NULL REFERENCES caches (id) ON DELETE CASCADE,
    hash_part TEXT NOT NULL,
    store_path TEXT NOT NULL,
    nar_id INTEGER NOT NULL REFERENCES nars (id),
    -- Base names of the references, sorted, space-separated (as in a narinfo).
    refs TEXT NOT NULL,
    deriver TEXT,
    ca TEXT,
    -- Signatures, newline-separated `key-name:base64`.
    sigs TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_accessed_at INTEGER NOT NULL,
    UNIQUE (cache_id, hash_part)
);
CREATE INDEX paths_by_nar ON paths (nar_id);
CREATE INDEX paths_by_access ON paths (cache_id, last_accessed_at);

-- The reference graph, for closure checks and garbage collection.
CREATE TABLE path_refs (
    path_id INTEGER NOT NULL REFERENCES paths (id) ON DELETE CASCADE,
    ref_hash TEXT NOT NULL,
    PRIMARY KEY (path_id, ref_hash)
);
CREATE INDEX path_refs_by_ref ON path_refs (ref_hash);

-- API and netrc tokens; only the SHA-256 of a token is stored.
CREATE TABLE tokens (
    id INTEGER PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);

-- What a token may do, per cache. `admin` includes `push`, which includes `read`.
CREATE TABLE token_scopes (
    token_id INTEGER NOT NULL REFERENCES tokens (id) ON DELETE CASCADE,
    cache_id INTEGER NOT NULL REFERENCES caches (id) ON DELETE CASCADE,
    permission TEXT NOT NULL CHECK (permission IN ('read', 'push', 'admin')),
    PRIMARY KEY (token_id, cache_id)
);

-- Named roots that garbage collection keeps, with their closures.
CREATE TABLE pins (
    id INTEGER PRIMARY KEY,
    cache_id INTEGER NOT NULL REFERENCES caches (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    store_path TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (cache_id, name)
);
