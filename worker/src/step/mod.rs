//! Running one step: check the message, substitute the inputs, build, read the outputs, upload.
//!
//! [`plan`] checks the message; [`status`] maps Nix's verdicts to step statuses; [`upload`]
//! sends outputs and logs to the cache. This module sequences them and turns every failure
//! into a status: a step always ends with a [`StepResult`], never an error or a panic.

pub mod plan;
pub mod status;
pub mod upload;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use kiln_nix::{StoreDir, StorePath};
use kiln_proto::{PROTO_VERSION, StepMessage, StepResult, StepStatus};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::WorkerConfig;
use crate::executor::{Shared, Slot};
use crate::log::{BuildLog, LogSink};
use crate::outputs::support::{BuiltOutput, SupportFacts, read_support};
use crate::serve::{Interrupted, NixBuildStatus, PathInfo};
use plan::Plan;
use status::{nix_message, step_status};

/// How a step ended, before it is stamped into a [`StepResult`].
#[derive(Debug, Default)]
struct Outcome {
    status: Option<StepStatus>,
    message: Option<String>,
    outputs: BTreeMap<String, kiln_proto::OutputInfo>,
    facts: SupportFacts,
}

impl Outcome {
    fn new(status: StepStatus, message: impl Into<String>) -> Outcome {
        Outcome {
            status: Some(status),
            message: Some(message.into()),
            ..Outcome::default()
        }
    }

