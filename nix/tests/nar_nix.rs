//! NAR packing, hashing and unpacking compared with the real Nix on generated trees.
//!
//! For every tree: Kiln's pack must equal `nix-store --dump` byte for byte, Kiln's hash must equal
//! `nix hash path`, Kiln's unpack of Nix's dump must equal `nix-store --restore` of it (file types,
//! contents, permission bits, symlink targets), and Nix must restore Kiln's pack to the original.

// The shared helpers trip this lint; they are not this file's to change.
mod support;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kiln_nix::Hash;
use kiln_nix::hash::Sha256Counter;
use kiln_nix::nar::{self, DumpError, UnpackError};
use support::nix_ok;

/// What a node of a tree is, for comparing trees.
#[derive(Debug, PartialEq, Eq)]
enum Node {
    Dir { mode: u32 },
    File { mode: u32, len: u64, sha256: Hash },
    Symlink { target: Vec<u8> },
}

/// Every node under `root` (included, as the empty path), keyed by path relative to `root`.
/// Permission bits are kept whole if `full_mode`, otherwise reduced to the owner's execute bit
/// of files (what a NAR records) and dropped for directories.
fn listing(root: &Path, full_mode: bool) -> BTreeMap<Vec<u8>, Node> {
    let mut out = BTreeMap::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        // `root.join("")` would add a trailing slash, which a file or symlink root cannot take.
        let path = if rel.as_os_str().is_empty() {
            root.to_owned()
        } else {
            root.join(&rel)
        };
        let meta = fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o7777;
        let node = if meta.file_type().is_symlink() {
            Node::Symlink {
                target: fs::read_link(&path).unwrap().into_os_string().into_vec(),
            }
        } else if meta.is_dir() {
            for entry in fs::read_dir(&path).unwrap() {
                todo.push(rel.join(entry.unwrap().file_name()));
            }
            Node::Dir {
                mode: if full_mode { mode } else { 0 },
            }
        } else {
            let mut hasher = Sha256Counter::new();
            io::copy(&mut File::open(&path).unwrap(), &mut hasher).unwrap();
            let (sha256, len) = hasher.finish();
            Node::File {
                mode: if full_mode { mode } else { mode & 0o100 },
                len,
                sha256,
            }
        };
        out.insert(rel.into_os_string().into_vec(), node);
    }
    out
}

/// Fails naming the first path where two listings differ.
fn assert_same_tree(left: &BTreeMap<Vec<u8>, Node>, right: &BTreeMap<Vec<u8>, Node>, what: &str) {
    let keys: std::collections::BTreeSet<_> = left.keys().chain(right.keys()).collect();
    for key in keys {
        let (l, r) = (left.get(key), right.get(key));
        assert!(
            l == r,
            "{what}: at {:?}: {l:?} vs {r:?}",
            key.escape_ascii().to_string()
        );
    }
}

