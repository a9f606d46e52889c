//! `kiln key`: the built binary's keys are the ones Nix 2.8 derives, signs with and trusts.

#[path = "../nix/tests/support/mod.rs"]
mod support;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use kiln_nix::narinfo::NarInfo;
use kiln_nix::signing::{PublicKey, SecretKey};
use kiln_nix::{Hash, StorePath};
use support::{nix, nix_ok};

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .expect("run kiln")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `kiln key generate NAME` into `dir/NAME.sec` and `dir/NAME.pub`, asserting success.
fn generate(dir: &Path, name: &str) -> (PathBuf, PathBuf, Output) {
    let (sec, public) = (
        dir.join(format!("{name}.sec")),
        dir.join(format!("{name}.pub")),
    );
    let out = kiln(&[
        "key",
        "generate",
        name,
        "--secret-file",
        sec.to_str().unwrap(),
        "--public-file",
        public.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "kiln key generate failed: {}",
        stderr(&out)
    );
    (sec, public, out)
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Builds, in the sandbox, an input-addressed path in a new chroot store `dir/src`. (Added paths
/// would be content-addressed, which Nix trusts without signatures.)
fn build_path(dir: &Path) -> (String, String) {
    let store = dir.join("src").to_str().unwrap().to_owned();
    let expr = dir.join("p.nix");
    fs::write(
        &expr,
        r#"derivation {
          name = "kiln-cli-key-test";
          system = builtins.currentSystem;
          builder = "/bin/sh";
          args = [ "-c" "echo signed by a kiln key > $out" ];
        }"#,
    )
    .unwrap();
    let out = nix_ok(
        "nix-build",
        &[],
        &["--store", &store, expr.to_str().unwrap(), "--no-out-link"],
    );
    (store, String::from_utf8(out).unwrap().trim().to_owned())
}

#[test]
fn generated_key_pair_is_what_nix_derives_from_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let (sec, public, out) = generate(dir.path(), "cli-test-1");
    let public_text = fs::read_to_string(&public).unwrap();
    assert!(public_text.starts_with("cli-test-1:"));
    assert_eq!(
        stdout(&out),
        format!("{public_text}\n"),
        "prints the public key"
    );
    assert_eq!(mode(&sec), 0o600);

    let mut convert = Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "key",
            "convert-secret-to-public",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    convert
        .stdin
        .take()
        .unwrap()
        .write_all(&fs::read(&sec).unwrap())
        .unwrap();
    let converted = convert.wait_with_output().unwrap();
    assert!(converted.status.success(), "{}", stderr(&converted));
    assert_eq!(stdout(&converted), public_text);

    let out = kiln(&["key", "public", "--secret-file", sec.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{public_text}\n"));
}

#[test]
fn nix_signs_with_a_generated_secret_and_trusts_its_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let (sec, public, _) = generate(dir.path(), "cli-test-1");
    let (_, other_public, _) = generate(dir.path(), "cli-test-2");
    let (store, path) = build_path(dir.path());
    nix_ok(
        "nix",
        &["store", "sign"],
        &[
            "--store",
            &store,
            "--key-file",
            sec.to_str().unwrap(),
            &path,
        ],
    );

    let verify = |trusted: &Path| {
        let trusted = fs::read_to_string(trusted).unwrap();
        nix(
            "nix",
            &["store", "verify"],
            &[
                "--store",
                &store,
                "--sigs-needed",
                "1",
                "--no-contents",
                "--option",
                "trusted-public-keys",
                &trusted,
                &path,
            ],
        )
    };
    let out = verify(&public);
    assert!(
        out.status.success(),
        "Nix did not trust the kiln key: {}",
        stderr(&out)
    );
    let out = verify(&other_public);
    assert!(
        !out.status.success(),
        "Nix trusted a signature by another key"
    );
}

#[test]
fn nix_substitutes_from_a_cache_signed_with_a_generated_key() {
    let dir = tempfile::tempdir().unwrap();
    let (sec, public, _) = generate(dir.path(), "cli-test-1");
    let (store, path) = build_path(dir.path());
    let nar = nix_ok("nix", &["store", "dump-path"], &["--store", &store, &path]);

    let key: SecretKey = fs::read_to_string(&sec).unwrap().parse().unwrap();
    let cache = dir.path().join("cache");
    fs::create_dir_all(cache.join("nar")).unwrap();
    fs::write(cache.join("nix-cache-info"), "StoreDir: /nix/store\n").unwrap();
    let store_path = StorePath::parse(&path).unwrap();
    let hash = Hash::sha256(&nar);
    let url = format!("nar/{}.nar", hash.to_nix32());
    let mut info = NarInfo::new(store_path.clone(), url, hash.clone(), nar.len() as u64);
    info.file_hash = Some(hash);
    info.file_size = Some(nar.len() as u64);
    info.sign(&key).unwrap();
    fs::write(cache.join(&info.url), &nar).unwrap();
    fs::write(
        cache.join(format!("{}.narinfo", store_path.hash_part())),
        info.to_string(),
    )
    .unwrap();

    let trusted = fs::read_to_string(&public).unwrap();
    let pk: PublicKey = trusted.parse().unwrap();
    info.verify(&[pk]).unwrap();
    let out = nix(
        "nix-store",
        &[],
        &[
            "--store",
            dir.path().join("fresh").to_str().unwrap(),
            "--realise",
            &path,
            "--max-jobs",
            "0",
            "--option",
            "substituters",
            &format!("file://{}", cache.display()),
            "--option",
            "trusted-public-keys",
            &trusted,
        ],
    );
    assert!(
        out.status.success(),
        "Nix refused the substitute: {}",
        stderr(&out)
    );
}

#[test]
fn refuses_to_overwrite_existing_key_files_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let sec = dir.path().join("k.sec");
    let public = dir.path().join("k.pub");
    fs::write(&sec, "precious").unwrap();
    fs::set_permissions(&sec, fs::Permissions::from_mode(0o644)).unwrap();
    let run = |force: bool| {
        let (sec, public) = (sec.to_str().unwrap(), public.to_str().unwrap());
        let mut args = vec![
            "key",
            "generate",
            "k",
            "--secret-file",
            sec,
            "--public-file",
            public,
        ];
        if force {
            args.push("--force");
        }
        kiln(&args)
    };
    let out = run(false);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("refusing to overwrite {}", sec.display())),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("--force"));
    assert_eq!(fs::read_to_string(&sec).unwrap(), "precious");
    assert!(!public.exists(), "nothing written when refusing");

    fs::remove_file(&sec).unwrap();
    fs::write(&public, "precious").unwrap();
    let out = run(false);
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&format!("refusing to overwrite {}", public.display())));
    assert!(!sec.exists(), "nothing written when refusing");

    fs::write(&sec, "precious").unwrap();
    fs::set_permissions(&sec, fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(true);
    assert!(out.status.success(), "{}", stderr(&out));
    let key: SecretKey = fs::read_to_string(&sec).unwrap().parse().unwrap();
    assert_eq!(
        key.public().to_string(),
        fs::read_to_string(&public).unwrap()
    );
    assert_eq!(
        mode(&sec),
        0o600,
        "a replaced secret does not keep the old, looser mode"
    );
}

