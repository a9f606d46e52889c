//! The local-directory backend: one file per object under a root directory.
//!
//! A put writes a temporary file (`.<name>.<random>.tmp`, a name no key can take) in the target's
//! own directory, fsyncs it, renames it over the target and fsyncs the directory, so a crash at
//! any moment leaves either the old object or the whole new one. Temporary files of interrupted
//! puts are removed when the put is dropped; those of a crashed process remain and are skipped by
//! `list` (garbage collection reaps them).

use std::io::{self, Read};
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use tokio::fs;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;

use super::{
    Blob, BlobKey, BlobMeta, BlobStore, BlobWriter, ByteRange, ByteStream, Reaped, StoreError,
};

/// Size of the chunks objects are read in. Each chunk is one positioned read on tokio's blocking
/// pool and one hand-off to the socket, and the next chunk is read while the previous one is
/// sent. With 64 KiB chunks read through `tokio::fs` (which also copies each chunk once more), a
/// NAR download cost 25 times the CPU of nginx's sendfile (docs/benchmarks.md). A download holds
/// at most two chunks.
const READ_CHUNK: usize = 1024 * 1024;

/// Objects as files under a root directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// A store rooted at `root`, which is created if missing.
    pub async fn open(root: impl Into<PathBuf>) -> io::Result<LocalStore> {
        let root = root.into();
        fs::create_dir_all(&root).await?;
        Ok(LocalStore { root })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &BlobKey) -> PathBuf {
        // BlobKey guarantees relative, `..`-free segments: the path stays under the root.
        self.root.join(key.as_str())
    }
}

fn io_err(key: &BlobKey) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        key: key.clone(),
        source,
    }
}

/// A temporary file that is removed when dropped, unless it was renamed into place.
struct TempFile {
    path: Option<PathBuf>,
}

impl TempFile {
    /// Creates a fresh temporary file in `dir` and locks it (`flock`) for as long as the
    /// returned file is open, so that [`LocalStore::reap_leftovers`] never takes the file of a
    /// live writer.
    async fn create(dir: &Path, name: &str) -> io::Result<(TempFile, fs::File)> {
        loop {
            let mut random = [0u8; 8];
            getrandom::getrandom(&mut random).map_err(io::Error::other)?;
            let path = dir.join(format!(".{name}.{}.tmp", hex::encode(random)));
            let file = match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .await
            {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            };
            let temp = TempFile { path: Some(path) };
            rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)?;
            // A reaper may have removed the file between its creation and the lock: then the
            // name no longer leads to it, and a new one is made.
            let ours = file.metadata().await?;
            let still_ours = match fs::metadata(temp.path()).await {
                Ok(found) => found.ino() == ours.ino() && found.dev() == ours.dev(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                Err(e) => return Err(e),
            };
            if still_ours {
                return Ok((temp, file));
            }
            // Whatever has that name now is not ours to remove.
            let mut temp = temp;
            temp.path = None;
        }
    }

    fn path(&self) -> &Path {
        self.path
            .as_deref()
            .expect("temporary file already persisted")
    }

    async fn persist(self, target: &Path) -> io::Result<()> {
        let target = target.to_owned();
        tokio::task::spawn_blocking(move || self.persist_blocking(&target))
            .await
            .map_err(io::Error::other)?
    }

    /// Renames the file to `target`; blocks.
    fn persist_blocking(mut self, target: &Path) -> io::Result<()> {
        let path = self.path.take().expect("temporary file already persisted");
        if let Err(e) = std::fs::rename(&path, target) {
            self.path = Some(path);
            return Err(e);
        }
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Makes a rename in `dir` durable.
async fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || sync_dir_blocking(&dir))
        .await
        .map_err(io::Error::other)?
}

