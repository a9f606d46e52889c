//! Unpacking a NAR into a new directory entry, never writing outside it.
//!
//! The contract, which matches `nix-store --restore`:
//! - The target must not exist (not even as an empty directory or a dangling symlink); its parent
//!   must. The archive's root becomes the target, whatever its type.
//! - Nothing outside the target is created, written or followed. Every entry is created relative
//!   to a handle on the directory that this unpack itself created (`mkdirat`, `openat`,
//!   `symlinkat`); the parser has already refused names that are not a single component (`/`,
//!   `.`, `..`, empty, NUL) and entries that repeat or are out of order, so no entry can meet one
//!   created earlier. Files are created with `O_CREAT | O_EXCL | O_NOFOLLOW` and directories are
//!   opened with `O_NOFOLLOW`, so even a symlink put in place by someone else mid-unpack is
//!   never followed: the unpack fails instead.
//! - Files are created with mode 0666 and directories with 0777, less the umask; an executable
//!   file then gets all three execute bits added, as Nix does.
//! - On error the partly unpacked tree is left as it is, for the caller to inspect or remove.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, Mode, OFlags};
use rustix::io::Errno;
use thiserror::Error;

use super::error::NarError;
use super::parser::{NarEvent, NarLimits, NarParser};
use crate::hash::{Hash, Sha256Counter};

/// Size of the buffer the archive is read with.
const READ_BUF: usize = 256 * 1024;

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);
const NEW_FILE_FLAGS: OFlags = OFlags::WRONLY
    .union(OFlags::CREATE)
    .union(OFlags::EXCL)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Why an archive could not be unpacked.
