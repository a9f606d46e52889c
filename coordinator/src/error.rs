//! The coordinator's error type: what went wrong while polling, evaluating, ingesting,
//! dispatching or answering the API, with enough context to act on.

use thiserror::Error;

/// Why a coordinator operation failed.
#[derive(Debug, Error)]
pub enum CoordinatorError {
    /// The database failed; `context` says what was being done.
    #[error("database error while {context}: {source}")]
    Db {
        /// What was being done.
        context: String,
        /// The cause.
        source: sqlx::Error,
    },
    /// A row holds something the code cannot read (a corrupt or newer database).
    #[error("corrupt database row: {0}")]
    Corrupt(String),
    /// The bus failed.
    #[error("bus error: {0}")]
    Bus(#[from] kiln_bus::BusError),
    /// The cache failed.
    #[error("cache error: {0}")]
    Cache(#[from] kiln_cache::CacheError),
    /// Nothing under this name or id.
    #[error("{0} not found")]
    NotFound(String),
    /// Malformed input; the message names the field and the reason.
    #[error("{0}")]
    BadRequest(String),
    /// The request conflicts with the current state (a jobset declared in the config file).
    #[error("{0}")]
    Conflict(String),
    /// A derivation could not be read or used.
    #[error("derivation {path}: {reason}")]
    Derivation {
        /// The `.drv` path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Uploading store paths to the cache failed.
    #[error("cannot upload {path} to the cache: {reason}")]
    Upload {
        /// The store path.
        path: String,
        /// Why.
        reason: String,
    },
    /// Anything else that is the coordinator's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl CoordinatorError {
    /// Wraps a database error with what was being done.
    pub fn db(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> CoordinatorError {
        move |source| CoordinatorError::Db {
            context: context.into(),
            source,
        }
    }
}

/// Shorthand for results of coordinator operations.
pub type Result<T, E = CoordinatorError> = std::result::Result<T, E>;
