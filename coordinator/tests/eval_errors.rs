//! Per-job evaluation errors and evaluation-level failures, with real Nix.

mod eval_support;

use std::collections::BTreeMap;

use eval_support::*;
use kiln_coordinator::eval::EvalError;

fn evaluate_fixture(
    name: &str,
    store: &std::path::Path,
) -> Result<kiln_coordinator::eval::EvalResult, EvalError> {
    run(&legacy(
        &fixture(name),
        "release.nix",
        BTreeMap::new(),
        store,
    ))
}

#[test]
fn each_failing_job_gets_nix_message_and_hides_no_other_job() {
    let tmp = tempfile::tempdir().unwrap();
    let result = evaluate_fixture("errors", tmp.path()).expect("evaluation as a whole succeeds");

    let names: Vec<&str> = result.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["good", "mixed.fine", "nested.good"]);

    let expected = [
        (
            "aborts",
            "evaluation aborted with the following error message: 'this job aborts on purpose'",
        ),
        ("asserts", "assertion '(1 == 2)' failed"),
        ("bad-input", "error: a dependency throws"),
        ("broken-set", "error: this attribute set throws"),
        ("hog", "error: out of memory"),
        ("mixed.bad", "'mixed bad aborts'"),
        ("recursion", "error: infinite recursion encountered"),
        (
            "stack",
            "error: stack overflow (possible infinite recursion)",
        ),
        ("throws", "error: this job throws on purpose"),
        ("type-error", "error: cannot add a string to an integer"),
    ];
    let errors: Vec<&str> = result.errors.iter().map(|e| e.name.as_str()).collect();
    let expected_names: Vec<&str> = expected.iter().map(|(n, _)| *n).collect();
    assert_eq!(errors, expected_names);
    for (name, message) in expected {
        let got = error(&result, name);
        assert!(got.contains(message), "{name}: {got}");
        assert!(!got.contains("--show-trace"), "{name}: {got}");
        assert!(!got.contains("@kiln-"), "{name}: {got}");
    }
    // Nix's location excerpt is part of the message.
    assert!(error(&result, "asserts").contains("release.nix:16:13"));
}

#[test]
fn errors_are_the_same_whatever_the_process_count() {
    let tmp = tempfile::tempdir().unwrap();
    let mut one = legacy(
        &fixture("errors"),
        "release.nix",
        BTreeMap::new(),
        &tmp.path().join("a"),
    );
    one.max_processes = 1;
    let mut three = legacy(
        &fixture("errors"),
        "release.nix",
        BTreeMap::new(),
        &tmp.path().join("b"),
    );
    three.max_processes = 3;
    let a = run(&one).unwrap();
    let b = run(&three).unwrap();
    let names = |r: &kiln_coordinator::eval::EvalResult| {
        (
            r.jobs.iter().map(|j| j.name.clone()).collect::<Vec<_>>(),
            r.errors.iter().map(|e| e.name.clone()).collect::<Vec<_>>(),
        )
    };
    assert_eq!(names(&a), names(&b));
    assert_eq!(a.jobs, b.jobs);
}

#[test]
fn a_process_ended_by_the_memory_cap_only_fails_the_job_it_was_on() {
    let tmp = tempfile::tempdir().unwrap();
    let mut req = legacy(
        &fixture("errors"),
        "release.nix",
        BTreeMap::new(),
        tmp.path(),
    );
    // One process: the hog kills the batch holding every other job.
    req.max_processes = 1;
    let result = run(&req).unwrap();
    assert!(error(&result, "hog").contains("out of memory"));
    assert_eq!(result.jobs.len(), 3);
    assert!(result.stats.isolated >= 1);
}

#[test]
fn a_syntax_error_fails_the_evaluation_with_nix_message() {
    let tmp = tempfile::tempdir().unwrap();
    let err = evaluate_fixture("syntax", tmp.path()).unwrap_err();
    let EvalError::Nix { message } = &err else {
        panic!("{err:?}")
    };
    assert!(message.contains("syntax error"), "{message}");
    assert!(message.contains("syntax/release.nix:4"), "{message}");
}

#[test]
fn a_missing_expression_file_fails_the_evaluation_with_nix_message() {
    let tmp = tempfile::tempdir().unwrap();
    let req = legacy(
        &fixture("errors"),
        "no-such-file.nix",
        BTreeMap::new(),
        tmp.path(),
    );
    let err = run(&req).unwrap_err();
    let EvalError::Nix { message } = &err else {
        panic!("{err:?}")
    };
    assert!(message.contains("no-such-file.nix"), "{message}");
    assert!(message.contains("No such file or directory"), "{message}");
}

#[test]
fn a_top_level_that_is_not_an_attribute_set_fails_the_evaluation() {
    let tmp = tempfile::tempdir().unwrap();
    let err = evaluate_fixture("not-a-set", tmp.path()).unwrap_err();
    assert!(
        matches!(&err, EvalError::NotAJobset { found } if found == "a string"),
        "{err:?}"
    );
}

#[test]
fn expressions_outside_the_checkout_are_refused_before_running_nix() {
    let tmp = tempfile::tempdir().unwrap();
    for expression in ["../errors/release.nix", "/etc/passwd", ""] {
        let req = legacy(&fixture("syntax"), expression, BTreeMap::new(), tmp.path());
        assert!(
            matches!(run(&req), Err(EvalError::InvalidRequest(_))),
            "{expression:?}"
        );
    }
}

#[test]
fn restricted_evaluation_keeps_jobsets_inside_their_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let checkout = tmp.path().join("checkout");
    std::fs::create_dir(&checkout).unwrap();
    std::fs::write(
        checkout.join("release.nix"),
        "{ leak = builtins.readFile /etc/hostname; }",
    )
    .unwrap();
    let result = run(&legacy(
        &checkout,
        "release.nix",
        BTreeMap::new(),
        &tmp.path().join("s"),
    ))
    .unwrap();
    assert!(
        error(&result, "leak").contains("is forbidden in restricted mode"),
        "{:?}",
        result.errors
    );
}

#[test]
fn a_missing_nix_instantiate_is_a_spawn_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut req = legacy(
        &fixture("errors"),
        "release.nix",
        BTreeMap::new(),
        tmp.path(),
    );
    req.nix.bin_dir = Some(tmp.path().join("no-nix-here"));
    let err = run(&req).unwrap_err();
    assert!(
        matches!(&err, EvalError::Spawn { program, .. } if program.ends_with("no-nix-here/nix-instantiate")),
        "{err:?}"
    );
}
