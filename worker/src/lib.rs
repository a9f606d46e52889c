//! Kiln's worker: builds one step with Nix in the sandbox, in its own store, streams the log and
//! uploads the outputs and the log to the cache.
//!
//! A worker never touches the database and is not trusted with the signing key: everything it
//! sends is verified by the cache. Its inputs come only from the cache (substituted by Nix and
//! checked against the cache's public key), so workers share results only through it.
//!
//! Builds go through `nix-store --serve --write`, the protocol Hydra drives remote builders
//! with ([`serve`]): a few long-lived Nix processes per worker rather than several new ones
//! per step. [`Executor`] owns them and runs steps; [`step`] sequences one step; [`outputs`]
//! reads what a build left in `nix-support`; [`log`] frames and limits the build log.

pub mod config;
pub mod error;
pub mod executor;
pub mod log;
pub mod outputs;
pub mod serve;
pub mod step;

pub use config::{UploadSettings, WorkerConfig, default_system};
pub use error::WorkerError;
pub use executor::Executor;
pub use log::{DiscardLog, LogSink};
pub use tokio_util::sync::CancellationToken;