fn sync_dir_blocking(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// A put into a temporary file written from a blocking thread, renamed into place on commit.
struct LocalWriter {
    key: BlobKey,
    target: PathBuf,
    temp: TempFile,
    /// Holds the temporary file's lock until the rename.
    file: std::fs::File,
    size: u64,
}

impl io::Write for LocalWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl BlobWriter for LocalWriter {
    fn commit(self: Box<Self>) -> Result<u64, StoreError> {
        let LocalWriter {
            key,
            target,
            temp,
            file,
            size,
        } = *self;
        file.sync_all().map_err(io_err(&key))?;
        tracing::trace!(key = %key, temp = %temp.path().display(), size, "persisting object");
        temp.persist_blocking(&target).map_err(io_err(&key))?;
        drop(file);
        let dir = target.parent().expect("object paths have a parent");
        sync_dir_blocking(dir).map_err(io_err(&key))?;
        Ok(size)
    }
}

/// Streams `range` of `file` in chunks of [`READ_CHUNK`], each read on tokio's blocking pool
/// while the previous one is being sent.
fn read_ahead(file: std::fs::File, range: Range<u64>) -> ByteStream {
    struct Reader {
        file: Arc<std::fs::File>,
        /// Where the next read starts.
        next: u64,
        end: u64,
        /// The read under way, if any.
        ahead: Option<JoinHandle<io::Result<Bytes>>>,
    }
    impl Reader {
        fn start_next(&mut self) {
            if self.next >= self.end {
                return;
            }
            let len = (self.end - self.next).min(READ_CHUNK as u64) as usize;
            let (file, offset) = (self.file.clone(), self.next);
            self.next += len as u64;
            self.ahead = Some(tokio::task::spawn_blocking(move || {
                read_chunk(&file, offset, len)
            }));
        }
    }
    let mut reader = Reader {
        file: Arc::new(file),
        next: range.start,
        end: range.end,
        ahead: None,
    };
    reader.start_next();
    Box::pin(stream::unfold(reader, |mut reader| async move {
        let chunk = match reader.ahead.take()?.await {
            Ok(chunk) => chunk,
            Err(e) => Err(io::Error::other(e)),
        };
        if chunk.is_ok() {
            reader.start_next();
        }
        Some((chunk, reader))
    }))
}

/// `len` bytes of `file` from `offset`, read into a fresh buffer without zeroing it first.
fn read_chunk(file: &std::fs::File, offset: u64, len: usize) -> io::Result<Bytes> {
    let mut buf = Vec::with_capacity(len);
    let mut at = offset;
    while buf.len() < len {
        let before = buf.len();
        // Positioned reads: the file's own offset is not shared state between chunks.
        (&mut PositionedRead { file, at: &mut at })
            .take((len - before) as u64)
            .read_to_end(&mut buf)?;
        if buf.len() == before {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the object is shorter than it was when opened",
            ));
        }
    }
    Ok(Bytes::from(buf))
}

/// `Read` over `pread`: reads `file` from `at`, advancing `at`.
struct PositionedRead<'a> {
    file: &'a std::fs::File,
    at: &'a mut u64,
}

impl Read for PositionedRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, *self.at)?;
        *self.at += n as u64;
        Ok(n)
    }
}

