//! Flake jobsets: `hydraJobs`, the `checks` fallback, `self.rev`, and locked local inputs.

mod eval_support;

use std::path::{Path, PathBuf};

use eval_support::*;
use kiln_coordinator::eval::{EvalError, EvalRequest, EvalResult, JobsetSource};
use kiln_coordinator::git::GitMirror;

fn flake_request(checkout: &Path, rev: Option<String>, store: &Path) -> EvalRequest {
    EvalRequest {
        checkout: checkout.to_owned(),
        source: JobsetSource::Flake { rev },
        nix: chroot_settings(store),
        max_processes: 2,
        max_memory: 1 << 30,
    }
}

/// Commits `dir` to a new repository, fetches it through a mirror and checks it out; returns
/// the checkout and the commit.
fn through_git(tmp: &Path, dir: &Path, time: i64) -> (PathBuf, String) {
    let repo = tmp.join("repo.git");
    let commit_id = commit_dir(&repo, "main", dir, time);
    let mirror = GitMirror::new(tmp.join("mirrors"));
    let url = format!("file://{}", repo.display());
    assert_eq!(mirror.fetch(&url, "main").unwrap(), commit_id);
    let checkout = tmp.join("checkout");
    mirror.checkout(&url, &commit_id, &checkout).unwrap();
    (checkout, commit_id)
}

fn names(result: &EvalResult) -> Vec<&str> {
    result.jobs.iter().map(|j| j.name.as_str()).collect()
}

#[test]
fn flake_hydra_jobs_are_evaluated_at_the_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let time = 1_700_000_000;
    let (checkout, rev) = through_git(tmp.path(), &repo_root().join("examples/flake"), time);
    let store = tmp.path().join("eval");
    let result = run(&flake_request(&checkout, Some(rev.clone()), &store)).unwrap();
    assert!(result.errors.is_empty(), "{:?}", result.errors);
    assert_eq!(
        names(&result),
        [
            "greeting.x86_64-linux",
            "release",
            "revision.x86_64-linux",
            "shout.x86_64-linux"
        ]
    );
    let shout = job(&result, "shout.x86_64-linux");
    assert_eq!(shout.meta.scheduling_priority, 150);
    assert_eq!(
        shout.meta.description.as_deref(),
        Some("The greeting, louder")
    );
    assert_eq!(
        job(&result, "release").constituents.as_deref(),
        Some(
            &[
                "greeting.x86_64-linux".to_owned(),
                "shout.x86_64-linux".into()
            ][..]
        )
    );
    // The flake saw the commit as self.rev and its time as self.lastModified.
    let revision = drv_text(
        &store.join("store"),
        &job(&result, "revision.x86_64-linux").drv_path.to_absolute(),
    );
    assert!(
        revision.contains(&format!("echo \\\"{rev} {time}\\\"")),
        "{revision}"
    );
}

#[test]
fn a_flake_without_revision_is_locked_by_its_content() {
    let tmp = tempfile::tempdir().unwrap();
    let (checkout, _) = through_git(
        tmp.path(),
        &repo_root().join("examples/flake"),
        1_700_000_000,
    );
    let store = tmp.path().join("eval");
    let result = run(&flake_request(&checkout, None, &store)).unwrap();
    assert_eq!(result.jobs.len(), 4, "{:?}", result.errors);
    let revision = drv_text(
        &store.join("store"),
        &job(&result, "revision.x86_64-linux").drv_path.to_absolute(),
    );
    assert!(revision.contains("echo \\\"dirty "), "{revision}");
}

#[test]
fn a_flake_without_hydra_jobs_falls_back_to_checks() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("src");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("flake.nix"),
        r#"{
  outputs = { self }: {
    checks.x86_64-linux.unit = derivation {
      name = "unit"; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" "touch $out" ];
    };
    checks.x86_64-linux.broken = throw "this check is broken";
    packages.x86_64-linux.ignored = derivation {
      name = "ignored"; system = "x86_64-linux"; builder = "/bin/sh";
    };
  };
}"#,
    )
    .unwrap();
    let (checkout, rev) = through_git(tmp.path(), &dir, 1_700_000_000);
    let result = run(&flake_request(
        &checkout,
        Some(rev),
        &tmp.path().join("eval"),
    ))
    .unwrap();
    assert_eq!(names(&result), ["x86_64-linux.unit"]);
    assert!(error(&result, "x86_64-linux.broken").contains("this check is broken"));
}

#[test]
fn a_flake_with_neither_hydra_jobs_nor_checks_fails_the_evaluation() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("src");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("flake.nix"),
        "{ outputs = { self }: { packages = { }; }; }",
    )
    .unwrap();
    let (checkout, rev) = through_git(tmp.path(), &dir, 1_700_000_000);
    let err = run(&flake_request(
        &checkout,
        Some(rev),
        &tmp.path().join("eval"),
    ))
    .unwrap_err();
    let EvalError::Nix { message } = &err else {
        panic!("{err:?}")
    };
    assert!(
        message.contains("provides neither 'hydraJobs' nor 'checks'"),
        "{message}"
    );
}

#[test]
fn a_flake_with_a_locked_local_git_input_evaluates_without_network() {
    let tmp = tempfile::tempdir().unwrap();
    // The input: a flake in its own repository.
    let lib_repo = tmp.path().join("lib.git");
    let lib_rev = commit(
        &lib_repo,
        "main",
        &[file(
            "flake.nix",
            br#"{ outputs = { self }: { lib.greet = who: "hello ${who} from ${self.shortRev}"; }; }"#,
        )],
        1_690_000_000,
    );
    // The jobset flake uses it; its lock file is written by Nix and committed with it.
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(
        src.join("flake.nix"),
        format!(
            r#"{{
  inputs.lib.url = "git+file://{}?ref=main";
  outputs = {{ self, lib }}: {{
    hydraJobs.greeting = derivation {{
      name = "greeting"; system = "x86_64-linux"; builder = "/bin/sh";
      args = [ "-c" "echo '${{lib.lib.greet "kiln"}}' > $out" ];
    }};
  }};
}}"#,
            lib_repo.display()
        ),
    )
    .unwrap();
    let lock_store = tmp.path().join("lock-store");
    nix_ok(
        "nix",
        &[
            "--extra-experimental-features",
            "nix-command flakes",
            "flake",
            "lock",
            "--store",
            lock_store.to_str().unwrap(),
            src.to_str().unwrap(),
        ],
    );
    let lock = std::fs::read_to_string(src.join("flake.lock")).unwrap();
    assert!(lock.contains(&lib_rev), "{lock}");

    let (checkout, rev) = through_git(tmp.path(), &src, 1_700_000_000);
    let store = tmp.path().join("eval");
    let result = run(&flake_request(&checkout, Some(rev), &store)).unwrap();
    assert!(result.errors.is_empty(), "{:?}", result.errors);
    let greeting = drv_text(
        &store.join("store"),
        &job(&result, "greeting").drv_path.to_absolute(),
    );
    assert!(
        greeting.contains(&format!("hello kiln from {}", &lib_rev[..7])),
        "{greeting}"
    );
}

#[test]
fn a_bad_flake_revision_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let req = flake_request(
        &repo_root().join("examples/flake"),
        Some("HEAD".into()),
        tmp.path(),
    );
    assert!(matches!(run(&req), Err(EvalError::InvalidRequest(_))));
}
