//! What Kiln reads from each job: meta, system features, names, and GC roots for its `.drv`.

mod eval_support;

use std::collections::BTreeMap;

use eval_support::*;
use kiln_coordinator::eval::{EvalInput, EvalResult};
use serde_json::json;

fn evaluate(store: &std::path::Path) -> EvalResult {
    let inputs = BTreeMap::from([("flavour".to_owned(), EvalInput::String("spicy".into()))]);
    run(&legacy(&fixture("jobs"), "release.nix", inputs, store)).expect("evaluates")
}

#[test]
fn every_meta_field_is_read_as_hydra_does() {
    let tmp = tempfile::tempdir().unwrap();
    let result = evaluate(tmp.path());
    let rich = &job(&result, "rich").meta;
    assert_eq!(
        rich.description.as_deref(),
        Some("A job with every meta field")
    );
    assert_eq!(
        rich.license,
        json!([{ "shortName": "mit", "spdxId": "MIT", "free": true }, "custom"])
    );
    assert_eq!(rich.license_names(), "mit, custom");
    assert_eq!(rich.homepage, json!("https://example.org/rich"));
    assert_eq!(rich.maintainer_emails(), "alice@example.org");
    assert_eq!(rich.maintainers[0]["github"], json!("alice"));
    assert_eq!(rich.scheduling_priority, 7);
    assert_eq!(rich.timeout, 60);
    assert_eq!(rich.max_silent, 30);
}

#[test]
fn odd_or_failing_meta_never_fails_the_job() {
    let tmp = tempfile::tempdir().unwrap();
    let result = evaluate(tmp.path());
    let odd = &job(&result, "odd-meta").meta;
    assert_eq!(odd.license, json!(null));
    assert_eq!(odd.homepage, json!(null));
    assert_eq!(odd.description, None);
    assert_eq!(odd.scheduling_priority, 100);
    // Nesting is cut: values more than six levels below the field become null.
    assert_eq!(
        odd.maintainers["a"]["b"]["c"]["d"]["e"]["f"],
        json!({ "g": null })
    );
    let bad = &job(&result, "bad-meta").meta;
    assert_eq!(bad.timeout, 36000);
    assert_eq!(bad.description, None);
}

#[test]
fn required_system_features_come_from_the_derivation() {
    let tmp = tempfile::tempdir().unwrap();
    let result = evaluate(tmp.path());
    assert_eq!(
        job(&result, "features").required_system_features,
        ["kvm", "big-parallel"]
    );
    assert_eq!(
        job(&result, "structured-features").required_system_features,
        ["nixos-test"]
    );
    assert!(job(&result, "rich").required_system_features.is_empty());
}

#[test]
fn names_quote_dotted_attributes_and_functions_are_called_with_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let result = evaluate(tmp.path());
    let names: Vec<&str> = result.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "\"with.dot\"",
            "bad-meta",
            "features",
            "nested.\"also.dotted\".job",
            "odd-meta",
            "perFlavour.job",
            "rich",
            "structured-features",
        ]
    );
    assert!(result.errors.is_empty(), "{:?}", result.errors);
    assert_eq!(
        job(&result, "perFlavour.job").drv_path.name(),
        "flavour-spicy.drv"
    );
}

#[test]
fn gc_roots_keep_every_job_derivation_through_a_garbage_collection() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let inputs = BTreeMap::from([("flavour".to_owned(), EvalInput::String("spicy".into()))]);
    let mut req = legacy(&fixture("jobs"), "release.nix", inputs, tmp.path());
    req.nix.gc_roots_dir = Some(store.join("nix/var/nix/gcroots/kiln"));
    let result = run(&req).unwrap();
    // Something unrooted, to see the collector run.
    let stray = nix_ok(
        "nix-store",
        &[
            "--store",
            store.to_str().unwrap(),
            "--add",
            fixture("jobs").join("release.nix").to_str().unwrap(),
        ],
    );
    nix_ok("nix-store", &["--store", store.to_str().unwrap(), "--gc"]);
    assert!(!store.join(stray.trim().trim_start_matches('/')).exists());
    for j in &result.jobs {
        let drv = j.drv_path.to_absolute();
        assert!(
            store.join(drv.trim_start_matches('/')).exists(),
            "{} collected",
            j.name
        );
    }
}

#[test]
fn a_wide_jobset_is_spread_over_processes_with_the_same_result() {
    let tmp = tempfile::tempdir().unwrap();
    let mut one = legacy(
        &fixture("wide"),
        "release.nix",
        BTreeMap::new(),
        &tmp.path().join("a"),
    );
    one.max_processes = 1;
    let mut three = legacy(
        &fixture("wide"),
        "release.nix",
        BTreeMap::new(),
        &tmp.path().join("b"),
    );
    three.max_processes = 3;
    let a = run(&one).unwrap();
    let b = run(&three).unwrap();
    assert_eq!(a.jobs.len(), 299 + 50);
    assert_eq!(a.jobs, b.jobs);
    assert_eq!(a.errors, b.errors);
    assert!(error(&a, "job150").contains("job 150 aborts"));
    assert!(
        job(&b, "group.member49")
            .drv_path
            .name()
            .ends_with("member-49.drv")
    );
    // The 300 top-level attributes exceed what one process takes on: the walk was shared.
    assert!(b.stats.processes >= 4, "{:?}", b.stats);
}
