-- The build farm (SQLite). Timestamps are UTC milliseconds since the Unix epoch; booleans are 0/1.
-- Keep in step with ../postgres/0003_farm.sql: same tables, columns and constraints.

-- Projects group jobsets. `source` says who owns the row: the config file ('config', updated at
-- every start) or the API ('api').
CREATE TABLE projects (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    enabled INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    source TEXT NOT NULL CHECK (source IN ('config', 'api')),
    created_at INTEGER NOT NULL
);

-- A git branch and what to evaluate in it.
CREATE TABLE jobsets (
    id INTEGER PRIMARY KEY,
    project_id INTEGER NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    url TEXT NOT NULL,
    branch TEXT NOT NULL,
    -- 'legacy': `expression` is a file of the checkout; 'flake': the checkout is a flake.
    kind TEXT NOT NULL CHECK (kind IN ('legacy', 'flake')),
    expression TEXT,
    -- Extra inputs of a legacy jobset, as JSON: {"name": {"type": "string"|"bool"|"git", ...}}.
    inputs TEXT NOT NULL DEFAULT '{}',
    -- Seconds between polls; 0 = only on request.
    check_interval INTEGER NOT NULL,
    enabled INTEGER NOT NULL CHECK (enabled IN (0, 1)),
    -- Weight in fair-share scheduling between jobsets.
    shares INTEGER NOT NULL CHECK (shares > 0),
    -- Evaluations kept; older finished ones are deleted. 0 = keep all.
    keep_evaluations INTEGER NOT NULL CHECK (keep_evaluations >= 0),
    source TEXT NOT NULL CHECK (source IN ('config', 'api')),
    last_checked_at INTEGER,
    -- Why the last poll failed (fetching the repository), cleared by a successful one.
    check_error TEXT,
    created_at INTEGER NOT NULL,
    UNIQUE (project_id, name)
);

-- One evaluation of a jobset at a commit. Per-job errors do not fail it.
CREATE TABLE evaluations (
    id INTEGER PRIMARY KEY,
    jobset_id INTEGER NOT NULL REFERENCES jobsets (id) ON DELETE CASCADE,
    -- The commit evaluated; NULL while queued on request before the fetch.
    git_commit TEXT,
    -- SHA-256 over the commit and the jobset's inputs: the same inputs give no new evaluation.
    inputs_hash TEXT,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    error TEXT,
    -- What asked for it: a poll that found new inputs, or the API.
    requested_by TEXT NOT NULL CHECK (requested_by IN ('poll', 'api')),
    queued_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    -- Milliseconds spent fetching and checking out, in Nix, and ingesting the graph.
    checkout_ms INTEGER,
    eval_ms INTEGER,
    ingest_ms INTEGER,
    job_count INTEGER NOT NULL DEFAULT 0,
    error_count INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX evaluations_by_jobset ON evaluations (jobset_id, id);
CREATE INDEX evaluations_by_status ON evaluations (status);

-- A job's evaluation error: Nix's message for that attribute.
CREATE TABLE job_errors (
    id INTEGER PRIMARY KEY,
    evaluation_id INTEGER NOT NULL REFERENCES evaluations (id) ON DELETE CASCADE,
    job TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX job_errors_by_evaluation ON job_errors (evaluation_id);

-- Steps: one per derivation that must be built, shared by every build that needs it.
CREATE TABLE steps (
    id INTEGER PRIMARY KEY,
    drv_path TEXT NOT NULL UNIQUE,
    -- The derivation's name (`hello-1.0`), the key of historical durations.
    drv_name TEXT NOT NULL,
    -- The .drv file's ATerm text, sent to workers.
    drv TEXT NOT NULL,
    system TEXT NOT NULL,
    -- requiredSystemFeatures, sorted, space-separated.
    required_features TEXT NOT NULL DEFAULT '',
    -- Store paths the build needs (outputs of input derivations, input sources), space-separated.
    input_paths TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed',
        'dependency-failed', 'failed-with-output', 'timed-out', 'cancelled', 'aborted',
        'unsupported', 'log-limit-exceeded', 'output-limit-exceeded')),
    -- The attempt last dispatched (0: never). A result counts only for the current attempt.
    attempt INTEGER NOT NULL DEFAULT 0,
    -- Transient failures since the last restart; at the cap the step is aborted.
    transient_failures INTEGER NOT NULL DEFAULT 0,
    timeout_secs INTEGER NOT NULL,
    max_silent_secs INTEGER NOT NULL,
    worker TEXT,
    message TEXT,
    created_at INTEGER NOT NULL,
    dispatched_at INTEGER,
    started_at INTEGER,
    finished_at INTEGER,
    -- Not dispatched before this time (backoff after a transient failure).
    retry_at INTEGER
);
CREATE INDEX steps_by_status ON steps (status);

