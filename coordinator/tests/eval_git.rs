//! Git mirrors: fetching branches of local repositories and checking commits out.

mod eval_support;

use std::os::unix::fs::PermissionsExt;

use eval_support::*;
use kiln_coordinator::git::{GitError, GitMirror};

#[test]
fn fetch_resolves_a_branch_over_file_urls_and_plain_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo.git");
    let first = commit(&repo, "main", &[file("a.txt", b"one\n")], 1_600_000_000);
    let mirror = GitMirror::new(tmp.path().join("mirrors"));

    let url = format!("file://{}", repo.display());
    assert_eq!(mirror.fetch(&url, "main").unwrap(), first);
    let path = repo.to_str().unwrap();
    assert_eq!(mirror.fetch(path, "main").unwrap(), first);
    // One bare mirror per URL, named by a hash of it.
    assert_ne!(mirror.mirror_path(&url), mirror.mirror_path(path));
    assert!(mirror.mirror_path(&url).join("HEAD").is_file());
    assert!(mirror.mirror_path(path).join("HEAD").is_file());
}

#[test]
fn a_second_commit_is_fetched_and_both_commits_check_out() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo.git");
    let url = format!("file://{}", repo.display());
    let mirror = GitMirror::new(tmp.path().join("mirrors"));

    let first = commit(&repo, "main", &[file("a.txt", b"one\n")], 1_600_000_000);
    assert_eq!(mirror.fetch(&url, "main").unwrap(), first);
    let second = commit(
        &repo,
        "main",
        &[file("a.txt", b"two\n"), file("b.txt", b"new\n")],
        1_600_000_100,
    );
    assert_ne!(first, second);
    assert_eq!(mirror.fetch(&url, "main").unwrap(), second);
    // Fetching again without a new commit gives the same commit.
    assert_eq!(mirror.fetch(&url, "main").unwrap(), second);

    let old = tmp.path().join("old");
    mirror.checkout(&url, &first, &old).unwrap();
    assert_eq!(std::fs::read(old.join("a.txt")).unwrap(), b"one\n");
    assert!(!old.join("b.txt").exists());
    let new = tmp.path().join("new");
    mirror.checkout(&url, &second, &new).unwrap();
    assert_eq!(std::fs::read(new.join("a.txt")).unwrap(), b"two\n");
    assert_eq!(std::fs::read(new.join("b.txt")).unwrap(), b"new\n");
}

#[test]
fn branches_are_fetched_independently() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo.git");
    let url = repo.to_str().unwrap();
    let main = commit(&repo, "main", &[file("a", b"main")], 1_600_000_000);
    let dev = commit(&repo, "dev", &[file("a", b"dev")], 1_600_000_000);
    let mirror = GitMirror::new(tmp.path().join("mirrors"));
    assert_eq!(mirror.fetch(url, "dev").unwrap(), dev);
    assert_eq!(mirror.fetch(url, "main").unwrap(), main);
}

#[test]
fn a_missing_branch_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo.git");
    commit(&repo, "main", &[file("a.txt", b"one\n")], 1_600_000_000);
    let mirror = GitMirror::new(tmp.path().join("mirrors"));
    let url = format!("file://{}", repo.display());
    let err = mirror.fetch(&url, "release").unwrap_err();
    assert!(
        matches!(&err, GitError::BranchNotFound { branch, .. } if branch == "release"),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("\"release\" does not exist"),
        "{err}"
    );
}

#[test]
fn a_deleted_branch_is_reported_missing_rather_than_stale() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo.git");
    commit(&repo, "main", &[file("a", b"1")], 1_600_000_000);
    commit(&repo, "topic", &[file("a", b"2")], 1_600_000_000);
    let mirror = GitMirror::new(tmp.path().join("mirrors"));
    let url = repo.to_str().unwrap();
    mirror.fetch(url, "topic").unwrap();
    git2::Repository::open_bare(&repo)
        .unwrap()
        .find_reference("refs/heads/topic")
        .unwrap()
        .delete()
        .unwrap();
    assert!(matches!(
        mirror.fetch(url, "topic"),
        Err(GitError::BranchNotFound { .. })
    ));
}

