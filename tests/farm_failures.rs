//! How builds fail, with real Nix and the sandbox: a failing builder, its dependents,
//! `nix-support/failed`, `meta.timeout` and `meta.maxSilent`; restarting, cancelling and bumping.

mod harness;

use harness::farm::FarmApi;
use harness::farm::TestFarm;

const FAILURES: &str = r#"
{ system ? builtins.currentSystem }:
let
  mk = name: script: extra: derivation ({
    inherit name system;
    builder = "/bin/sh";
    args = [ "-c" script ];
  } // extra);
  broken = mk "broken" "echo broken on purpose >&2; exit 1" { };
  flaky = mk "flaky" ''
    /bin/busybox mkdir -p $out/nix-support
    echo "1 of 2 checks failed" > $out/report
    /bin/busybox touch $out/nix-support/failed
  '' { };
in {
  inherit broken flaky;
  needs-broken = mk "needs-broken" "echo $broken > $out" { inherit broken; };
  needs-flaky = mk "needs-flaky" "echo $flaky > $out" { inherit flaky; };
  slow = mk "slow" "echo starting; /bin/busybox sleep 600; echo done > $out" { } // { meta.timeout = 2; };
  silent = mk "silent" "echo starting; /bin/busybox sleep 600; echo done > $out" { } // { meta.maxSilent = 2; };
  fine = mk "fine" "echo fine > $out" { };
}
"#;

#[test]
fn failures_reach_dependents_and_keep_their_own_status() {
    let farm = TestFarm::start().with_workers(2).run();
    let repo = farm.repo("failures", &[("release.nix", FAILURES)]);
    farm.add_jobset("p", "failures", &repo, "release.nix");
    let eval = farm.wait_builds(farm.evaluate("p", "failures"));
    let statuses = TestFarm::statuses(&eval);
    assert_eq!(statuses["broken"], "failed");
    assert_eq!(statuses["needs-broken"], "dependency-failed");
    assert_eq!(statuses["flaky"], "failed-with-output");
    // Hydra's rule: a dependency that "failed with output" fails its dependents too.
    assert_eq!(statuses["needs-flaky"], "dependency-failed");
    assert_eq!(statuses["slow"], "timed-out");
    assert_eq!(statuses["silent"], "timed-out");
    assert_eq!(statuses["fine"], "succeeded");

    // The dependent's own step never ran; the failing step is listed with it.
    let id = TestFarm::build_of(&eval, "needs-broken")["id"]
        .as_i64()
        .unwrap();
    let build = farm.get(&format!("/api/v1/builds/{id}"));
    let steps = build["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{build}");
    assert_eq!(steps[0]["status"], "failed");
    assert_eq!(steps[1]["status"], "dependency-failed");
    assert_eq!(steps[1]["attempt"], 0);
    // The failed-with-output build's outputs are in the cache anyway.
    let flaky = TestFarm::build_of(&eval, "flaky")["outputs"]["out"]
        .as_str()
        .unwrap()
        .to_owned();
    let narinfo = farm.kiln.request(
        "GET",
        &format!("/cache/main/{}.narinfo", &flaky[11..43]),
        &[],
        harness::Body::Empty,
    );
    assert_eq!(narinfo.status, 200);

    // A second evaluation of the same commit's derivations rebuilds nothing: the failures are
    // cached until restarted.
    let before = farm.steps_finished().len();
    let again = farm.wait_builds(farm.evaluate("p", "failures"));
    assert_eq!(TestFarm::statuses(&again), statuses);
    assert_eq!(farm.steps_finished().len(), before);
    assert_eq!(TestFarm::build_of(&again, "broken")["cached"], true);
}

const RESTARTABLE: &str = r#"
{ system ? builtins.currentSystem }:
{
  # Fails until the test creates /kiln-test-flag/ok (a sandbox path of this test's workers).
  gated = derivation {
    name = "gated";
    inherit system;
    builder = "/bin/sh";
    args = [ "-c" "if [ -e /kiln-test-flag/ok ]; then echo passed > $out; else echo 'not yet' >&2; exit 1; fi" ];
  };
}
"#;

#[test]
fn a_restarted_failed_build_runs_again() {
    let flags = tempfile::tempdir().unwrap();
    let farm = TestFarm::start()
        .with_sandbox_path("/kiln-test-flag", flags.path())
        .run();
    let repo = farm.repo("restartable", &[("release.nix", RESTARTABLE)]);
    farm.add_jobset("p", "restartable", &repo, "release.nix");
    let eval = farm.wait_builds(farm.evaluate("p", "restartable"));
    let build = TestFarm::build_of(&eval, "gated")["id"].as_i64().unwrap();
    assert_eq!(TestFarm::statuses(&eval)["gated"], "failed");

    std::fs::write(flags.path().join("ok"), "").unwrap();
    let path = format!("/api/v1/builds/{build}/restart");
    let (status, answer) = farm.call("POST", &path, None);
    assert_eq!(status, 202, "{answer}");
    let finished = farm.wait_for("the restarted build", || {
        let b = farm.get(&format!("/api/v1/builds/{build}"));
        (b["status"] == "succeeded").then_some(b)
    });
    assert_eq!(finished["steps"][0]["attempt"], 2);

    // Restarting a succeeded build changes nothing.
    let (status, _) = farm.call("POST", &path, None);
    assert_eq!(status, 202);
    let unchanged = farm.get(&format!("/api/v1/builds/{build}"));
    assert_eq!(unchanged["status"], "succeeded");
    assert_eq!(unchanged["steps"][0]["attempt"], 2);
    // Unknown builds and malformed ids are refused.
    assert_eq!(
        farm.call("POST", "/api/v1/builds/999999/restart", None).0,
        404
    );
    assert_eq!(farm.call("POST", "/api/v1/builds/x/restart", None).0, 400);
}

const SLOW: &str = r#"
{ system ? builtins.currentSystem }:
{
  forever = derivation {
    name = "forever";
    inherit system;
    builder = "/bin/sh";
    args = [ "-c" "echo started; /bin/busybox sleep 600; echo > $out" ];
  };
  queued = derivation {
    name = "queued";
    inherit system;
    builder = "/bin/sh";
    args = [ "-c" "echo queued > $out" ];
  };
}
"#;

#[test]
fn cancelling_a_running_build_stops_it_and_bumping_is_idempotent() {
    let farm = TestFarm::start().with_workers(1).run();
    let repo = farm.repo("slow", &[("release.nix", SLOW)]);
    farm.add_jobset("p", "slow", &repo, "release.nix");
    let id = farm.evaluate("p", "slow");
    let eval = farm.wait_eval(id);
    let forever = TestFarm::build_of(&eval, "forever")["id"].as_i64().unwrap();
    let queued = TestFarm::build_of(&eval, "queued")["id"].as_i64().unwrap();
    // Bumping twice gives the same priority as bumping once.
    assert_eq!(
        farm.call("POST", &format!("/api/v1/builds/{queued}/bump"), None)
            .0,
        202
    );
    let once = farm.wait_for("the bump", || {
        let b = farm.get(&format!("/api/v1/builds/{queued}"));
        (b["global_priority"].as_i64().unwrap() > 0).then_some(b["global_priority"].clone())
    });
    assert_eq!(
        farm.call("POST", &format!("/api/v1/builds/{queued}/bump"), None)
            .0,
        202
    );
    farm.wait_for("the running build", || {
        let b = farm.get(&format!("/api/v1/builds/{forever}"));
        (b["status"] == "running").then_some(())
    });
    // Its live log shows what it printed so far.
    let log = farm.wait_for("the live log", || {
        let answer = farm.kiln.request(
            "GET",
            &format!("/api/v1/builds/{forever}/log"),
            &[],
            harness::Body::Empty,
        );
        (answer.status == 200 && answer.text().contains("started")).then_some(answer.text())
    });
    assert!(log.contains("started"));
    assert_eq!(
        farm.call("POST", &format!("/api/v1/builds/{forever}/cancel"), None)
            .0,
        202
    );
    let eval = farm.wait_builds(id);
    let statuses = TestFarm::statuses(&eval);
    assert_eq!(statuses["forever"], "cancelled");
    assert_eq!(statuses["queued"], "succeeded");
    assert_eq!(
        farm.get(&format!("/api/v1/builds/{queued}"))["global_priority"],
        once
    );
    // The worker stopped the build: its step is cancelled, not running.
    let step = farm.wait_for("the cancelled step", || {
        let b = farm.get(&format!("/api/v1/builds/{forever}"));
        (b["steps"][0]["status"] != "running").then_some(b["steps"][0].clone())
    });
    assert_eq!(step["status"], "cancelled");
}

const UNSUPPORTED: &str = r#"
{ system ? builtins.currentSystem }:
let
  vm = derivation {
    name = "vm-test";
    inherit system;
    builder = "/bin/sh";
    args = [ "-c" "echo > $out" ];
    requiredSystemFeatures = [ "kvm" ];
  };
in {
  inherit vm;
  uses-vm = derivation { name = "uses-vm"; inherit system vm; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; };
  elsewhere = derivation { name = "elsewhere"; system = "riscv64-none"; builder = "/bin/sh"; args = [ ]; };
  here = derivation { name = "here"; inherit system; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; };
}
"#;

#[test]
fn jobs_no_worker_can_build_end_unsupported() {
    let farm = TestFarm::start()
        .with_farm_setting("unsupported_after = 1")
        .run();
    let repo = farm.repo("unsupported", &[("release.nix", UNSUPPORTED)]);
    farm.add_jobset("p", "unsupported", &repo, "release.nix");
    let eval = farm.wait_builds(farm.evaluate("p", "unsupported"));
    let statuses = TestFarm::statuses(&eval);
    assert_eq!(statuses["vm"], "unsupported");
    assert_eq!(statuses["uses-vm"], "unsupported");
    assert_eq!(statuses["elsewhere"], "unsupported");
    assert_eq!(statuses["here"], "succeeded");
}
