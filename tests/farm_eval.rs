//! Evaluations in the farm: per-job errors beside good jobs, evaluation-level failures with
//! Nix's message, polling of declared jobsets, and flake jobsets.

mod harness;

use std::path::Path;

use harness::farm::FarmApi;
use harness::farm::TestFarm;

const MIXED: &str = r#"
{ system ? builtins.currentSystem }:
let
  ok = derivation { name = "ok"; inherit system; builder = "/bin/sh"; args = [ "-c" "echo ok > $out" ]; };
in {
  inherit ok;
  thrown = throw "this job is broken on purpose";
  asserted = assert system == "no-such-system"; ok;
  nested.fine = ok;
}
"#;

#[test]
fn job_errors_do_not_hide_other_jobs_and_a_syntax_error_fails_the_evaluation() {
    let farm = TestFarm::start().run();
    let repo = farm.repo("mixed", &[("release.nix", MIXED)]);
    farm.add_jobset("p", "mixed", &repo, "release.nix");
    let eval = farm.wait_builds(farm.evaluate("p", "mixed"));
    assert_eq!(eval["status"], "succeeded");
    let statuses = TestFarm::statuses(&eval);
    assert_eq!(statuses.len(), 2, "{statuses:?}");
    assert_eq!(statuses["ok"], "succeeded");
    assert_eq!(statuses["nested.fine"], "succeeded");
    let errors: Vec<(&str, &str)> = eval["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["job"].as_str().unwrap(), e["message"].as_str().unwrap()))
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(errors[0].0, "asserted");
    assert!(errors[0].1.contains("assertion"), "{}", errors[0].1);
    assert_eq!(errors[1].0, "thrown");
    assert!(
        errors[1].1.contains("this job is broken on purpose"),
        "{}",
        errors[1].1
    );
    assert_eq!(eval["counts"]["errors"], 2);

    farm.commit(
        &repo,
        &[(
            "release.nix",
            "{ system ? builtins.currentSystem }: { oops = ; }",
        )],
    );
    let failed = farm.wait_eval(farm.evaluate("p", "mixed"));
    assert_eq!(failed["status"], "failed");
    let message = failed["error"].as_str().unwrap();
    assert!(message.contains("syntax error"), "{message}");
    assert!(failed["builds"].as_array().unwrap().is_empty());
    // The list shows both, newest first.
    let list = farm.get("/api/v1/projects/p/jobsets/mixed/evals");
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["status"], "failed");
    assert_eq!(list[1]["status"], "succeeded");
    assert_eq!(list[1]["counts"]["succeeded"], 2);
}

#[test]
fn declared_jobsets_are_polled_for_new_commits() {
    let repos = tempfile::tempdir().unwrap();
    let repo = repos.path().join("polled");
    std::fs::create_dir_all(&repo).unwrap();
    harness::farm::git(&repo, &["init", "-q"]);
    let job = |text: &str| {
        format!(
            "{{ system ? builtins.currentSystem }}: {{ job = derivation {{ name = \"polled\"; inherit system; \
             builder = \"/bin/sh\"; args = [ \"-c\" \"echo {text} > $out\" ]; }}; }}"
        )
    };
    harness::farm::write_files(&repo, &[("release.nix", &job("one"))]);
    harness::farm::git(&repo, &["add", "-A"]);
    harness::farm::git(&repo, &["commit", "-q", "-m", "one"]);
    let farm = TestFarm::start()
        .with_config(&format!(
            "[[project]]\nname = \"declared\"\n[[project.jobset]]\nname = \"main\"\nurl = \"file://{}\"\n\
             branch = \"main\"\nexpression = \"release.nix\"\ncheck_interval = 1\n",
            repo.display()
        ))
        .run();
    let jobset = farm.get("/api/v1/projects/declared/jobsets/main");
    assert_eq!(jobset["source"], "config");
    assert_eq!(jobset["check_interval"], 1);
    let first = farm.wait_for("the first evaluation", || {
        let list = farm.get("/api/v1/projects/declared/jobsets/main/evals");
        list.as_array().unwrap().first().cloned()
    });
    assert_eq!(first["requested_by"], "poll");
    let first = farm.wait_builds(first["id"].as_i64().unwrap());
    assert_eq!(TestFarm::statuses(&first)["job"], "succeeded");
    // Bad jobsets are refused with the field named, and change nothing.
    for (body, field) in [
        (
            serde_json::json!({"url": "/r", "expression": "a.nix", "flake": true}),
            "not both",
        ),
        (serde_json::json!({"url": "/r"}), "expression"),
        (
            serde_json::json!({"url": "/r", "expression": "a.nix", "shares": 0}),
            "shares",
        ),
        (
            serde_json::json!({"url": "/r", "expression": "a.nix", "colour": "red"}),
            "colour",
        ),
    ] {
        let (status, answer) = farm.call("PUT", "/api/v1/projects/other/jobsets/bad", Some(&body));
        assert_eq!(status, 400, "{body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{body}: {message}");
    }
    assert_eq!(
        farm.call("GET", "/api/v1/projects/other/jobsets/bad", None)
            .0,
        404
    );
    // The API cannot change a jobset of the config file.
    let (status, _) = farm.call(
        "PUT",
        "/api/v1/projects/declared/jobsets/main",
        Some(&serde_json::json!({"url": "/elsewhere", "expression": "x.nix"})),
    );
    assert_eq!(status, 409);

    harness::farm::write_files(&repo, &[("release.nix", &job("two"))]);
    harness::farm::git(&repo, &["commit", "-qam", "two"]);
    let head = harness::farm::git(&repo, &["rev-parse", "HEAD"]);
    let second = farm.wait_for("an evaluation of the new commit", || {
        let list = farm.get("/api/v1/projects/declared/jobsets/main/evals");
        let newest = list.as_array().unwrap().first().cloned().unwrap();
        (newest["commit"] == head.as_str()).then_some(newest)
    });
    let second = farm.wait_builds(second["id"].as_i64().unwrap());
    assert_eq!(TestFarm::statuses(&second)["job"], "succeeded");
    // Polls that find the same commit add no evaluation.
    let list = farm.get("/api/v1/projects/declared/jobsets/main/evals");
    assert_eq!(list.as_array().unwrap().len(), 2);
}

#[test]
fn a_flake_jobset_builds_its_hydra_jobs() {
    let farm = TestFarm::start().with_workers(2).run();
    let repo = farm.repo_from("flake", Path::new("examples/flake"));
    farm.put_jobset(
        "p",
        "flake",
        serde_json::json!({"url": format!("file://{}", repo.display()), "flake": true, "check_interval": 0}),
    );
    let jobset = farm.get("/api/v1/projects/p/jobsets/flake");
    assert_eq!(jobset["flake"], true);
    let eval = farm.wait_builds(farm.evaluate("p", "flake"));
    let statuses = TestFarm::statuses(&eval);
    assert!(statuses.contains_key("shout.x86_64-linux"), "{statuses:?}");
    assert!(statuses.contains_key("release"), "{statuses:?}");
    assert!(statuses.values().all(|s| s == "succeeded"), "{statuses:?}");
    let shout = TestFarm::build_of(&eval, "shout.x86_64-linux")["id"]
        .as_i64()
        .unwrap();
    assert_eq!(
        farm.get(&format!("/api/v1/builds/{shout}"))["priority"],
        150
    );
}
