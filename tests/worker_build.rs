//! The worker against real Nix (sandbox on) and a real `kiln up` cache: inputs come from the
//! cache, outputs and logs go to it, failures are reported with Nix's message.

mod harness;
mod worker_support;

use kiln_proto::StepStatus;
use worker_support::{Farm, drv};

fn chain() -> String {
    format!(
        "let\n  src = builtins.toFile \"greeting.txt\" \"hello from the source\";\n  dep = {};\nin {{\n  inherit dep;\n  top = {};\n}}\n",
        drv("dep", "echo building dep; /bin/busybox cat ${src} > $out"),
        drv(
            "top",
            "echo building top; /bin/busybox cat ${dep} > $out; echo ${dep} >> $out"
        ),
    )
}

#[test]
fn a_step_built_from_cached_inputs_substitutes_into_a_fresh_store() {
    let farm = Farm::start();
    let expr = chain();
    let dep_drv = farm.instantiate(&expr, "dep");
    let top_drv = farm.instantiate(&expr, "top");
    farm.push_sources(&dep_drv);

    let a = farm.executor("a");
    let dep = farm.run_ok(&a, &farm.message(1, &dep_drv));
    let dep_out = dep.outputs["out"].path.clone();
    assert!(dep.outputs["out"].nar_hash.starts_with("sha256:"));
    assert!(dep.outputs["out"].nar_size > 0);

    // A second worker with an empty store: its input can only come from the cache.
    let b = farm.executor("b");
    let b_store = b.config().store_root.clone();
    assert!(!b_store.join(dep_out.trim_start_matches('/')).exists());
    let (top, lines) = farm.run(&b, &farm.message(2, &top_drv));
    assert_eq!(top.status, StepStatus::Succeeded, "{:?}", top.message);
    assert_eq!(top.message, None);
    assert!(b_store.join(dep_out.trim_start_matches('/')).exists());
    assert_eq!(lines, ["building top"]);
    assert!(top.started_at_ms <= top.finished_at_ms);

    let top_out = top.outputs["out"].path.clone();
    let fresh = farm.assert_substitutes("fresh", std::slice::from_ref(&top_out));
    assert!(fresh.has(&dep_out), "the closure came along");
    let contents = std::fs::read_to_string(fresh.real_path(&top_out)).unwrap();
    assert_eq!(contents, format!("hello from the source{dep_out}\n"));

    let log = farm
        .cached_log(&top_drv)
        .expect("the build log is in the cache");
    assert_eq!(log, "building top\n");
}

#[test]
fn a_failing_builder_is_failed_with_nix_message_and_its_log() {
    let farm = Farm::start();
    let expr = format!(
        "{{ fail = {}; }}",
        drv("fail", "echo about to fail; exit 3")
    );
    let fail_drv = farm.instantiate(&expr, "fail");
    let exec = farm.executor("w");
    let (result, lines) = farm.run(&exec, &farm.message(1, &fail_drv));
    assert_eq!(result.status, StepStatus::Failed);
    let message = result.message.unwrap();
    assert_eq!(
        message,
        format!("builder for '{fail_drv}' failed with exit code 3")
    );
    assert_eq!(lines, ["about to fail"]);
    assert!(result.outputs.is_empty());
    assert_eq!(
        farm.cached_log(&fail_drv).as_deref(),
        Some("about to fail\n")
    );
}

#[test]
fn a_malformed_drv_fails_clearly_and_the_worker_keeps_working() {
    let farm = Farm::start();
    let expr = format!("{{ ok = {}; }}", drv("ok", "echo ok > $out"));
    let ok_drv = farm.instantiate(&expr, "ok");
    let exec = farm.executor("w");

    let mut bad = farm.message(1, &ok_drv);
    bad.drv = bad.drv.replace("Derive([", "Derive([(");
    let (result, _) = farm.run(&exec, &bad);
    assert_eq!(result.status, StepStatus::Failed);
    assert!(
        result.message.as_deref().unwrap().contains("is malformed"),
        "{:?}",
        result.message
    );

    let mut forged = farm.message(2, &ok_drv);
    forged.drv = forged.drv.replace("echo ok", "echo evil");
    let (result, _) = farm.run(&exec, &forged);
    assert_eq!(result.status, StepStatus::Failed);
    assert!(
        result
            .message
            .as_deref()
            .unwrap()
            .contains("does not belong to"),
        "{:?}",
        result.message
    );

    farm.run_ok(&exec, &farm.message(3, &ok_drv));
}

#[test]
fn an_input_missing_from_the_cache_is_transient_until_it_arrives() {
    let farm = Farm::start();
    let expr = chain();
    let dep_drv = farm.instantiate(&expr, "dep");
    let top_drv = farm.instantiate(&expr, "top");
    farm.push_sources(&dep_drv);
    let top_msg = farm.message(2, &top_drv);
    let dep_out = top_msg.input_paths[0].clone();

    let b = farm.executor("b");
    let (result, lines) = farm.run(&b, &top_msg);
    assert_eq!(result.status, StepStatus::Transient);
    let message = result.message.unwrap();
    assert!(
        message.contains("could not be substituted") && message.contains(&dep_out),
        "{message}"
    );
    assert!(lines.is_empty(), "nothing was built: {lines:?}");

    // Once another worker uploaded the input, the retry on the same worker succeeds: a miss
    // is not remembered.
    let a = farm.executor("a");
    farm.run_ok(&a, &farm.message(1, &dep_drv));
    farm.run_ok(&b, &top_msg);
}

#[test]
fn a_worker_that_has_built_before_still_substitutes_inputs() {
    // Nix 2.8's serve loop turns substitution off in a process once it has built anything, so
    // this fails unless substitution runs in a process that never builds.
    let farm = Farm::start();
    let expr = chain();
    let dep_drv = farm.instantiate(&expr, "dep");
    let top_drv = farm.instantiate(&expr, "top");
    let other = farm.instantiate(
        &format!("{{ other = {}; }}", drv("other", "echo > $out")),
        "other",
    );
    farm.push_sources(&dep_drv);
    let a = farm.executor("a");
    farm.run_ok(&a, &farm.message(1, &dep_drv));

    let w = farm.executor("w");
    farm.run_ok(&w, &farm.message(2, &other));
    farm.run_ok(&w, &farm.message(3, &top_drv));
}

#[test]
fn steps_this_worker_cannot_serve_are_handed_back_as_transient() {
    let farm = Farm::start();
    let expr = "{ kvm = derivation { name = \"kvm\"; system = builtins.currentSystem; builder = \"/bin/sh\"; \
         args = [ \"-c\" \"echo > $out\" ]; requiredSystemFeatures = [ \"kvm\" ]; }; }";
    let kvm_drv = farm.instantiate(expr, "kvm");
    let exec = farm.executor("w");
    let (result, _) = farm.run(&exec, &farm.message(1, &kvm_drv));
    assert_eq!(result.status, StepStatus::Transient);
    assert!(result.message.unwrap().contains("kvm"));

    let mut config = farm.config("kvm-worker");
    config.features = vec!["kvm".to_owned()];
    let kvm_exec = farm.start_executor(config);
    farm.run_ok(&kvm_exec, &farm.message(2, &kvm_drv));
}
