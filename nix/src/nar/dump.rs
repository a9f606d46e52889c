//! Packing a file tree as a NAR, streaming, with one fixed buffer.
//!
//! The tree is walked with directory handles (`openat` relative to the open parent), never by
//! re-resolving long paths, and nothing is followed: a symlink is archived as a symlink, and a
//! regular file is opened with `O_NOFOLLOW` and checked with `fstat`. Archive tokens and file
//! contents are assembled in one output buffer, file contents read straight into it, so the sink
//! sees few large writes and no file is ever held in memory whole. Memory use is the buffer plus,
//! per open directory level, its sorted entry names.

use std::ffi::{CStr, OsStr};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags, RawDir};
use thiserror::Error;

use super::{MAGIC, padding};
use crate::hash::{Hash, Sha256Counter};

/// Size of the output buffer, which file contents are read into.
const BUF_SIZE: usize = 256 * 1024;
/// Smallest read worth a system call: with less room left, the buffer is flushed first.
const MIN_READ: usize = 64 * 1024;
/// Size of the buffer for `getdents`; one entry takes at most about 280 bytes.
const DIRENT_BUF: usize = 32 * 1024;

/// Flags for opening a regular file found in the tree. `NONBLOCK` keeps a FIFO swapped in after
/// the directory was listed from blocking the open; the `fstat` after opening then refuses it.
const FILE_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::NONBLOCK)
    .union(OFlags::CLOEXEC)
    .union(OFlags::NOCTTY);
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Why a path could not be packed.
#[derive(Debug, Error)]
pub enum DumpError {
    /// Reading the tree failed.
    #[error("cannot read {path}")]
    Read {
        /// The file, directory or symlink being read.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The tree holds a file type NAR cannot represent.
    #[error("cannot pack {path}: it is a {kind}, which a NAR cannot hold")]
    UnsupportedType {
        /// The offending file.
        path: PathBuf,
        /// Its type: `socket`, `FIFO`, `character device`, `block device`.
        kind: &'static str,
    },
    /// A file got shorter while it was being packed, so the archive would be inconsistent.
    #[error(
        "{path} changed while being packed: it had {expected} bytes but only {read} could be read"
    )]
    FileShrank {
        /// The file.
        path: PathBuf,
        /// Its size when it was opened, which the archive already declared.
        expected: u64,
        /// Bytes read before the end of the file.
        read: u64,
    },
    /// Writing the archive to the sink failed.
    #[error("cannot write the NAR")]
    Write(#[source] io::Error),
}

/// Writes the NAR of `path` to `sink`; returns its size in bytes.
///
/// `path` itself is not followed if it is a symlink (the archive is then a symlink), but the
/// directories leading to it are resolved as usual. The sink receives large writes and is
/// flushed at the end; there is no need to wrap it in a `BufWriter`. On error the sink has
/// received a prefix of the archive.
pub fn dump_path<W: Write>(path: &Path, sink: W) -> Result<u64, DumpError> {
    let mut packer = Packer::new(path, sink);
    packer.dump()?;
    packer.out.flush()?;
    packer.out.sink.flush().map_err(DumpError::Write)?;
    Ok(packer.out.written)
}

/// The SHA-256 of the NAR of `path` and the NAR's size in bytes: what `nix hash path` and a
/// narinfo's `NarHash`/`NarSize` state. Nothing is kept in memory but one buffer.
pub fn hash_path(path: &Path) -> Result<(Hash, u64), DumpError> {
    let mut packer = Packer::new(path, Sha256Counter::new());
    packer.dump()?;
    packer.out.flush()?;
    Ok(packer.out.sink.finish())
}

fn read_error(path: &Path) -> impl FnOnce(rustix::io::Errno) -> DumpError + '_ {
    move |errno| DumpError::Read {
        path: path.to_owned(),
        source: errno.into(),
    }
}

fn type_name(file_type: FileType) -> &'static str {
    match file_type {
        FileType::Fifo => "FIFO",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symlink",
        FileType::Unknown => "file of unknown type",
    }
}

/// The output side: a fixed buffer in front of the sink.
struct Output<W> {
    sink: W,
    buf: Box<[u8]>,
    filled: usize,
    /// Bytes passed to the sink so far.
    written: u64,
}

impl<W: Write> Output<W> {
    fn flush(&mut self) -> Result<(), DumpError> {
        if self.filled > 0 {
            self.sink
                .write_all(&self.buf[..self.filled])
                .map_err(DumpError::Write)?;
            self.written += self.filled as u64;
            self.filled = 0;
        }
        Ok(())
    }

