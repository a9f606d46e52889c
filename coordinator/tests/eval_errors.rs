//! Per-job evaluation errors and evaluation-level failures, with real Nix.

mod eval_support;

use std::collections::BTreeMap;

use eval_support::*;
use kiln_coordinator::eval::EvalError;

#[test]
fn errors_smoke() {
    let tmp = tempfile::tempdir().unwrap();
    let req = legacy(
        &fixture("errors"),
        "release.nix",
        BTreeMap::new(),
        tmp.path(),
    );
    let result = run(&req).unwrap();
    for j in &result.jobs {
        eprintln!("JOB {}", j.name);
    }
    for e in &result.errors {
        eprintln!("ERR {}: {}", e.name, e.message);
    }
    eprintln!("{:?}", result.stats);
    let _ = EvalError::Protocol(String::new());
}