#[derive(Debug, Error)]
pub enum UnpackError {
    /// Reading the archive failed.
    #[error("cannot read the NAR")]
    Read(#[source] io::Error),
    /// The archive is invalid.
    #[error(transparent)]
    Nar(#[from] NarError),
    /// The target has no final component to create (it is `/` or ends in `..`).
    #[error("cannot unpack to {path}: it does not end in a file name")]
    InvalidTarget {
        /// The target given.
        path: PathBuf,
    },
    /// The target already exists.
    #[error("cannot unpack to {path}: it already exists")]
    TargetExists {
        /// The target given.
        path: PathBuf,
    },
    /// The directory the target is to be created in cannot be opened.
    #[error("cannot open {path}, the directory to unpack in")]
    Parent {
        /// The target's parent directory.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// Creating a file, directory or symlink failed.
    #[error("cannot create {path}")]
    Create {
        /// What was being created.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// Writing file contents failed.
    #[error("cannot write {path}")]
    Write {
        /// The file being written.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
}

/// Unpacks the NAR read from `reader` to `target`, which must not exist. Returns the archive's
/// SHA-256 and size in bytes. See the [module documentation](self) for the guarantees.
pub fn unpack<R: Read>(reader: R, target: &Path) -> Result<(Hash, u64), UnpackError> {
    unpack_with_limits(reader, target, NarLimits::default())
}

/// [`unpack`] with explicit limits.
pub fn unpack_with_limits<R: Read>(
    mut reader: R,
    target: &Path,
    limits: NarLimits,
) -> Result<(Hash, u64), UnpackError> {
    let mut sink = DiskSink::new(target)?;
    let mut parser = NarParser::with_limits(limits);
    let mut hasher = Sha256Counter::new();
    let mut buf = vec![0u8; READ_BUF];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(UnpackError::Read(e)),
        };
        let chunk = &buf[..n];
        let mut pos = 0;
        loop {
            let step = parser.advance(&chunk[pos..])?;
            pos += step.consumed;
            match step.event {
                Some(event) => sink.apply(event)?,
                None => break,
            }
        }
        hasher.update(chunk);
    }
    parser.finish()?;
    Ok(hasher.finish())
}

/// Applies parser events to the file system.
struct DiskSink {
    /// The directory the target is created in.
    parent: OwnedFd,
    /// The target's final component.
    root_name: PathBuf,
    /// Handles on the directories being filled, innermost last.
    dirs: Vec<OwnedFd>,
    /// The file being written, with whether it is executable.
    file: Option<(File, bool)>,
    /// Path of the node being created, for error messages.
    path: PathBuf,
    /// How many entry names `path` has beyond the target.
    named_depth: usize,
}

impl DiskSink {
    fn new(target: &Path) -> Result<Self, UnpackError> {
        let invalid = || UnpackError::InvalidTarget {
            path: target.to_owned(),
        };
        let root_name = PathBuf::from(target.file_name().ok_or_else(invalid)?);
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let parent_fd = rustix::fs::openat(
            CWD,
            parent,
            DIR_FLAGS.difference(OFlags::NOFOLLOW),
            Mode::empty(),
        )
        .map_err(|e| UnpackError::Parent {
            path: parent.to_owned(),
            source: e.into(),
        })?;
        // Checked up front so that nothing is read from the input when the target is in the way;
        // creating the root checks again, atomically.
        match rustix::fs::statat(&parent_fd, &root_name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => {}
            Ok(_) => {
                return Err(UnpackError::TargetExists {
                    path: target.to_owned(),
                });
            }
            Err(e) => {
                return Err(UnpackError::Create {
                    path: target.to_owned(),
                    source: e.into(),
                });
            }
        }
        Ok(DiskSink {
            parent: parent_fd,
            root_name,
            dirs: Vec::new(),
            file: None,
            path: target.to_owned(),
            named_depth: 0,
        })
    }

    /// The directory to create a node in and the node's name there; extends `path`.
    fn place<'a>(&'a mut self, name: Option<&'a [u8]>) -> (BorrowedFd<'a>, &'a OsStr) {
        match name {
            None => (self.parent.as_fd(), self.root_name.as_os_str()),
            Some(name) => {
                let name = OsStr::from_bytes(name);
                self.path.push(name);
                self.named_depth += 1;
                (
                    self.dirs
                        .last()
                        .expect("entries are inside a directory")
                        .as_fd(),
                    name,
                )
            }
        }
    }

    /// A node is complete: drop its name from `path`.
    fn leave(&mut self) {
        if self.named_depth > 0 {
            self.path.pop();
            self.named_depth -= 1;
        }
    }

    fn create_error(&self, errno: Errno) -> UnpackError {
        if errno == Errno::EXIST && self.named_depth == 0 {
            UnpackError::TargetExists {
                path: self.path.clone(),
            }
        } else {
            UnpackError::Create {
                path: self.path.clone(),
                source: errno.into(),
            }
        }
    }

    fn apply(&mut self, event: NarEvent<'_>) -> Result<(), UnpackError> {
        match event {
            NarEvent::DirectoryStart { name } => {
                let (dir, name) = self.place(name);
                let created = rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o777))
                    .and_then(|()| rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty()));
                let fd = created.map_err(|e| self.create_error(e))?;
                self.dirs.push(fd);
            }
            NarEvent::DirectoryEnd => {
                self.dirs.pop();
                self.leave();
            }
            NarEvent::FileStart {
                name,
                executable,
                size: _,
            } => {
                let (dir, name) = self.place(name);
                let created =
                    rustix::fs::openat(dir, name, NEW_FILE_FLAGS, Mode::from_raw_mode(0o666));
                let fd = created.map_err(|e| self.create_error(e))?;
                self.file = Some((File::from(fd), executable));
            }
            NarEvent::FileData(data) => {
                let (file, _) = self
                    .file
                    .as_mut()
                    .expect("data comes between FileStart and FileEnd");
                file.write_all(data).map_err(|source| UnpackError::Write {
                    path: self.path.clone(),
                    source,
                })?;
            }
            NarEvent::FileEnd => {
                let (file, executable) = self.file.take().expect("FileEnd follows FileStart");
                if executable {
                    let set_exec = file.metadata().and_then(|meta| {
                        let mode = meta.permissions().mode() | 0o111;
                        file.set_permissions(std::fs::Permissions::from_mode(mode))
                    });
                    set_exec.map_err(|source| UnpackError::Write {
                        path: self.path.clone(),
                        source,
                    })?;
                }
                self.leave();
            }
            NarEvent::Symlink { name, target } => {
                let (dir, name) = self.place(name);
                let created = rustix::fs::symlinkat(target, dir, name);
                created.map_err(|e| self.create_error(e))?;
                self.leave();
            }
        }
        Ok(())
    }
}