/// Fails with the first differing offset instead of printing megabytes.
fn assert_same_bytes(kiln: &[u8], nix: &[u8], what: &str) {
    if kiln != nix {
        let first = kiln
            .iter()
            .zip(nix)
            .position(|(a, b)| a != b)
            .unwrap_or(kiln.len().min(nix.len()));
        panic!(
            "{what}: Kiln wrote {} bytes, Nix {}; first difference at byte {first}",
            kiln.len(),
            nix.len()
        );
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

fn nix_dump(path: &Path) -> Vec<u8> {
    nix_ok("nix-store", &["--dump"], &[path_str(path)])
}

fn nix_hash(path: &Path) -> String {
    let out = nix_ok(
        "nix",
        &["hash", "path"],
        &["--type", "sha256", "--base32", path_str(path)],
    );
    format!("sha256:{}", String::from_utf8(out).unwrap().trim())
}

fn nix_restore(nar_bytes: &[u8], target: &Path) {
    let mut child = Command::new("nix-store")
        .args([
            "--restore",
            "--option",
            "substituters",
            "",
            path_str(target),
        ])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run nix-store");
    child.stdin.take().unwrap().write_all(nar_bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nix-store --restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The whole differential check for the tree at `source`; `work` is an empty scratch directory.
fn check_against_nix(source: &Path, work: &Path) {
    let nix_nar = nix_dump(source);

    let mut kiln_nar = Vec::new();
    let size = nar::dump_path(source, &mut kiln_nar).unwrap();
    assert_same_bytes(&kiln_nar, &nix_nar, "pack");
    assert_eq!(size, nix_nar.len() as u64);

    let (hash, hashed_size) = nar::hash_path(source).unwrap();
    assert_eq!(
        hash.to_string(),
        nix_hash(source),
        "hash of {}",
        source.display()
    );
    assert_eq!(hashed_size, nix_nar.len() as u64);
    assert_eq!(
        nar::validate(nix_nar.as_slice()).unwrap(),
        (hash.clone(), hashed_size)
    );

    let by_kiln = work.join("unpacked-by-kiln");
    let by_nix = work.join("restored-by-nix");
    let kiln_pack_by_nix = work.join("kiln-pack-restored-by-nix");
    assert_eq!(
        nar::unpack(nix_nar.as_slice(), &by_kiln).unwrap(),
        (hash, hashed_size)
    );
    nix_restore(&nix_nar, &by_nix);
    nix_restore(&kiln_nar, &kiln_pack_by_nix);

    assert_same_tree(
        &listing(&by_kiln, true),
        &listing(&by_nix, true),
        "Kiln's unpack differs from Nix's restore",
    );
    let original = listing(source, false);
    assert_same_tree(
        &listing(&by_kiln, false),
        &original,
        "Kiln's unpack vs the source",
    );
    assert_same_tree(
        &listing(&kiln_pack_by_nix, false),
        &original,
        "Nix's restore of Kiln's pack vs the source",
    );
}

fn write_file(path: &Path, contents: &[u8], mode: u32) {
    fs::write(path, contents).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Names that sort differently bytewise than case-insensitively or by Unicode collation, plus
/// spaces, a newline, a non-UTF-8 byte and names that are prefixes of each other.
const EDGE_NAMES: &[&[u8]] = &[
    b"a",
    b"a.b",
    b"a-b",
    b"a b",
    b"ab",
    b"B",
    b"Z",
    b"_",
    b"\xc3\xa4",
    b"z",
    b"\xe2\x82\xac",
    b"\xff",
    b".hidden",
    b"..dots",
    b"new\nline",
    b"\xf0\x9f\xa6\x80 crab",
    b"1",
    b"10",
    b"9",
];

/// Regular files (plain, executable for the owner only, executable for all, empty, empty and
/// executable), symlinks (relative, absolute, dangling, to a directory, to `..`), nested and empty
/// directories, and entries under every edge-case name.
fn mixed_tree(root: &Path) {
    fs::create_dir(root).unwrap();
    write_file(&root.join("plain"), b"hello\n", 0o644);
    write_file(&root.join("owner-exec"), b"#!/bin/sh\necho hi\n", 0o744);
    write_file(&root.join("all-exec"), b"\x7fELF", 0o755);
    write_file(&root.join("group-exec-only"), b"x", 0o654);
    write_file(&root.join("empty"), b"", 0o600);
    write_file(&root.join("empty-exec"), b"", 0o700);
    write_file(&root.join("eight bytes"), b"12345678", 0o644);
    symlink("plain", root.join("rel-link")).unwrap();
    symlink(
        "/nix/store/00000000000000000000000000000000-absent",
        root.join("abs-link"),
    )
    .unwrap();
    symlink("does/not/exist", root.join("dangling")).unwrap();
    symlink("nested", root.join("dir-link")).unwrap();
    symlink("..", root.join("dotdot-link")).unwrap();
    fs::create_dir_all(root.join("nested/deeper/deepest")).unwrap();
    write_file(&root.join("nested/deeper/deepest/leaf"), b"leaf", 0o644);
    write_file(&root.join("nested/sibling"), b"sibling", 0o755);
    fs::create_dir(root.join("empty-dir")).unwrap();
    fs::create_dir(root.join("names")).unwrap();
    for (i, name) in EDGE_NAMES.iter().enumerate() {
        let path = root.join("names").join(OsStr::from_bytes(name));
        write_file(&path, format!("file {i}\n").as_bytes(), 0o644);
        let dir = root.join("nested").join(OsStr::from_bytes(name));
        fs::create_dir(&dir).unwrap();
        symlink(OsStr::from_bytes(name), dir.join(OsStr::from_bytes(name))).unwrap();
    }
}

#[test]
fn mixed_tree_matches_nix() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("source");
    mixed_tree(&source);
    check_against_nix(&source, tmp.path());
}

#[test]
fn single_file_roots_match_nix() {
    for (name, contents, mode) in [
        ("plain", &b"contents\n"[..], 0o644),
        ("executable", b"#!/bin/sh\n", 0o755),
        ("empty", b"", 0o644),
        ("empty-executable", b"", 0o711),
        ("padding-free", b"0123456789abcdef", 0o644),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let source = tmp.path().join(name);
        write_file(&source, contents, mode);
        check_against_nix(&source, tmp.path());
    }
}

#[test]
fn symlink_roots_are_archived_as_symlinks_like_nix() {
    for target in [
        "relative/target",
        "/absolute/target",
        "dangling",
        "..",
        "x y",
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let source = tmp.path().join("link");
        symlink(target, &source).unwrap();
        check_against_nix(&source, tmp.path());
    }
    // A symlink to a directory is archived as the symlink, not the directory.
    let tmp = tempfile::tempdir().unwrap();
    mixed_tree(&tmp.path().join("real"));
    let source = tmp.path().join("link");
    symlink("real", &source).unwrap();
    check_against_nix(&source, tmp.path());
}

#[test]
fn empty_directory_root_matches_nix() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("empty");
    fs::create_dir(&source).unwrap();
    check_against_nix(&source, tmp.path());
}

#[test]
fn tree_sixty_levels_deep_matches_nix() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("deep");
    let mut dir = source.clone();
    for level in 0..60 {
        dir.push(format!("d{level}"));
    }
    fs::create_dir_all(&dir).unwrap();
    write_file(&dir.join("bottom"), b"bottom\n", 0o755);
    write_file(&source.join("d0/top"), b"top\n", 0o644);
    check_against_nix(&source, tmp.path());
}

/// 50 MiB plus 3 bytes of non-repeating data, so that any buffer boundary mistake changes the
/// bytes and the final padding is exercised.
#[test]
fn fifty_mebibyte_file_matches_nix() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("big");
    fs::create_dir(&source).unwrap();
    let mut file = io::BufWriter::new(File::create(source.join("blob")).unwrap());
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut remaining = 50 * 1024 * 1024 + 3;
    while remaining > 0 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let bytes = state.to_le_bytes();
        let n = remaining.min(8);
        file.write_all(&bytes[..n]).unwrap();
        remaining -= n;
    }
    file.into_inner().unwrap().sync_all().unwrap();
    write_file(&source.join("small"), b"small", 0o755);
    check_against_nix(&source, tmp.path());
}

