//! The distributed processes' links to Redis ([`kiln_live`]): live logs of running steps,
//! worker heartbeats, the registry the coordinator sizes its dispatch by, and the status the
//! web answers. Redis is a convenience here, never a dependency of a build: every write is
//! fire-and-forget, and a failed read degrades only the view that needed it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kiln_coordinator::logs::LogStore;
use kiln_coordinator::workers::StaticPool;
use kiln_db::StepId;
use kiln_live::{Live, RunningStep, WorkerInfo};
use kiln_web::status::{FarmStatus, RunningStepStatus, StatusSource, WorkerStatus};
use kiln_worker::LogSink;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::activity::Activity;

/// Name of the coordinators' leader lease.
pub const LEADER_LEASE: &str = "coordinator";

/// Most lines sent to Redis in one call.
const LOG_BATCH: usize = 256;

enum LogOp {
    Append(i64, Vec<u8>),
    Reset(i64),
}

/// Live logs in Redis. Writes go through a channel to one task ([`RedisLogs::run`]) that
/// batches them in order, so a build never waits on Redis.
#[derive(Clone)]
pub struct RedisLogs {
    live: Live,
    ops: mpsc::UnboundedSender<LogOp>,
}

impl RedisLogs {
    /// The log store and the task that writes it (run it until shutdown).
    pub fn new(live: Live) -> (RedisLogs, impl std::future::Future<Output = ()>) {
        let (ops, rx) = mpsc::unbounded_channel();
        (
            RedisLogs {
                live: live.clone(),
                ops,
            },
            write_logs(live, rx),
        )
    }
}

async fn write_logs(live: Live, mut rx: mpsc::UnboundedReceiver<LogOp>) {
    let mut failing = false;
    while let Some(op) = rx.recv().await {
        let mut ops = vec![op];
        while ops.len() < LOG_BATCH
            && let Ok(op) = rx.try_recv()
        {
            ops.push(op);
        }
        // Consecutive appends to one step become one call; order is kept.
        let mut i = 0;
        while i < ops.len() {
            let result = match &ops[i] {
                LogOp::Reset(step) => {
                    i += 1;
                    live.reset_log(*step).await.map(|_| ())
                }
                LogOp::Append(step, _) => {
                    let step = *step;
                    let mut lines = Vec::new();
                    while let Some(LogOp::Append(s, line)) = ops.get_mut(i)
                        && *s == step
                    {
                        lines.push(std::mem::take(line));
                        i += 1;
                    }
                    live.append_log(step, &lines).await.map(|_| ())
                }
            };
            match result {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("live logs reach Redis again");
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "cannot write live logs to Redis; builds go on, their live logs have gaps");
                }
                Err(_) => {}
            }
        }
    }
}

#[async_trait]
impl LogStore for RedisLogs {
    fn append(&self, step: StepId, line: &[u8]) {
        let _ = self.ops.send(LogOp::Append(step.get(), line.to_vec()));
    }

    fn reset(&self, step: StepId) {
        let _ = self.ops.send(LogOp::Reset(step.get()));
    }

    async fn read(&self, step: StepId) -> std::io::Result<Option<Vec<u8>>> {
        self.live
            .read_log(step.get())
            .await
            .map_err(|e| std::io::Error::other(format!("Redis: {e}")))
    }
}

impl LogSink for RedisLogs {
    fn line(&self, step_id: i64, line: &[u8]) {
        let _ = self.ops.send(LogOp::Append(step_id, line.to_vec()));
    }
}

/// The farm's status as Redis knows it: the lease holder and the heart-beating workers.
pub struct RedisStatus {
    /// The connection.
    pub live: Live,
}

#[async_trait]
impl StatusSource for RedisStatus {
    async fn status(&self) -> FarmStatus {
        let (leader, workers) = tokio::join!(self.live.leader(LEADER_LEASE), self.live.workers());
        let live = leader.is_ok() && workers.is_ok();
        FarmStatus {
            coordinator_leader: leader.ok().flatten(),
            workers: workers
                .unwrap_or_default()
                .into_iter()
                .map(worker_status)
                .collect(),
            live,
        }
    }
}

fn worker_status(w: WorkerInfo) -> WorkerStatus {
    WorkerStatus {
        name: w.name,
        systems: w.systems,
        features: w.features,
        slots: w.slots,
        running: w
            .running
            .into_iter()
            .map(|r| RunningStepStatus {
                step_id: r.step_id,
                attempt: r.attempt,
                drv_path: r.drv_path,
                started_at_ms: r.started_at_ms,
            })
            .collect(),
        last_seen_ms: w.last_seen_ms,
    }
}

fn worker_info(w: WorkerStatus) -> WorkerInfo {
    WorkerInfo {
        name: w.name,
        systems: w.systems,
        features: w.features,
        slots: w.slots,
        running: w
            .running
            .into_iter()
            .map(|r| RunningStep {
                step_id: r.step_id,
                attempt: r.attempt,
                drv_path: r.drv_path,
                started_at_ms: r.started_at_ms,
            })
            .collect(),
        last_seen_ms: w.last_seen_ms,
    }
}

/// Sends this process's workers to Redis every `interval` (they expire after `ttl` without a
/// heartbeat) until `shutdown`, then removes them.
pub async fn heartbeats(
    live: Live,
    activity: Arc<Activity>,
    interval: Duration,
    ttl: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let mut result = Ok(());
        for worker in activity.snapshot() {
            if let Err(e) = live.heartbeat(&worker_info(worker), ttl).await {
                result = Err(e);
                break;
            }
        }
        match result {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("heartbeats reach Redis again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "cannot send heartbeats to Redis; building goes on");
            }
            Err(_) => {}
        }
    }
    for worker in activity.snapshot() {
        let _ = live.remove_worker(&worker.name).await;
    }
}

/// Keeps `pool` equal to the workers heart-beating in Redis, every `interval`, until
/// `shutdown`. While Redis cannot be read the last known workers stay.
pub async fn follow_registry(
    live: Live,
    pool: Arc<StaticPool>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut known: HashMap<String, u32> = HashMap::new();
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        match live.workers().await {
            Ok(workers) => {
                if failing {
                    failing = false;
                    tracing::info!("the worker registry is readable again");
                }
                pool.replace(
                    workers
                        .iter()
                        .map(|w| (&w.systems[..], &w.features[..], w.slots)),
                );
                let now: HashMap<String, u32> =
                    workers.iter().map(|w| (w.name.clone(), w.slots)).collect();
                if now != known {
                    tracing::info!(workers = ?now, "workers changed");
                    known = now;
                }
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "cannot read the worker registry; keeping the last known workers");
            }
            Err(_) => {}
        }
    }
}
