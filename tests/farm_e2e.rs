//! The farm end to end with real Nix and the sandbox: `kiln up` evaluates a git jobset, builds
//! it on its workers and publishes every output to its cache, from which a fresh store
//! substitutes with only Kiln's cache and key and no local building.

mod harness;

use std::path::Path;

use harness::farm::FarmApi;
use harness::farm::TestFarm;

/// The demo jobset of `examples/demo`, built by two workers.
#[test]
fn the_demo_jobset_builds_and_every_output_substitutes_from_kiln_alone() {
    let farm = TestFarm::start().with_workers(2).run();
    let repo = farm.repo_from("demo", Path::new("examples/demo"));
    farm.add_jobset("demo", "main", &repo, "release.nix");
    let id = farm.evaluate("demo", "main");
    let eval = farm.wait_builds(id);
    let statuses = TestFarm::statuses(&eval);

    // Every job of the demo, by its attribute path; `version` (a string) is no job.
    assert_eq!(statuses.len(), 28, "{statuses:?}");
    assert!(!statuses.contains_key("version"));
    assert_eq!(statuses["tests.broken"], "failed");
    assert_eq!(statuses["tests.flaky"], "failed-with-output");
    for (job, status) in &statuses {
        if job != "tests.broken" && job != "tests.flaky" {
            assert_eq!(status, "succeeded", "{job}");
        }
    }
    assert_eq!(eval["errors"].as_array().unwrap().len(), 0);
    assert_eq!(eval["counts"]["total"], 28);

    // Nested attribute sets, multiple outputs, fixed-output derivations and the aggregate.
    assert_eq!(statuses["fanin.parts.part3"], "succeeded");
    let libdemo = TestFarm::build_of(&eval, "packages.libdemo");
    let outputs: Vec<&str> = libdemo["outputs"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(outputs, ["dev", "doc", "out"]);
    assert_eq!(statuses["packages.greeting"], "succeeded");
    assert_eq!(statuses["packages.greeting-tree"], "succeeded");
    assert_eq!(statuses["release"], "succeeded");

    // Products and metrics of the manual; the steps built for a job with dependencies.
    let manual_id = TestFarm::build_of(&eval, "docs.manual")["id"]
        .as_i64()
        .unwrap();
    let manual = farm.get(&format!("/api/v1/builds/{manual_id}"));
    let products = manual["products"].as_array().unwrap();
    assert_eq!(products.len(), 2, "{manual}");
    assert_eq!(products[1]["type"], "file");
    assert_eq!(products[1]["subtype"], "binary-dist");
    assert_eq!(products[1]["name"], "demo tool.bin");
    assert_eq!(products[1]["file_size"], 20);
    let metrics: Vec<&str> = manual["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(metrics, ["manual.size", "manual.words"]);
    let step8 = TestFarm::build_of(&eval, "chain.step8")["id"]
        .as_i64()
        .unwrap();
    let step8 = farm.get(&format!("/api/v1/builds/{step8}"));
    assert_eq!(step8["steps"].as_array().unwrap().len(), 8, "{step8}");
    assert!(
        step8["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "succeeded" && s["attempt"] == 1)
    );

    // The log of the failing test, from the cache once it finished.
    let broken = TestFarm::build_of(&eval, "tests.broken")["id"]
        .as_i64()
        .unwrap();
    let log = farm.kiln.request(
        "GET",
        &format!("/api/v1/builds/{broken}/log"),
        &[],
        harness::Body::Empty,
    );
    assert_eq!(log.status, 200);
    assert!(
        log.text().contains("this test fails on purpose"),
        "{}",
        log.text()
    );

    // The dashboard shows the way down to a build.
    for page in [
        "/".to_owned(),
        "/projects/demo/jobsets/main".to_owned(),
        format!("/evals/{id}"),
        format!("/builds/{manual_id}"),
    ] {
        let answer = farm.kiln.request("GET", &page, &[], harness::Body::Empty);
        assert_eq!(answer.status, 200, "{page}");
        assert!(answer.text().contains("<html>"), "{page}");
    }

    // The OpenAPI document describes the API the test just used.
    let openapi = farm.get("/api/v1/openapi.json");
    for path in [
        "/api/v1/projects",
        "/api/v1/projects/{project}/jobsets/{jobset}/evals",
        "/api/v1/evals/{id}",
        "/api/v1/builds/{id}",
        "/api/v1/builds/{id}/log",
        "/api/v1/builds/{id}/restart",
        "/api/v1/builds/{id}/cancel",
        "/api/v1/builds/{id}/bump",
    ] {
        assert!(
            openapi["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
    let statuses_schema = &openapi["components"]["schemas"]["ApiStatus"]["enum"];
    assert_eq!(
        statuses_schema.as_array().unwrap().len(),
        12,
        "{statuses_schema}"
    );

    // Every output of every build that produced outputs substitutes into a fresh store.
    let mut paths = Vec::new();
    for build in eval["builds"].as_array().unwrap() {
        if matches!(
            build["status"].as_str(),
            Some("succeeded" | "failed-with-output")
        ) {
            for path in build["outputs"].as_object().unwrap().values() {
                paths.push(path.as_str().unwrap().to_owned());
            }
        }
    }
    // 26 builds with one output each, libdemo's two more outputs, and the flaky test's.
    assert_eq!(paths.len(), 29, "{paths:?}");
    let client = farm.client_store(farm.repos.path(), "client");
    let out = client.substitute(&farm.kiln.substituter, &farm.kiln.public_key, &paths, None);
    assert!(
        out.status.success(),
        "substitution failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for path in &paths {
        assert!(client.has(path), "{path} was not substituted");
    }
    let hello = TestFarm::build_of(&eval, "hello")["outputs"]["out"]
        .as_str()
        .unwrap()
        .to_owned();
    let script = std::fs::read_to_string(client.real_path(&format!("{hello}/bin/hello"))).unwrap();
    assert!(script.contains("Hello, world!"));
}

const LAYERED: &str = r#"
{ system ? builtins.currentSystem }:
let
  mk = name: script: deps: derivation ({
    inherit name system;
    builder = "/bin/sh";
    args = [ "-c" script ];
  } // deps);
  leaf = mk "leaf" "echo LEAF > $out" { };
  middle = mk "middle" "/bin/busybox cat $leaf > $out; echo middle >> $out" { inherit leaf; };
  top = mk "top" "/bin/busybox cat $middle > $out; echo top >> $out" { inherit middle; };
  other = mk "other" "echo other > $out" { };
in { inherit leaf middle top other; }
"#;

#[test]
fn a_second_commit_rebuilds_only_the_changed_leaf_and_its_dependents() {
    let farm = TestFarm::start().with_workers(1).run();
    let repo = farm.repo("layered", &[("release.nix", LAYERED)]);
    farm.add_jobset("p", "layered", &repo, "release.nix");
    let first = farm.wait_builds(farm.evaluate("p", "layered"));
    assert!(
        TestFarm::statuses(&first)
            .values()
            .all(|s| s == "succeeded")
    );
    let built_before = farm.steps_finished().len();
    assert_eq!(built_before, 4);

    farm.commit(
        &repo,
        &[(
            "release.nix",
            &LAYERED.replace("echo LEAF", "echo NEW-LEAF"),
        )],
    );
    let second = farm.wait_builds(farm.evaluate("p", "layered"));
    assert_ne!(first["commit"], second["commit"]);
    assert!(
        TestFarm::statuses(&second)
            .values()
            .all(|s| s == "succeeded")
    );
    // `other` did not change: its outputs were in the cache, nothing was built for it.
    let other = TestFarm::build_of(&second, "other");
    assert_eq!(other["cached"], true);
    assert_eq!(
        other["outputs"],
        TestFarm::build_of(&first, "other")["outputs"]
    );
    for job in ["leaf", "middle", "top"] {
        assert_eq!(TestFarm::build_of(&second, job)["cached"], false, "{job}");
        assert_ne!(
            TestFarm::build_of(&second, job)["outputs"],
            TestFarm::build_of(&first, job)["outputs"],
            "{job}"
        );
    }
    // Exactly the leaf and its two dependents were built again.
    assert_eq!(farm.steps_finished().len(), built_before + 3);
}
