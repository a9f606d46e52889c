//! Kiln's worker: takes steps from the queue, builds them with Nix in the sandbox in its own store,
//! streams logs and uploads outputs to the cache.
//!
//! A worker never touches the database and is not trusted with the signing key: everything it sends
//! is verified by the cache. The build loop arrives with the embedded-farm work; until then this crate
//! only marks the boundary in the workspace.
