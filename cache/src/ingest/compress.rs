//! Compressing a raw NAR with zstd as it arrives, checking and hashing it on the way.

use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

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

/// NAR bytes compressed by one worker as one zstd frame. Frames are independent (a NAR file is
/// a sequence of zstd frames, which zstd, Nix and every zstd reader decompress as one stream), so
/// each starts without history: at level 3, whose window is 2 MiB, that made the file 0.3 %
/// larger than one frame would be (pzstd does the same). Larger frames cost memory: an upload
/// holds `2 × workers + 1` frames, each with its input and output buffers (20 MiB with 2
/// workers).
const FRAME_SIZE: usize = 2 << 20;

/// Frames waiting for each worker besides the one it compresses, so that a worker that finishes
/// starts on the next frame at once. zstd's own multithreading (`zstdmt`) hands a job only to an
/// idle worker, from the thread that feeds it, which meanwhile may be waiting for another job:
/// there each of two workers sat idle about 1.2 s of a 3.8 s ingest (docs/benchmarks.md).
const QUEUED_PER_WORKER: usize = 1;

/// zstd worker threads per upload: one per CPU, up to [`MAX_ZSTD_WORKERS`]. The workers compress
/// while the upload's own thread validates and hashes the NAR; compressing on the upload's
/// thread made ingest less than half as fast as `zstd -T0` (docs/benchmarks.md).
fn zstd_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_ZSTD_WORKERS))
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
    let mut sink = Hashing {
        inner: output,
        file: Sha256Counter::new(),
    };
    let mut nar = NarValidator::new();
    std::thread::scope(|scope| {
        let mut frames = Frames::start(scope, zstd_workers(), level);
        let mut frame = frames.empty_frame();
        while let Some(chunk) = input.blocking_recv() {
            feed_nar(&mut nar, max_nar_size, &chunk)?;
            let mut rest = &chunk[..];
            while !rest.is_empty() {
                let take = (FRAME_SIZE - frame.input.len()).min(rest.len());
                frame.input.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if frame.input.len() == FRAME_SIZE {
                    let next = frames.empty_frame();
                    frames
                        .send(std::mem::replace(&mut frame, next), &mut sink)
                        .map_err(internal)?;
                }
            }
        }
        if !frame.input.is_empty() {
            frames.send(frame, &mut sink).map_err(internal)?;
        }
        frames.finish(&mut sink).map_err(internal)
    })?;
    let (nar_hash, nar_size) = nar
        .finish()
        .map_err(|e| CacheError::BadRequest(format!("invalid NAR: {e}")))?;
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

/// One frame's input and, once compressed, its output; both buffers are used again.
#[derive(Default)]
struct Frame {
    input: Vec<u8>,
    output: Vec<u8>,
}

/// One worker thread: frames go in on `jobs` and come back compressed on `done`, in order.
struct Lane {
    jobs: SyncSender<Frame>,
    done: Receiver<io::Result<Frame>>,
}

/// Frames handed out round-robin to the workers and written back in order.
struct Frames {
    lanes: Vec<Lane>,
    /// Frames sent to workers so far, and frames written to the sink.
    sent: usize,
    written: usize,
    spare: Vec<Frame>,
}

impl Frames {
    fn start<'scope>(
        scope: &'scope std::thread::Scope<'scope, '_>,
        workers: usize,
        level: i32,
    ) -> Frames {
        let lanes = (0..workers.max(1))
            .map(|_| {
                let (jobs, queue) = sync_channel::<Frame>(QUEUED_PER_WORKER);
                let (finished, done) = sync_channel(1);
                scope.spawn(move || compress_frames(level, queue, finished));
                Lane { jobs, done }
            })
            .collect();
        Frames {
            lanes,
            sent: 0,
            written: 0,
            spare: Vec::new(),
        }
    }

    fn empty_frame(&mut self) -> Frame {
        self.spare.pop().unwrap_or_else(|| Frame {
            input: Vec::with_capacity(FRAME_SIZE),
            output: Vec::new(),
        })
    }

    /// Hands `frame` to the next worker, first writing out the oldest frames while as many as
    /// the workers can hold and queue are out.
    fn send(&mut self, frame: Frame, sink: &mut impl Write) -> io::Result<()> {
        let most = self.lanes.len() * (QUEUED_PER_WORKER + 1);
        while self.sent - self.written >= most {
            self.write_oldest(sink)?;
        }
        let lane = &self.lanes[self.sent % self.lanes.len()];
        lane.jobs.send(frame).map_err(|_| worker_gone())?;
        self.sent += 1;
        Ok(())
    }

    fn write_oldest(&mut self, sink: &mut impl Write) -> io::Result<()> {
        let lane = &self.lanes[self.written % self.lanes.len()];
        let mut frame = lane.done.recv().map_err(|_| worker_gone())??;
        sink.write_all(&frame.output)?;
        self.written += 1;
        frame.input.clear();
        self.spare.push(frame);
        Ok(())
    }

    /// Writes every frame still out.
    fn finish(&mut self, sink: &mut impl Write) -> io::Result<()> {
        while self.written < self.sent {
            self.write_oldest(sink)?;
        }
        Ok(())
    }
}

fn worker_gone() -> io::Error {
    io::Error::other("a compression thread stopped")
}

/// A worker: compresses each frame from `queue` at `level` and sends it to `finished`, until
/// either channel closes.
fn compress_frames(level: i32, queue: Receiver<Frame>, finished: SyncSender<io::Result<Frame>>) {
    let mut compressor = match zstd::bulk::Compressor::new(level) {
        Ok(compressor) => compressor,
        Err(e) => {
            let _ = finished.send(Err(e));
            return;
        }
    };
    for mut frame in queue {
        frame.output.clear();
        frame
            .output
            .reserve(zstd::zstd_safe::compress_bound(frame.input.len()));
        let result = compressor
            .compress_to_buffer(&frame.input, &mut frame.output)
            .map(|_| frame);
        let failed = result.is_err();
        if finished.send(result).is_err() || failed {
            return;
        }
    }
}
