//! Hostile NARs: each is generated here, refused with the exact error kind and offset, unpacks
//! nothing outside its target, and is kept as a file under `tests/hostile/nar/` to seed fuzzing.
//!
//! Run with `KILN_BLESS_HOSTILE_NARS=1` to rewrite the corpus files after changing a case; without
//! it the test checks that the files on disk are exactly what the generators produce.

use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kiln_nix::nar::{
    self, ByteString, NameProblem, NarError, NarErrorKind, NarLimits, NarReadError, TargetProblem,
    UnpackError,
};

/// Builds archives string by string, remembering where the offending item starts.
#[derive(Default, Clone)]
struct Builder {
    bytes: Vec<u8>,
    mark: Option<u64>,
}

impl Builder {
    /// Starts with the magic.
    fn archive() -> Builder {
        Builder::default().s(b"nix-archive-1")
    }

    /// A string: length, bytes, zero padding.
    fn s(mut self, s: &[u8]) -> Builder {
        self.bytes
            .extend_from_slice(&(s.len() as u64).to_le_bytes());
        self.bytes.extend_from_slice(s);
        self.bytes.resize(self.bytes.len().next_multiple_of(8), 0);
        self
    }

    fn ss(self, strings: &[&[u8]]) -> Builder {
        strings.iter().fold(self, |b, s| b.s(s))
    }

    /// Raw bytes, for lengths without their string.
    fn raw(mut self, bytes: &[u8]) -> Builder {
        self.bytes.extend_from_slice(bytes);
        self
    }

    /// Records the current offset as where the error must be reported.
    fn mark(mut self) -> Builder {
        self.mark = Some(self.bytes.len() as u64);
        self
    }

    /// Overwrites the byte at `offset` and marks it.
    fn poke(mut self, offset: u64, byte: u8) -> Builder {
        self.bytes[offset as usize] = byte;
        self.mark = Some(offset);
        self
    }

    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn open_dir(self) -> Builder {
        self.ss(&[b"(", b"type", b"directory"])
    }

    /// The start of a directory entry, up to its node.
    fn entry(self, name: &[u8]) -> Builder {
        self.ss(&[b"entry", b"(", b"name", name, b"node"])
    }

    /// [`entry`](Self::entry), marking the name.
    fn entry_marked(self, name: &[u8]) -> Builder {
        self.ss(&[b"entry", b"(", b"name"])
            .mark()
            .ss(&[name, b"node"])
    }

    /// A whole regular file node.
    fn regular(self, contents: &[u8]) -> Builder {
        self.ss(&[b"(", b"type", b"regular", b"contents", contents, b")"])
    }

    /// A whole symlink node.
    fn symlink(self, target: &[u8]) -> Builder {
        self.ss(&[b"(", b"type", b"symlink", b"target", target, b")"])
    }

    /// Closes a node or an entry.
    fn close(self) -> Builder {
        self.s(b")")
    }
}

fn bytes(s: &[u8]) -> ByteString {
    ByteString(s.to_vec())
}

/// One hostile archive and how it must be refused.
struct Case {
    /// File name in the corpus, without `.nar`.
    name: &'static str,
    nar: Vec<u8>,
    /// Where the error is: the builder's mark, or the end of the input if nothing is marked.
    offset: u64,
    kind: NarErrorKind,
    /// Whether `nix-store --restore` (2.8) refuses it too. Where it does not, Kiln is stricter
    /// on purpose; the case says why. (Where Nix refuses, its reason may differ: it fails on a
    /// duplicate only when creating the file, and on huge lengths by running out of memory.)
    nix_refuses: bool,
}

fn case(name: &'static str, b: Builder, kind: NarErrorKind, nix_refuses: bool) -> Case {
    let offset = b.mark.unwrap_or(b.len());
    Case {
        name,
        nar: b.bytes,
        offset,
        kind,
        nix_refuses,
    }
}

/// A directory whose single entry, a file, has the name `name`, marked.
fn dir_with_name(name: &[u8]) -> Builder {
    Builder::archive()
        .open_dir()
        .entry_marked(name)
        .regular(b"pwned")
        .close()
        .close()
}

fn unexpected(expected: &'static str, found: &[u8]) -> NarErrorKind {
    NarErrorKind::UnexpectedToken {
        expected,
        found: bytes(found),
    }
}

