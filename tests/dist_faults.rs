//! The distributed mode under faults, with real processes and services: a worker or the
//! leading coordinator killed with SIGKILL, RabbitMQ and PostgreSQL restarted, Redis stopped,
//! a step message delivered twice, a step that kills every worker taking it.
//!
//! After each fault every build must reach the status its expression dictates, every step's
//! result must be applied exactly once across both coordinators (or the step aborted once),
//! and every output of a succeeded build must substitute from the cache into a fresh store.
//!
//! Needs the services of `scripts/services up DIR` and the `KILN_TEST_*` variables of
//! `DIR/env` (scripts/test provides both).

mod harness;

use std::time::{Duration, Instant};

use harness::dist::{DistFarm, WORKERS};
use harness::farm::FarmApi;
use harness::farm::step_ids;
use kiln_bus::{AmqpBus, AmqpOptions, Bus, step_queue};
use serde_json::Value;

/// `mk name script deps`: a sandboxed derivation running `script` with busybox.
const PRELUDE: &str = r#"
  mk = name: script: deps: derivation ({
    inherit name system;
    builder = "/bin/sh";
    args = [ "-c" script ];
  } // deps);
"#;

fn expr(body: &str) -> String {
    format!("{{ system ? builtins.currentSystem }}:\nlet\n{PRELUDE}\nin {body}\n")
}

/// `layers` layers of `width` derivations, each needing every derivation of the layer below;
/// the first of each layer sleeps `sleep` seconds. All succeed.
fn layered(layers: usize, width: usize, sleep: u32) -> String {
    let mut body = String::from("rec {\n");
    for layer in 0..layers {
        for i in 0..width {
            let deps: String = if layer == 0 {
                String::new()
            } else {
                (0..width)
                    .map(|j| format!("d{}x{j} = d{}x{j};", layer - 1, layer - 1))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let nap = if i == 0 {
                format!("/bin/busybox sleep {sleep}; ")
            } else {
                String::new()
            };
            body.push_str(&format!(
                "  d{layer}x{i} = mk \"d{layer}x{i}\" \"{nap}echo d{layer}x{i} > $out\" {{ {deps} }};\n"
            ));
        }
    }
    body.push('}');
    expr(&body)
}

fn applied(farm: &DistFarm) -> usize {
    step_ids(&farm.coordinator_logs(), "step result applied").len()
}

fn assert_all_succeeded(eval: &Value, jobs: usize) {
    let statuses = DistFarm::statuses(eval);
    assert_eq!(statuses.len(), jobs, "{statuses:?}");
    assert!(statuses.values().all(|s| s == "succeeded"), "{statuses:?}");
}

/// The steps of build `job` of `eval`, from the build API.
fn steps_of(farm: &DistFarm, eval: &Value, job: &str) -> Vec<Value> {
    let id = DistFarm::build_of(eval, job)["id"].as_i64().unwrap();
    farm.get(&format!("/api/v1/builds/{id}"))["steps"]
        .as_array()
        .unwrap()
        .clone()
}

const WORKER_KILL: &str = r#"rec {
  long = mk "long" "echo starting; /bin/busybox sleep 15; echo long > $out" { };
  after-long = mk "after-long" "echo $long > $out" { inherit long; };
  quick = mk "quick" "echo quick > $out" { };
  broken = mk "broken" "echo broken on purpose >&2; exit 1" { };
}"#;

#[test]
fn a_killed_worker_s_step_is_finished_by_another_worker() {
    let mut farm = DistFarm::start().run();
    let repo = farm.repo("kill", &[("release.nix", &expr(WORKER_KILL))]);
    farm.add_jobset("p", "kill", &repo, "release.nix");
    let id = farm.evaluate("p", "kill");
    let (victim, step, _) = farm.wait_for("a worker building the long step", || {
        farm.running("-long.drv").into_iter().next()
    });
    farm.kill(&victim);

    let eval = farm.wait_builds(id);
    let statuses = DistFarm::statuses(&eval);
    assert_eq!(statuses["long"], "succeeded");
    assert_eq!(statuses["after-long"], "succeeded");
    assert_eq!(statuses["quick"], "succeeded");
    assert_eq!(statuses["broken"], "failed");
    let long = steps_of(&farm, &eval, "long");
    let worker = long[0]["worker"].as_str().unwrap();
    assert_ne!(worker, victim, "{long:?}");
    assert!(WORKERS.contains(&worker));
    let counts = farm.step_settlements();
    assert_eq!(counts[&step], (1, 0));
    farm.assert_settled_once();
    farm.assert_cache_consistent(&eval);
}

#[test]
fn the_standby_coordinator_takes_over_from_a_killed_leader() {
    let mut farm = DistFarm::start().run();
    assert_eq!(farm.leader().as_deref(), Some("c1"));
    let repo = farm.repo("dag", &[("release.nix", &layered(5, 4, 2))]);
    farm.add_jobset("p", "dag", &repo, "release.nix");
    let id = farm.evaluate("p", "dag");
    farm.wait_eval(id);
    farm.wait_for("some applied and some dispatched steps", || {
        let logs = farm.log("c1");
        let applied = step_ids(&logs, "step result applied").len();
        let dispatched = step_ids(&logs, "dispatched").len();
        (applied >= 3 && dispatched > applied).then_some(())
    });
    farm.kill("c1");
    let killed = Instant::now();
    // The lease lasts 5 s and the standby tries every 5/3 s: it leads within ~7 s. The bound
    // is generous so that a loaded machine does not fail the test; the requirement is 15 s.
    farm.wait_for("c2 to lead", || {
        (farm.leader().as_deref() == Some("c2")).then_some(())
    });
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "the standby took {took:?} to lead"
    );
    assert!(farm.output("c2").contains("kiln: coordinator c2 leads"));

    let eval = farm.wait_builds(id);
    assert_all_succeeded(&eval, 20);
    assert!(farm.assert_settled_once() >= 20);
    farm.assert_cache_consistent(&eval);
}

