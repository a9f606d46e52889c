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
use crate::storage::{BlobKey, BlobStore, ByteStream, StoreError};

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
    let (nar_tx, nar_rx) = mpsc::channel::<Bytes>(IN_FLIGHT);
    let (store_tx, store_rx) = mpsc::channel::<io::Result<Bytes>>(IN_FLIGHT);
    let abort = store_tx.clone();
    let compressor =
        tokio::task::spawn_blocking(move || compress::compress_nar(nar_rx, store_tx, level, limit));
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