/// Every hostile case. Each comment says what the archive tries.
#[rustfmt::skip]
fn cases() -> Vec<Case> {
    use NarErrorKind::*;
    let a = Builder::archive;
    let huge = |n: u64| n.to_le_bytes();
    let truncated = |expected| Truncated { expected };
    let name = |name: &[u8], problem| InvalidName { name: bytes(name), problem };
    let unsorted = |previous: &[u8], name: &[u8]| UnsortedEntry { previous: bytes(previous), name: bytes(name) };
    let mut cases = vec![
        // Framing and magic.
        // Nothing at all.
        case("empty", Builder::default(), truncated("the \"nix-archive-1\" magic"), true),
        // A different archive version.
        case("bad-magic", Builder::default().mark().s(b"nix-archive-2").regular(b""), BadMagic, true),
        // A magic whose length field claims 2^63 bytes: refused before anything is allocated.
        case("magic-length-huge", Builder::default().mark().raw(&huge(1 << 63)).raw(b"nix-archive-1"), BadMagic, true),
        // The magic and nothing else.
        case("magic-only", a(), truncated("\"(\""), true),
        // Input ending in the middle of a length field.
        case("truncated-length-field", a().raw(&[1, 0, 0, 0]), truncated("\"(\""), true),

        // Tokens.
        // A misspelt keyword where "type" must be.
        case("unexpected-keyword", a().s(b"(").mark().ss(&[b"kind", b"regular"]), unexpected("\"type\"", b"kind"), true),
        // A keyword whose string claims 2^40 bytes (Nix runs out of memory trying to read it).
        case("keyword-length-huge", a().mark().raw(&huge(1 << 40)), OversizedToken { expected: "\"(\"", len: 1 << 40 }, true),
        // A node type NAR does not have.
        case("unknown-node-type", a().ss(&[b"(", b"type"]).mark().ss(&[b"fifo", b")"]), UnknownNodeType { found: bytes(b"fifo") }, true),
        // The executable marker must be followed by the empty string.
        case(
            "executable-marker-not-empty",
            a().ss(&[b"(", b"type", b"regular", b"executable"]).mark().ss(&[b"yes", b"contents", b"x", b")"]),
            unexpected("the empty string after \"executable\"", b"yes"),
            true,
        ),
        // `executable` after `contents`: Nix's parser takes the fields in any order, but Nix never
        // writes this, and accepting it would give one tree two NAR hashes.
        case(
            "executable-after-contents",
            a().ss(&[b"(", b"type", b"regular", b"contents", b"#!/bin/sh\n"]).mark().ss(&[b"executable", b"", b")"]),
            unexpected("\")\"", b"executable"),
            false,
        ),
        // Two `contents` fields: Nix writes both into the file, Kiln refuses the second.
        case(
            "contents-twice",
            a().ss(&[b"(", b"type", b"regular", b"contents", b"first"]).mark().ss(&[b"contents", b"second", b")"]),
            unexpected("\")\"", b"contents"),
            false,
        ),
        // A directory entry missing its `node` keyword.
        case(
            "entry-without-node-keyword",
            a().open_dir().ss(&[b"entry", b"(", b"name", b"a"]).mark().regular(b"").close().close(),
            unexpected("\"node\"", b"("),
            true,
        ),
        // An entry that is not closed before the next one starts.
        case(
            "entry-not-closed",
            a().open_dir().entry(b"a").regular(b"").mark().entry(b"b").regular(b"").close().close(),
            unexpected("\")\"", b"entry"),
            true,
        ),

        // Padding.
        // A padding byte after the keyword "type" (at 40 + 8 + 4) is not zero.
        case("nonzero-padding-in-keyword", a().s(b"(").regular(b"").poke(52, 0x2f), NonZeroPadding { byte: 0x2f }, true),
        // The padding after the five bytes of file contents (at 96 + 5 + 2) hides a byte.
        case("nonzero-padding-after-contents", a().regular(b"12345").poke(103, 1), NonZeroPadding { byte: 1 }, true),

        // Lengths and truncation.
        // Contents declared as 1000 bytes, 10 present.
        case(
            "contents-truncated",
            a().ss(&[b"(", b"type", b"regular", b"contents"]).raw(&huge(1000)).raw(b"0123456789"),
            truncated("file contents"),
            true,
        ),
        // Contents declared as 2^64 - 1 bytes: streamed, so it costs nothing until the input ends.
        case(
            "contents-length-huge",
            a().ss(&[b"(", b"type", b"regular", b"contents"]).raw(&huge(u64::MAX)).raw(b"tiny"),
            truncated("file contents"),
            true,
        ),
        // A complete file node whose closing parenthesis is missing.
        case("missing-close-paren", a().ss(&[b"(", b"type", b"regular", b"contents", b"x"]), truncated("\")\""), true),
        // A directory that is never closed.
        case("directory-not-closed", a().open_dir().entry(b"a").regular(b"a").close(), truncated("\"entry\" or \")\""), true),

        // Trailing bytes: Nix stops reading at the end of the archive and ignores them.
        // Garbage after a complete archive.
        case("trailing-garbage", a().regular(b"x").mark().raw(b"garbage!"), TrailingData, false),
        // A second archive after the first.
        case("two-archives", a().regular(b"x").mark().raw(&a().regular(b"y").bytes), TrailingData, false),
        // A root symlink to a directory outside, then what would be entries "through" it.
        case(
            "root-symlink-then-entries",
            a().symlink(b"../outside").mark().entry(b"pwned").regular(b"pwned").close(),
            TrailingData,
            false,
        ),

        // Entry order. Nix 2.8's restore does not check the order at all (it only fails on a
        // duplicate because the file exists), but its dumper never writes unsorted entries, and
        // one tree must have one NAR.
        // "b" before "a".
        case(
            "unsorted-entries",
            a().open_dir().entry(b"b").regular(b"").close().entry_marked(b"a").regular(b"").close().close(),
            unsorted(b"b", b"a"),
            false,
        ),
        // Sorted case-insensitively ("a" < "B"), not bytewise ("B" < "a").
        case(
            "unsorted-case-insensitive",
            a().open_dir().entry(b"a").regular(b"").close().entry_marked(b"B").regular(b"").close().close(),
            unsorted(b"a", b"B"),
            false,
        ),
        // Sorted by collation ("ä" < "z"), not bytewise (0xc3 > 'z').
        case(
            "unsorted-unicode",
            a().open_dir().entry("ä".as_bytes()).regular(b"").close().entry_marked(b"z").regular(b"").close().close(),
            unsorted("ä".as_bytes(), b"z"),
            false,
        ),
        // The same name twice: the second would overwrite the first.
        case(
            "duplicate-entries",
            a().open_dir().entry(b"a").regular(b"1").close().entry_marked(b"a").regular(b"2").close().close(),
            DuplicateEntry { name: bytes(b"a") },
            true,
        ),
        // A symlink "x" to a directory outside, then a directory "x" with a file: writing the
        // file would go through the symlink.
        case(
            "symlink-then-write-through",
            a().open_dir()
                .entry(b"x").symlink(b"../outside").close()
                .entry_marked(b"x").open_dir().entry(b"pwned").regular(b"pwned").close().close().close()
                .close(),
            DuplicateEntry { name: bytes(b"x") },
            true,
        ),
        // The same through an absolute symlink and a path-shaped name.
        case(
            "symlink-then-path-name",
            a().open_dir().entry(b"x").symlink(b"/tmp").close().entry_marked(b"x/pwned").regular(b"pwned").close().close(),
            name(b"x/pwned", NameProblem::Slash),
            true,
        ),

        // Entry names.
        case("name-dotdot", dir_with_name(b".."), name(b"..", NameProblem::DotDot), true),
        case("name-dot", dir_with_name(b"."), name(b".", NameProblem::Dot), true),
        case("name-empty", dir_with_name(b""), name(b"", NameProblem::Empty), true),
        case("name-absolute-path", dir_with_name(b"/etc/passwd"), name(b"/etc/passwd", NameProblem::Slash), true),
        case("name-parent-path", dir_with_name(b"../outside/pwned"), name(b"../outside/pwned", NameProblem::Slash), true),
        case("name-nul", dir_with_name(b"a\0b"), name(b"a\0b", NameProblem::Nul), true),
        // 256 bytes: no Linux file system can hold the name (Nix fails creating it).
        case("name-too-long", dir_with_name(&[b'n'; 256]), NameTooLong { len: 256, max: 255 }, true),
        // A name claiming 2^62 bytes, refused before any of it is read or allocated.
        case(
            "name-length-huge",
            a().open_dir().ss(&[b"entry", b"(", b"name"]).mark().raw(&huge(1 << 62)).raw(b"short"),
            NameTooLong { len: 1 << 62, max: 255 },
            true,
        ),

        // Symlink targets.
        // A target claiming 2^62 bytes.
        case(
            "target-length-huge",
            a().ss(&[b"(", b"type", b"symlink", b"target"]).mark().raw(&huge(1 << 62)),
            TargetTooLong { len: 1 << 62, max: 4095 },
            true,
        ),
        // An empty target, which no symlink can have.
        case(
            "target-empty",
            a().ss(&[b"(", b"type", b"symlink", b"target"]).mark().ss(&[b"", b")"]),
            InvalidTarget { problem: TargetProblem::Empty },
            true,
        ),
        // A target with a NUL byte: Nix silently creates a link to the part before it.
        case(
            "target-nul",
            a().ss(&[b"(", b"type", b"symlink", b"target"]).mark().ss(&[b"/etc\0x", b")"]),
            InvalidTarget { problem: TargetProblem::Nul },
            false,
        ),
    ];

    // Nesting: 257 nested directories, one more than the default limit, in an otherwise valid
    // archive (Nix has no limit).
    let mut b = a().open_dir();
    for _ in 1..256 {
        b = b.entry(b"d").open_dir();
    }
    b = b.entry(b"d").ss(&[b"(", b"type"]).mark().ss(&[b"directory", b")"]);
    for _ in 0..256 {
        b = b.close().close();
    }
    cases.push(case("nesting-too-deep", b, TooDeep { max: 256 }, false));
    cases
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile/nar")
}

