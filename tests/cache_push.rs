//! `kiln cache push` against a running `kiln up`: closures pushed from a chroot store substitute
//! into fresh stores, a second push uploads nothing, and refused credentials publish nothing.

mod harness;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use harness::{Body, Kiln, NixStore};

/// A closure with a shared reference and a self-reference: `leaf`, two paths referring to it,
/// and a top referring to both and to itself.
fn diamond_expr(tag: &str) -> String {
    let drv = |name: &str, script: &str| {
        format!(
            "derivation {{ name = \"{tag}-{name}\"; system = builtins.currentSystem; \
             builder = \"/bin/sh\"; args = [ \"-c\" \"{script}\" ]; }}"
        )
    };
    format!(
        "let\n  leaf = {};\n  left = {};\n  right = {};\nin {}\n",
        drv("leaf", "echo leaf > $out"),
        drv("left", "echo ${leaf} left > $out"),
        drv("right", "echo ${leaf} right > $out"),
        drv("top", "echo $out ${left} ${right} > $out"),
    )
}

fn push(kiln: &Kiln, store: &NixStore, cache: &str, paths: &[String], auth: Auth) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.args(["cache", "push", cache])
        .args(paths)
        .arg("--url")
        .arg(&kiln.base)
        .arg("--store")
        .arg(&store.root)
        .env_remove("KILN_TOKEN")
        .env_remove("KILN_URL");
    match auth {
        Auth::File(file) => {
            cmd.arg("--token-file").arg(file);
        }
        Auth::Env(token) => {
            cmd.env("KILN_TOKEN", token);
        }
        Auth::None => {}
    }
    cmd.output().expect("run kiln cache push")
}

