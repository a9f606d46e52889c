//! Git mirrors: bare copies of jobset repositories, fetched by branch and checked out by commit.
//!
//! Every repository URL gets one bare mirror under the root directory, named by a hash of the URL
//! so that any URL (with slashes, ports, credentials...) maps to a safe, stable directory name.
//! [`GitMirror::fetch`] brings one branch up to date and returns its commit; [`GitMirror::checkout`]
//! writes the tree of a commit into a fresh directory, without a `.git` directory and with every
//! file's modification time set to the commit's time (so a flake evaluated from the checkout sees
//! the commit time as its `lastModified`, as it would for a git flake).
//!
//! Everything here blocks (libgit2); async callers run it on a blocking thread. URLs may be local
//! paths, `file://` URLs and `https://` URLs (libgit2 built with the system's OpenSSL); SSH is not
//! compiled in. Calls on the same mirror are serialised within one `GitMirror`; two processes must
//! not share a mirror root.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use git2::{AutotagOption, Direction, FetchOptions, Oid, Repository, Tree};
use rustix::fs::{AtFlags, CWD, Timespec, Timestamps};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Why a fetch or a checkout failed.
#[derive(Debug, Error)]
pub enum GitError {
    /// The branch name is not a valid git reference name.
    #[error("invalid branch name {0:?}")]
    InvalidBranch(String),
    /// The remote repository has no such branch.
    #[error("branch {branch:?} does not exist in {url}")]
    BranchNotFound {
        /// The repository URL.
        url: String,
        /// The branch asked for.
        branch: String,
    },
    /// The commit id is not 40 hexadecimal digits.
    #[error("invalid commit id {0:?}")]
    InvalidCommit(String),
    /// The URL has never been fetched into this mirror root.
    #[error("{url} has not been fetched yet")]
    NotMirrored {
        /// The repository URL.
        url: String,
    },
    /// The mirror does not hold the commit (it was never fetched, or is not a commit).
    #[error("commit {commit} is not in the mirror of {url}")]
    CommitNotFound {
        /// The repository URL.
        url: String,
        /// The commit asked for.
        commit: String,
    },
    /// The checkout destination exists and is not an empty directory.
    #[error("checkout destination {0} exists and is not an empty directory")]
    DestinationNotEmpty(PathBuf),
    /// A tree entry has a name that cannot be written safely (`..`, a slash, ...).
    #[error("commit {commit} holds a file named {name:?}, which cannot be checked out safely")]
    UnsafeEntryName {
        /// The commit being checked out.
        commit: String,
        /// The entry's name, lossily decoded.
        name: String,
    },
    /// libgit2 failed.
    #[error("{action} {url}: {source}")]
    Git {
        /// What was being done (`fetching`, `reading`...).
        action: &'static str,
        /// The repository URL.
        url: String,
        /// libgit2's error.
        source: git2::Error,
    },
    /// A file system operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// Bare mirrors of remote repositories under one root directory, one per URL.
#[derive(Debug)]
pub struct GitMirror {
    root: PathBuf,
    locks: Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>,
}

impl GitMirror {
    /// Mirrors kept under `root` (created on first use).
    pub fn new(root: PathBuf) -> GitMirror {
        GitMirror {
            root,
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// The directory of the bare mirror of `url`: the root joined with the first 32 hexadecimal
    /// digits of the SHA-256 of the URL, plus `.git`.
    pub fn mirror_path(&self, url: &str) -> PathBuf {
        let digest = Sha256::digest(url.as_bytes());
        self.root
            .join(format!("{}.git", &hex::encode(digest)[..32]))
    }

    /// Fetches `branch` of `url` (a local path, `file://` or `https://` URL) into the mirror and
    /// returns the commit the branch points to, as 40 hexadecimal digits.
    pub fn fetch(&self, url: &str, branch: &str) -> Result<String, GitError> {
        let refname = format!("refs/heads/{branch}");
        if !git2::Reference::is_valid_name(&refname) {
            return Err(GitError::InvalidBranch(branch.to_owned()));
        }
        let path = self.mirror_path(url);
        let lock = self.lock(&path);
        let _guard = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let repo = open_or_init(&path, url)?;
        let git = |action| {
            move |source| GitError::Git {
                action,
                url: url.to_owned(),
                source,
            }
        };

        let mut remote = repo.remote_anonymous(url).map_err(git("reading"))?;
        // List the remote's branches first: a fetch of a branch that does not exist succeeds
        // without updating anything, and would leave a stale commit in place.
        let advertised = {
            let connection = remote
                .connect_auth(Direction::Fetch, None, None)
                .map_err(git("connecting to"))?;
            let heads = connection.list().map_err(git("listing branches of"))?;
            heads
                .iter()
                .find(|head| head.name() == refname)
                .map(|head| head.oid())
        };
        if advertised.is_none() {
            return Err(GitError::BranchNotFound {
                url: url.to_owned(),
                branch: branch.to_owned(),
            });
        }
        let mut options = FetchOptions::new();
        options.download_tags(AutotagOption::None);
        let refspec = format!("+{refname}:{refname}");
        remote
            .fetch(&[refspec.as_str()], Some(&mut options), None)
            .map_err(git("fetching"))?;
        let commit = repo
            .find_reference(&refname)
            .and_then(|reference| reference.peel_to_commit())
            .map_err(git("resolving the fetched branch of"))?;
        Ok(commit.id().to_string())
    }

    /// Writes the tree of `commit` (fetched before from `url`) into `dest`, which must not exist
    /// or be an empty directory. Executable bits and symbolic links are kept; submodules become
    /// empty directories; every modification time is the commit's time.
    pub fn checkout(&self, url: &str, commit: &str, dest: &Path) -> Result<(), GitError> {
        if commit.len() != 40 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(GitError::InvalidCommit(commit.to_owned()));
        }
        let oid = Oid::from_str(commit).map_err(|_| GitError::InvalidCommit(commit.to_owned()))?;
        let path = self.mirror_path(url);
        let lock = self.lock(&path);
        let _guard = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !path.join("HEAD").exists() {
            return Err(GitError::NotMirrored {
                url: url.to_owned(),
            });
        }
        let repo = Repository::open_bare(&path).map_err(|source| GitError::Git {
            action: "opening the mirror of",
            url: url.to_owned(),
            source,
        })?;
        let found = repo
            .find_commit(oid)
            .map_err(|_| GitError::CommitNotFound {
                url: url.to_owned(),
                commit: commit.to_owned(),
            })?;
        let tree = found.tree().map_err(|source| GitError::Git {
            action: "reading the tree of a commit of",
            url: url.to_owned(),
            source,
        })?;
        let time = Timespec {
            tv_sec: found.time().seconds(),
            tv_nsec: 0,
        };

        prepare_destination(dest)?;
        let writer = TreeWriter {
            repo: &repo,
            url,
            commit,
            time,
        };
        writer.write_tree(&tree, dest)?;
        set_mtime(dest, time, false)
    }

    fn lock(&self, path: &Path) -> Arc<Mutex<()>> {
        let mut locks = self
            .locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        locks.entry(path.to_owned()).or_default().clone()
    }
}

fn open_or_init(path: &Path, url: &str) -> Result<Repository, GitError> {
    let result = if path.join("HEAD").exists() {
        Repository::open_bare(path)
    } else {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|source| GitError::Io {
                action: "creating the mirror directory",
                path: parent.to_owned(),
                source,
            })?;
        }
        Repository::init_bare(path)
    };
    result.map_err(|source| GitError::Git {
        action: "opening the mirror of",
        url: url.to_owned(),
        source,
    })
}

