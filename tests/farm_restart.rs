//! `kill -9` of `kiln up` while builds run, then a restart on the same data directory: every
//! build finishes, no evaluation is lost, and no step that had finished is built again.

mod harness;

use std::collections::BTreeSet;

use harness::farm::FarmApi;
use harness::farm::{TestFarm, step_ids};

const SLOW_GRAPH: &str = r#"
{ system ? builtins.currentSystem }:
let
  mk = name: deps: derivation ({
    inherit name system;
    builder = "/bin/sh";
    args = [ "-c" "echo building ${name}; /bin/busybox sleep 2; echo ${name} > $out" ];
  } // deps);
  a = mk "a" { };
  b = mk "b" { inherit a; };
  c = mk "c" { inherit b; };
  d = mk "d" { inherit c; };
in {
  inherit a b c d;
  e = mk "e" { };
  f = mk "f" { };
  g = mk "g" { };
  h = mk "h" { };
}
"#;

#[test]
fn a_killed_farm_resumes_without_losing_or_repeating_work() {
    let farm = TestFarm::start().with_workers(2).run();
    let repo = farm.repo("slow", &[("release.nix", SLOW_GRAPH)]);
    farm.add_jobset("p", "slow", &repo, "release.nix");
    let id = farm.evaluate("p", "slow");
    farm.wait_eval(id);
    // Kill it once some steps finished and others are being built.
    farm.wait_for("some finished and some running steps", || {
        let log = farm.kiln.log();
        let applied = step_ids(&log, "step result applied").len();
        let dispatched = step_ids(&log, "dispatched").len();
        (applied >= 2 && dispatched > applied).then_some(())
    });
    let farm = farm.crash_and_restart();
    let log = farm.kiln.log();
    let marker = log.len();
    let before: BTreeSet<i64> = step_ids(&log, "step result applied").into_iter().collect();
    assert!(before.len() >= 2);

    let eval = farm.wait_builds(id);
    let statuses = TestFarm::statuses(&eval);
    assert_eq!(statuses.len(), 8);
    assert!(statuses.values().all(|s| s == "succeeded"), "{statuses:?}");
    // The evaluation is still the only one.
    let list = farm.get("/api/v1/projects/p/jobsets/slow/evals");
    assert_eq!(list.as_array().unwrap().len(), 1);
    // Nothing that had finished was dispatched again; everything else was built once more at
    // most, and every step's result was applied once.
    let log = farm.kiln.log();
    let after_restart = &log[marker..];
    let redispatched: BTreeSet<i64> = step_ids(after_restart, "dispatched").into_iter().collect();
    assert!(
        before.is_disjoint(&redispatched),
        "finished steps {before:?} were dispatched again: {redispatched:?}"
    );
    let applied = step_ids(&log, "step result applied");
    let unique: BTreeSet<i64> = applied.iter().copied().collect();
    assert_eq!(
        applied.len(),
        unique.len(),
        "a result was applied twice: {applied:?}"
    );
    assert_eq!(unique.len(), 8);
}
