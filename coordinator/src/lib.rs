//! Kiln's coordinator: watches git repositories, evaluates jobsets into derivation graphs, schedules
//! every step once and records the results.
//!
//! It owns the database (the farm's source of truth) and must never build anything itself nor hold
//! the cache's signing key. The evaluation, graph ingest and scheduling code arrives with the
//! embedded-farm work; until then this crate only marks the boundary in the workspace.
