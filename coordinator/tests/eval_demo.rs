//! The demo jobset of `examples/demo`, evaluated with real Nix into a chroot store.

mod eval_support;

use std::collections::BTreeMap;
use std::path::Path;

use eval_support::*;
use kiln_coordinator::eval::EvalResult;

const DEMO_JOBS: [&str; 28] = [
    "chain.step1",
    "chain.step2",
    "chain.step3",
    "chain.step4",
    "chain.step5",
    "chain.step6",
    "chain.step7",
    "chain.step8",
    "docs.manual",
    "fanin.combined",
    "fanin.parts.part1",
    "fanin.parts.part2",
    "fanin.parts.part3",
    "fanin.parts.part4",
    "fanin.parts.part5",
    "fanin.parts.part6",
    "hello",
    "packages.greeting",
    "packages.greeting-tree",
    "packages.libdemo",
    "packages.shout",
    "packages.structured",
    "packages.uses-libdemo",
    "release",
    "tests.broken",
    "tests.flaky",
    "tests.unit.arithmetic",
    "tests.unit.hello-runs",
];

fn evaluate_demo(store: &Path) -> EvalResult {
    let demo = repo_root().join("examples/demo");
    run(&legacy(&demo, "release.nix", BTreeMap::new(), store)).expect("demo evaluates")
}

/// `nix-instantiate`'s `.drv` for each attribute path, in a separate chroot store.
fn nix_instantiate(store: &Path, attrs: &[&str]) -> Vec<String> {
    let release = repo_root().join("examples/demo/release.nix");
    let store = store.to_str().unwrap();
    let mut args = vec!["--store", store, release.to_str().unwrap()];
    for attr in attrs {
        args.extend(["-A", attr]);
    }
    nix_ok("nix-instantiate", &args)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn demo_jobset_has_every_job_with_the_drv_nix_instantiate_gives() {
    let tmp = tempfile::tempdir().unwrap();
    let result = evaluate_demo(&tmp.path().join("eval"));
    assert!(result.errors.is_empty(), "{:?}", result.errors);
    let names: Vec<&str> = result.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, DEMO_JOBS);

    // Every job but the aggregate (whose .drv Kiln rewrites) has nix-instantiate's .drv.
    let plain: Vec<&str> = DEMO_JOBS
        .iter()
        .copied()
        .filter(|n| *n != "release")
        .collect();
    let expected = nix_instantiate(&tmp.path().join("reference"), &plain);
    assert_eq!(expected.len(), plain.len());
    for (name, drv) in plain.iter().zip(&expected) {
        assert_eq!(&job(&result, name).drv_path.to_absolute(), drv, "{name}");
    }
    // And the .drv files are in the evaluation's store, byte for byte as Nix wrote them.
    let eval_store = tmp.path().join("eval/store");
    let reference = tmp.path().join("reference");
    for drv in &expected {
        assert_eq!(
            drv_text(&eval_store, drv),
            drv_text(&reference, drv),
            "{drv}"
        );
    }
}

#[test]
fn demo_jobs_carry_outputs_system_and_hydra_meta() {
    let tmp = tempfile::tempdir().unwrap();
    let result = evaluate_demo(tmp.path());

    let libdemo = job(&result, "packages.libdemo");
    let outputs: Vec<&str> = libdemo.outputs.keys().map(String::as_str).collect();
    assert_eq!(outputs, ["dev", "doc", "out"]);
    for (name, path) in &libdemo.outputs {
        let suffix = if name == "out" {
            String::new()
        } else {
            format!("-{name}")
        };
        assert_eq!(path.name(), format!("libdemo-2.1{suffix}"));
    }
    assert_eq!(libdemo.system, nix_system());
    assert!(libdemo.required_system_features.is_empty());
    assert_eq!(libdemo.constituents, None);

    let hello = job(&result, "hello");
    assert_eq!(
        hello.meta.description.as_deref(),
        Some("Prints a friendly greeting")
    );
    assert_eq!(hello.meta.scheduling_priority, 200);
    assert_eq!(hello.meta.timeout, 36000);
    assert_eq!(hello.meta.max_silent, 7200);

    let broken = job(&result, "tests.broken");
    assert_eq!(broken.meta.timeout, 120);
    assert_eq!(broken.meta.max_silent, 60);
    assert_eq!(broken.meta.scheduling_priority, 100);

    let part = job(&result, "fanin.parts.part1");
    assert_eq!(part.meta.description, None);
    assert_eq!(part.meta.scheduling_priority, 100);
    assert_eq!(job(&result, "docs.manual").meta.scheduling_priority, 10);
    assert_eq!(job(&result, "fanin.combined").meta.scheduling_priority, 50);
}

