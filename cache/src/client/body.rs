//! Request bodies: bytes, streams and readers, and NARs packed from disk while they are sent.

use std::io::{self, Write};
use std::path::PathBuf;

use bytes::Bytes;
use futures_util::Stream;
use kiln_nix::nar::DumpError;
use tokio::io::AsyncRead;
use tokio::sync::mpsc;

use crate::storage::ByteStream;

/// Size of the pieces a NAR packed from disk is sent in.
const PACK_CHUNK: usize = 256 * 1024;

/// Pieces of a packed NAR buffered between the packing thread and the connection.
const PACK_IN_FLIGHT: usize = 8;

/// A request body: bytes in memory or a stream of them, never collected.
pub struct Body(pub(super) reqwest::Body);

impl Body {
    /// A body read from `stream` as it is sent. An error from the stream aborts the request,
    /// and the server discards what it received.
    pub fn from_stream<S>(stream: S) -> Body
    where
        S: Stream<Item = io::Result<Bytes>> + Send + 'static,
    {
        Body(reqwest::Body::wrap_stream(stream))
    }

    /// A body read from `reader` as it is sent.
    pub fn from_reader<R>(reader: R) -> Body
    where
        R: AsyncRead + Send + 'static,
    {
        Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
            reader, PACK_CHUNK,
        ))
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Body {
        Body(reqwest::Body::from(bytes))
    }
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Body {
        Body(reqwest::Body::from(bytes))
    }
}

impl From<String> for Body {
    fn from(text: String) -> Body {
        Body(reqwest::Body::from(text))
    }
}

impl From<&'static [u8]> for Body {
    fn from(bytes: &'static [u8]) -> Body {
        Body(reqwest::Body::from(bytes))
    }
}

/// Whether packing stopped only because the connection stopped reading (the request's own
/// error then says why).
pub(super) fn is_closed_pipe(err: &DumpError) -> bool {
    matches!(err, DumpError::Write(e) if e.kind() == io::ErrorKind::BrokenPipe)
}

/// Sends what it is given down a channel in pieces of [`PACK_CHUNK`] bytes.
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send_buffered(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(PACK_CHUNK));
        self.tx
            .blocking_send(Ok(Bytes::from(chunk)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped reading"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = PACK_CHUNK - self.buf.len();
        let taken = data.len().min(room);
        self.buf.extend_from_slice(&data[..taken]);
        if self.buf.len() >= PACK_CHUNK {
            self.send_buffered()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buffered()
    }
}

/// A stream of the NAR of the file tree at `location`, packed on a blocking thread as the
/// body is read, and the packing task (its NAR size, or why it failed). A packing error is also
/// sent down the stream, so an upload is aborted rather than completed with a truncated NAR.
pub fn pack_nar(
    location: PathBuf,
) -> (ByteStream, tokio::task::JoinHandle<Result<u64, DumpError>>) {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(PACK_IN_FLIGHT);
    let packer = tokio::task::spawn_blocking(move || {
        let abort = tx.clone();
        let writer = ChannelWriter {
            tx,
            buf: Vec::with_capacity(PACK_CHUNK),
        };
        let result = kiln_nix::nar::dump_path(&location, writer);
        if let Err(err) = &result {
            let _ = abort.blocking_send(Err(io::Error::other(err.to_string())));
        }
        result
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (Box::pin(stream), packer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn packed_nar_is_the_nar_of_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("t");
        std::fs::create_dir(&tree).unwrap();
        std::fs::write(tree.join("big"), vec![5u8; 3 * PACK_CHUNK + 17]).unwrap();
        std::fs::write(tree.join("small"), b"hi").unwrap();
        let (mut stream, packer) = pack_nar(tree.clone());
        let mut nar = Vec::new();
        while let Some(chunk) = stream.next().await {
            nar.extend_from_slice(&chunk.unwrap());
        }
        let size = packer.await.unwrap().unwrap();
        let mut expected = Vec::new();
        kiln_nix::nar::dump_path(&tree, &mut expected).unwrap();
        assert_eq!(size, expected.len() as u64);
        assert!(nar == expected, "the streamed NAR differs from dump_path's");
    }

    #[tokio::test]
    async fn packing_a_missing_tree_fails_the_body() {
        let dir = tempfile::tempdir().unwrap();
        let (mut stream, packer) = pack_nar(dir.path().join("absent"));
        let mut failed = false;
        while let Some(chunk) = stream.next().await {
            failed |= chunk.is_err();
        }
        assert!(failed, "the body must end in an error, not look complete");
        assert!(packer.await.unwrap().is_err());
    }
}
