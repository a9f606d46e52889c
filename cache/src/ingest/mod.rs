//! Receiving uploads: NAR files are streamed into storage while they are verified on another
//! thread, and become visible only if the whole body arrived and passed every check.

mod compress;
mod publish;
mod verify;

use std::io;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream;
use tokio::sync::mpsc;

pub use publish::{check_references, publish, publish_log};
pub use verify::{NarFileVerifier, Verified};

use crate::error::CacheError;
use crate::storage::{BlobKey, BlobStore, BlobWriter, ByteStream, StoreError};

/// Chunks in flight between the request, the checking thread and storage.
const IN_FLIGHT: usize = 16;

fn channel_stream(rx: mpsc::Receiver<io::Result<Bytes>>) -> ByteStream {
    Box::pin(stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

fn join_error(e: tokio::task::JoinError) -> CacheError {
    CacheError::Internal(format!("upload checking task failed: {e}"))
}

/// How feeding the body ended.
enum Fed {
    /// The body ended (or the checker stopped taking chunks); the checker's verdict decides.
    Done,
    /// Storage stopped reading: its own error decides.
    StorageStopped,
    /// The body itself is refused (too large, interrupted).
    Refused(CacheError),
}

/// Reads `body` (at most `limit` bytes) and sends each chunk to `checker` and, unless `storage`
/// is `None`, to storage.
async fn feed(
    mut body: ByteStream,
    limit: u64,
    what: &str,
    checker: mpsc::Sender<Bytes>,
    storage: Option<&mpsc::Sender<io::Result<Bytes>>>,
) -> Fed {
    let mut received = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                return Fed::Refused(CacheError::BadRequest(format!(
                    "the upload was interrupted: {e}"
                )));
            }
        };
        received += chunk.len() as u64;
        if received > limit {
            return Fed::Refused(CacheError::TooLarge {
                what: what.to_owned(),
                limit,
            });
        }
        if checker.send(chunk.clone()).await.is_err() {
            return Fed::Done;
        }
        if let Some(storage) = storage
            && storage.send(Ok(chunk)).await.is_err()
        {
            return Fed::StorageStopped;
        }
    }
    Fed::Done
}

/// Stores `body` under `key` while `verifier` checks it; the object is visible afterwards only
/// if the body was complete, within `limit` bytes, and verified.
pub async fn receive_nar_file(
    store: &dyn BlobStore,
    key: &BlobKey,
    body: ByteStream,
    limit: u64,
    verifier: NarFileVerifier,
) -> Result<Verified, CacheError> {
    let (check_tx, mut check_rx) = mpsc::channel::<Bytes>(IN_FLIGHT);
    let checker = tokio::task::spawn_blocking(move || {
        let mut verifier = verifier;
        while let Some(chunk) = check_rx.blocking_recv() {
            verifier.update(&chunk)?;
        }
        verifier.finish()
    });
    let (store_tx, store_rx) = mpsc::channel::<io::Result<Bytes>>(IN_FLIGHT);
    let drive = async move {
        let fed = feed(body, limit, "the NAR file", check_tx, Some(&store_tx)).await;
        // The checker ends once its channel closes (dropped with `feed`'s sender).
        let verdict = checker.await.map_err(join_error).and_then(|r| r);
        let outcome = match fed {
            Fed::Done => verdict.map_err(Some),
            Fed::Refused(err) => Err(Some(err)),
            Fed::StorageStopped => Err(None),
        };
        if outcome.is_err() {
            let _ = store_tx.send(Err(io::Error::other("upload refused"))).await;
        }
        outcome
    };
    let (outcome, stored) = tokio::join!(drive, store.put(key, channel_stream(store_rx)));
    match outcome {
        Ok(verified) => {
            stored?;
            Ok(verified)
        }
        Err(Some(refusal)) => Err(refusal),
        Err(None) => Err(stored.err().map(CacheError::from).unwrap_or_else(|| {
            CacheError::Internal("storage stopped reading but reported no error".to_owned())
        })),
    }
}

/// Compresses the raw NAR in `body` (at most `limit` bytes) with zstd at `level` into `key`,
/// validating and hashing it on the way; visible afterwards only if everything passed.
pub async fn receive_raw_nar(
    store: &dyn BlobStore,
    key: &BlobKey,
    body: ByteStream,
    limit: u64,
    level: i32,
) -> Result<Verified, CacheError> {
    match store.writer(key).await? {
        Some(writer) => compress_into_writer(writer, body, limit, level).await,
        None => compress_into_stream(store, key, body, limit, level).await,
    }
}