#[async_trait]
impl BlobStore for LocalStore {
    async fn put(&self, key: &BlobKey, mut body: ByteStream) -> Result<u64, StoreError> {
        let target = self.path_of(key);
        let dir = target.parent().expect("object paths have a parent");
        fs::create_dir_all(dir).await.map_err(io_err(key))?;
        let (temp, mut file) = TempFile::create(dir, key.file_name())
            .await
            .map_err(io_err(key))?;
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|source| StoreError::Body {
                key: key.clone(),
                source,
            })?;
            file.write_all(&chunk).await.map_err(io_err(key))?;
            size += chunk.len() as u64;
        }
        file.flush().await.map_err(io_err(key))?;
        file.sync_all().await.map_err(io_err(key))?;
        tracing::trace!(key = %key, temp = %temp.path().display(), size, "persisting object");
        // Still open, so still locked: the reaper cannot take it before the rename.
        temp.persist(&target).await.map_err(io_err(key))?;
        drop(file);
        sync_dir(dir).await.map_err(io_err(key))?;
        Ok(size)
    }

    async fn writer(&self, key: &BlobKey) -> Result<Option<Box<dyn BlobWriter>>, StoreError> {
        let target = self.path_of(key);
        let dir = target.parent().expect("object paths have a parent");
        fs::create_dir_all(dir).await.map_err(io_err(key))?;
        let (temp, file) = TempFile::create(dir, key.file_name())
            .await
            .map_err(io_err(key))?;
        Ok(Some(Box::new(LocalWriter {
            key: key.clone(),
            target,
            temp,
            file: file.into_std().await,
            size: 0,
        })))
    }

    async fn get(
        &self,
        key: &BlobKey,
        range: Option<ByteRange>,
    ) -> Result<Option<Blob>, StoreError> {
        let path = self.path_of(key);
        let opened = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(path)?;
            let size = file.metadata()?.len();
            Ok::<_, io::Error>((file, size))
        })
        .await
        .map_err(|e| io_err(key)(io::Error::other(e)))?;
        let (file, size) = match opened {
            Ok(opened) => opened,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(key)(e)),
        };
        let range = match range {
            None => 0..size,
            Some(r) => r
                .resolve(size)
                .ok_or_else(|| StoreError::RangeNotSatisfiable {
                    key: key.clone(),
                    size,
                })?,
        };
        Ok(Some(Blob {
            size,
            body: read_ahead(file, range.clone()),
            range,
        }))
    }

    async fn head(&self, key: &BlobKey) -> Result<Option<BlobMeta>, StoreError> {
        match fs::metadata(self.path_of(key)).await {
            Ok(meta) if meta.is_file() => Ok(Some(BlobMeta {
                key: key.clone(),
                size: meta.len(),
                modified: meta.modified().ok(),
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(key)(e)),
        }
    }

    async fn delete(&self, key: &BlobKey) -> Result<bool, StoreError> {
        match fs::remove_file(self.path_of(key)).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err(key)(e)),
        }
    }

    async fn rename(&self, from: &BlobKey, to: &BlobKey) -> Result<(), StoreError> {
        let target = self.path_of(to);
        let dir = target.parent().expect("object paths have a parent");
        fs::create_dir_all(dir).await.map_err(io_err(to))?;
        match fs::rename(self.path_of(from), &target).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(from.clone()));
            }
            Err(e) => return Err(io_err(to)(e)),
        }
        sync_dir(dir).await.map_err(io_err(to))
    }

    fn list(&self, prefix: &BlobKey) -> BoxStream<'static, Result<BlobMeta, StoreError>> {
        struct Walk {
            root: PathBuf,
            prefix: BlobKey,
            pending: Vec<PathBuf>,
            current: Option<fs::ReadDir>,
        }
        let walk = Walk {
            root: self.root.clone(),
            prefix: prefix.clone(),
            pending: vec![self.path_of(prefix)],
            current: None,
        };
        stream::unfold(walk, |mut walk| async move {
            loop {
                let dir = match walk.current.as_mut() {
                    Some(dir) => dir,
                    None => {
                        let next = walk.pending.pop()?;
                        match fs::read_dir(&next).await {
                            Ok(dir) => walk.current.insert(dir),
                            Err(e)
                                if e.kind() == io::ErrorKind::NotFound
                                    || e.kind() == io::ErrorKind::NotADirectory =>
                            {
                                continue;
                            }
                            Err(source) => {
                                return Some((
                                    Err(StoreError::Io {
                                        key: walk.prefix.clone(),
                                        source,
                                    }),
                                    walk,
                                ));
                            }
                        }
                    }
                };
                let entry = match dir.next_entry().await {
                    Ok(Some(entry)) => entry,
                    Ok(None) => {
                        walk.current = None;
                        continue;
                    }
                    Err(source) => {
                        walk.current = None;
                        return Some((
                            Err(StoreError::Io {
                                key: walk.prefix.clone(),
                                source,
                            }),
                            walk,
                        ));
                    }
                };
                if entry.file_name().to_string_lossy().starts_with('.') {
                    continue;
                }
                let path = entry.path();
                let meta = match entry.metadata().await {
                    Ok(meta) => meta,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(source) => {
                        return Some((
                            Err(StoreError::Io {
                                key: walk.prefix.clone(),
                                source,
                            }),
                            walk,
                        ));
                    }
                };
                if meta.is_dir() {
                    walk.pending.push(path);
                    continue;
                }
                let relative = path
                    .strip_prefix(&walk.root)
                    .ok()
                    .and_then(|p| p.to_str())
                    .map(str::to_owned);
                // Files that no key could name (not written by Kiln) are not objects.
                if let Some(key) = relative.and_then(|r| BlobKey::new(r).ok()) {
                    return Some((
                        Ok(BlobMeta {
                            key,
                            size: meta.len(),
                            modified: meta.modified().ok(),
                        }),
                        walk,
                    ));
                }
            }
        })
        .boxed()
    }

    async fn reap_leftovers(
        &self,
        prefix: &BlobKey,
        older_than: SystemTime,
        dry_run: bool,
    ) -> Result<Reaped, StoreError> {
        let dir = self.path_of(prefix);
        let result =
            tokio::task::spawn_blocking(move || reap_temp_files(&dir, older_than, dry_run))
                .await
                .map_err(io::Error::other)
                .and_then(|r| r);
        result.map_err(io_err(prefix))
    }
}

