//! `kiln drv`: the built binary against `nix show-derivation` on the example jobset's `.drv`s.

#[path = "../nix/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::nix_ok;

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .expect("kiln runs")
}

/// The `.drv` files of the demo jobset's closure, rooted in `roots`.
fn demo_drvs(roots: &Path) -> Vec<String> {
    let release = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo/release.nix");
    let root = roots.join("root");
    let out = nix_ok(
        "nix-instantiate",
        &[],
        &[
            release.to_str().unwrap(),
            "--add-root",
            root.to_str().unwrap(),
        ],
    );
    let mut args = vec!["-qR".to_owned()];
    args.extend(
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| l.split('!').next().unwrap().to_owned()),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let closure = nix_ok("nix-store", &[], &args);
    String::from_utf8(closure)
        .unwrap()
        .lines()
        .filter(|l| l.ends_with(".drv"))
        .map(str::to_owned)
        .collect()
}

fn nix_show(files: &[&str]) -> Vec<u8> {
    nix_ok("nix", &["show-derivation"], files)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn drv_show_prints_exactly_what_nix_show_derivation_prints() {
    let roots = tempfile::tempdir().unwrap();
    let drvs = demo_drvs(roots.path());
    assert!(drvs.len() >= 25);
    // In reverse order and with a duplicate: both print each derivation once, sorted by path.
    let mut files: Vec<&str> = drvs.iter().rev().map(String::as_str).collect();
    files.push(files[0]);
    let mut args = vec!["drv", "show"];
    args.extend(&files);
    let out = kiln(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(nix_show(&files)).unwrap()
    );
}

#[test]
fn drv_show_reads_copies_outside_the_store() {
    let roots = tempfile::tempdir().unwrap();
    let drvs = demo_drvs(roots.path());
    let copies = tempfile::tempdir().unwrap();
    let original = drvs.iter().find(|d| d.ends_with("-hello-1.0.drv")).unwrap();
    let other = drvs
        .iter()
        .find(|d| d.ends_with("-chain-step-3.drv"))
        .unwrap();
    // One copy keeps its store base name; the other is renamed and gets its path computed.
    let same_name = copies.path().join(Path::new(other).file_name().unwrap());
    let renamed = copies.path().join("hello-1.0.drv");
    std::fs::copy(other, &same_name).unwrap();
    std::fs::copy(original, &renamed).unwrap();
    let out = kiln(&[
        "drv",
        "show",
        renamed.to_str().unwrap(),
        same_name.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, nix_show(&[original, other]));
}

#[test]
fn drv_show_refuses_a_malformed_file_and_names_it() {
    let roots = tempfile::tempdir().unwrap();
    let drvs = demo_drvs(roots.path());
    let dir = tempfile::tempdir().unwrap();
    let bad: PathBuf = dir.path().join("bad.drv");
    std::fs::write(
        &bad,
        r#"Derive([("out","/nix/store/short","","")],[],[],"s","b",[],[])"#,
    )
    .unwrap();
    let out = kiln(&["drv", "show", &drvs[0], bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "printed output despite the error");
    let err = stderr(&out);
    assert!(err.contains(bad.to_str().unwrap()), "{err}");
    assert!(err.contains("invalid derivation at byte 15"), "{err}");
    assert!(err.contains("/nix/store/short"), "{err}");

    let missing = dir.path().join("missing.drv");
    let out = kiln(&["drv", "show", missing.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(missing.to_str().unwrap()) && err.contains("cannot read"),
        "{err}"
    );

    let not_drv = dir.path().join("notes.txt");
    std::fs::write(&not_drv, "Derive(").unwrap();
    let out = kiln(&["drv", "show", not_drv.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("does not end in .drv"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn drv_check_accepts_what_nix_wrote_and_refuses_a_tampered_copy() {
    let roots = tempfile::tempdir().unwrap();
    let drvs = demo_drvs(roots.path());
    let mut args = vec!["drv", "check"];
    args.extend(drvs.iter().map(String::as_str));
    let out = kiln(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().lines().count(),
        drvs.len()
    );

    let original = drvs
        .iter()
        .find(|d| d.ends_with("-chain-step-1.drv"))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join(Path::new(original).file_name().unwrap());
    let text = std::fs::read_to_string(original)
        .unwrap()
        .replace("step 1", "step one");
    std::fs::write(&copy, text).unwrap();
    let out = kiln(&["drv", "check", copy.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(copy.to_str().unwrap()) && err.contains("which give the path"),
        "{err}"
    );
}