    fn cancelled() -> Outcome {
        Outcome::new(StepStatus::Cancelled, "cancelled")
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Runs `step` on the executor's slots; see [`Executor::run`](crate::Executor::run).
pub(crate) async fn run(
    shared: &Shared,
    step: &StepMessage,
    log: &dyn LogSink,
    cancel: &CancellationToken,
) -> StepResult {
    let started_at_ms = now_ms();
    let span = tracing::info_span!(
        "step",
        worker = %shared.config.name,
        step = step.step_id,
        attempt = step.attempt,
        drv = %step.drv_path
    );
    let outcome = execute(shared, step, log, cancel).instrument(span).await;
    let status = outcome.status.unwrap_or(StepStatus::Succeeded);
    let finished_at_ms = now_ms();
    tracing::info!(
        worker = %shared.config.name,
        step = step.step_id,
        attempt = step.attempt,
        drv = %step.drv_path,
        %status,
        message = outcome.message.as_deref().unwrap_or(""),
        ms = finished_at_ms - started_at_ms,
        "step finished"
    );
    StepResult {
        version: PROTO_VERSION,
        step_id: step.step_id,
        attempt: step.attempt,
        worker: shared.config.name.clone(),
        status,
        message: outcome.message,
        started_at_ms,
        finished_at_ms,
        outputs: outcome.outputs,
        products: outcome.facts.products,
        metrics: outcome.facts.metrics,
    }
}

/// Why this worker must not build `plan`, if it must not: a system or feature it lacks. The
/// coordinator should not have sent it here, so another worker may take it (`Transient`).
fn routing_problem(config: &WorkerConfig, plan: &Plan) -> Option<String> {
    if plan.system != "builtin" && !config.systems.contains(&plan.system) {
        return Some(format!(
            "worker {} builds for {:?}, not {}",
            config.name, config.systems, plan.system
        ));
    }
    let missing: Vec<&String> = plan
        .required_features
        .iter()
        .filter(|f| !config.features.contains(f))
        .collect();
    if !missing.is_empty() {
        return Some(format!(
            "worker {} lacks the system features {missing:?}",
            config.name
        ));
    }
    None
}

async fn execute(
    shared: &Shared,
    step: &StepMessage,
    log: &dyn LogSink,
    cancel: &CancellationToken,
) -> Outcome {
    if cancel.is_cancelled() {
        return Outcome::cancelled();
    }
    let plan = match plan::plan(step) {
        Ok(plan) => plan,
        Err(err) => return Outcome::new(StepStatus::Failed, err.0),
    };
    if let Some(problem) = routing_problem(&shared.config, &plan) {
        return Outcome::new(StepStatus::Transient, problem);
    }
    let Some(mut slot) = shared.acquire(cancel).await else {
        return Outcome::cancelled();
    };

    if let Err(outcome) = substitute_inputs(shared, &mut slot, &plan, cancel).await {
        return outcome;
    }

    let store_dir = StoreDir::default();
    let builder = match slot.builder().await {
        Ok(p) => p,
        Err(err) => return Outcome::new(StepStatus::Transient, format!("cannot start Nix: {err}")),
    };
    let mut build_log = BuildLog::new(log, step.step_id, step.max_log_bytes);
    let built = builder
        .build_derivation(&store_dir, &plan.basic, plan.limits, &mut build_log, cancel)
        .await;
    let (log_text, truncated) = build_log.finish();
    if truncated {
        tracing::warn!(
            step = step.step_id,
            limit = step.max_log_bytes,
            "build log truncated at the limit"
        );
    }
    let result = match built {
        Ok(result) => result,
        Err(Interrupted::Cancelled) => return Outcome::cancelled(),
        Err(Interrupted::Broken(err)) => {
            return Outcome::new(
                StepStatus::Transient,
                format!("Nix failed during the build: {err}"),
            );
        }
    };
    let ran = !matches!(
        result.status,
        NixBuildStatus::AlreadyValid | NixBuildStatus::ResolvesToAlreadyValid
    );
    if !result.status.is_success() {
        drop(slot);
        if ran {
            upload::log(shared, &plan, log_text).await;
        }
        return Outcome::new(step_status(result.status), nix_message(&result.error_msg));
    }

    let paths: Vec<String> = plan.outputs.values().map(StorePath::to_absolute).collect();
    let infos = match builder.query_path_infos(&paths, &mut Vec::new()).await {
        Ok(infos) => infos,
        Err(Interrupted::Cancelled) => return Outcome::cancelled(),
        Err(Interrupted::Broken(err)) => {
            return Outcome::new(
                StepStatus::Transient,
                format!("cannot read the outputs' path infos: {err}"),
            );
        }
    };
    // The builder is free for the next step while this one reads and uploads its outputs.
    drop(slot);
    if ran {
        upload::log(shared, &plan, log_text).await;
    }
    finish_outputs(shared, &plan, step, infos, cancel).await
}

/// Makes the plan's inputs valid in the worker's store, substituting them from the cache in the
/// slot's substituter process; any input still missing afterwards fails the step as transient.
async fn substitute_inputs(
    shared: &Shared,
    slot: &mut Slot<'_>,
    plan: &Plan,
    cancel: &CancellationToken,
) -> Result<(), Outcome> {
    if plan.inputs.is_empty() {
        return Ok(());
    }
    let substituter = slot
        .substituter()
        .await
        .map_err(|err| Outcome::new(StepStatus::Transient, format!("cannot start Nix: {err}")))?;
    let mut said = Vec::new();
    let valid = match substituter
        .query_valid_paths(&plan.inputs, true, &mut said, cancel)
        .await
    {
        Ok(valid) => valid,
        Err(Interrupted::Cancelled) => return Err(Outcome::cancelled()),
        Err(Interrupted::Broken(err)) => {
            return Err(Outcome::new(
                StepStatus::Transient,
                format!("substituting the inputs failed: {err}"),
            ));
        }
    };
    let missing: Vec<&str> = plan
        .inputs
        .iter()
        .filter(|p| !valid.contains(*p))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut message = format!(
        "inputs could not be substituted from {}: {}",
        shared.config.cache_url,
        missing.join(" ")
    );
    let said = nix_message(&String::from_utf8_lossy(&said));
    if !said.is_empty() {
        message.push_str(&format!("; Nix said: {said}"));
    }
    Err(Outcome::new(StepStatus::Transient, message))
}

/// Everything after a successful build: `nix-support`, the output size limit, the uploads.
async fn finish_outputs(
    shared: &Shared,
    plan: &Plan,
    step: &StepMessage,
    infos: Vec<PathInfo>,
    cancel: &CancellationToken,
) -> Outcome {
    let have: BTreeSet<&str> = infos.iter().map(|i| i.path.as_str()).collect();
    if let Some((name, path)) = plan
        .outputs
        .iter()
        .find(|(_, p)| !have.contains(p.to_absolute().as_str()))
    {
        return Outcome::new(
            StepStatus::Transient,
            format!("output {name} ({path}) is not valid after a successful build"),
        );
    }
    let built: Vec<BuiltOutput> = plan
        .outputs
        .iter()
        .map(|(name, path)| BuiltOutput {
            name: name.clone(),
            path: path.clone(),
            real: shared
                .config
                .store_root
                .join(path.to_absolute().trim_start_matches('/')),
        })
        .collect();
    let facts = match tokio::task::spawn_blocking({
        let built = built.clone();
        move || read_support(&built)
    })
    .await
    {
        Ok(facts) => facts,
        Err(err) => {
            return Outcome::new(
                StepStatus::Transient,
                format!("reading nix-support failed: {err}"),
            );
        }
    };

    let total: u64 = infos.iter().map(|i| i.nar_size).sum();
    if step.max_output_bytes > 0 && total > step.max_output_bytes {
        return Outcome::new(
            StepStatus::OutputLimitExceeded,
            format!(
                "the outputs total {total} bytes (NAR), more than the limit of {} bytes",
                step.max_output_bytes
            ),
        );
    }

    let uploaded = tokio::select! {
        uploaded = upload::outputs(shared, &built, &infos) => uploaded,
        () = cancel.cancelled() => return Outcome::cancelled(),
    };
    let outputs = match uploaded {
        Ok(outputs) => outputs,
        Err(message) => return Outcome::new(StepStatus::Transient, message),
    };
    let (status, message) = if facts.failed {
        (
            StepStatus::FailedWithOutput,
            Some("the build succeeded but an output holds nix-support/failed".to_owned()),
        )
    } else {
        (StepStatus::Succeeded, None)
    };
    Outcome {
        status: Some(status),
        message,
        outputs,
        facts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UploadSettings;

    fn config(systems: &[&str], features: &[&str]) -> WorkerConfig {
        let mut c = WorkerConfig::new(
            "w1",
            "/tmp/none",
            "http://127.0.0.1:1/cache/main",
            "k:AAAA",
            UploadSettings {
                base_url: "http://127.0.0.1:1".into(),
                cache: "main".into(),
                token: None,
            },
        );
        c.systems = systems.iter().map(|s| s.to_string()).collect();
        c.features = features.iter().map(|s| s.to_string()).collect();
        c
    }

    fn plan_for(system: &str, features: &[&str]) -> Plan {
        let drv_text = format!(
            "Derive([(\"out\",\"/nix/store/0kh5zbb6nrwcm9ipy9nbs7nbjyjm4ais-b\",\"\",\"\")],[],[],\"{system}\",\"/bin/sh\",[],[])"
        );
        let drv =
            kiln_nix::derivation::Derivation::parse(&StoreDir::default(), "b", drv_text.as_bytes())
                .unwrap();
        let drv_path: StorePath = "/nix/store/1g48ijxx8m4bwfcy8wr0yhzsfyq39r1d-b.drv"
            .parse()
            .unwrap();
        Plan {
            basic: crate::serve::BasicDerivation::new(drv_path, drv, []),
            outputs: BTreeMap::new(),
            inputs: vec![],
            limits: Default::default(),
            system: system.to_owned(),
            required_features: features.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn steps_for_other_systems_or_missing_features_are_handed_back() {
        let c = config(&["x86_64-linux"], &["kvm"]);
        assert_eq!(
            routing_problem(&c, &plan_for("x86_64-linux", &["kvm"])),
            None
        );
        assert_eq!(routing_problem(&c, &plan_for("builtin", &[])), None);
        let err = routing_problem(&c, &plan_for("aarch64-linux", &[])).unwrap();
        assert!(err.contains("aarch64-linux"), "{err}");
        let err = routing_problem(&c, &plan_for("x86_64-linux", &["big-parallel"])).unwrap();
        assert!(err.contains("big-parallel"), "{err}");
    }
}