#[test]
fn builds_finish_across_rabbitmq_and_postgres_restarts() {
    let farm = DistFarm::start().run();
    let repo = farm.repo("restarts", &[("release.nix", &layered(8, 3, 3))]);
    farm.add_jobset("p", "restarts", &repo, "release.nix");
    let id = farm.evaluate("p", "restarts");
    farm.wait_eval(id);
    farm.wait_for("a few applied steps", || {
        (applied(&farm) >= 3).then_some(())
    });
    farm.services("restart", "rabbitmq");
    let before = applied(&farm);
    farm.wait_for("progress after the RabbitMQ restart", || {
        (applied(&farm) > before).then_some(())
    });
    assert!(
        applied(&farm) < 24,
        "the run ended before PostgreSQL restarted"
    );
    farm.services("restart", "postgres");

    let eval = farm.wait_builds(id);
    assert_all_succeeded(&eval, 24);
    assert_eq!(farm.assert_settled_once(), 24);
    farm.assert_cache_consistent(&eval);
}

#[test]
fn builds_go_on_while_redis_is_down() {
    let farm = DistFarm::start().run();
    let repo = farm.repo("redis", &[("release.nix", &layered(10, 2, 3))]);
    farm.add_jobset("p", "redis", &repo, "release.nix");
    let id = farm.evaluate("p", "redis");
    farm.wait_eval(id);
    farm.wait_for("a few applied steps", || {
        (applied(&farm) >= 2).then_some(())
    });
    farm.services("stop", "redis");
    let stopped = Instant::now();
    let before = applied(&farm);
    farm.wait_for("the status to say the live state is unreachable", || {
        (farm.status()["live"] == false).then_some(())
    });
    while stopped.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(500));
    }
    let during = applied(&farm) - before;
    farm.services("start", "redis");
    assert!(during > 0, "no step finished while Redis was down");

    let eval = farm.wait_builds(id);
    assert_all_succeeded(&eval, 20);
    assert_eq!(farm.assert_settled_once(), 20);
    farm.wait_for("the status to be live again", || {
        (farm.status()["live"] == true).then_some(())
    });
    farm.assert_cache_consistent(&eval);
}

const TWICE: &str = r#"rec {
  twice = mk "twice" ''
    /bin/busybox mkdir -p $out/nix-support
    echo twice > $out/report
    echo "report test $out/report" > $out/nix-support/hydra-build-products
  '' { };
  needs-twice = mk "needs-twice" "echo $twice > $out" { inherit twice; };
}"#;

