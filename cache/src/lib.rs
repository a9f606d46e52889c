//! Kiln's binary cache: storage, upload verification, signing, tokens and its HTTP endpoints.
//!
//! The cache owns the promise Kiln's users rely on: a narinfo is served only when its NAR is
//! stored whole, hashes to what the narinfo says, and every path it references is served too.
//! Everything a client uploads is verified before anything becomes visible, and the index in the
//! database is the commit point; blobs are written before the rows that make them visible. The
//! cache never builds, never evaluates, and never hands out its signing keys.

pub mod access;
pub mod caches;
pub mod client;
pub mod error;
pub mod gc;
pub mod http;
pub mod index;
pub mod ingest;
pub mod layout;
pub mod narinfos;
pub mod service;
pub mod storage;
pub mod tokens;
pub mod wire;

pub use caches::{CacheRecord, DEFAULT_CACHE};
pub use error::CacheError;
pub use service::{CacheService, Settings, open_store};
pub use tokens::Permission;