#[test]
fn case_names_are_unique() {
    let cases = cases();
    let mut names: Vec<_> = cases.iter().map(|c| c.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), cases.len());
}

#[test]
fn validation_refuses_each_case_with_its_error_and_offset() {
    for case in cases() {
        let expected = NarError {
            offset: case.offset,
            kind: case.kind.clone(),
        };
        match nar::validate(case.nar.as_slice()) {
            Err(NarReadError::Nar(err)) => assert_eq!(err, expected, "case {}", case.name),
            other => panic!("case {}: expected {expected}, got {other:?}", case.name),
        }
        // Fed one byte at a time, the parser stops at the same place.
        let mut validator = nar::NarValidator::new();
        let err = case
            .nar
            .chunks(1)
            .find_map(|byte| validator.update(byte).err())
            .unwrap_or_else(|| validator.finish().unwrap_err());
        assert_eq!(err, expected, "case {} fed bytewise", case.name);
    }
}

/// Every path under `root` (which holds `target` and an empty directory `outside`) that is
/// neither `outside` nor in `target`, plus anything inside `outside`.
fn escapes(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(root).unwrap() {
        let name = entry.unwrap().file_name();
        if name != "outside" && name != "target" {
            found.push(root.join(name));
        }
    }
    for entry in fs::read_dir(root.join("outside")).unwrap() {
        found.push(entry.unwrap().path());
    }
    found
}

