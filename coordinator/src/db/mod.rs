//! The farm's queries, written once for SQLite and PostgreSQL (`$n` placeholders, `BIGINT`,
//! `ON CONFLICT`, `RETURNING`; no `SUM` or boolean results, which the two type differently).
//!
//! State transitions are conditional updates (`... WHERE status = 'running' AND attempt = $n`),
//! so applying the same event twice changes nothing the second time.

pub mod builds;
pub mod evals;
pub mod projects;
pub mod steps;

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::error::CoordinatorError;

/// Reads column `name` of `row`.
pub(crate) fn col<T>(row: &AnyRow, name: &str) -> Result<T, CoordinatorError>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get(name)
        .map_err(|e| CoordinatorError::Corrupt(format!("column {name}: {e}")))
}

/// `$first, $first+1, ...` for `n` values.
pub(crate) fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Most values bound in one `IN (...)` list.
pub(crate) const CHUNK: usize = 500;
