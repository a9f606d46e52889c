//! Limits, cancellation and the live log: Nix enforces `timeout`, `maxSilent` and the log
//! size; the worker stops builds on request and survives its Nix process dying.

mod harness;
mod worker_support;

use std::path::PathBuf;
use std::sync::Mutex;

use kiln_proto::StepStatus;
use kiln_worker::{CancellationToken, LogSink};
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

/// A sink that runs `on_first` when the first line arrives.
struct OnFirst<F: Fn(&str) + Send + Sync> {
    lines: Mutex<Vec<String>>,
    on_first: F,
}

impl<F: Fn(&str) + Send + Sync> LogSink for OnFirst<F> {
    fn line(&self, _step_id: i64, line: &[u8]) {
        let line = String::from_utf8_lossy(line).into_owned();
        let first = {
            let mut lines = self.lines.lock().unwrap();
            lines.push(line.clone());
            lines.len() == 1
        };
        if first {
            (self.on_first)(&line);
        }
    }
}

#[test]
fn log_lines_reach_the_sink_while_the_build_runs() {
    let farm = Farm::start();
    let d = farm.instantiate(
        &one(
            "talk",
            "echo first; /bin/busybox sleep 2; echo second; echo done > $out",
        ),
        "talk",
    );
    let exec = farm.executor("w");
    let msg = farm.message(1, &d);
    let out: PathBuf = exec
        .config()
        .store_root
        .join(msg.outputs["out"].trim_start_matches('/'));
    let out_existed_at_first_line = Mutex::new(None);
    let sink = OnFirst {
        lines: Mutex::new(Vec::new()),
        on_first: |_: &str| {
            *out_existed_at_first_line.lock().unwrap() = Some(out.exists());
        },
    };
    let result = farm
        .rt
        .block_on(exec.run(&msg, &sink, CancellationToken::new()));
    assert_eq!(result.status, StepStatus::Succeeded, "{:?}", result.message);
    assert_eq!(*sink.lines.lock().unwrap(), ["first", "second"]);
    // The output is registered only when the build ends, so the first line arrived before.
    assert_eq!(*out_existed_at_first_line.lock().unwrap(), Some(false));
    assert!(out.exists());
}

#[test]
fn cancelling_stops_the_build_and_the_worker_builds_the_next_step() {
    let farm = Farm::start();
    let d = farm.instantiate(
        &one(
            "endless",
            "echo running; /bin/busybox sleep 600; echo > $out",
        ),
        "endless",
    );
    let exec = farm.executor("w");
    let cancel = CancellationToken::new();
    let sink = OnFirst {
        lines: Mutex::new(Vec::new()),
        on_first: |_: &str| cancel.cancel(),
    };
    let msg = farm.message(1, &d);
    let result = farm.rt.block_on(exec.run(&msg, &sink, cancel.clone()));
    assert_eq!(result.status, StepStatus::Cancelled, "{:?}", result.message);
    assert!(result.outputs.is_empty());
    assert_eq!(*sink.lines.lock().unwrap(), ["running"]);

    let ok = farm.instantiate(&one("after", "echo > $out"), "after");
    farm.run_ok(&exec, &farm.message(2, &ok));
}

#[test]
fn a_step_cancelled_before_it_starts_is_cancelled() {
    let farm = Farm::start();
    let d = farm.instantiate(&one("never", "echo > $out"), "never");
    let exec = farm.executor("w");
    let cancel = CancellationToken::new();
    cancel.cancel();
    let result = farm.rt.block_on(exec.run(
        &farm.message(1, &d),
        &worker_support::Lines::default(),
        cancel,
    ));
    assert_eq!(result.status, StepStatus::Cancelled);
}

/// The pids of `nix-store --serve` processes serving the store at `root`.
fn serve_pids(root: &std::path::Path) -> Vec<i32> {
    let root = root.display().to_string();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a == "--serve") && args.iter().any(|a| *a == root) {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn a_nix_process_dying_mid_build_is_transient_and_replaced() {
    let farm = Farm::start();
    let d = farm.instantiate(
        &one(
            "doomed",
            "echo running; /bin/busybox sleep 600; echo > $out",
        ),
        "doomed",
    );
    let exec = farm.executor("w");
    let root = exec.config().store_root.clone();
    let killed = Mutex::new(Vec::new());
    let sink = OnFirst {
        lines: Mutex::new(Vec::new()),
        on_first: |_: &str| {
            // This step has no inputs, so the slot's builder is the only serve process.
            for pid in serve_pids(&root) {
                let pid = rustix::process::Pid::from_raw(pid).unwrap();
                rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
                killed.lock().unwrap().push(pid);
            }
        },
    };
    let result = farm
        .rt
        .block_on(exec.run(&farm.message(1, &d), &sink, CancellationToken::new()));
    assert_eq!(killed.lock().unwrap().len(), 1);
    assert_eq!(result.status, StepStatus::Transient, "{:?}", result.message);
    let message = result.message.unwrap();
    assert!(message.contains("signal 9"), "{message}");

    let ok = farm.instantiate(&one("next", "echo > $out"), "next");
    farm.run_ok(&exec, &farm.message(2, &ok));
}