#[test]
fn limit_cases_are_valid_with_the_limit_raised_by_one() {
    let raised = NarLimits {
        max_name_len: 256,
        max_depth: 257,
        ..NarLimits::default()
    };
    for name in ["name-too-long", "nesting-too-deep"] {
        let case = cases().into_iter().find(|c| c.name == name).unwrap();
        nar::validate_with_limits(case.nar.as_slice(), raised).unwrap();
    }
}

#[test]
fn unpacking_refuses_each_case_and_writes_nothing_outside_the_target() {
    for case in cases() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("outside")).unwrap();
        let target = tmp.path().join("target");
        match nar::unpack(case.nar.as_slice(), &target) {
            Err(UnpackError::Nar(err)) => {
                assert_eq!(
                    err,
                    NarError {
                        offset: case.offset,
                        kind: case.kind.clone()
                    },
                    "case {}",
                    case.name
                );
            }
            other => panic!("case {}: expected a NAR error, got {other:?}", case.name),
        }
        assert_eq!(
            escapes(tmp.path()),
            Vec::<PathBuf>::new(),
            "case {}",
            case.name
        );
    }
}

#[test]
fn unpacking_never_follows_a_symlink_the_archive_created() {
    // The archive's root symlink is created, pointing outside, and nothing is written through it.
    let case = cases()
        .into_iter()
        .find(|c| c.name == "root-symlink-then-entries")
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir(tmp.path().join("outside")).unwrap();
    let target = tmp.path().join("target");
    assert!(nar::unpack(case.nar.as_slice(), &target).is_err());
    assert_eq!(fs::read_link(&target).unwrap(), Path::new("../outside"));
    assert_eq!(escapes(tmp.path()), Vec::<PathBuf>::new());

    // The first entry, a symlink to outside, exists; the second "x" did not go through it.
    let case = cases()
        .into_iter()
        .find(|c| c.name == "symlink-then-write-through")
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir(tmp.path().join("outside")).unwrap();
    let target = tmp.path().join("target");
    assert!(nar::unpack(case.nar.as_slice(), &target).is_err());
    assert_eq!(
        fs::read_link(target.join("x")).unwrap(),
        Path::new("../outside")
    );
    assert_eq!(escapes(tmp.path()), Vec::<PathBuf>::new());
}