#[test]
fn invalid_branch_names_and_unreachable_repositories_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = GitMirror::new(tmp.path().join("mirrors"));
    assert!(matches!(
        mirror.fetch("/nonexistent", "a..b"),
        Err(GitError::InvalidBranch(_))
    ));
    let missing = tmp.path().join("no-such-repo");
    let err = mirror.fetch(missing.to_str().unwrap(), "main").unwrap_err();
    assert!(matches!(err, GitError::Git { .. }), "{err:?}");
}

#[test]
fn checkout_keeps_modes_links_and_nesting_and_dates_files_at_the_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo.git");
    let time = 1_650_000_000;
    let id = commit(
        &repo,
        "main",
        &[
            file("README", b"read me\n"),
            executable("bin/run.sh", b"#!/bin/sh\necho run\n"),
            file("src/deep/nested/file.nix", b"{ }\n"),
            link("latest", "src/deep"),
        ],
        time,
    );
    let mirror = GitMirror::new(tmp.path().join("mirrors"));
    let url = repo.to_str().unwrap();
    mirror.fetch(url, "main").unwrap();
    let dest = tmp.path().join("checkout");
    mirror.checkout(url, &id, &dest).unwrap();

    assert_eq!(std::fs::read(dest.join("README")).unwrap(), b"read me\n");
    let run = std::fs::metadata(dest.join("bin/run.sh")).unwrap();
    assert_eq!(run.permissions().mode() & 0o777, 0o755);
    let readme = std::fs::metadata(dest.join("README")).unwrap();
    assert_eq!(readme.permissions().mode() & 0o777, 0o644);
    assert_eq!(
        std::fs::read(dest.join("src/deep/nested/file.nix")).unwrap(),
        b"{ }\n"
    );
    assert_eq!(
        std::fs::read_link(dest.join("latest")).unwrap().to_str(),
        Some("src/deep")
    );
    assert!(!dest.join(".git").exists());
    for path in [
        "README",
        "bin",
        "bin/run.sh",
        "src/deep/nested",
        "latest",
        "",
    ] {
        let meta = std::fs::symlink_metadata(dest.join(path)).unwrap();
        let mtime = meta
            .modified()
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert_eq!(mtime, time as u64, "{path}");
    }
}

#[test]
fn checkout_refuses_unknown_commits_and_non_empty_destinations() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo.git");
    let id = commit(&repo, "main", &[file("a", b"1")], 1_600_000_000);
    let mirror = GitMirror::new(tmp.path().join("mirrors"));
    let url = repo.to_str().unwrap();

    let dest = tmp.path().join("out");
    assert!(matches!(
        mirror.checkout(url, &id, &dest),
        Err(GitError::NotMirrored { .. })
    ));
    mirror.fetch(url, "main").unwrap();
    assert!(matches!(
        mirror.checkout(url, &"0".repeat(40), &dest),
        Err(GitError::CommitNotFound { .. })
    ));
    assert!(matches!(
        mirror.checkout(url, "not-a-commit", &dest),
        Err(GitError::InvalidCommit(_))
    ));
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::write(dest.join("existing"), b"x").unwrap();
    assert!(matches!(
        mirror.checkout(url, &id, &dest),
        Err(GitError::DestinationNotEmpty(_))
    ));
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    mirror.checkout(url, &id, &empty).unwrap();
    assert_eq!(std::fs::read(empty.join("a")).unwrap(), b"1");
}

#[test]
fn https_urls_reach_the_network_layer() {
    // Nothing listens on port 1: the point is that libgit2 was built with HTTPS, so the
    // failure is a connection error, not an unsupported protocol.
    let tmp = tempfile::tempdir().unwrap();
    let mirror = GitMirror::new(tmp.path().join("mirrors"));
    let err = mirror
        .fetch("https://127.0.0.1:1/repo.git", "main")
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, GitError::Git { .. }), "{err:?}");
    assert!(!text.contains("unsupported URL protocol"), "{text}");
}
