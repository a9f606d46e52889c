//! Aggregate jobs: constituents by derivation, by name and by glob, and their errors.

mod eval_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use eval_support::*;
use kiln_coordinator::eval::EvalResult;
use kiln_nix::derivation::Derivation;
use kiln_nix::{StoreDir, StorePath};

struct Evaluated {
    _tmp: tempfile::TempDir,
    store: PathBuf,
    result: EvalResult,
}

fn evaluate() -> Evaluated {
    let tmp = tempfile::tempdir().unwrap();
    let result = run(&legacy(
        &fixture("aggregates"),
        "release.nix",
        BTreeMap::new(),
        tmp.path(),
    ))
    .expect("evaluates");
    Evaluated {
        store: tmp.path().join("store"),
        _tmp: tmp,
        result,
    }
}

fn drv(store: &Path, path: &StorePath) -> Derivation {
    let text = drv_text(store, &path.to_absolute());
    Derivation::parse_drv_file(&StoreDir::default(), path, text.as_bytes()).unwrap()
}

fn constituents<'a>(result: &'a EvalResult, name: &str) -> Vec<&'a str> {
    job(result, name)
        .constituents
        .as_ref()
        .unwrap_or_else(|| panic!("{name} is not an aggregate"))
        .iter()
        .map(String::as_str)
        .collect()
}

/// The input derivations of `name`'s .drv.
fn inputs(e: &Evaluated, name: &str) -> Vec<StorePath> {
    drv(&e.store, &job(&e.result, name).drv_path)
        .input_drvs
        .keys()
        .cloned()
        .collect()
}

#[test]
fn named_constituents_become_inputs_of_a_rewritten_derivation() {
    let e = evaluate();
    assert_eq!(constituents(&e.result, "byName"), ["pkgs.a", "pkgs.b"]);
    let a = job(&e.result, "pkgs.a").drv_path.clone();
    let b = job(&e.result, "pkgs.b").drv_path.clone();
    assert_eq!(inputs(&e, "byName"), {
        let mut v = vec![a, b];
        v.sort();
        v
    });
    // The output path was recomputed: the .drv's output and its `out` variable agree with the
    // job's outputs, and Nix accepted the .drv (it is valid in the store).
    let by_name = job(&e.result, "byName");
    let parsed = drv(&e.store, &by_name.drv_path);
    let out = by_name.outputs["out"].to_absolute();
    assert_eq!(parsed.outputs["out"].path().unwrap().to_absolute(), out);
    assert_eq!(parsed.env_str("out"), Some(out.as_str()));
    let store = e.store.to_str().unwrap();
    let valid = nix_ok(
        "nix-store",
        &[
            "--store",
            store,
            "--check-validity",
            "--print-invalid",
            &by_name.drv_path.to_absolute(),
        ],
    );
    assert!(valid.is_empty(), "{valid}");
}

#[test]
fn globs_select_matching_jobs_but_never_the_aggregate_itself() {
    let e = evaluate();
    assert_eq!(constituents(&e.result, "byGlob"), ["pkgs.a", "pkgs.b"]);
    assert_eq!(constituents(&e.result, "globSelf"), ["globTarget"]);
    assert_eq!(
        inputs(&e, "globSelf"),
        [job(&e.result, "globTarget").drv_path.clone()]
    );
}

#[test]
fn constituents_given_as_derivations_are_named_by_their_jobs() {
    let e = evaluate();
    assert_eq!(constituents(&e.result, "byDrv"), ["pkgs.a", "pkgs.b"]);
    assert_eq!(constituents(&e.result, "mixed"), ["pkgs.a", "pkgs.b"]);
    // Without named constituents, the .drv is Nix's own: not rewritten.
    let reference = tempfile::tempdir().unwrap();
    let file = fixture("aggregates").join("release.nix");
    let store = reference.path().to_str().unwrap();
    let original = nix_ok(
        "nix-instantiate",
        &["--store", store, file.to_str().unwrap(), "-A", "byDrv"],
    );
    assert_eq!(
        job(&e.result, "byDrv").drv_path.to_absolute(),
        original.trim()
    );
}

#[test]
fn an_aggregate_of_aggregates_depends_on_the_rewritten_one_and_builds() {
    let e = evaluate();
    assert_eq!(
        constituents(&e.result, "ofAggregates"),
        ["byName", "globTarget"]
    );
    let by_name = job(&e.result, "byName").drv_path.clone();
    assert!(inputs(&e, "ofAggregates").contains(&by_name));

    let store = e.store.to_str().unwrap();
    let top = job(&e.result, "ofAggregates").drv_path.to_absolute();
    let mut args = vec!["--store", store, "--realise", &top];
    args.extend(SANDBOX_OPTIONS);
    let out = nix_ok("nix-store", &args);
    assert_eq!(
        out.trim(),
        job(&e.result, "ofAggregates").outputs["out"].to_absolute()
    );
    for name in ["byName", "pkgs.a", "pkgs.b", "globTarget"] {
        let path = job(&e.result, name).outputs["out"].to_absolute();
        assert!(
            e.store.join(path.trim_start_matches('/')).exists(),
            "{name} not built"
        );
    }
}

#[test]
fn broken_constituents_make_the_aggregate_an_error_naming_them() {
    let e = evaluate();
    let missing = error(&e.result, "missing");
    assert!(missing.contains("no.such.job: does not exist"), "{missing}");
    assert!(!missing.contains("pkgs.a"), "{missing}");

    let broken = error(&e.result, "brokenConstituent");
    assert!(
        broken.contains("broken.x: failed to evaluate: error: constituent x is broken"),
        "{broken}"
    );
    let no_match = error(&e.result, "noMatchGlob");
    assert!(
        no_match.contains("nothing.*: constituent glob pattern had no matches"),
        "{no_match}"
    );
    // The constituent's own error is still there.
    assert!(error(&e.result, "broken.x").contains("constituent x is broken"));
}

#[test]
fn cycles_between_aggregates_are_errors_and_so_is_what_depends_on_them() {
    let e = evaluate();
    for name in ["cycleA", "cycleB"] {
        let message = error(&e.result, name);
        assert!(
            message.contains("dependency cycle between aggregates"),
            "{message}"
        );
        assert!(message.contains("cycleA -> cycleB -> cycleA"), "{message}");
    }
    let behind = error(&e.result, "behindCycle");
    assert!(
        behind.contains("cycleA: is on a dependency cycle between aggregates"),
        "{behind}"
    );
    assert!(!behind.contains("pkgs.a"), "{behind}");
    // Every other job is there.
    let names: Vec<&str> = e.result.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "byDrv",
            "byGlob",
            "byName",
            "globSelf",
            "globTarget",
            "mixed",
            "ofAggregates",
            "pkgs.a",
            "pkgs.b",
        ]
    );
}
