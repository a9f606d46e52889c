//! Limits Nix enforces for the worker: `timeout`, `maxSilent` and the log size.

mod harness;
mod worker_support;

use kiln_proto::StepStatus;
use worker_support::{Farm, drv};

fn one(name: &str, script: &str) -> String {
    format!("{{ {name} = {}; }}", drv(name, script))
}

#[test]
fn exceeding_the_timeout_ends_the_build_as_timed_out() {
    let farm = Farm::start();
    let d = farm.instantiate(&one("slow", "echo started; /bin/busybox sleep 60"), "slow");
    let exec = farm.executor("w");
    let mut msg = farm.message(1, &d);
    msg.timeout_secs = 1;
    let (result, lines) = farm.run(&exec, &msg);
    assert_eq!(result.status, StepStatus::TimedOut, "{:?}", result.message);
    let message = result.message.unwrap();
    assert!(message.contains("timed out after 1 seconds"), "{message}");
    assert!(!message.contains("silence"), "{message}");
    assert_eq!(lines, ["started"]);
}

#[test]
fn silence_beyond_max_silent_ends_the_build_as_timed_out() {
    let farm = Farm::start();
    let d = farm.instantiate(
        &one("quiet", "echo started; /bin/busybox sleep 60"),
        "quiet",
    );
    let exec = farm.executor("w");
    let mut msg = farm.message(1, &d);
    msg.max_silent_secs = 1;
    let (result, _) = farm.run(&exec, &msg);
    assert_eq!(result.status, StepStatus::TimedOut, "{:?}", result.message);
    let message = result.message.unwrap();
    assert!(message.contains("1 seconds of silence"), "{message}");
}

#[test]
fn a_log_beyond_the_limit_gives_log_limit_exceeded() {
    let farm = Farm::start();
    // Nix counts the builder's output in the chunks it reads and drops the chunk that crosses
    // the limit, so a few lines go first, in a chunk of their own.
    let script = "echo line 0 of a chatty build; echo line 1 of a chatty build; /bin/busybox sleep 1; \
         i=2; while [ $i -lt 5000 ]; do echo line $i of a chatty build; i=$((i+1)); done; echo > $out";
    let d = farm.instantiate(&one("chatty", script), "chatty");
    let exec = farm.executor("w");
    let mut msg = farm.message(1, &d);
    msg.max_log_bytes = 4000;
    let (result, lines) = farm.run(&exec, &msg);
    assert_eq!(
        result.status,
        StepStatus::LogLimitExceeded,
        "{:?}",
        result.message
    );
    assert!(result.outputs.is_empty());
    let streamed: usize = lines.iter().map(|l| l.len() + 1).sum();
    assert!(streamed <= 4000, "{streamed} bytes streamed");
    assert_eq!(
        lines[..2],
        ["line 0 of a chatty build", "line 1 of a chatty build"]
    );
    let cached = farm.cached_log(&d).expect("the log is uploaded");
    assert!(cached.len() <= 4000 && cached.starts_with("line 0 of a chatty build\n"));
}