#[test]
fn unpacking_keeps_the_partial_tree_inside_the_target_on_error() {
    let case = cases()
        .into_iter()
        .find(|c| c.name == "unsorted-entries")
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("target");
    assert!(nar::unpack(case.nar.as_slice(), &target).is_err());
    assert_eq!(fs::read(target.join("b")).unwrap(), b"");
    assert!(!target.join("a").exists());
}

/// Runs `nix-store --restore` on `nar` into a fresh directory; whether it succeeded.
fn nix_accepts(nar: &[u8]) -> bool {
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir(tmp.path().join("outside")).unwrap();
    let mut child = Command::new("nix-store")
        .args(["--restore", "--option", "substituters", ""])
        .arg(tmp.path().join("target"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot run nix-store");
    // Nix may stop reading early; a broken pipe is then expected.
    let _ = child.stdin.take().unwrap().write_all(nar);
    child.wait().unwrap().success()
}

#[test]
fn nix_refuses_the_same_cases_except_where_kiln_is_stricter() {
    for case in cases() {
        assert_eq!(
            !nix_accepts(&case.nar),
            case.nix_refuses,
            "case {}: nix-store --restore",
            case.name
        );
    }
}

#[test]
fn corpus_files_match_the_generators() {
    let dir = corpus_dir();
    let cases = cases();
    if std::env::var_os("KILN_BLESS_HOSTILE_NARS").is_some() {
        fs::create_dir_all(&dir).unwrap();
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "nar") {
                fs::remove_file(path).unwrap();
            }
        }
        for case in &cases {
            fs::write(dir.join(format!("{}.nar", case.name)), &case.nar).unwrap();
        }
    }
    let mut on_disk: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".nar"))
        .collect();
    on_disk.sort();
    let mut expected: Vec<String> = cases.iter().map(|c| format!("{}.nar", c.name)).collect();
    expected.sort();
    assert_eq!(
        on_disk, expected,
        "corpus files (rerun with KILN_BLESS_HOSTILE_NARS=1 to rewrite)"
    );
    for case in &cases {
        let on_disk = fs::read(dir.join(format!("{}.nar", case.name))).unwrap();
        assert!(
            on_disk == case.nar,
            "{}.nar differs from its generator",
            case.name
        );
    }
}

#[test]
fn a_symlink_among_the_parents_of_the_target_is_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real");
    fs::create_dir(&real).unwrap();
    symlink(&real, tmp.path().join("via")).unwrap();
    let source = tmp.path().join("source");
    fs::write(&source, b"data").unwrap();
    let mut nar_bytes = Vec::new();
    nar::dump_path(&source, &mut nar_bytes).unwrap();
    nar::unpack(nar_bytes.as_slice(), &tmp.path().join("via/restored")).unwrap();
    assert_eq!(fs::read(real.join("restored")).unwrap(), b"data");
}
