//! The upload ingest pipeline on its own: the NAR is validated and hashed, compressed with zstd
//! and stored (fsynced, renamed into place) exactly as an upload to `POST .../upload` is, but fed
//! from a file instead of a socket. `bench/cache_ingest.sh` runs it beside `zstd -T0` on the same
//! file, so that the two do the same work on the same bytes; it also times the whole upload over
//! HTTP, where the client sending the body shares the CPUs.
//!
//!   cargo bench -p kiln-cache --bench ingest -- NAR DIR [LEVEL] [RUNS]
//!
//! Each run stores the NAR into the local blob store at DIR (then deletes it) and prints one line:
//! wall seconds, CPU-seconds of this process, NarHash, NarSize and the stored file's size.

use std::fs::File;
use std::io::{self, Read};
use std::time::Instant;

use bytes::Bytes;
use futures_util::stream;
use kiln_cache::ingest::receive_raw_nar;
use kiln_cache::storage::{BlobKey, BlobStore, ByteStream, LocalStore};
use tokio::sync::mpsc;

/// About the size of the pieces hyper hands over from a fast upload (its read buffer grows to
/// roughly 400 KiB).
const BODY_CHUNK: usize = 256 * 1024;

/// The file as a body stream: a thread reads it in [`BODY_CHUNK`] pieces, as a socket would
/// deliver them, into fresh buffers.
fn file_body(mut file: File) -> ByteStream {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(16);
    std::thread::spawn(move || {
        loop {
            // Like hyper's buffers, filled without zeroing them first.
            let mut buf = Vec::with_capacity(BODY_CHUNK);
            let piece = match (&mut file).take(BODY_CHUNK as u64).read_to_end(&mut buf) {
                Ok(0) => return,
                Ok(_) => Ok(Bytes::from(buf)),
                Err(e) => Err(e),
            };
            let failed = piece.is_err();
            if tx.blocking_send(piece).is_err() || failed {
                return;
            }
        }
    });
    Box::pin(stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

/// User plus system CPU time of this process so far, in seconds.
fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [nar, dir, rest @ ..] = args.as_slice() else {
        return Err("usage: ingest NAR DIR [LEVEL] [RUNS]".into());
    };
    let level: i32 = rest.first().map_or(Ok(3), |l| l.parse())?;
    let runs: u32 = rest.get(1).map_or(Ok(1), |r| r.parse())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let store = LocalStore::open(dir).await?;
        for run in 0..runs {
            let key = BlobKey::new(format!("bench/ingest-{run}.nar.zst"))?;
            let body = file_body(File::open(nar)?);
            let (cpu0, t0) = (cpu_seconds(), Instant::now());
            let verified = receive_raw_nar(&store, &key, body, u64::MAX, level).await?;
            let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
            println!(
                "{wall:.3} {cpu:.2} {} {} {}",
                verified.nar_hash, verified.nar_size, verified.file_size
            );
            store.delete(&key).await?;
        }
        Ok(())
    })
}