enum Auth<'a> {
    File(&'a Path),
    Env(&'a str),
    None,
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn served(kiln: &Kiln, path: &str) -> bool {
    let hash = &path.trim_start_matches("/nix/store/")[..32];
    let r = kiln.request(
        "HEAD",
        &format!("/cache/main/{hash}.narinfo"),
        &[],
        Body::Empty,
    );
    match r.status {
        200 => true,
        404 => false,
        other => panic!("HEAD narinfo of {path} answered {other}"),
    }
}

fn nar_files(kiln: &Kiln) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(kiln.data_dir().join("cache/main/nar"))
        .map(|dir| {
            dir.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn pushed_closure_substitutes_and_a_second_push_uploads_nothing() {
    let kiln = Kiln::start();
    let work = tempfile::tempdir().unwrap();
    let src = NixStore::new(work.path(), "src");
    let top = src.build(&diamond_expr("push-diamond"));
    let closure = src.closure(&top);
    assert_eq!(closure.len(), 4);
    let token_file = work.path().join("token");
    fs::write(&token_file, format!("{}\n", kiln.token("main", "push"))).unwrap();

    let out = push(&kiln, &src, "main", &top, Auth::File(&token_file));
    assert!(out.status.success(), "push failed: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("pushed 4 paths to cache main"),
        "summary: {stdout}"
    );
    assert!(stdout.contains("0 already there"), "summary: {stdout}");
    let stderr = text(&out.stderr);
    for path in &closure {
        assert!(
            stderr.contains(&format!("pushed {path}")),
            "no line for {path}: {stderr}"
        );
        assert!(served(&kiln, path));
    }
    // References first: the leaf is pushed before the paths that need it, the top last.
    let position = |p: &str| stderr.find(&format!("pushed {p}")).unwrap();
    let leaf = closure.iter().find(|p| p.ends_with("-leaf")).unwrap();
    for path in &closure {
        if path != leaf {
            assert!(position(leaf) < position(path), "{stderr}");
        }
    }
    assert!(closure.iter().all(|p| position(p) <= position(&top[0])));

    let fresh = NixStore::new(work.path(), "fresh");
    let sub = fresh.substitute(&kiln.substituter, &kiln.public_key, &top, None);
    assert!(
        sub.status.success(),
        "substitution failed: {}",
        text(&sub.stderr)
    );
    for path in &closure {
        assert_eq!(
            fs::read(fresh.real_path(path)).unwrap(),
            fs::read(src.real_path(path)).unwrap(),
            "{path}"
        );
    }

    let stored = nar_files(&kiln);
    assert_eq!(stored.len(), 4, "{stored:?}");
    let token = fs::read_to_string(&token_file).unwrap();
    let again = push(&kiln, &src, "main", &top, Auth::Env(token.trim()));
    assert!(
        again.status.success(),
        "second push failed: {}",
        text(&again.stderr)
    );
    assert!(
        text(&again.stdout).contains("nothing to push: all 4 paths are already in cache main"),
        "{}",
        text(&again.stdout)
    );
    assert_eq!(nar_files(&kiln), stored, "the second push stored something");
}

#[test]
fn refused_credentials_fail_clearly_and_publish_nothing() {
    let kiln = Kiln::start();
    let work = tempfile::tempdir().unwrap();
    let src = NixStore::new(work.path(), "src");
    let top = src.build(&diamond_expr("push-refused"));
    let closure = src.closure(&top);

    let bogus = push(&kiln, &src, "main", &top, Auth::Env("kiln_0123"));
    assert!(!bogus.status.success());
    let err = text(&bogus.stderr);
    assert!(err.contains("refused the credentials"), "{err}");
    assert!(
        err.contains("401") && err.contains("token is not valid"),
        "{err}"
    );

    let none = push(&kiln, &src, "main", &top, Auth::None);
    assert!(!none.status.success());
    let err = text(&none.stderr);
    assert!(
        err.contains("no token") && err.contains("--token-file"),
        "{err}"
    );

    // A read token passes the checks but may not upload: the first refusal stops the push.
    let read = kiln.token("main", "read");
    let reader = push(&kiln, &src, "main", &top, Auth::Env(&read));
    assert!(!reader.status.success());
    let err = text(&reader.stderr);
    assert!(
        err.contains("403") && err.contains("does not grant push"),
        "{err}"
    );
    assert!(err.contains("3 not attempted"), "{err}");

    let unknown = push(&kiln, &src, "nonesuch", &top, Auth::Env(&read));
    assert!(!unknown.status.success());
    let err = text(&unknown.stderr);
    assert!(err.contains("404") && err.contains("nonesuch"), "{err}");

    for path in &closure {
        assert!(!served(&kiln, path), "{path} was published");
    }
    assert!(nar_files(&kiln).is_empty());
}

#[test]
fn an_invalid_path_is_reported_by_name() {
    let kiln = Kiln::start();
    let work = tempfile::tempdir().unwrap();
    let src = NixStore::new(work.path(), "src");
    src.build(&diamond_expr("push-invalid"));
    let absent = "/nix/store/00000000000000000000000000000000-absent".to_owned();
    let out = push(
        &kiln,
        &src,
        "main",
        std::slice::from_ref(&absent),
        Auth::Env("kiln_x"),
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("nix path-info") && err.contains(&absent),
        "{err}"
    );
}

#[test]
fn a_corrupted_path_fails_alone_and_only_its_referrers_are_skipped() {
    let kiln = Kiln::start();
    let work = tempfile::tempdir().unwrap();
    let src = NixStore::new(work.path(), "src");
    let top = src.build(&diamond_expr("push-corrupt"));
    let closure = src.closure(&top);
    let named = |suffix: &str| closure.iter().find(|p| p.ends_with(suffix)).unwrap();
    // The store's files no longer match what Nix registered: the cache must refuse the NAR.
    fs::write(src.real_path(named("-left")), "tampered\n").unwrap();

    let token = kiln.token("main", "push");
    let out = push(&kiln, &src, "main", &top, Auth::Env(&token));
    assert!(!out.status.success(), "a failed path must fail the push");
    let err = text(&out.stderr);
    assert!(
        err.contains("1 path could not be pushed, 1 not attempted"),
        "{err}"
    );
    assert!(
        err.contains("422") && err.contains("X-Kiln-Nar-Hash"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{}: not attempted: a path it references could not be pushed",
            top[0]
        )),
        "{err}"
    );
    assert!(
        text(&out.stdout).contains("pushed 2 paths"),
        "{}",
        text(&out.stdout)
    );
    assert!(served(&kiln, named("-leaf")));
    assert!(served(&kiln, named("-right")));
    assert!(!served(&kiln, named("-left")));
    assert!(!served(&kiln, &top[0]));
}
