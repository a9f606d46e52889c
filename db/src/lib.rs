//! Kiln's database access: one sqlx pool whose backend (SQLite or PostgreSQL) is chosen at run
//! time from the URL, the migration runner, typed ids and timestamps.
//!
//! Queries live next to the code that owns the behaviour (the cache's index lives in
//! `kiln-cache`); this crate only opens the pool, applies the schema and provides the shared
//! vocabulary. Every query in Kiln is written once for both backends: `$1` placeholders, `BIGINT`
//! integers, `TEXT`, unix-millisecond timestamps, `RETURNING` and `ON CONFLICT`, all of which
//! SQLite and PostgreSQL understand alike. Where DDL must differ, `migrations/sqlite/` and
//! `migrations/postgres/` hold one file each per version. This crate never decides business
//! rules and never logs query parameters (they can hold token hashes and keys).

mod ids;
mod migrate;
mod pool;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
mod time;

pub use ids::{
    BuildId, CacheId, EvaluationId, JobsetId, NarId, PathId, ProjectId, StepId, TokenId,
};
pub use pool::{Db, DbError, Dialect};
pub use time::Timestamp;

/// Re-exported so that crates holding queries name the same sqlx as the pool.
pub use sqlx;
