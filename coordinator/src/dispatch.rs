//! The dispatcher: owns the in-memory graph, publishes runnable steps in priority order within
//! each queue's window, applies results exactly once, and applies the API's requests.
//!
//! One task runs it, so the graph needs no lock. The database is written before the graph is
//! changed where an event must count once (a result applies only if its attempt is still the
//! running one), and [`Dispatcher::load`] reconciles whatever a crash left between two writes:
//! it treats every loaded step that is already final as if its result had just arrived.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use kiln_bus::{Bus, Delivery, QueueName, cancel_message, step_queue};
use kiln_db::{BuildId, Db, StepId, Timestamp};
use kiln_proto::{PROTO_VERSION, StepMessage, StepResult};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::db::{builds, projects, steps};
use crate::error::Result;
use crate::graph::{BuildNode, Graph, Outcome, StepNode, StepState};
use crate::logs::LogStore;
use crate::model::Status;
use crate::scheduler::{self, FairShare};
use crate::workers::WorkerPool;

/// Estimated duration of a step with no history, milliseconds.
pub const DEFAULT_ESTIMATE_MS: u64 = 1_000;

/// How often timers (retries, `unsupported`) are checked.
const TICK: Duration = Duration::from_secs(1);

/// The dispatcher's settings.
#[derive(Debug, Clone)]
pub struct DispatchSettings {
    /// Transient failures retried before a step is aborted.
    pub max_retries: u32,
    /// First retry delay, seconds (doubling).
    pub retry_backoff_secs: u64,
    /// How long a runnable step may wait for a capable worker before it is `unsupported`.
    pub unsupported_after: Duration,
    /// Steps in flight per queue; 0 = the slots serving the queue.
    pub dispatch_window: u32,
    /// How often the database is checked for requests written by other processes.
    pub db_poll: Duration,
    /// Log limit sent with each step, bytes.
    pub max_log_bytes: u64,
    /// Output limit sent with each step, bytes.
    pub max_output_bytes: u64,
    /// Whether steps left running by a previous process are queued again at start (a bus that
    /// loses messages with the process).
    pub requeue_running_at_start: bool,
}

/// What other tasks tell the dispatcher.
#[derive(Debug)]
pub enum Event {
    /// An evaluation created these unfinished builds.
    BuildsCreated(Vec<BuildId>),
}

/// Wakes the dispatcher when the API queued a request.
#[derive(Debug, Default)]
pub struct Signals {
    /// Requests (restart, cancel, bump) are waiting in the database.
    pub commands: Notify,
    /// An evaluation was requested.
    pub evaluations: Notify,
}

/// The dispatcher's state.
pub struct Dispatcher {
    db: Db,
    bus: Arc<dyn Bus>,
    pool: Arc<dyn WorkerPool>,
    logs: Arc<dyn LogStore>,
    settings: DispatchSettings,
    graph: Graph,
    share: FairShare,
    started_ms: i64,
    /// Since when each queue has had no worker (the registry may forget workers for a moment,
    /// say while Redis restarts): a step is `unsupported` only once its queue stayed without
    /// workers for the whole wait.
    unserved_since: HashMap<QueueName, i64>,
}

impl Dispatcher {
    /// A dispatcher with an empty graph (see [`Dispatcher::run`], which loads it).
    pub fn new(
        db: Db,
        bus: Arc<dyn Bus>,
        pool: Arc<dyn WorkerPool>,
        logs: Arc<dyn LogStore>,
        settings: DispatchSettings,
    ) -> Dispatcher {
        Dispatcher {
            db,
            bus,
            pool,
            logs,
            settings,
            graph: Graph::new(),
            share: FairShare::default(),
            started_ms: Timestamp::now().millis(),
            unserved_since: HashMap::new(),
        }
    }

