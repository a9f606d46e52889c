//! Helpers shared by the evaluation tests: chroot stores, requests, real Nix, local git repos.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_coordinator::eval::{
    EvalError, EvalInput, EvalRequest, EvalResult, EvaluatedJob, JobsetSource, NixSettings,
    evaluate,
};

/// Options every Nix call in these tests gets: no network substituters.
pub const NIX_OPTIONS: &[&str] = &["--option", "substituters", ""];

/// Sandboxed builds that see only busybox besides their inputs.
pub const SANDBOX_OPTIONS: &[&str] = &[
    "--option",
    "sandbox",
    "true",
    "--option",
    "sandbox-paths",
    "/bin/sh=/bin/busybox /bin/busybox",
];

/// The repository root.
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("coordinator/ has a parent")
}

/// The directory of a test fixture under `coordinator/tests/fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Nix settings for a fresh chroot store under `dir`.
pub fn chroot_settings(dir: &Path) -> NixSettings {
    NixSettings {
        store: Some(dir.join("store")),
        options: vec![("substituters".into(), String::new())],
        gc_roots_dir: None,
        bin_dir: None,
    }
}

/// A legacy request for `expression` in `checkout`, two processes of 1 GiB each.
pub fn legacy(
    checkout: &Path,
    expression: &str,
    inputs: BTreeMap<String, EvalInput>,
    store: &Path,
) -> EvalRequest {
    EvalRequest {
        checkout: checkout.to_owned(),
        source: JobsetSource::Legacy {
            expression: expression.into(),
            inputs,
        },
        nix: chroot_settings(store),
        max_processes: 2,
        max_memory: 1 << 30,
    }
}

/// Runs an evaluation on a fresh runtime.
pub fn run(req: &EvalRequest) -> Result<EvalResult, EvalError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(evaluate(req))
}

/// The job named `name`, or a panic listing the jobs there are.
pub fn job<'a>(result: &'a EvalResult, name: &str) -> &'a EvaluatedJob {
    result
        .jobs
        .iter()
        .find(|j| j.name == name)
        .unwrap_or_else(|| {
            let names: Vec<_> = result.jobs.iter().map(|j| &j.name).collect();
            panic!(
                "no job {name}; jobs: {names:?}; errors: {:?}",
                result.errors
            )
        })
}

/// The error message of job `name`, or a panic.
pub fn error<'a>(result: &'a EvalResult, name: &str) -> &'a str {
    &result
        .errors
        .iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("no error for {name}; errors: {:?}", result.errors))
        .message
}

/// Runs a Nix program with [`NIX_OPTIONS`] and `args`, panicking with its stderr on failure;
/// returns stdout.
pub fn nix_ok(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(NIX_OPTIONS)
        .args(args)
        .env_remove("NIX_PATH")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// The `.drv` text of `path` in the chroot store at `store`.
pub fn drv_text(store: &Path, path: &str) -> String {
    std::fs::read_to_string(store.join(path.trim_start_matches('/')))
        .unwrap_or_else(|e| panic!("cannot read {path} in {}: {e}", store.display()))
}

/// A file of a test commit: path (with slashes), contents, git mode.
pub struct File<'a> {
    pub path: &'a str,
    pub contents: &'a [u8],
    pub mode: i32,
}

/// A regular file.
pub fn file<'a>(path: &'a str, contents: &'a [u8]) -> File<'a> {
    File {
        path,
        contents,
        mode: 0o100644,
    }
}

/// An executable file.
pub fn executable<'a>(path: &'a str, contents: &'a [u8]) -> File<'a> {
    File {
        path,
        contents,
        mode: 0o100755,
    }
}

/// A symbolic link to `target`.
pub fn link<'a>(path: &'a str, target: &'a str) -> File<'a> {
    File {
        path,
        contents: target.as_bytes(),
        mode: 0o120000,
    }
}

/// Commits exactly `files` on `branch` of the bare repository at `repo` (created if missing),
/// with commit time `time` (seconds); returns the commit id.
pub fn commit(repo: &Path, branch: &str, files: &[File<'_>], time: i64) -> String {
    let repo = match git2::Repository::open_bare(repo) {
        Ok(r) => r,
        Err(_) => git2::Repository::init_bare(repo).expect("init repository"),
    };
    let tree = build_tree(&repo, files, "");
    let tree = repo.find_tree(tree).expect("tree");
    let signature =
        git2::Signature::new("Test", "test@example.org", &git2::Time::new(time, 0)).unwrap();
    let refname = format!("refs/heads/{branch}");
    let parent = repo
        .find_reference(&refname)
        .ok()
        .and_then(|r| r.peel_to_commit().ok());
    let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
    repo.commit(
        Some(&refname),
        &signature,
        &signature,
        "test commit",
        &tree,
        &parents,
    )
    .expect("commit")
    .to_string()
}

fn build_tree(repo: &git2::Repository, files: &[File<'_>], prefix: &str) -> git2::Oid {
    let mut builder = repo.treebuilder(None).expect("treebuilder");
    let mut subdirs: BTreeMap<&str, ()> = BTreeMap::new();
    for f in files {
        let Some(rest) = f.path.strip_prefix(prefix) else {
            continue;
        };
        match rest.split_once('/') {
            Some((dir, _)) => {
                subdirs.insert(dir, ());
            }
            None => {
                let blob = repo.blob(f.contents).expect("blob");
                builder.insert(rest, blob, f.mode).expect("insert");
            }
        }
    }
    for dir in subdirs.keys() {
        let sub = build_tree(repo, files, &format!("{prefix}{dir}/"));
        builder.insert(dir, sub, 0o040000).expect("insert dir");
    }
    builder.write().expect("write tree")
}

/// Copies the files of directory `dir` (recursively) as test-commit files.
pub fn files_of(dir: &Path) -> Vec<(String, Vec<u8>, i32)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>, i32)>) {
        use std::os::unix::fs::PermissionsExt;
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            if meta.is_dir() {
                walk(root, &path, out);
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                out.push((rel, target.to_str().unwrap().as_bytes().to_vec(), 0o120000));
            } else {
                let mode = if meta.permissions().mode() & 0o111 != 0 {
                    0o100755
                } else {
                    0o100644
                };
                out.push((rel, std::fs::read(&path).unwrap(), mode));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out
}

/// Commits the contents of directory `dir` on `branch` of the bare repository `repo`.
pub fn commit_dir(repo: &Path, branch: &str, dir: &Path, time: i64) -> String {
    let owned = files_of(dir);
    let files: Vec<File<'_>> = owned
        .iter()
        .map(|(path, contents, mode)| File {
            path,
            contents,
            mode: *mode,
        })
        .collect();
    commit(repo, branch, &files, time)
}