-- Outputs of a step; the hash and size once uploaded.
CREATE TABLE step_outputs (
    step_id INTEGER NOT NULL REFERENCES steps (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    nar_hash TEXT,
    nar_size INTEGER,
    PRIMARY KEY (step_id, name)
);

-- The step graph: `step_id` needs the outputs of `dep_id`.
CREATE TABLE step_deps (
    step_id INTEGER NOT NULL REFERENCES steps (id) ON DELETE CASCADE,
    dep_id INTEGER NOT NULL REFERENCES steps (id) ON DELETE CASCADE,
    PRIMARY KEY (step_id, dep_id)
);
CREATE INDEX step_deps_by_dep ON step_deps (dep_id);

-- One build per job per evaluation.
CREATE TABLE builds (
    id INTEGER PRIMARY KEY,
    evaluation_id INTEGER NOT NULL REFERENCES evaluations (id) ON DELETE CASCADE,
    jobset_id INTEGER NOT NULL REFERENCES jobsets (id) ON DELETE CASCADE,
    -- The attribute path joined with '.'.
    job TEXT NOT NULL,
    drv_path TEXT NOT NULL,
    system TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed',
        'dependency-failed', 'failed-with-output', 'timed-out', 'cancelled', 'aborted',
        'unsupported', 'log-limit-exceeded', 'output-limit-exceeded')),
    -- Every output was in the cache already: nothing was built for it.
    cached INTEGER NOT NULL CHECK (cached IN (0, 1)),
    -- meta.schedulingPriority (higher first).
    priority INTEGER NOT NULL,
    -- Raised by `bump`; orders before everything else.
    global_priority INTEGER NOT NULL DEFAULT 0,
    timeout_secs INTEGER NOT NULL,
    max_silent_secs INTEGER NOT NULL,
    -- meta (description, license, homepage, maintainers, ...) as JSON.
    meta TEXT NOT NULL,
    -- Names of the constituent jobs of an aggregate, as a JSON array; NULL otherwise.
    constituents TEXT,
    -- The step of this build's own derivation; NULL when cached.
    top_step_id INTEGER REFERENCES steps (id),
    message TEXT,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    UNIQUE (evaluation_id, job)
);
CREATE INDEX builds_by_status ON builds (status);
CREATE INDEX builds_by_drv ON builds (drv_path);

-- Output name -> store path of each build.
CREATE TABLE build_outputs (
    build_id INTEGER NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    PRIMARY KEY (build_id, name)
);

-- Every step a build needs (its own and its dependencies' that were not cached).
CREATE TABLE build_steps (
    build_id INTEGER NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    step_id INTEGER NOT NULL REFERENCES steps (id) ON DELETE CASCADE,
    PRIMARY KEY (build_id, step_id)
);
CREATE INDEX build_steps_by_step ON build_steps (step_id);

-- nix-support/hydra-build-products of a step's outputs.
CREATE TABLE step_products (
    id INTEGER PRIMARY KEY,
    step_id INTEGER NOT NULL REFERENCES steps (id) ON DELETE CASCADE,
    product_type TEXT NOT NULL,
    subtype TEXT NOT NULL,
    path TEXT NOT NULL,
    name TEXT NOT NULL,
    file_size INTEGER,
    sha256 TEXT
);
CREATE INDEX step_products_by_step ON step_products (step_id);

-- nix-support/hydra-metrics of a step's outputs.
CREATE TABLE step_metrics (
    step_id INTEGER NOT NULL REFERENCES steps (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value REAL NOT NULL,
    unit TEXT,
    PRIMARY KEY (step_id, name)
);

-- Where the log of each finished attempt is: a key of the cache (`log/<drv>`).
CREATE TABLE step_logs (
    step_id INTEGER NOT NULL REFERENCES steps (id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    worker TEXT NOT NULL,
    cache_key TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (step_id, attempt)
);

-- Historical build durations per derivation name and system (an exponential moving average),
-- which weight the critical path.
CREATE TABLE step_durations (
    drv_name TEXT NOT NULL,
    system TEXT NOT NULL,
    mean_ms INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (drv_name, system)
);

-- Requests from the API to the coordinator (restart, cancel, bump), applied in order. At most one
-- pending request per kind and target.
CREATE TABLE farm_commands (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('restart', 'cancel', 'bump')),
    build_id INTEGER NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    done_at INTEGER
);
CREATE UNIQUE INDEX farm_commands_pending ON farm_commands (kind, build_id) WHERE done_at IS NULL;