#[test]
fn pack_refuses_fifos_and_sockets_naming_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("tree");
    fs::create_dir_all(source.join("sub")).unwrap();
    write_file(&source.join("a-file"), b"x", 0o644);
    support::run_ok("mkfifo", &[path_str(&source.join("sub/fifo"))]);
    let err = nar::dump_path(&source, io::sink()).unwrap_err();
    match &err {
        DumpError::UnsupportedType { path, kind } => {
            assert_eq!(path, &source.join("sub/fifo"));
            assert_eq!(*kind, "FIFO");
        }
        other => panic!("expected UnsupportedType, got {other:?}"),
    }
    assert!(err.to_string().contains("sub/fifo"), "{err}");

    fs::remove_file(source.join("sub/fifo")).unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(source.join("sub/socket")).unwrap();
    let err = nar::hash_path(&source).unwrap_err();
    assert!(
        matches!(&err, DumpError::UnsupportedType { path, kind: "socket" }
            if path == &source.join("sub/socket")),
        "{err:?}"
    );

    // A FIFO as the root is refused without being opened (opening it would block).
    let fifo = tmp.path().join("root-fifo");
    support::run_ok("mkfifo", &[path_str(&fifo)]);
    assert!(matches!(
        nar::hash_path(&fifo),
        Err(DumpError::UnsupportedType { kind: "FIFO", .. })
    ));
}

