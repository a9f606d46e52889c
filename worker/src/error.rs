//! Why a worker could not start. Failures of a step are never errors: they are its status.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use crate::serve::ServeError;

/// Why [`Executor::start`](crate::Executor::start) failed.
#[derive(Debug, Error)]
pub enum WorkerError {
    /// A configuration value is unusable.
    #[error("invalid worker configuration: {0}")]
    Config(String),
    /// The worker's state directory could not be prepared.
    #[error("cannot prepare {path}")]
    State {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The cache client could not be set up.
    #[error("cannot set up the cache client")]
    Cache(#[source] kiln_cache::client::ClientError),
    /// Nix could not be started.
    #[error("cannot start Nix")]
    Nix(#[source] ServeError),
}
