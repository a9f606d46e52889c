//! Blob storage: one interface over a local directory or an S3-compatible bucket.
//!
//! Objects are immutable byte strings under `/`-separated keys. A `put` is atomic: readers see
//! the whole object or nothing, even if the writer crashes or its body fails half way. The cache
//! lays its objects out as a static Nix binary cache (`<cache>/nix-cache-info`,
//! `<cache>/<hash>.narinfo`, `<cache>/nar/<filehash>.nar.zst`, `<cache>/log/<drv>`), so any
//! static file server can serve a copy of the store.

mod key;
mod local;
mod s3;

use std::fmt;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;
use futures_util::stream::BoxStream;
use thiserror::Error;

pub use key::BlobKey;
pub use local::LocalStore;
pub use s3::{S3Options, S3Store};

/// A body streamed into or out of the store.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// A byte range as HTTP `Range` headers express it, resolved against the object's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// From an offset to the end (`bytes=500-`).
    From(u64),
    /// Both ends inclusive (`bytes=0-499`), as in HTTP.
    Inclusive(u64, u64),
    /// The last N bytes (`bytes=-500`).
    Suffix(u64),
}

impl ByteRange {
    /// The half-open range of an object of `size` bytes this selects, or `None` if it selects
    /// nothing (a start past the end, or an empty suffix), which HTTP answers with 416.
    pub fn resolve(self, size: u64) -> Option<Range<u64>> {
        let range = match self {
            ByteRange::From(start) => start..size,
            ByteRange::Inclusive(start, end) if start <= end => {
                start..end.saturating_add(1).min(size)
            }
            ByteRange::Inclusive(..) => return None,
            ByteRange::Suffix(n) => size.saturating_sub(n)..size,
        };
        (range.start < range.end).then_some(range)
    }
}

/// What the store knows about an object without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobMeta {
    /// The object's key.
    pub key: BlobKey,
    /// Size in bytes.
    pub size: u64,
    /// When the object was last written; `None` if the backend does not say.
    pub modified: Option<SystemTime>,
}

/// What [`BlobStore::reap_leftovers`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reaped {
    /// Leftovers deleted.
    pub count: u64,
    /// Their total size in bytes.
    pub bytes: u64,
}

/// An object (or a range of it) being read.
pub struct Blob {
    /// Size of the whole object in bytes.
    pub size: u64,
    /// The half-open byte range `body` yields.
    pub range: Range<u64>,
    /// The bytes of `range`, streamed.
    pub body: ByteStream,
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Blob")
            .field("size", &self.size)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

/// Why a store operation failed.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("range not satisfiable for {key} ({size} bytes)")]
    RangeNotSatisfiable { key: BlobKey, size: u64 },
    #[error("object {0} does not exist")]
    NotFound(BlobKey),
    #[error("upload of {key} aborted: {source}")]
    Body { key: BlobKey, source: io::Error },
    #[error("I/O error on object {key}: {source}")]
    Io { key: BlobKey, source: io::Error },
    #[error("object store error on {key}: {source}")]
    Backend {
        key: BlobKey,
        source: Box<object_store::Error>,
    },
}

/// A put written from a blocking thread (see [`BlobStore::writer`]). The object becomes
/// visible only through [`commit`](BlobWriter::commit); dropping the writer before that discards
/// what was written, and a previous object under the key is untouched.
pub trait BlobWriter: io::Write + Send {
    /// Makes the object durable and visible under its key, replacing any object there, and
    /// returns its size. Blocks: call it from a blocking thread.
    fn commit(self: Box<Self>) -> Result<u64, StoreError>;
}

/// The blob store interface. Implementations are shared across requests (`Arc<dyn BlobStore>`).
#[async_trait]
pub trait BlobStore: Send + Sync + fmt::Debug {
    /// Stores `body` under `key`, replacing any object there, and returns its size. Atomic: if the
    /// body yields an error or the call is cancelled, nothing (no partial object) becomes visible
    /// and a previous object under `key` is untouched.
    async fn put(&self, key: &BlobKey, body: ByteStream) -> Result<u64, StoreError>;

    /// Starts a put that a blocking thread writes with plain `write` calls, for a backend where
    /// that is cheaper than [`put`](BlobStore::put)'s stream; `None` if the backend has no such
    /// path. The local directory has one: a compressing thread then writes straight into the
    /// file, without handing each piece to the runtime and copying it into tokio's file buffer.
    async fn writer(&self, _key: &BlobKey) -> Result<Option<Box<dyn BlobWriter>>, StoreError> {
        Ok(None)
    }

    /// Streams the object, or the part `range` selects; `None` if there is no such object.
    async fn get(
        &self,
        key: &BlobKey,
        range: Option<ByteRange>,
    ) -> Result<Option<Blob>, StoreError>;

    /// The object's size; `None` if there is no such object.
    async fn head(&self, key: &BlobKey) -> Result<Option<BlobMeta>, StoreError>;

    /// Deletes the object; `false` if there was none.
    async fn delete(&self, key: &BlobKey) -> Result<bool, StoreError>;

    /// Moves an object to another key, replacing what is there. Readers of `to` see the old or
    /// the new object, never a partial one.
    async fn rename(&self, from: &BlobKey, to: &BlobKey) -> Result<(), StoreError>;

    /// Every object whose key lies under the folder `prefix`, in no particular order.
    fn list(&self, prefix: &BlobKey) -> BoxStream<'static, Result<BlobMeta, StoreError>>;

    /// Deletes the data that puts interrupted by a crash left under the folder `prefix` and that
    /// was last written before `older_than`: data that no key names and `list` does not show.
    /// Puts still under way keep writing theirs, so a generous `older_than` spares them. With
    /// `dry_run`, only counts what it would delete.
    async fn reap_leftovers(
        &self,
        prefix: &BlobKey,
        older_than: SystemTime,
        dry_run: bool,
    ) -> Result<Reaped, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_resolve_like_http() {
        assert_eq!(ByteRange::Inclusive(0, 9).resolve(100), Some(0..10));
        assert_eq!(ByteRange::Inclusive(90, 200).resolve(100), Some(90..100));
        assert_eq!(ByteRange::From(95).resolve(100), Some(95..100));
        assert_eq!(ByteRange::Suffix(10).resolve(100), Some(90..100));
        assert_eq!(ByteRange::Suffix(1000).resolve(100), Some(0..100));
        assert_eq!(ByteRange::From(100).resolve(100), None);
        assert_eq!(ByteRange::Inclusive(5, 4).resolve(100), None);
        assert_eq!(ByteRange::Suffix(0).resolve(100), None);
        assert_eq!(ByteRange::From(0).resolve(0), None);
    }
}