#[test]
fn pack_of_a_missing_path_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    let err = nar::dump_path(&missing, io::sink()).unwrap_err();
    assert!(matches!(&err, DumpError::Read { path, source }
            if path == &missing && source.kind() == io::ErrorKind::NotFound));
    assert_eq!(
        err.to_string(),
        format!("cannot read {}", missing.display())
    );
}

#[test]
fn unpack_refuses_an_existing_target_without_reading_input() {
    struct NoRead;
    impl io::Read for NoRead {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            panic!("the input was read although the target exists");
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let empty_dir = tmp.path().join("empty-dir");
    fs::create_dir(&empty_dir).unwrap();
    let link = tmp.path().join("link-to-outside");
    symlink(&outside, &link).unwrap();
    let dangling = tmp.path().join("dangling");
    symlink("nowhere", &dangling).unwrap();
    for target in [&empty_dir, &link, &dangling] {
        let err = nar::unpack(NoRead, target).unwrap_err();
        assert!(
            matches!(&err, UnpackError::TargetExists { path } if path == target),
            "{err:?}"
        );
    }
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
}

#[test]
fn unpack_refuses_targets_without_a_file_name() {
    let tmp = tempfile::tempdir().unwrap();
    for target in [PathBuf::from("/"), tmp.path().join("..")] {
        let err = nar::unpack(&[][..], &target).unwrap_err();
        assert!(
            matches!(err, UnpackError::InvalidTarget { .. }),
            "{target:?}: {err:?}"
        );
    }
}

#[test]
fn unpack_into_a_missing_parent_names_the_parent() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = tmp.path().join("no-such-dir");
    let err = nar::unpack(&[][..], &parent.join("target")).unwrap_err();
    assert!(
        matches!(&err, UnpackError::Parent { path, .. } if path == &parent),
        "{err:?}"
    );
}

#[test]
fn unpack_of_a_relative_target_works_in_the_current_directory() {
    // `nar::unpack` resolves a bare name against the current directory; the test process's
    // current directory is the package root, so use a path relative to a temporary directory
    // through its parent instead of changing the directory of a multi-threaded process.
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("f");
    write_file(&source, b"x", 0o644);
    let mut nar_bytes = Vec::new();
    nar::dump_path(&source, &mut nar_bytes).unwrap();
    let cwd = std::env::current_dir().unwrap();
    let relative = pathdiff(&tmp.path().join("restored"), &cwd);
    nar::unpack(nar_bytes.as_slice(), &relative).unwrap();
    assert_eq!(fs::read(tmp.path().join("restored")).unwrap(), b"x");
}

/// `target` relative to `base` (both absolute), through `..` components.
fn pathdiff(target: &Path, base: &Path) -> PathBuf {
    let common = target
        .components()
        .zip(base.components())
        .take_while(|(a, b)| a == b)
        .count();
    let mut out = PathBuf::new();
    for _ in base.components().skip(common) {
        out.push("..");
    }
    for c in target.components().skip(common) {
        out.push(c);
    }
    out
}
