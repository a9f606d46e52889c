//! `kiln nar pack|unpack|hash`, run as the built binary and compared with Nix's own tools.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn kiln(args: &[&str], stdin: &[u8]) -> Output {
    run(env!("CARGO_BIN_EXE_kiln"), args, stdin)
}

fn run(program: &str, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    // The program may exit before reading all of its input; that is its answer, not ours.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    child.wait_with_output().unwrap()
}

fn ok(out: Output, what: &str) -> Vec<u8> {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn nix_dump(path: &Path) -> Vec<u8> {
    let out = run(
        "nix-store",
        &["--dump", "--option", "substituters", "", p(path)],
        b"",
    );
    ok(out, "nix-store --dump")
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A small tree with an executable, an empty file, symlinks, a nested and an empty directory.
fn sample_tree(root: &Path) {
    fs::create_dir_all(root.join("sub/empty")).unwrap();
    fs::write(root.join("hello"), b"hello\n").unwrap();
    fs::write(root.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(root.join("sub/empty file"), b"").unwrap();
    fs::write(root.join("sub/Ünïcode"), b"\xff\x00binary").unwrap();
    symlink("../hello", root.join("sub/link")).unwrap();
    symlink("/nix/store/absent", root.join("abs")).unwrap();
}

#[test]
fn pack_writes_what_nix_store_dump_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    sample_tree(&tree);
    let packed = ok(kiln(&["nar", "pack", p(&tree)], b""), "kiln nar pack");
    assert!(
        packed == nix_dump(&tree),
        "kiln nar pack differs from nix-store --dump"
    );
    let file = tree.join("run.sh");
    assert!(ok(kiln(&["nar", "pack", p(&file)], b""), "kiln nar pack") == nix_dump(&file));
}

#[test]
fn unpack_restores_what_nix_dumped() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    sample_tree(&tree);
    let nar = nix_dump(&tree);
    let restored = tmp.path().join("restored");
    let out = kiln(&["nar", "unpack", p(&restored)], &nar);
    assert!(ok(out, "kiln nar unpack").is_empty());
    assert!(
        nix_dump(&restored) == nar,
        "the unpacked tree does not dump to the same NAR"
    );
    let mode = fs::metadata(restored.join("run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111);
}

#[test]
fn hash_prints_the_nar_hash_nix_computes() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    sample_tree(&tree);
    for path in [tree.clone(), tree.join("hello"), tree.join("abs")] {
        let nix = run(
            "nix",
            &[
                "hash",
                "path",
                "--extra-experimental-features",
                "nix-command",
                "--option",
                "substituters",
                "",
                "--type",
                "sha256",
                "--base32",
                p(&path),
            ],
            b"",
        );
        let nix = String::from_utf8(ok(nix, "nix hash path")).unwrap();
        let kiln =
            String::from_utf8(ok(kiln(&["nar", "hash", p(&path)], b""), "kiln nar hash")).unwrap();
        assert_eq!(
            kiln,
            format!("sha256:{}\n", nix.trim()),
            "{}",
            path.display()
        );
    }
}

fn assert_fails_with(out: Output, needles: &[&str]) {
    assert!(!out.status.success(), "expected failure, got success");
    assert!(
        out.stdout.is_empty(),
        "nothing may reach stdout on this error"
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.starts_with("kiln: error: "), "{stderr}");
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "stderr {stderr:?} does not mention {needle:?}"
        );
    }
}

#[test]
fn missing_paths_are_errors_naming_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    assert_fails_with(
        kiln(&["nar", "pack", p(&missing)], b""),
        &[p(&missing), "No such file"],
    );
    assert_fails_with(
        kiln(&["nar", "hash", p(&missing)], b""),
        &[p(&missing), "No such file"],
    );
}

#[test]
fn unsupported_file_types_are_errors_naming_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    assert_fails_with(
        kiln(&["nar", "hash", p(&socket)], b""),
        &[p(&socket), "socket"],
    );
}

#[test]
fn hostile_input_is_refused_with_the_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    sample_tree(&tree);
    let mut nar = nix_dump(&tree);
    nar.extend_from_slice(b"trailing");
    let target = tmp.path().join("target");
    let offset = nar.len() - 8;
    assert_fails_with(
        kiln(&["nar", "unpack", p(&target)], &nar),
        &[
            &format!("invalid NAR at byte {offset}"),
            "bytes follow the end of the archive",
        ],
    );

    let evil = nar_strings(&[
        b"nix-archive-1",
        b"(",
        b"type",
        b"directory",
        b"entry",
        b"(",
        b"name",
        b"..",
        b"node",
    ]);
    let target = tmp.path().join("target2");
    assert_fails_with(
        kiln(&["nar", "unpack", p(&target)], &evil),
        &["invalid entry name \"..\""],
    );
    assert!(
        fs::read_dir(&target).unwrap().next().is_none(),
        "nothing may be unpacked"
    );
}

#[test]
fn unpack_refuses_an_existing_target() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    sample_tree(&tree);
    let nar = nix_dump(&tree);
    assert_fails_with(
        kiln(&["nar", "unpack", p(&tree)], &nar),
        &[p(&tree), "already exists"],
    );
}

fn nar_strings(strings: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in strings {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s);
        out.resize(out.len().next_multiple_of(8), 0);
    }
    out
}