/// Whether `name` is one of the temporary files `put` writes (`.<name>.<hex>.tmp`).
fn is_temp_file_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

/// Removes (or, with `dry_run`, counts) the temporary files under `dir` last modified before
/// `older_than` that no writer holds locked.
fn reap_temp_files(dir: &Path, older_than: SystemTime, dry_run: bool) -> io::Result<Reaped> {
    let mut reaped = Reaped::default();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if meta.is_dir() {
                pending.push(entry.path());
                continue;
            }
            let stale = meta.modified().is_ok_and(|m| m < older_than);
            if !stale || !is_temp_file_name(&entry.file_name().to_string_lossy()) {
                continue;
            }
            // A live writer holds the lock on its file; only abandoned files can be locked.
            let file = match std::fs::File::open(entry.path()) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(rustix::io::Errno::WOULDBLOCK) => continue,
                Err(e) => return Err(e.into()),
            }
            reaped.count += 1;
            reaped.bytes += meta.len();
            if dry_run {
                continue;
            }
            // Removed while locked: a writer that created it and has not locked it yet finds
            // its name gone once it has, and starts over with a new file.
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    reaped.count -= 1;
                    reaped.bytes -= meta.len();
                }
                Err(e) => return Err(e),
            }
            drop(file);
        }
    }
    Ok(reaped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures_util::TryStreamExt;

    fn key(s: &str) -> BlobKey {
        BlobKey::new(s).unwrap()
    }

    fn body(chunks: Vec<io::Result<&'static [u8]>>) -> ByteStream {
        Box::pin(stream::iter(
            chunks.into_iter().map(|c| c.map(Bytes::from_static)),
        ))
    }

    async fn read_all(blob: Blob) -> Vec<u8> {
        blob.body
            .try_fold(Vec::new(), |mut acc, chunk| async move {
                acc.extend_from_slice(&chunk);
                Ok(acc)
            })
            .await
            .unwrap()
    }

    fn dir_entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn put_then_get_returns_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).await.unwrap();
        let k = key("main/nar/abc.nar.zst");
        let size = store
            .put(&k, body(vec![Ok(b"hello "), Ok(b"world")]))
            .await
            .unwrap();
        assert_eq!(size, 11);
        let blob = store.get(&k, None).await.unwrap().unwrap();
        assert_eq!((blob.size, blob.range.clone()), (11, 0..11));
        assert_eq!(read_all(blob).await, b"hello world");
        let meta = store.head(&k).await.unwrap().unwrap();
        assert_eq!((meta.key, meta.size), (k.clone(), 11));
        assert!(meta.modified.is_some());
        assert_eq!(
            dir_entries(&dir.path().join("main/nar")),
            vec!["abc.nar.zst"]
        );
    }

    #[tokio::test]
    async fn ranges_select_bytes_and_unsatisfiable_ranges_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).await.unwrap();
        let k = key("a/b");
        store.put(&k, body(vec![Ok(b"0123456789")])).await.unwrap();
        let blob = store
            .get(&k, Some(ByteRange::Inclusive(2, 4)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(blob.range, 2..5);
        assert_eq!(read_all(blob).await, b"234");
        let blob = store
            .get(&k, Some(ByteRange::Suffix(3)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read_all(blob).await, b"789");
        let err = store.get(&k, Some(ByteRange::From(10))).await.unwrap_err();
        assert!(
            matches!(err, StoreError::RangeNotSatisfiable { size: 10, .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn failed_body_leaves_nothing_and_keeps_the_old_object() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).await.unwrap();
        let k = key("c/x.narinfo");
        store.put(&k, body(vec![Ok(b"old")])).await.unwrap();
        let err = store
            .put(
                &k,
                body(vec![
                    Ok(b"partial new"),
                    Err(io::Error::other("client went away")),
                ]),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Body { .. }), "{err}");
        assert_eq!(
            read_all(store.get(&k, None).await.unwrap().unwrap()).await,
            b"old"
        );
        assert_eq!(
            dir_entries(&dir.path().join("c")),
            vec!["x.narinfo"],
            "temporary file left behind"
        );

        let fresh = key("c/new");
        assert!(
            store
                .put(&fresh, body(vec![Ok(b"x"), Err(io::Error::other("boom"))]))
                .await
                .is_err()
        );
        assert_eq!(store.head(&fresh).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_writer_publishes_only_on_commit() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).await.unwrap();
        let k = key("c/w.nar.zst");
        store.put(&k, body(vec![Ok(b"old")])).await.unwrap();

        // Dropped without a commit: the old object stays, no temporary file is left.
        let mut writer = store
            .writer(&k)
            .await
            .unwrap()
            .expect("local stores write directly");
        writer.write_all(b"abandoned").unwrap();
        drop(writer);
        assert_eq!(
            read_all(store.get(&k, None).await.unwrap().unwrap()).await,
            b"old"
        );
        assert_eq!(dir_entries(&dir.path().join("c")), vec!["w.nar.zst"]);

        // Invisible until committed, then replaces the old object whole.
        let mut writer = store.writer(&k).await.unwrap().unwrap();
        writer.write_all(b"new ").unwrap();
        writer.write_all(b"bytes").unwrap();
        assert_eq!(
            read_all(store.get(&k, None).await.unwrap().unwrap()).await,
            b"old"
        );
        let size = tokio::task::spawn_blocking(move || writer.commit())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(size, 9);
        assert_eq!(
            read_all(store.get(&k, None).await.unwrap().unwrap()).await,
            b"new bytes"
        );
        assert_eq!(dir_entries(&dir.path().join("c")), vec!["w.nar.zst"]);
    }

    #[tokio::test]
    async fn cancelled_put_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).await.unwrap();
        let k = key("c/slow");
        // A body that yields one chunk, then reports that it was asked for more and never ends.
        let (asked_tx, asked_rx) = tokio::sync::oneshot::channel::<()>();
        let first = stream::once(async { Ok(Bytes::from_static(b"first chunk")) });
        let stall = stream::once(async move {
            let _ = asked_tx.send(());
            std::future::pending::<io::Result<Bytes>>().await
        });
        let put = store.put(&k, Box::pin(first.chain(stall)));
        tokio::select! {
            result = put => panic!("put finished without its body ending: {result:?}"),
            _ = asked_rx => {}
        }
        assert_eq!(dir_entries(&dir.path().join("c")), Vec::<String>::new());
        assert_eq!(store.head(&k).await.unwrap(), None);
    }

    #[tokio::test]
    async fn missing_objects_are_none_and_delete_reports_absence() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).await.unwrap();
        let k = key("m/none");
        assert!(store.get(&k, None).await.unwrap().is_none());
        assert_eq!(store.head(&k).await.unwrap(), None);
        assert!(!store.delete(&k).await.unwrap());
        store.put(&k, body(vec![Ok(b"1")])).await.unwrap();
        assert!(store.delete(&k).await.unwrap());
        assert_eq!(store.head(&k).await.unwrap(), None);
    }

    #[tokio::test]
    async fn rename_moves_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).await.unwrap();
        let (from, to) = (key("m/tmp/upload1"), key("m/nar/final.nar.zst"));
        store.put(&from, body(vec![Ok(b"new")])).await.unwrap();
        store.put(&to, body(vec![Ok(b"old")])).await.unwrap();
        store.rename(&from, &to).await.unwrap();
        assert_eq!(store.head(&from).await.unwrap(), None);
        assert_eq!(
            read_all(store.get(&to, None).await.unwrap().unwrap()).await,
            b"new"
        );
        assert!(matches!(
            store.rename(&from, &to).await,
            Err(StoreError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn list_walks_a_folder_and_skips_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).await.unwrap();
        for k in [
            "m/nix-cache-info",
            "m/a.narinfo",
            "m/nar/x.nar.zst",
            "m/log/y.drv",
            "other/z",
        ] {
            store.put(&key(k), body(vec![Ok(b"12")])).await.unwrap();
        }
        std::fs::write(dir.path().join("m/nar/.x.nar.zst.1234.tmp"), b"partial").unwrap();
        let mut listed: Vec<(String, u64)> = store
            .list(&key("m"))
            .map_ok(|m| (m.key.to_string(), m.size))
            .try_collect()
            .await
            .unwrap();
        listed.sort();
        assert_eq!(
            listed,
            vec![
                ("m/a.narinfo".to_owned(), 2),
                ("m/log/y.drv".to_owned(), 2),
                ("m/nar/x.nar.zst".to_owned(), 2),
                ("m/nix-cache-info".to_owned(), 2)
            ]
        );
        let none: Vec<BlobMeta> = store.list(&key("absent")).try_collect().await.unwrap();
        assert!(none.is_empty());
    }

    #[tokio::test]
    async fn reaping_spares_the_temporary_file_of_a_live_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).await.unwrap();
        std::fs::create_dir_all(dir.path().join("m/nar")).unwrap();
        let (temp, file) = TempFile::create(&dir.path().join("m/nar"), "x.nar")
            .await
            .unwrap();
        let future = SystemTime::now() + std::time::Duration::from_secs(3600);
        let reaped = store
            .reap_leftovers(&key("m"), future, false)
            .await
            .unwrap();
        assert_eq!(reaped, Reaped::default());
        assert!(temp.path().exists());
        // Once its writer is gone (a crash: the file stays, the lock goes), it is reaped.
        let path = temp.path().to_owned();
        std::mem::forget(temp);
        drop(file);
        let reaped = store
            .reap_leftovers(&key("m"), future, false)
            .await
            .unwrap();
        assert_eq!(reaped.count, 1);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn reaping_removes_only_old_temporary_files_under_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).await.unwrap();
        store
            .put(&key("m/nar/x.nar.zst"), body(vec![Ok(b"kept")]))
            .await
            .unwrap();
        std::fs::write(dir.path().join("m/nar/.x.nar.zst.00ff.tmp"), b"crashed").unwrap();
        std::fs::create_dir_all(dir.path().join("m/tmp")).unwrap();
        std::fs::write(dir.path().join("m/tmp/.abc.11ee.tmp"), b"crash").unwrap();
        std::fs::create_dir_all(dir.path().join("other")).unwrap();
        std::fs::write(dir.path().join("other/.y.22dd.tmp"), b"elsewhere").unwrap();
        std::fs::write(dir.path().join("m/.hidden"), b"not a temporary file").unwrap();

        // Nothing is older than a moment in the past.
        let past = SystemTime::now() - std::time::Duration::from_secs(3600);
        let none = store.reap_leftovers(&key("m"), past, false).await.unwrap();
        assert_eq!(none, Reaped::default());

        let future = SystemTime::now() + std::time::Duration::from_secs(3600);
        let counted = store.reap_leftovers(&key("m"), future, true).await.unwrap();
        assert_eq!(
            counted,
            Reaped {
                count: 2,
                bytes: 12
            }
        );
        assert!(
            dir.path().join("m/nar/.x.nar.zst.00ff.tmp").exists(),
            "a dry run deleted"
        );
        let reaped = store
            .reap_leftovers(&key("m"), future, false)
            .await
            .unwrap();
        assert_eq!(
            reaped,
            Reaped {
                count: 2,
                bytes: 12
            }
        );
        assert_eq!(dir_entries(&dir.path().join("m/nar")), vec!["x.nar.zst"]);
        assert!(dir.path().join("m/.hidden").exists());
        assert!(dir.path().join("other/.y.22dd.tmp").exists());
    }
}