fn prepare_destination(dest: &Path) -> Result<(), GitError> {
    let io_error = |action| {
        move |source| GitError::Io {
            action,
            path: dest.to_owned(),
            source,
        }
    };
    match fs::read_dir(dest) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(GitError::DestinationNotEmpty(dest.to_owned()));
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dest).map_err(io_error("creating the checkout directory"))
        }
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
            Err(GitError::DestinationNotEmpty(dest.to_owned()))
        }
        Err(e) => Err(io_error("reading the checkout directory")(e)),
    }
}

/// Git file modes (the octal values stored in tree objects).
const MODE_TREE: i32 = 0o040000;
const MODE_BLOB: i32 = 0o100644;
const MODE_BLOB_EXECUTABLE: i32 = 0o100755;
const MODE_BLOB_GROUP_WRITABLE: i32 = 0o100664;
const MODE_LINK: i32 = 0o120000;
const MODE_COMMIT: i32 = 0o160000;

struct TreeWriter<'a> {
    repo: &'a Repository,
    url: &'a str,
    commit: &'a str,
    time: Timespec,
}

impl TreeWriter<'_> {
    fn git_error(&self, source: git2::Error) -> GitError {
        GitError::Git {
            action: "reading objects of",
            url: self.url.to_owned(),
            source,
        }
    }

    fn write_tree(&self, tree: &Tree<'_>, dir: &Path) -> Result<(), GitError> {
        for entry in tree.iter() {
            let name = entry.name_bytes();
            if name.is_empty()
                || name == b"."
                || name == b".."
                || name.contains(&b'/')
                || name.contains(&0)
            {
                return Err(GitError::UnsafeEntryName {
                    commit: self.commit.to_owned(),
                    name: String::from_utf8_lossy(name).into_owned(),
                });
            }
            let path = dir.join(OsStr::from_bytes(name));
            let io_error = |action| {
                let path = path.clone();
                move |source| GitError::Io {
                    action,
                    path,
                    source,
                }
            };
            match entry.filemode() {
                MODE_TREE => {
                    let subtree = self
                        .repo
                        .find_tree(entry.id())
                        .map_err(|e| self.git_error(e))?;
                    fs::create_dir(&path).map_err(io_error("creating directory"))?;
                    self.write_tree(&subtree, &path)?;
                    set_mtime(&path, self.time, false)?;
                }
                MODE_BLOB | MODE_BLOB_EXECUTABLE | MODE_BLOB_GROUP_WRITABLE => {
                    let blob = self
                        .repo
                        .find_blob(entry.id())
                        .map_err(|e| self.git_error(e))?;
                    let mode = if entry.filemode() == MODE_BLOB_EXECUTABLE {
                        0o755
                    } else {
                        0o644
                    };
                    let mut file = fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(mode)
                        .open(&path)
                        .map_err(io_error("creating file"))?;
                    file.write_all(blob.content())
                        .map_err(io_error("writing file"))?;
                    drop(file);
                    set_mtime(&path, self.time, false)?;
                }
                MODE_LINK => {
                    let blob = self
                        .repo
                        .find_blob(entry.id())
                        .map_err(|e| self.git_error(e))?;
                    symlink(OsStr::from_bytes(blob.content()), &path)
                        .map_err(io_error("creating symbolic link"))?;
                    set_mtime(&path, self.time, true)?;
                }
                MODE_COMMIT => {
                    // A submodule: its commit lives in another repository, which is not fetched.
                    fs::create_dir(&path).map_err(io_error("creating directory"))?;
                    set_mtime(&path, self.time, false)?;
                }
                other => {
                    return Err(GitError::Git {
                        action: "reading a tree of",
                        url: self.url.to_owned(),
                        source: git2::Error::from_str(&format!(
                            "entry {:?} has unknown mode {other:o}",
                            String::from_utf8_lossy(name)
                        )),
                    });
                }
            }
        }
        Ok(())
    }
}

fn set_mtime(path: &Path, time: Timespec, is_link: bool) -> Result<(), GitError> {
    let times = Timestamps {
        last_access: time,
        last_modification: time,
    };
    let flags = if is_link {
        AtFlags::SYMLINK_NOFOLLOW
    } else {
        AtFlags::empty()
    };
    rustix::fs::utimensat(CWD, path, &times, flags).map_err(|e| GitError::Io {
        action: "setting the modification time of",
        path: path.to_owned(),
        source: e.into(),
    })
}