/// [`receive_raw_nar`] for a store that takes writes from the compressing thread itself.
async fn compress_into_writer(
    writer: Box<dyn BlobWriter>,
    body: ByteStream,
    limit: u64,
    level: i32,
) -> Result<Verified, CacheError> {
    let (nar_tx, nar_rx) = mpsc::channel::<Bytes>(IN_FLIGHT);
    let compressor = tokio::task::spawn_blocking(move || {
        compress::compress_to_writer(nar_rx, writer, level, limit)
    });
    // If this future is dropped, so is the compressor's handle: its writer is dropped
    // uncommitted when it ends, and nothing becomes visible.
    let fed = feed(body, limit, "the NAR", nar_tx, None).await;
    let verdict = compressor.await.map_err(join_error).and_then(|r| r);
    let (verified, writer) = match fed {
        Fed::Refused(err) => return Err(err),
        Fed::Done | Fed::StorageStopped => verdict?,
    };
    tokio::task::spawn_blocking(move || writer.commit())
        .await
        .map_err(join_error)??;
    Ok(verified)
}

/// [`receive_raw_nar`] for a store that takes a stream of compressed chunks.
async fn compress_into_stream(
    store: &dyn BlobStore,
    key: &BlobKey,
    body: ByteStream,
    limit: u64,
    level: i32,
) -> Result<Verified, CacheError> {
    let (nar_tx, nar_rx) = mpsc::channel::<Bytes>(IN_FLIGHT);
    let (store_tx, store_rx) = mpsc::channel::<io::Result<Bytes>>(IN_FLIGHT);
    let abort = store_tx.clone();
    let compressor = tokio::task::spawn_blocking(move || {
        compress::compress_to_stream(nar_rx, store_tx, level, limit)
    });
    let drive = async move {
        let fed = feed(body, limit, "the NAR", nar_tx, None).await;
        let verdict = compressor.await.map_err(join_error).and_then(|r| r);
        let outcome = match fed {
            Fed::Done | Fed::StorageStopped => verdict,
            Fed::Refused(err) => Err(err),
        };
        if outcome.is_err() {
            let _ = abort.send(Err(io::Error::other("upload refused"))).await;
        }
        outcome
    };
    let (outcome, stored) = tokio::join!(drive, store.put(key, channel_stream(store_rx)));
    match (outcome, stored) {
        (Ok(verified), Ok(_)) => Ok(verified),
        // A storage failure makes the compressor fail too; report the cause.
        (_, Err(err)) if !matches!(err, StoreError::Body { .. }) => Err(err.into()),
        (Err(refusal), _) => Err(refusal),
        (Ok(_), Err(err)) => Err(err.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use async_trait::async_trait;
    use futures_util::stream::BoxStream;
    use kiln_nix::Hash;

    use super::verify::tests::nar_of;
    use super::*;
    use crate::storage::{Blob, BlobMeta, ByteRange, LocalStore, Reaped};

    /// A local store without the direct writer, so uploads take the streamed path (as on S3).
    #[derive(Debug)]
    struct StreamOnly(LocalStore);

    #[async_trait]
    impl BlobStore for StreamOnly {
        async fn put(&self, key: &BlobKey, body: ByteStream) -> Result<u64, StoreError> {
            self.0.put(key, body).await
        }
        async fn get(
            &self,
            key: &BlobKey,
            range: Option<ByteRange>,
        ) -> Result<Option<Blob>, StoreError> {
            self.0.get(key, range).await
        }
        async fn head(&self, key: &BlobKey) -> Result<Option<BlobMeta>, StoreError> {
            self.0.head(key).await
        }
        async fn delete(&self, key: &BlobKey) -> Result<bool, StoreError> {
            self.0.delete(key).await
        }
        async fn rename(&self, from: &BlobKey, to: &BlobKey) -> Result<(), StoreError> {
            self.0.rename(from, to).await
        }
        fn list(&self, prefix: &BlobKey) -> BoxStream<'static, Result<BlobMeta, StoreError>> {
            self.0.list(prefix)
        }
        async fn reap_leftovers(
            &self,
            prefix: &BlobKey,
            older_than: std::time::SystemTime,
            dry_run: bool,
        ) -> Result<Reaped, StoreError> {
            self.0.reap_leftovers(prefix, older_than, dry_run).await
        }
    }

    async fn stores(dir: &Path) -> Vec<(&'static str, Box<dyn BlobStore>)> {
        vec![
            (
                "direct",
                Box::new(LocalStore::open(dir.join("direct")).await.unwrap()),
            ),
            (
                "streamed",
                Box::new(StreamOnly(
                    LocalStore::open(dir.join("streamed")).await.unwrap(),
                )),
            ),
        ]
    }

    /// `data` in pieces of `piece` bytes, then `tail` if given.
    fn body(data: &[u8], piece: usize, tail: Option<io::Error>) -> ByteStream {
        let mut items: Vec<io::Result<Bytes>> = data
            .chunks(piece)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        items.extend(tail.map(Err));
        Box::pin(stream::iter(items))
    }

    /// Every file under `dir`, temporary ones included.
    fn files(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for entry in walk(dir) {
            out.push(entry.strip_prefix(dir).unwrap().display().to_string());
        }
        out.sort();
        out
    }

    fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .flat_map(|e| {
                let path = e.unwrap().path();
                if path.is_dir() {
                    walk(&path)
                } else {
                    vec![path]
                }
            })
            .collect()
    }

    #[tokio::test]
    async fn a_raw_nar_is_stored_compressed_with_its_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let nar = nar_of(&vec![7u8; 3 << 20]);
        for (name, store) in stores(dir.path()).await {
            let key = BlobKey::new("c/staging/x").unwrap();
            let verified =
                receive_raw_nar(store.as_ref(), &key, body(&nar, 100_000, None), 1 << 30, 3)
                    .await
                    .unwrap();
            assert_eq!(verified.nar_hash, Hash::sha256(&nar), "{name}");
            assert_eq!(verified.nar_size, nar.len() as u64, "{name}");
            let stored = std::fs::read(dir.path().join(name).join("c/staging/x")).unwrap();
            assert_eq!(verified.file_hash, Hash::sha256(&stored), "{name}");
            assert_eq!(verified.file_size, stored.len() as u64, "{name}");
            assert_eq!(zstd::decode_all(stored.as_slice()).unwrap(), nar, "{name}");
            assert_eq!(files(&dir.path().join(name)), vec!["c/staging/x"], "{name}");
        }
    }

    #[tokio::test]
    async fn refused_raw_nars_leave_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let nar = nar_of(b"some contents");
        for (name, store) in stores(dir.path()).await {
            let key = BlobKey::new("c/staging/x").unwrap();
            let store = store.as_ref();
            let garbage = receive_raw_nar(store, &key, body(b"not a NAR", 4, None), 1 << 20, 3);
            assert!(
                matches!(garbage.await, Err(CacheError::BadRequest(ref m)) if m.contains("invalid NAR")),
                "{name}"
            );
            let truncated = &nar[..nar.len() - 8];
            let short = receive_raw_nar(store, &key, body(truncated, 16, None), 1 << 20, 3);
            assert!(
                matches!(short.await, Err(CacheError::BadRequest(_))),
                "{name}"
            );
            let large = receive_raw_nar(store, &key, body(&nar, 16, None), 64, 3);
            assert!(
                matches!(large.await, Err(CacheError::TooLarge { .. })),
                "{name}"
            );
            let broken = body(&nar[..40], 16, Some(io::Error::other("client went away")));
            let broken = receive_raw_nar(store, &key, broken, 1 << 20, 3);
            assert!(
                matches!(broken.await, Err(CacheError::BadRequest(_))),
                "{name}"
            );
            assert_eq!(
                files(&dir.path().join(name)),
                Vec::<String>::new(),
                "{name}"
            );
        }
    }

    #[tokio::test]
    async fn a_cancelled_raw_upload_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let nar = nar_of(&vec![1u8; 1 << 20]);
        for (name, store) in stores(dir.path()).await {
            let key = BlobKey::new("c/staging/x").unwrap();
            // Half the NAR, then a body that never ends: the request is dropped meanwhile.
            let half = stream::iter(vec![Ok(Bytes::copy_from_slice(&nar[..nar.len() / 2]))]);
            let stall = stream::once(std::future::pending::<io::Result<Bytes>>());
            let upload = receive_raw_nar(
                store.as_ref(),
                &key,
                Box::pin(half.chain(stall)),
                1 << 30,
                3,
            );
            assert!(
                tokio::time::timeout(Duration::from_millis(300), upload)
                    .await
                    .is_err(),
                "{name}: the upload ended without its body"
            );
            // The compressing thread notices the closed channel and drops its file.
            let root = dir.path().join(name);
            for _ in 0..100 {
                if files(&root).is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(files(&root), Vec::<String>::new(), "{name}");
            assert!(store.head(&key).await.unwrap().is_none(), "{name}");
        }
    }
}
