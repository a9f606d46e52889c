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
