//! Compressing a raw NAR with zstd as it arrives, checking and hashing it on the way.

use std::io::{self, Write};

use bytes::Bytes;
use kiln_nix::hash::Sha256Counter;
use kiln_nix::nar::NarValidator;
use tokio::sync::mpsc;

use super::verify::{Verified, feed_nar};
use crate::error::CacheError;

/// Compressed output is handed to storage in pieces of about this size.
const OUT_CHUNK: usize = 1 << 20;

/// Most zstd worker threads one upload uses.
const MAX_ZSTD_WORKERS: usize = 4;

/// Input each zstd worker compresses at a time. With zstd's default for level 3 (8 MiB) and its
/// buffers, the server's peak memory during one upload went from 54 to 154 MiB
/// (tests/cache_large.rs); with 1 MiB it is 78 MiB.
const ZSTD_JOB_SIZE: u32 = 1 << 20;

/// How much of the input before a job each zstd worker reads again as its history, as a log2
/// fraction of the window: 4 is 1/32 (64 KiB at level 3). zstd's default for fast levels is 6
/// (1/8, 256 KiB), which with 1 MiB jobs made the history loading cost 15 %
/// more instructions than compressing in 8 MiB jobs; with 4 the count is within 1 % of that and
/// the output 0.03 % larger (measured with `zstd -T2 -3 -B1MiB --zstd=ovlog=N` under callgrind
/// on 40 MB from /usr; on bench/cache_ingest.sh's 1 GiB NAR the output grew by 0.7 %).
const ZSTD_OVERLAP_LOG: u32 = 4;

/// zstd worker threads per upload: one per CPU, up to [`MAX_ZSTD_WORKERS`]. With workers, zstd
/// compresses on them while the upload's own thread validates and hashes the NAR; compressing on
/// the upload's thread made ingest less than half as fast as `zstd -T0` (docs/benchmarks.md).
fn zstd_workers() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_ZSTD_WORKERS)) as u32
}

/// Passes compressed bytes on to storage, hashing them.
struct ChunkSender {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
    file: Sha256Counter,
}

impl ChunkSender {
    fn send_buffered(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(OUT_CHUNK),
        ));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "storage stopped reading"))
    }
}

impl Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.file.update(data);
        self.buf.extend_from_slice(data);
        if self.buf.len() >= OUT_CHUNK {
            self.send_buffered()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads raw NAR chunks from `input` until it closes, validates and hashes the NAR, compresses it
/// at `level` and sends the compressed bytes to `output`. Runs on a blocking thread. On failure it
/// sends an error down `output` before closing it, so storage discards what it received.
pub(crate) fn compress_nar(
    input: mpsc::Receiver<Bytes>,
    output: mpsc::Sender<io::Result<Bytes>>,
    level: i32,
    max_nar_size: u64,
) -> Result<Verified, CacheError> {
    let abort = output.clone();
    let result = run(input, output, level, max_nar_size);
    if let Err(err) = &result {
        let _ = abort.blocking_send(Err(io::Error::other(err.to_string())));
    }
    result
}

fn run(
    mut input: mpsc::Receiver<Bytes>,
    output: mpsc::Sender<io::Result<Bytes>>,
    level: i32,
    max_nar_size: u64,
) -> Result<Verified, CacheError> {
    let internal = |e: io::Error| CacheError::Internal(format!("zstd compression failed: {e}"));
    let sink = ChunkSender {
        tx: output,
        buf: Vec::with_capacity(OUT_CHUNK),
        file: Sha256Counter::new(),
    };
    let mut encoder = zstd::stream::write::Encoder::new(sink, level).map_err(internal)?;
    encoder.multithread(zstd_workers()).map_err(internal)?;
    encoder
        .set_parameter(zstd::zstd_safe::CParameter::JobSize(ZSTD_JOB_SIZE))
        .map_err(internal)?;
    encoder
        .set_parameter(zstd::zstd_safe::CParameter::OverlapSizeLog(
            ZSTD_OVERLAP_LOG,
        ))
        .map_err(internal)?;
    let mut nar = NarValidator::new();
    while let Some(chunk) = input.blocking_recv() {
        feed_nar(&mut nar, max_nar_size, &chunk)?;
        encoder.write_all(&chunk).map_err(internal)?;
    }
    let (nar_hash, nar_size) = nar
        .finish()
        .map_err(|e| CacheError::BadRequest(format!("invalid NAR: {e}")))?;
    let mut sink = encoder.finish().map_err(internal)?;
    sink.send_buffered().map_err(internal)?;
    let (file_hash, file_size) = sink.file.finish();
    Ok(Verified {
        file_hash,
        file_size,
        nar_hash,
        nar_size,
    })
}
