//! Jobsets that are functions of their inputs, as Hydra calls them.

mod eval_support;

use std::collections::BTreeMap;
use std::path::Path;

use eval_support::*;
use kiln_coordinator::eval::{EvalError, EvalInput, EvalResult};
use kiln_coordinator::git::GitMirror;
use kiln_nix::StoreDir;
use kiln_nix::derivation::Derivation;

fn env_of(store: &Path, result: &EvalResult, job_name: &str) -> BTreeMap<String, String> {
    let drv_path = &job(result, job_name).drv_path;
    let text = drv_text(store, &drv_path.to_absolute());
    let drv = Derivation::parse_drv_file(&StoreDir::default(), drv_path, text.as_bytes()).unwrap();
    drv.env
        .iter()
        .map(|(k, v)| {
            (
                String::from_utf8(k.clone()).unwrap(),
                String::from_utf8(v.clone()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn string_boolean_path_and_git_inputs_reach_the_jobset_function() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("message.txt"), "from the src checkout").unwrap();

    // The `lib` input is another git repository, fetched and checked out through a mirror.
    let repo = tmp.path().join("lib.git");
    let rev = commit(
        &repo,
        "main",
        &[file("value.nix", b"\"forty-two\"\n")],
        1_600_000_000,
    );
    let mirror = GitMirror::new(tmp.path().join("mirrors"));
    let url = format!("file://{}", repo.display());
    assert_eq!(mirror.fetch(&url, "main").unwrap(), rev);
    let lib = tmp.path().join("lib");
    mirror.checkout(&url, &rev, &lib).unwrap();

    let inputs = BTreeMap::from([
        (
            "greeting".to_owned(),
            EvalInput::String("hello world".into()),
        ),
        ("loud".to_owned(), EvalInput::Bool(true)),
        ("src".to_owned(), EvalInput::Checkout(src.clone())),
        (
            "lib".to_owned(),
            EvalInput::Git {
                path: lib.clone(),
                rev: rev.clone(),
            },
        ),
        // Not an argument of the function: not passed.
        ("extra".to_owned(), EvalInput::String("ignored".into())),
    ]);
    let store = tmp.path().join("eval");
    let result = run(&legacy(&fixture("inputs"), "release.nix", inputs, &store)).unwrap();
    assert!(result.errors.is_empty(), "{:?}", result.errors);

    let env = env_of(&store.join("store"), &result, "hello");
    let drv = drv_text(
        &store.join("store"),
        &job(&result, "hello").drv_path.to_absolute(),
    );
    assert!(drv.contains("echo hello world! > $out"), "{drv}");
    assert_eq!(env["fromSrc"], "from the src checkout");
    assert_eq!(env["libRev"], rev);
    assert_eq!(env["libShortRev"], &rev[..7]);
    assert_eq!(env["libValue"], "forty-two");
    assert_eq!(env["unused"], "default");
    // `"${lib}"` copied the checkout to the store, as a path input is.
    let tree = &env["libTree"];
    assert!(
        tree.starts_with("/nix/store/") && tree.ends_with("-lib"),
        "{tree}"
    );
    let copied = store.join("store").join(tree.trim_start_matches('/'));
    assert_eq!(
        std::fs::read_to_string(copied.join("value.nix")).unwrap(),
        "\"forty-two\"\n"
    );
}

#[test]
fn a_missing_required_input_fails_the_evaluation_with_nix_message() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = BTreeMap::from([("greeting".to_owned(), EvalInput::String("hi".into()))]);
    let err = run(&legacy(
        &fixture("inputs"),
        "release.nix",
        inputs,
        tmp.path(),
    ))
    .unwrap_err();
    let EvalError::Nix { message } = &err else {
        panic!("{err:?}")
    };
    assert!(message.contains("without required argument"), "{message}");
}

#[test]
fn a_bad_git_revision_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = BTreeMap::from([(
        "lib".to_owned(),
        EvalInput::Git {
            path: tmp.path().to_owned(),
            rev: "main".into(),
        },
    )]);
    let err = run(&legacy(
        &fixture("inputs"),
        "release.nix",
        inputs,
        tmp.path(),
    ))
    .unwrap_err();
    assert!(matches!(err, EvalError::InvalidRequest(_)), "{err:?}");
}
