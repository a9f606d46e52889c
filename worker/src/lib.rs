//! Kiln's worker: builds one step with Nix in the sandbox, in its own store, streams the log and
//! uploads the outputs and the log to the cache.
//!
//! A worker never touches the database and is not trusted with the signing key: everything it
//! sends is verified by the cache. Its inputs come only from the cache (substituted by Nix,
//! checked against the cache's public key), so workers share results only through it.

pub mod log;
pub mod outputs;
pub mod serve;
pub mod step;