    fn reserve(&mut self, n: usize) -> Result<(), DumpError> {
        if self.buf.len() - self.filled < n {
            self.flush()?;
        }
        Ok(())
    }

    fn put_u64(&mut self, n: u64) -> Result<(), DumpError> {
        self.reserve(8)?;
        self.buf[self.filled..self.filled + 8].copy_from_slice(&n.to_le_bytes());
        self.filled += 8;
        Ok(())
    }

    fn put_padding(&mut self, len: u64) -> Result<(), DumpError> {
        let pad = padding(len);
        self.reserve(pad)?;
        self.buf[self.filled..self.filled + pad].fill(0);
        self.filled += pad;
        Ok(())
    }

    /// A string: length, bytes, padding. Strings are at most a few KiB (a symlink target), far
    /// below the buffer size.
    fn put_str(&mut self, s: &[u8]) -> Result<(), DumpError> {
        self.reserve(8 + s.len() + padding(s.len() as u64))?;
        self.put_u64(s.len() as u64)?;
        self.buf[self.filled..self.filled + s.len()].copy_from_slice(s);
        self.filled += s.len();
        self.put_padding(s.len() as u64)
    }

    fn put_strs(&mut self, strs: &[&[u8]]) -> Result<(), DumpError> {
        strs.iter().try_for_each(|s| self.put_str(s))
    }

    /// A regular file node from an open file, contents read straight into the buffer.
    fn put_file(&mut self, fd: OwnedFd, path: &Path) -> Result<(), DumpError> {
        let stat = rustix::fs::fstat(&fd).map_err(read_error(path))?;
        let file_type = FileType::from_raw_mode(stat.st_mode);
        if file_type != FileType::RegularFile {
            return Err(DumpError::UnsupportedType {
                path: path.to_owned(),
                kind: type_name(file_type),
            });
        }
        // Nix looks at the owner's execute bit only.
        if stat.st_mode & 0o100 != 0 {
            self.put_strs(&[b"(", b"type", b"regular", b"executable", b"", b"contents"])?;
        } else {
            self.put_strs(&[b"(", b"type", b"regular", b"contents"])?;
        }
        let size = stat.st_size as u64;
        self.put_u64(size)?;
        let mut file = File::from(fd);
        let mut remaining = size;
        while remaining > 0 {
            let room = self.buf.len() - self.filled;
            if (room as u64) < remaining.min(MIN_READ as u64) {
                self.flush()?;
            }
            let want = remaining.min((self.buf.len() - self.filled) as u64) as usize;
            let n = match file.read(&mut self.buf[self.filled..self.filled + want]) {
                Ok(0) => {
                    let read = size - remaining;
                    return Err(DumpError::FileShrank {
                        path: path.to_owned(),
                        expected: size,
                        read,
                    });
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(DumpError::Read {
                        path: path.to_owned(),
                        source,
                    });
                }
            };
            self.filled += n;
            remaining -= n as u64;
        }
        self.put_padding(size)?;
        self.put_str(b")")
    }

    fn put_symlink(&mut self, target: &[u8]) -> Result<(), DumpError> {
        self.put_strs(&[b"(", b"type", b"symlink", b"target", target, b")"])
    }
}

/// One entry of a directory being packed; its name is `names[start..start + len]`, followed by a
/// NUL so it can be passed to system calls without copying.
#[derive(Clone, Copy)]
struct Entry {
    start: usize,
    len: usize,
    file_type: FileType,
}

/// An open directory whose entries are being packed.
#[derive(Default)]
struct Level {
    fd: Option<OwnedFd>,
    names: Vec<u8>,
    entries: Vec<Entry>,
    next: usize,
}

impl Level {
    fn name(&self, entry: Entry) -> &CStr {
        CStr::from_bytes_with_nul(&self.names[entry.start..=entry.start + entry.len])
            .expect("names are stored NUL-terminated")
    }
}

struct Packer<'p, W> {
    root: &'p Path,
    out: Output<W>,
    /// Open directories, innermost last; slots from `depth` on keep their allocations for reuse.
    levels: Vec<Level>,
    depth: usize,
    /// The path of the entry being packed, for error messages.
    path: PathBuf,
    dirent_buf: Vec<u8>,
    link_buf: Vec<u8>,
}

impl<'p, W: Write> Packer<'p, W> {
    fn new(root: &'p Path, sink: W) -> Self {
        Packer {
            root,
            out: Output {
                sink,
                buf: vec![0; BUF_SIZE].into_boxed_slice(),
                filled: 0,
                written: 0,
            },
            levels: Vec::new(),
            depth: 0,
            path: root.to_owned(),
            dirent_buf: Vec::with_capacity(DIRENT_BUF),
            link_buf: Vec::new(),
        }
    }