#[test]
fn demo_release_aggregate_depends_on_its_named_constituent_and_builds() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let result = evaluate_demo(tmp.path());
    let release = job(&result, "release");
    assert_eq!(
        release.constituents.as_deref(),
        Some(
            &[
                "chain.step8".to_owned(),
                "docs.manual".into(),
                "fanin.combined".into(),
                "hello".into(),
                "packages.shout".into(),
            ][..]
        )
    );
    assert_eq!(release.meta.scheduling_priority, 300);

    // The rewritten .drv has the original's inputs plus docs.manual's derivation, and new
    // output paths; Nix registered it with those references.
    let original = nix_instantiate(&tmp.path().join("reference"), &["release"]).remove(0);
    let rewritten = release.drv_path.to_absolute();
    assert_ne!(rewritten, original);
    let manual = job(&result, "docs.manual").drv_path.to_absolute();
    let store_arg = store.to_str().unwrap();
    let references = |drv: &str| -> Vec<String> {
        nix_ok(
            "nix-store",
            &["--store", store_arg, "-q", "--references", drv],
        )
        .lines()
        .map(str::to_owned)
        .collect()
    };
    let mut expected_refs = references(&original);
    expected_refs.push(manual.clone());
    expected_refs.sort();
    let mut refs = references(&rewritten);
    refs.sort();
    assert_eq!(refs, expected_refs);
    let text = drv_text(&store, &rewritten);
    assert!(
        text.contains(&format!("(\"{manual}\",[\"out\"])")),
        "{text}"
    );
    let out = release.outputs["out"].to_absolute();
    assert!(
        text.contains(&format!("(\"out\",\"{out}\",\"\",\"\")")),
        "{text}"
    );

    // Nix builds it, and building it builds docs.manual first.
    let mut args = vec!["--store", store_arg, "--realise", &rewritten];
    args.extend(SANDBOX_OPTIONS);
    let built = nix_ok("nix-store", &args);
    assert_eq!(built.trim(), out);
    let manual_out = job(&result, "docs.manual").outputs["out"].to_absolute();
    assert!(store.join(manual_out.trim_start_matches('/')).is_dir());
    let listed =
        std::fs::read_to_string(store.join(out.trim_start_matches('/')).join("constituents"))
            .unwrap();
    assert_eq!(listed.lines().count(), 5, "{listed}");
}

#[test]
fn demo_drv_paths_do_not_depend_on_the_process_count() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = repo_root().join("examples/demo");
    let mut one = legacy(
        &demo,
        "release.nix",
        BTreeMap::new(),
        &tmp.path().join("one"),
    );
    one.max_processes = 1;
    let mut four = legacy(
        &demo,
        "release.nix",
        BTreeMap::new(),
        &tmp.path().join("four"),
    );
    four.max_processes = 4;
    let a = run(&one).unwrap();
    let b = run(&four).unwrap();
    assert_eq!(a.jobs, b.jobs);
    assert_eq!(a.jobs.len(), 28);
}

fn nix_system() -> String {
    nix_ok(
        "nix-instantiate",
        &["--eval", "--json", "-E", "builtins.currentSystem"],
    )
    .trim()
    .trim_matches('"')
    .to_owned()
}
