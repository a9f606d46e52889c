//! The worker's Nix processes at work: the log streams live, a build stops on request, a Nix
//! process that dies is replaced, and shutdown stops them all.

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
        if args.iter().any(|a| a == "--serve") && args.contains(&root) {
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

#[test]
fn shutdown_stops_every_nix_process_and_later_steps_start_new_ones() {
    let farm = Farm::start();
    let expr = format!(
        "let src = builtins.toFile \"in.txt\" \"input\"; in {{ first = {}; second = {}; }}",
        drv("first", "/bin/busybox cat ${src} > $out"),
        drv("second", "echo second > $out"),
    );
    let first = farm.instantiate(&expr, "first");
    let second = farm.instantiate(&expr, "second");
    farm.push_sources(&first);
    let mut config = farm.config("w");
    config.slots = 2;
    let exec = farm.start_executor(config);
    let root = exec.config().store_root.clone();
    assert_eq!(serve_pids(&root).len(), 2, "one builder per slot at start");
    farm.run_ok(&exec, &farm.message(1, &first));
    // The step with an input also started its slot's substituter.
    assert_eq!(serve_pids(&root).len(), 3);

    farm.rt.block_on(exec.shutdown());
    assert_eq!(serve_pids(&root), Vec::<i32>::new());

    farm.run_ok(&exec, &farm.message(2, &second));
    assert_eq!(serve_pids(&root).len(), 1);
}
