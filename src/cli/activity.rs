//! What this process's workers are doing: the steps each is building, recorded around every
//! run. `kiln up` answers `GET /api/v1/status` from it directly; `kiln worker` sends it to
//! Redis with every heartbeat.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use kiln_bus::StepRunner;
use kiln_proto::{StepMessage, StepResult};
use kiln_web::status::{FarmStatus, RunningStepStatus, StatusSource, WorkerStatus};
use tokio_util::sync::CancellationToken;

/// The workers of this process and their running steps.
#[derive(Debug, Default)]
pub struct Activity {
    workers: Mutex<BTreeMap<String, WorkerStatus>>,
}

impl Activity {
    /// Declares a worker (idle).
    pub fn register(&self, name: &str, systems: &[String], features: &[String], slots: u32) {
        self.lock().insert(
            name.to_owned(),
            WorkerStatus {
                name: name.to_owned(),
                systems: systems.to_vec(),
                features: features.to_vec(),
                slots,
                running: Vec::new(),
                last_seen_ms: now_ms(),
            },
        );
    }

    fn started(&self, worker: &str, step: &StepMessage) {
        if let Some(entry) = self.lock().get_mut(worker) {
            entry.running.push(RunningStepStatus {
                step_id: step.step_id,
                attempt: step.attempt,
                drv_path: step.drv_path.clone(),
                started_at_ms: now_ms(),
            });
        }
    }

    fn finished(&self, worker: &str, step: &StepMessage) {
        if let Some(entry) = self.lock().get_mut(worker)
            && let Some(i) = entry
                .running
                .iter()
                .position(|r| r.step_id == step.step_id && r.attempt == step.attempt)
        {
            entry.running.remove(i);
        }
    }

    /// Every worker as of now.
    pub fn snapshot(&self) -> Vec<WorkerStatus> {
        let now = now_ms();
        self.lock()
            .values()
            .map(|w| WorkerStatus {
                last_seen_ms: now,
                ..w.clone()
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, WorkerStatus>> {
        self.workers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A step runner whose runs are recorded in an [`Activity`] under the worker's name.
pub struct Tracked {
    /// The worker's name.
    pub worker: String,
    /// Where runs are recorded.
    pub activity: Arc<Activity>,
    /// The runner doing the work.
    pub inner: Arc<dyn StepRunner>,
}

#[async_trait]
impl StepRunner for Tracked {
    async fn run(&self, step: &StepMessage, cancel: CancellationToken) -> StepResult {
        self.activity.started(&self.worker, step);
        let result = self.inner.run(step, cancel).await;
        self.activity.finished(&self.worker, step);
        result
    }
}

/// `kiln up`'s status: it is its own leading coordinator, and its workers are local.
pub struct LocalStatus {
    /// The coordinator's name.
    pub leader: String,
    /// The local workers.
    pub activity: Arc<Activity>,
}

#[async_trait]
impl StatusSource for LocalStatus {
    async fn status(&self) -> FarmStatus {
        FarmStatus {
            coordinator_leader: Some(self.leader.clone()),
            workers: self.activity.snapshot(),
            live: true,
        }
    }
}

/// The default name of a coordinator or worker: this machine's host name.
pub fn default_name() -> String {
    nix_hostname().unwrap_or_else(|| "kiln".to_owned())
}

fn nix_hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

fn now_ms() -> i64 {
    kiln_db::Timestamp::now().millis()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_proto::StepStatus;

    struct Echo;

    #[async_trait]
    impl StepRunner for Echo {
        async fn run(&self, step: &StepMessage, _cancel: CancellationToken) -> StepResult {
            StepResult {
                version: kiln_proto::PROTO_VERSION,
                step_id: step.step_id,
                attempt: step.attempt,
                worker: "w".to_owned(),
                status: StepStatus::Succeeded,
                message: None,
                started_at_ms: 0,
                finished_at_ms: 0,
                outputs: Default::default(),
                products: Vec::new(),
                metrics: Vec::new(),
            }
        }
    }

    fn step(id: i64) -> StepMessage {
        StepMessage {
            version: kiln_proto::PROTO_VERSION,
            step_id: id,
            attempt: 1,
            drv_path: format!("/nix/store/{id}-x.drv"),
            drv: String::new(),
            input_paths: Vec::new(),
            outputs: Default::default(),
            system: "x86_64-linux".to_owned(),
            required_features: Vec::new(),
            timeout_secs: 1,
            max_silent_secs: 1,
            max_log_bytes: 1,
            max_output_bytes: 1,
        }
    }

    #[tokio::test]
    async fn running_steps_are_listed_until_they_end() {
        let activity = Arc::new(Activity::default());
        activity.register("w", &["x86_64-linux".to_owned()], &[], 2);
        activity.started("w", &step(7));
        let snap = activity.snapshot();
        assert_eq!(snap[0].running.len(), 1);
        assert_eq!(snap[0].running[0].drv_path, "/nix/store/7-x.drv");
        let tracked = Tracked {
            worker: "w".to_owned(),
            activity: activity.clone(),
            inner: Arc::new(Echo),
        };
        tracked.run(&step(8), CancellationToken::new()).await;
        activity.finished("w", &step(7));
        assert!(activity.snapshot()[0].running.is_empty());
    }
}