#[test]
fn errors_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let fails_with = |args: &[&str], expected: &str| {
        let out = kiln(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            stderr(&out).contains(expected),
            "{args:?}: {:?} lacks {expected:?}",
            stderr(&out)
        );
    };

    fails_with(
        &[
            "key",
            "generate",
            "my key",
            "--secret-file",
            &d("a"),
            "--public-file",
            &d("b"),
        ],
        "key name \"my key\" is invalid: it contains whitespace",
    );
    fails_with(
        &[
            "key",
            "generate",
            "k:1",
            "--secret-file",
            &d("a"),
            "--public-file",
            &d("b"),
        ],
        "it contains ':'",
    );
    fails_with(
        &[
            "key",
            "generate",
            "k",
            "--secret-file",
            &d("a"),
            "--public-file",
            &d("a"),
        ],
        "--secret-file and --public-file are both",
    );
    fails_with(
        &[
            "key",
            "generate",
            "k",
            "--secret-file",
            &d("a"),
            "--public-file",
            &d("missing/b"),
        ],
        "cannot write public key file",
    );
    assert!(
        !dir.path().join("a").exists(),
        "no orphaned secret key left behind"
    );

    let (_, public, _) = generate(dir.path(), "k");
    fails_with(
        &["key", "public", "--secret-file", public.to_str().unwrap()],
        "holds a public key, not a secret key",
    );
    fails_with(
        &["key", "public", "--secret-file", &d("nope")],
        "cannot read secret key file",
    );
    fs::write(d("garbage"), "k:not base64!").unwrap();
    fails_with(
        &["key", "public", "--secret-file", &d("garbage")],
        "is not valid base64",
    );
}
