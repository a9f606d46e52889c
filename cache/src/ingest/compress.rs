//! Compressing a raw NAR with zstd as it arrives, checking and hashing it on the way.

use std::io::{self, Write};

use bytes::Bytes;
use kiln_nix::hash::Sha256Counter;
use kiln_nix::nar::NarValidator;
use tokio::sync::mpsc;

use super::verify::{Verified, feed_nar};
use crate::error::CacheError;
use crate::storage::BlobWriter;

/// Compressed output is handed to storage in pieces of about this size.
const OUT_CHUNK: usize = 1 << 20;

/// Most zstd worker threads one upload uses.
const MAX_ZSTD_WORKERS: usize = 4;

/// Input each zstd worker compresses at a time. Larger jobs mean fewer hand-offs: zstd gives a
/// worker its next job only from the upload's thread, which meanwhile may be waiting for another
/// job to finish, so each job costs its worker a wait. With 1 MiB jobs the two workers of
/// `bench/cache_ingest.sh` sat idle about 1.2 s each of a 3.8 s ingest, against 0.4 s for
/// `zstd -T0`'s 8 MiB jobs, and 2 MiB jobs made the ingest 8 % faster. Memory limits the size:
/// with zstd's default for level 3 (8 MiB), the server's peak memory during one upload of a
/// 208 MiB path (tests/cache_large.rs) was 154 MiB; with 2 MiB it is 80-84 MiB, with 1 MiB
/// 71-73 MiB (docs/benchmarks.md).
const ZSTD_JOB_SIZE: u32 = 2 << 20;

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

/// Passes compressed bytes on to storage's stream in pieces of about [`OUT_CHUNK`].
struct ChunkSender {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
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
        self.buf.extend_from_slice(data);
        if self.buf.len() >= OUT_CHUNK {
            self.send_buffered()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buffered()
    }
}

/// Hashes what passes through to `inner`: the compressed file's hash and size.
struct Hashing<W> {
    inner: W,
    file: Sha256Counter,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.file.update(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads raw NAR chunks from `input` until it closes, validates and hashes the NAR, compresses it
/// at `level` and sends the compressed bytes to `output`. Runs on a blocking thread. On failure it
/// sends an error down `output` before closing it, so storage discards what it received.
pub(crate) fn compress_to_stream(
    input: mpsc::Receiver<Bytes>,
    output: mpsc::Sender<io::Result<Bytes>>,
    level: i32,
    max_nar_size: u64,
) -> Result<Verified, CacheError> {
    let abort = output.clone();
    let sink = ChunkSender {
        tx: output,
        buf: Vec::with_capacity(OUT_CHUNK),
    };
    let result = compress(input, sink, level, max_nar_size).map(|(verified, _)| verified);
    if let Err(err) = &result {
        let _ = abort.blocking_send(Err(io::Error::other(err.to_string())));
    }
    result
}

/// Like [`compress_to_stream`], but writes the compressed bytes to `output` on this thread, and
/// hands the writer back uncommitted: the caller commits it only if the whole body arrived.
/// Dropping it discards the object.
pub(crate) fn compress_to_writer(
    input: mpsc::Receiver<Bytes>,
    output: Box<dyn BlobWriter>,
    level: i32,
    max_nar_size: u64,
) -> Result<(Verified, Box<dyn BlobWriter>), CacheError> {
    compress(input, output, level, max_nar_size)
}

fn compress<W: Write>(
    mut input: mpsc::Receiver<Bytes>,
    output: W,
    level: i32,
    max_nar_size: u64,
) -> Result<(Verified, W), CacheError> {
    let internal = |e: io::Error| CacheError::Internal(format!("zstd compression failed: {e}"));
    let sink = Hashing {
        inner: output,
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
    sink.flush().map_err(internal)?;
    let (file_hash, file_size) = sink.file.finish();
    Ok((
        Verified {
            file_hash,
            file_size,
            nar_hash,
            nar_size,
        },
        sink.inner,
    ))
}