#[test]
fn a_step_message_delivered_twice_is_applied_once() {
    // No workers yet, and a window that dispatches anyway: the test plays the broker that
    // delivers one message twice.
    let mut farm = DistFarm::start()
        .with_workers(&[])
        .with_setting("farm", "dispatch_window = 4")
        .run();
    let repo = farm.repo("twice", &[("release.nix", &expr(TWICE))]);
    farm.add_jobset("p", "twice", &repo, "release.nix");
    let id = farm.evaluate("p", "twice");
    farm.wait_eval(id);
    let step = farm.wait_for("the step to be dispatched", || {
        step_ids(&farm.log("c1"), "dispatched").first().copied()
    });
    let system = format!("{}-linux", std::env::consts::ARCH);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let bus = AmqpBus::connect(&farm.amqp_url(), AmqpOptions::default())
            .await
            .expect("connect to the farm's vhost");
        let queue = step_queue(&system, &[]);
        let mut consumer = bus
            .consume(std::slice::from_ref(&queue), 1, "test")
            .await
            .unwrap();
        let original = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .expect("a step message")
            .expect("an open bus");
        let message = kiln_proto::StepMessage::decode(&original.body).unwrap();
        assert_eq!(message.step_id, step);
        bus.publish(&queue, original.body.clone()).await.unwrap();
        bus.publish(&queue, original.body.clone()).await.unwrap();
        original.ack().await.unwrap();
        drop(consumer);
        bus.close().await;
    });
    for name in WORKERS {
        farm.start_worker(name);
    }

    let eval = farm.wait_builds(id);
    assert_all_succeeded(&eval, 2);
    farm.wait_for("the second result to be ignored", || {
        step_ids(&farm.log("c1"), "ignoring a duplicate or stale result")
            .contains(&step)
            .then_some(())
    });
    let counts = farm.step_settlements();
    assert_eq!(counts[&step], (1, 0));
    farm.assert_settled_once();
    for (table, column) in [
        ("step_products", "step_id"),
        ("step_logs", "step_id"),
        ("step_outputs", "step_id"),
    ] {
        assert_eq!(
            farm.sql(&format!(
                "SELECT count(*) FROM {table} WHERE {column} = {step}"
            )),
            "1",
            "rows of {table} for step {step}"
        );
    }
    assert_eq!(
        farm.sql(&format!("SELECT attempt FROM steps WHERE id = {step}")),
        "1"
    );
    let twice = steps_of(&farm, &eval, "twice");
    assert_eq!(twice.len(), 1);
    farm.assert_cache_consistent(&eval);
}

const CRASHER: &str = r#"rec {
  crasher = mk "crasher" "echo about to crash; /bin/busybox sleep 600; echo > $out" { };
  needs-crasher = mk "needs-crasher" "echo $crasher > $out" { inherit crasher; };
  one = mk "one" "echo one > $out" { };
  two = mk "two" "/bin/busybox sleep 2; echo two > $out" { };
  three = mk "three" "echo $one > $out" { inherit one; };
}"#;

#[test]
fn a_step_that_crashes_every_worker_is_aborted_at_the_delivery_limit() {
    let mut farm = DistFarm::start()
        .with_setting("distributed", "delivery_limit = 2")
        .run();
    let repo = farm.repo("crasher", &[("release.nix", &expr(CRASHER))]);
    farm.add_jobset("p", "crasher", &repo, "release.nix");
    let id = farm.evaluate("p", "crasher");
    let eval = farm.wait_eval(id);
    let crasher = DistFarm::build_of(&eval, "crasher")["id"].as_i64().unwrap();
    // Plays the crash: whoever builds the crasher dies at once, and comes back. The status
    // comes from heartbeats, so a run seen once is not crashed again.
    let mut crashed = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let build = farm.get(&format!("/api/v1/builds/{crasher}"));
        if !matches!(build["status"].as_str(), Some("queued" | "running")) {
            break;
        }
        for (worker, step, started) in farm.running("-crasher.drv") {
            if crashed.insert((worker.clone(), step, started)) {
                farm.kill(&worker);
                farm.restart(&worker);
            }
        }
        assert!(
            Instant::now() < deadline,
            "the crasher did not end\n{}",
            farm.log_tails()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let crashes = crashed.len();
    let eval = farm.wait_builds(id);
    let statuses = DistFarm::statuses(&eval);
    assert_eq!(statuses["crasher"], "aborted", "{statuses:?}");
    assert_eq!(statuses["needs-crasher"], "dependency-failed");
    for job in ["one", "two", "three"] {
        assert_eq!(statuses[job], "succeeded", "{statuses:?}");
    }
    let step = step_ids(
        &farm.coordinator_logs(),
        "aborted: its message reached the delivery limit",
    );
    assert_eq!(step.len(), 1, "{}", farm.coordinator_logs());
    assert_eq!(farm.step_settlements()[&step[0]], (0, 1));
    // Three deliveries: the first and two redeliveries (the limit), each killing its worker.
    assert_eq!(crashes, 3);
    farm.assert_settled_once();
    farm.assert_cache_consistent(&eval);
}