    fn dump(&mut self) -> Result<(), DumpError> {
        let root = self.root;
        self.out.put_str(MAGIC)?;
        let stat =
            rustix::fs::statat(CWD, root, AtFlags::SYMLINK_NOFOLLOW).map_err(read_error(root))?;
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::RegularFile => {
                let fd = rustix::fs::openat(CWD, root, FILE_FLAGS, Mode::empty())
                    .map_err(read_error(root))?;
                self.out.put_file(fd, root)
            }
            FileType::Symlink => {
                let reuse = std::mem::take(&mut self.link_buf);
                let target = rustix::fs::readlinkat(CWD, root, reuse).map_err(read_error(root))?;
                self.out.put_symlink(target.as_bytes())
            }
            FileType::Directory => {
                let fd = rustix::fs::openat(CWD, root, DIR_FLAGS, Mode::empty())
                    .map_err(read_error(root))?;
                self.out.put_strs(&[b"(", b"type", b"directory"])?;
                self.enter(fd)?;
                self.walk()
            }
            other => Err(DumpError::UnsupportedType {
                path: root.to_owned(),
                kind: type_name(other),
            }),
        }
    }

    /// Lists and sorts the entries of the directory `fd` (whose path is `self.path`) and makes it
    /// the innermost level.
    fn enter(&mut self, fd: OwnedFd) -> Result<(), DumpError> {
        if self.levels.len() == self.depth {
            self.levels.push(Level::default());
        }
        let level = &mut self.levels[self.depth];
        level.names.clear();
        level.entries.clear();
        level.next = 0;
        let mut dir = RawDir::new(&fd, self.dirent_buf.spare_capacity_mut());
        while let Some(entry) = dir.next() {
            let entry = entry.map_err(read_error(&self.path))?;
            let name = entry.file_name().to_bytes_with_nul();
            if name == b".\0" || name == b"..\0" {
                continue;
            }
            let start = level.names.len();
            level.names.extend_from_slice(name);
            level.entries.push(Entry {
                start,
                len: name.len() - 1,
                file_type: entry.file_type(),
            });
        }
        let Level { names, entries, .. } = level;
        entries.sort_unstable_by(|a, b| {
            names[a.start..a.start + a.len].cmp(&names[b.start..b.start + b.len])
        });
        level.fd = Some(fd);
        self.depth += 1;
        Ok(())
    }

    /// Packs the entries of the open directories until the outermost one is closed.
    fn walk(&mut self) -> Result<(), DumpError> {
        while self.depth > 0 {
            let level = &mut self.levels[self.depth - 1];
            if level.next == level.entries.len() {
                level.fd = None;
                self.depth -= 1;
                // Close the directory node and, unless it is the root, its entry.
                if self.depth > 0 {
                    self.out.put_strs(&[b")", b")"])?;
                    self.path.pop();
                } else {
                    self.out.put_str(b")")?;
                }
                continue;
            }
            let entry = level.entries[level.next];
            level.next += 1;
            let name = level.name(entry);
            let dir = level.fd.as_ref().expect("open levels have a handle");
            self.path.push(OsStr::from_bytes(name.to_bytes()));
            self.out
                .put_strs(&[b"entry", b"(", b"name", name.to_bytes(), b"node"])?;
            let file_type = match entry.file_type {
                FileType::Unknown => {
                    let stat = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(read_error(&self.path))?;
                    FileType::from_raw_mode(stat.st_mode)
                }
                known => known,
            };
            match file_type {
                FileType::RegularFile => {
                    let fd = rustix::fs::openat(dir, name, FILE_FLAGS, Mode::empty())
                        .map_err(read_error(&self.path))?;
                    self.out.put_file(fd, &self.path)?;
                }
                FileType::Symlink => {
                    let reuse = std::mem::take(&mut self.link_buf);
                    let target =
                        rustix::fs::readlinkat(dir, name, reuse).map_err(read_error(&self.path))?;
                    self.out.put_symlink(target.as_bytes())?;
                    self.link_buf = target.into_bytes();
                }
                FileType::Directory => {
                    let fd = rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty())
                        .map_err(read_error(&self.path))?;
                    self.out.put_strs(&[b"(", b"type", b"directory"])?;
                    // The entry and the path component are closed when the directory is.
                    self.enter(fd)?;
                    continue;
                }
                other => {
                    return Err(DumpError::UnsupportedType {
                        path: self.path.clone(),
                        kind: type_name(other),
                    });
                }
            }
            self.out.put_str(b")")?;
            self.path.pop();
        }
        Ok(())
    }
}