    /// The graph (for tests and status pages).
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Loads the unfinished work, then dispatches and applies results until `shutdown`.
    pub async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<Event>,
        signals: Arc<Signals>,
        shutdown: CancellationToken,
    ) -> Result<()> {
        self.start().await?;
        let (steps_left, builds_left) = self.graph.len();
        tracing::info!(
            steps = steps_left,
            builds = builds_left,
            "dispatcher started"
        );
        let mut results = self
            .bus
            .consume(&[QueueName::results()], 64, "coordinator")
            .await?;
        let mut dead = self
            .bus
            .consume(&[QueueName::dead_steps()], 16, "coordinator-dead-steps")
            .await?;
        self.run_commands().await?;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_db_poll = tokio::time::Instant::now();
        loop {
            if let Err(err) = self.dispatch().await {
                tracing::error!(error = %err, "dispatching failed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                delivery = results.next() => {
                    let Some(delivery) = delivery else { break };
                    if let Err(err) = self.on_result(delivery).await {
                        tracing::error!(error = %err, "applying a step result failed; it stays queued for redelivery");
                        // The delivery was dropped unacknowledged: it returns when the
                        // consumer does. Reconnect to get it again now.
                        drop(results);
                        results = self.bus.consume(&[QueueName::results()], 64, "coordinator").await?;
                        tokio::time::sleep(TICK).await;
                    }
                }
                delivery = dead.next() => {
                    let Some(delivery) = delivery else { break };
                    if let Err(err) = self.on_dead_letter(delivery).await {
                        tracing::error!(error = %err, "applying a dead-lettered step failed; it stays queued for redelivery");
                        drop(dead);
                        dead = self.bus.consume(&[QueueName::dead_steps()], 16, "coordinator-dead-steps").await?;
                        tokio::time::sleep(TICK).await;
                    }
                }
                event = events.recv() => match event {
                    Some(Event::BuildsCreated(builds)) => {
                        if let Err(err) = self.load(Some(&builds)).await {
                            tracing::error!(error = %err, "loading new builds failed");
                        }
                    }
                    None => break,
                },
                _ = signals.commands.notified() => {
                    if let Err(err) = self.run_commands().await {
                        tracing::error!(error = %err, "applying requests failed");
                    }
                }
                _ = tick.tick() => {
                    self.share.decay(Timestamp::now().millis());
                    if let Err(err) = self.check_unsupported().await {
                        tracing::error!(error = %err, "checking for unsupported steps failed");
                    }
                    if last_db_poll.elapsed() >= self.settings.db_poll {
                        last_db_poll = tokio::time::Instant::now();
                        if let Err(err) = self.run_commands().await {
                            tracing::error!(error = %err, "applying requests failed");
                        }
                    }
                }
            }
        }
        tracing::info!("dispatcher stopped");
        Ok(())
    }

    /// Takes over from a previous process: queues again what it left running if the bus lost
    /// it, and loads every unfinished build.
    pub async fn start(&mut self) -> Result<()> {
        if self.settings.requeue_running_at_start {
            let n = steps::requeue_running(&self.db).await?;
            if n > 0 {
                tracing::info!(
                    steps = n,
                    "queued again the steps left running by the previous process"
                );
            }
        }
        self.load(None).await
    }

    /// Loads unfinished builds (all, or `only`) into the graph, and settles what the database
    /// shows as already decided: builds whose steps finished, steps whose dependency failed.
    pub async fn load(&mut self, only: Option<&[BuildId]>) -> Result<()> {
        for (jobset, shares) in projects::all_shares(&self.db).await? {
            self.share.set_shares(jobset, shares);
        }
        let loaded = steps::load_unfinished(&self.db, only).await?;
        let now = Timestamp::now().millis();
        let mut final_steps: Vec<(StepId, Status)> = Vec::new();
        for row in loaded.steps.values() {
            if self.graph.step(row.id).is_some() {
                continue;
            }
            let state = match row.status {
                Status::Running => StepState::Dispatched {
                    attempt: row.attempt,
                },
                _ => StepState::Waiting,
            };
            if row.status.is_final() {
                final_steps.push((row.id, row.status));
            }
            self.graph.insert_step(StepNode {
                id: row.id,
                drv_path: row.drv_path.clone(),
                drv_name: row.drv_name.clone(),
                queue: step_queue(&row.system, &row.required_features),
                outputs: loaded.outputs.get(&row.id).cloned().unwrap_or_default(),
                state,
                attempt: row.attempt,
                transient_failures: row.transient_failures,
                retry_at: row.retry_at,
                runnable_since: now,
                estimate_ms: row.estimate_ms.unwrap_or(DEFAULT_ESTIMATE_MS).max(1),
                deps: HashSet::new(),
                dependents: HashSet::new(),
                builds: HashSet::new(),
            });
        }
        for (step, dep) in &loaded.deps {
            self.graph.add_dep(*step, *dep);
        }
        let mut orphaned_builds = Vec::new();
        for build in &loaded.builds {
            if self.graph.build(build.id).is_some() {
                continue;
            }
            let Some(top) = build.top else {
                tracing::error!(build = %build.id, "unfinished build without a step; marking it aborted");
                orphaned_builds.push((build.id, Status::Aborted));
                continue;
            };
            let closure = loaded.closures.get(&build.id).cloned().unwrap_or_default();
            self.graph.insert_build(
                BuildNode {
                    id: build.id,
                    jobset: build.jobset,
                    priority: build.priority,
                    global_priority: build.global_priority,
                    top,
                    steps: HashSet::new(),
                },
                closure,
            );
        }
        if !orphaned_builds.is_empty() {
            steps::finish_builds(&self.db, &orphaned_builds, Timestamp::now()).await?;
        }
        // Successes first: they may finish builds that a failure elsewhere would otherwise
        // report as dependency failures.
        final_steps.sort_by_key(|(id, status)| (*status != Status::Succeeded, *id));
        for (id, status) in final_steps {
            let outcome = if status == Status::Succeeded {
                self.graph.succeed(id, status, now)
            } else {
                self.graph.fail(id, status)
            };
            self.record(outcome, id).await?;
        }
        Ok(())
    }

    /// Writes what an outcome decided: finished builds, and doomed steps as dependency
    /// failures of `cause`.
    async fn record(&mut self, outcome: Outcome, cause: StepId) -> Result<()> {
        let now = Timestamp::now();
        if !outcome.finished_builds.is_empty() {
            steps::finish_builds(&self.db, &outcome.finished_builds, now).await?;
            for (build, status) in &outcome.finished_builds {
                tracing::info!(build = %build, status = %status, "build finished");
            }
        }
        if !outcome.doomed_steps.is_empty() {
            steps::end_queued(
                &self.db,
                &outcome.doomed_steps,
                Status::DependencyFailed,
                &format!("dependency step {cause} failed"),
            )
            .await?;
        }
        Ok(())
    }

    fn window(&self, queue: &QueueName) -> u32 {
        if self.settings.dispatch_window > 0 {
            self.settings.dispatch_window
        } else {
            self.pool.slots_for(queue)
        }
    }

    /// Publishes the best runnable steps while their queues' windows have room.
    pub async fn dispatch(&mut self) -> Result<()> {
        let now = Timestamp::now();
        let mut in_flight: HashMap<QueueName, u32> = HashMap::new();
        for step in self.graph.steps() {
            if matches!(step.state, StepState::Dispatched { .. }) {
                *in_flight.entry(step.queue.clone()).or_default() += 1;
            }
        }
        let windows: HashMap<QueueName, u32> = self
            .graph
            .steps()
            .map(|s| (s.queue.clone(), self.window(&s.queue)))
            .collect();
        let chosen = scheduler::choose(&self.graph, now.millis(), &mut self.share, |queue| {
            windows
                .get(queue)
                .copied()
                .unwrap_or(0)
                .saturating_sub(in_flight.get(queue).copied().unwrap_or(0))
        });
        for id in chosen {
            let Some(dispatched) = steps::prepare_dispatch(&self.db, id).await? else {
                tracing::warn!(step = %id, "step is no longer queued in the database; dropping it from the graph");
                self.graph.remove_orphan(id);
                continue;
            };
            let node = self.graph.step(id).expect("chosen from the graph");
            let message = StepMessage {
                version: PROTO_VERSION,
                step_id: id.get(),
                attempt: dispatched.attempt,
                drv_path: node.drv_path.clone(),
                drv: dispatched.drv,
                input_paths: dispatched.input_paths,
                outputs: node.outputs.clone(),
                system: dispatched.system,
                required_features: dispatched.required_features,
                timeout_secs: dispatched.timeout_secs,
                max_silent_secs: dispatched.max_silent_secs,
                max_log_bytes: self.settings.max_log_bytes,
                max_output_bytes: self.settings.max_output_bytes,
            };
            let queue = node.queue.clone();
            let builds: Vec<BuildId> = node.builds.iter().copied().collect();
            self.logs.reset(id);
            // Published before it is recorded: see `steps::prepare_dispatch`.
            self.bus.publish(&queue, message.encode()).await?;
            if !steps::mark_dispatched(&self.db, id, dispatched.attempt, now).await? {
                tracing::warn!(step = %id, "step changed while it was being dispatched; dropping it from the graph");
                self.graph.remove_orphan(id);
                continue;
            }
            let node = self.graph.step_mut(id).expect("chosen from the graph");
            node.state = StepState::Dispatched {
                attempt: dispatched.attempt,
            };
            node.attempt = dispatched.attempt;
            node.retry_at = None;
            tracing::info!(step = %id, attempt = dispatched.attempt, drv = %message.drv_path, queue = %queue, "dispatched");
            steps::mark_builds_running(&self.db, &builds, now).await?;
        }
        Ok(())
    }

    /// Applies one result (at most once per step and attempt), then acknowledges it.
    async fn on_result(&mut self, delivery: Delivery) -> Result<()> {
        let result = match StepResult::decode(&delivery.body) {
            Ok(result) => result,
            Err(err) => {
                tracing::error!(error = %err, "dropping an undecodable step result");
                delivery.ack().await?;
                return Ok(());
            }
        };
        self.apply(&result).await?;
        delivery.ack().await?;
        Ok(())
    }

    /// Ends a step whose message was dead-lettered: delivered as often as the bus allows
    /// without a result, because every worker that took it was lost (or it could not be read).
    /// It ends `aborted`, once, and only if that attempt is still the running one.
    async fn on_dead_letter(&mut self, delivery: Delivery) -> Result<()> {
        let step = match StepMessage::decode(&delivery.body) {
            Ok(step) => step,
            Err(err) => {
                tracing::error!(error = %err, "dropping an undecodable dead-lettered step message");
                delivery.ack().await?;
                return Ok(());
            }
        };
        let id = StepId(step.step_id);
        let message = "aborted: every worker that took this step was lost before finishing it \
                       (the queue's delivery limit was reached)";
        if steps::abort_running(&self.db, id, step.attempt, message, Timestamp::now()).await? {
            tracing::warn!(step = %id, attempt = step.attempt, drv = %step.drv_path, "aborted: its message reached the delivery limit");
            let outcome = self.graph.fail(id, Status::Aborted);
            self.record(outcome, id).await?;
        } else {
            tracing::info!(step = %id, attempt = step.attempt, "ignoring a dead-lettered message of a step no longer running that attempt");
        }
        delivery.ack().await?;
        Ok(())
    }

    /// Applies `result` if it is the running attempt of its step; a duplicate or stale result
    /// changes nothing.
    pub async fn apply(&mut self, result: &StepResult) -> Result<()> {
        let id = StepId(result.step_id);
        let now = Timestamp::now();
        let drv_path = self.graph.step(id).map(|s| s.drv_path.clone());
        let log_key = drv_path
            .as_deref()
            .and_then(|p| p.rsplit('/').next())
            .map(|base| format!("log/{base}"));
        match Status::of_step_result(result.status) {
            None => {
                match steps::apply_transient(
                    &self.db,
                    result,
                    self.settings.max_retries,
                    self.settings.retry_backoff_secs,
                    now,
                )
                .await?
                {
                    steps::Transient::Retry { at, failures } => {
                        tracing::warn!(step = %id, failures, message = ?result.message, "transient failure; retrying later");
                        if let Some(node) = self.graph.step_mut(id) {
                            node.state = StepState::Waiting;
                            node.retry_at = Some(at);
                            node.transient_failures = failures;
                        }
                    }
                    steps::Transient::Aborted => {
                        tracing::warn!(step = %id, message = ?result.message, "aborted after repeated transient failures");
                        let outcome = self.graph.fail(id, Status::Aborted);
                        self.record(outcome, id).await?;
                    }
                    steps::Transient::Stale => self.stale(result),
                }
            }
            Some(Status::Cancelled)
                if self.graph.step(id).is_some_and(|s| !s.builds.is_empty()) =>
            {
                // Cancelled for builds that went away, but another build needs it meanwhile.
                if steps::requeue(&self.db, id, result.attempt).await? {
                    if let Some(node) = self.graph.step_mut(id) {
                        node.state = StepState::Waiting;
                    }
                } else {
                    self.stale(result);
                }
            }
            Some(status) => {
                if !steps::apply_final(&self.db, result, status, log_key.as_deref()).await? {
                    self.stale(result);
                    return Ok(());
                }
                tracing::info!(step = %id, attempt = result.attempt, worker = %result.worker, status = %status, "step result applied");
                let outcome = if status == Status::Succeeded {
                    self.graph.succeed(id, status, now.millis())
                } else {
                    self.graph.fail(id, status)
                };
                self.record(outcome, id).await?;
            }
        }
        Ok(())
    }

    fn stale(&self, result: &StepResult) {
        tracing::info!(
            step = result.step_id,
            attempt = result.attempt,
            "ignoring a duplicate or stale result"
        );
    }

    /// Ends runnable steps that no worker can build after the configured wait.
    pub async fn check_unsupported(&mut self) -> Result<()> {
        let now = Timestamp::now().millis();
        let wait = i64::try_from(self.settings.unsupported_after.as_millis()).unwrap_or(i64::MAX);
        let pool = &self.pool;
        self.unserved_since
            .retain(|queue, _| pool.slots_for(queue) == 0);
        for step in self.graph.steps() {
            if step.is_runnable(now) && pool.slots_for(&step.queue) == 0 {
                self.unserved_since.entry(step.queue.clone()).or_insert(now);
            }
        }
        let unserved = &self.unserved_since;
        let doomed: Vec<(StepId, QueueName)> = self
            .graph
            .steps()
            .filter(|s| s.is_runnable(now))
            .filter_map(|s| unserved.get(&s.queue).map(|since| (s, *since)))
            .filter(|(s, since)| now - s.runnable_since.max(self.started_ms).max(*since) >= wait)
            .map(|(s, _)| (s.id, s.queue.clone()))
            .collect();
        for (id, queue) in doomed {
            let message =
                format!("no worker builds for queue {queue} (system and required features)");
            tracing::warn!(step = %id, %queue, "unsupported: no worker can build it");
            steps::end_queued(&self.db, &[id], Status::Unsupported, &message).await?;
            let outcome = self.graph.fail(id, Status::Unsupported);
            self.record(outcome, id).await?;
        }
        Ok(())
    }

    /// Applies the requests the API queued (restart, cancel, bump), oldest first.
    pub async fn run_commands(&mut self) -> Result<()> {
        for (request, build, command) in builds::pending_commands(&self.db).await? {
            match command {
                builds::Command::Restart => {
                    if builds::restart(&self.db, build).await? {
                        tracing::info!(build = %build, "restarted");
                        self.load(Some(&[build])).await?;
                    }
                }
                builds::Command::Cancel => {
                    if builds::cancel(&self.db, build).await? {
                        tracing::info!(build = %build, "cancelled");
                        for step in self.graph.remove_build(build) {
                            let dispatched = self
                                .graph
                                .step(step)
                                .is_some_and(|s| matches!(s.state, StepState::Dispatched { .. }));
                            if dispatched {
                                self.bus.broadcast(cancel_message(step.get())).await?;
                            }
                        }
                    }
                }
                builds::Command::Bump => {
                    let priority = builds::bump(&self.db, build).await?;
                    if let Some(node) = self.graph.build_mut(build) {
                        node.global_priority = priority;
                    }
                }
            }
            builds::command_done(&self.db, request).await?;
        }
        Ok(())
    }
}
