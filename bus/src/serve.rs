//! The worker side of the bus: take a step, run it, publish its result, then acknowledge.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream;
use kiln_proto::{StepMessage, StepResult, StepStatus};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{Bus, BusError, Delivery, QueueName};

/// Runs one step to its final status (a worker's executor).
#[async_trait]
pub trait StepRunner: Send + Sync + 'static {
    /// Builds `step`; `cancel` asks it to stop early (the result is then `Cancelled`, or
    /// `Transient` if it could not start).
    async fn run(&self, step: &StepMessage, cancel: CancellationToken) -> StepResult;
}

/// Prefix of the broadcast that asks workers to stop building a step.
const CANCEL_PREFIX: &str = "cancel-step ";

/// The broadcast message asking every worker to cancel `step_id`.
pub fn cancel_message(step_id: i64) -> Vec<u8> {
    format!("{CANCEL_PREFIX}{step_id}").into_bytes()
}

fn parse_cancel(body: &[u8]) -> Option<i64> {
    std::str::from_utf8(body)
        .ok()?
        .strip_prefix(CANCEL_PREFIX)?
        .parse()
        .ok()
}

/// Consumes `queues` with `slots` builds at a time until `shutdown`, running each step with
/// `runner`. A result is acknowledged only after it is published to the results queue. On
/// shutdown, running builds are cancelled and their messages handed back to the queue (not
/// reported as cancelled), so another worker (or this one after a restart) builds them. A
/// message that cannot be decoded is rejected without requeueing.
pub async fn serve_steps(
    bus: Arc<dyn Bus>,
    queues: Vec<QueueName>,
    slots: u32,
    name: String,
    runner: Arc<dyn StepRunner>,
    shutdown: CancellationToken,
) -> Result<(), BusError> {
    // The loop below waits on several things at once, and a `Consumer::next` dropped half way
    // may lose what it was fetching (a pulling AMQP consumer's `basic.get` answered after the
    // drop leaves its message unacknowledged on the channel, held until the worker exits). As
    // streams, the consumer and the subscription keep an unfinished `next` for the next round.
    let consumer = bus.consume(&queues, slots, &name).await?;
    let mut deliveries = Box::pin(stream::unfold(consumer, |mut consumer| async move {
        let delivery = consumer.next().await?;
        Some((delivery, consumer))
    }));
    let control = bus.subscribe().await?;
    let mut control = Box::pin(stream::unfold(control, |mut control| async move {
        let message = control.next().await;
        Some((message, control))
    }));
    let running: Arc<Mutex<HashMap<i64, CancellationToken>>> = Arc::default();
    let mut tasks = JoinSet::new();
    tracing::info!(worker = %name, slots, queues = queues.len(), "worker consuming");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            delivery = deliveries.next() => {
                let Some(delivery) = delivery else { break };
                let step = match StepMessage::decode(&delivery.body) {
                    Ok(step) => step,
                    Err(err) => {
                        tracing::error!(worker = %name, queue = %delivery.queue, error = %err, "rejecting an undecodable step message");
                        if let Err(err) = delivery.nack(false).await {
                            tracing::warn!(worker = %name, error = %err, "could not reject a message");
                        }
                        continue;
                    }
                };
                let cancel = shutdown.child_token();
                running
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(step.step_id, cancel.clone());
                let job = Job {
                    bus: bus.clone(),
                    runner: runner.clone(),
                    worker: name.clone(),
                    shutdown: shutdown.clone(),
                    running: running.clone(),
                };
                tasks.spawn(job.run(step, delivery, cancel));
            }
            message = control.next() => {
                let message = message.flatten();
                match message.as_deref().and_then(parse_cancel) {
                    Some(step_id) => {
                        if let Some(token) = running.lock().unwrap_or_else(|e| e.into_inner()).get(&step_id) {
                            tracing::info!(worker = %name, step = step_id, "cancelling on request");
                            token.cancel();
                        }
                    }
                    None if message.is_none() => break,
                    None => {}
                }
            }
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(err) = joined {
                    tracing::error!(worker = %name, error = %err, "a build task failed");
                }
            }
        }
    }
    // Hand running builds back: they see the cancellation, and `Job` requeues their messages.
    shutdown.cancel();
    while let Some(joined) = tasks.join_next().await {
        if let Err(err) = joined {
            tracing::error!(worker = %name, error = %err, "a build task failed");
        }
    }
    drop(deliveries);
    tracing::info!(worker = %name, "worker stopped");
    Ok(())
}

/// One delivery being built.
struct Job {
    bus: Arc<dyn Bus>,
    runner: Arc<dyn StepRunner>,
    worker: String,
    shutdown: CancellationToken,
    running: Arc<Mutex<HashMap<i64, CancellationToken>>>,
}

impl Job {
    async fn run(self, step: StepMessage, delivery: Delivery, cancel: CancellationToken) {
        let result = self.runner.run(&step, cancel).await;
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&step.step_id);
        let interrupted = matches!(result.status, StepStatus::Cancelled | StepStatus::Transient);
        if self.shutdown.is_cancelled() && interrupted {
            tracing::info!(worker = %self.worker, step = step.step_id, "shutting down: handing the step back");
            self.hand_back(step.step_id, delivery).await;
            return;
        }
        match self
            .bus
            .publish(&QueueName::results(), result.encode())
            .await
        {
            Ok(()) => {
                if let Err(err) = delivery.ack().await {
                    tracing::warn!(worker = %self.worker, step = step.step_id, error = %err, "could not acknowledge a step");
                }
            }
            Err(err) => {
                tracing::error!(worker = %self.worker, step = step.step_id, error = %err, "could not publish a result; requeueing the step");
                if let Err(err) = delivery.nack(true).await {
                    tracing::warn!(worker = %self.worker, error = %err, "could not requeue a step");
                }
            }
        }
    }

    /// Returns a step this worker stops building to its queue as a new message, then
    /// acknowledges the delivery. A requeueing nack would count as a lost delivery against the
    /// queue's delivery limit, so a few rolling restarts of the workers would abort a step that
    /// never crashed anything. Should the worker die between the two, the step is queued twice,
    /// which is harmless: only the first result of the running attempt applies.
    async fn hand_back(&self, step_id: i64, delivery: Delivery) {
        match self
            .bus
            .publish(&delivery.queue, delivery.body.clone())
            .await
        {
            Ok(()) => {
                if let Err(err) = delivery.ack().await {
                    tracing::warn!(worker = %self.worker, step = step_id, error = %err, "could not acknowledge a step handed back; it may run twice");
                }
            }
            Err(err) => {
                tracing::warn!(worker = %self.worker, step = step_id, error = %err, "could not queue a step again; requeueing its delivery");
                if let Err(err) = delivery.nack(true).await {
                    tracing::warn!(worker = %self.worker, error = %err, "could not requeue a step");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBus;
    use kiln_proto::PROTO_VERSION;
    use std::collections::BTreeMap;
    use tokio::sync::Semaphore;

    fn step(id: i64) -> StepMessage {
        StepMessage {
            version: PROTO_VERSION,
            step_id: id,
            attempt: 1,
            drv_path: format!("/nix/store/{}-s{id}.drv", "a".repeat(32)),
            drv: String::new(),
            input_paths: vec![],
            outputs: BTreeMap::new(),
            system: "x86_64-linux".into(),
            required_features: vec![],
            timeout_secs: 10,
            max_silent_secs: 10,
            max_log_bytes: 1 << 20,
            max_output_bytes: 1 << 30,
        }
    }

    fn result(step: &StepMessage, status: StepStatus) -> StepResult {
        StepResult {
            version: PROTO_VERSION,
            step_id: step.step_id,
            attempt: step.attempt,
            worker: "test".into(),
            status,
            message: None,
            started_at_ms: 0,
            finished_at_ms: 0,
            outputs: BTreeMap::new(),
            products: vec![],
            metrics: vec![],
        }
    }

    /// Succeeds at once.
    struct Instant;

    #[async_trait]
    impl StepRunner for Instant {
        async fn run(&self, step: &StepMessage, _: CancellationToken) -> StepResult {
            result(step, StepStatus::Succeeded)
        }
    }

    /// Blocks until cancelled, after signalling that it started.
    struct UntilCancelled {
        started: Arc<Semaphore>,
    }

    #[async_trait]
    impl StepRunner for UntilCancelled {
        async fn run(&self, step: &StepMessage, cancel: CancellationToken) -> StepResult {
            self.started.add_permits(1);
            cancel.cancelled().await;
            result(step, StepStatus::Cancelled)
        }
    }

    fn queue() -> QueueName {
        crate::step_queue("x86_64-linux", &[])
    }

    #[tokio::test]
    async fn results_are_published_and_steps_acknowledged() {
        let bus = MemoryBus::new();
        for id in 1..=3 {
            bus.publish(&queue(), step(id).encode()).await.unwrap();
        }
        let mut results = bus
            .consume(&[QueueName::results()], 10, "coordinator")
            .await
            .unwrap();
        let shutdown = CancellationToken::new();
        let worker = tokio::spawn(serve_steps(
            Arc::new(bus.clone()),
            vec![queue()],
            2,
            "w".into(),
            Arc::new(Instant),
            shutdown.clone(),
        ));
        let mut ids = Vec::new();
        for _ in 0..3 {
            let delivery = results.next().await.unwrap();
            ids.push(StepResult::decode(&delivery.body).unwrap().step_id);
            delivery.ack().await.unwrap();
        }
        ids.sort();
        assert_eq!(ids, [1, 2, 3]);
        shutdown.cancel();
        worker.await.unwrap().unwrap();
        assert_eq!(bus.ready_count(&queue()).await.unwrap(), 0);
        assert_eq!(bus.unacked_count(), 0);
    }

    #[tokio::test]
    async fn shutdown_hands_running_steps_back_instead_of_reporting_them() {
        let bus = MemoryBus::new();
        bus.publish(&queue(), step(7).encode()).await.unwrap();
        let started = Arc::new(Semaphore::new(0));
        let shutdown = CancellationToken::new();
        let worker = tokio::spawn(serve_steps(
            Arc::new(bus.clone()),
            vec![queue()],
            1,
            "w".into(),
            Arc::new(UntilCancelled {
                started: started.clone(),
            }),
            shutdown.clone(),
        ));
        started.acquire().await.unwrap().forget();
        shutdown.cancel();
        worker.await.unwrap().unwrap();
        assert_eq!(bus.ready_count(&QueueName::results()).await.unwrap(), 0);
        let mut other = bus.consume(&[queue()], 1, "other").await.unwrap();
        let again = other.next().await.unwrap();
        assert_eq!(StepMessage::decode(&again.body).unwrap().step_id, 7);
    }

    #[tokio::test]
    async fn handing_steps_back_at_shutdown_does_not_use_up_the_delivery_limit() {
        let bus = MemoryBus::with_delivery_limit(1);
        bus.publish(&queue(), step(7).encode()).await.unwrap();
        // Three rolling restarts while the step is being built.
        for _ in 0..3 {
            let started = Arc::new(Semaphore::new(0));
            let shutdown = CancellationToken::new();
            let worker = tokio::spawn(serve_steps(
                Arc::new(bus.clone()),
                vec![queue()],
                1,
                "w".into(),
                Arc::new(UntilCancelled {
                    started: started.clone(),
                }),
                shutdown.clone(),
            ));
            started.acquire().await.unwrap().forget();
            shutdown.cancel();
            worker.await.unwrap().unwrap();
        }
        assert_eq!(bus.ready_count(&QueueName::dead_steps()).await.unwrap(), 0);
        assert_eq!(bus.ready_count(&queue()).await.unwrap(), 1);
        assert_eq!(bus.unacked_count(), 0);
    }

    #[tokio::test]
    async fn a_cancel_broadcast_stops_the_step_and_reports_it() {
        let bus = MemoryBus::new();
        bus.publish(&queue(), step(9).encode()).await.unwrap();
        let started = Arc::new(Semaphore::new(0));
        let shutdown = CancellationToken::new();
        let mut results = bus
            .consume(&[QueueName::results()], 1, "coordinator")
            .await
            .unwrap();
        let worker = tokio::spawn(serve_steps(
            Arc::new(bus.clone()),
            vec![queue()],
            1,
            "w".into(),
            Arc::new(UntilCancelled {
                started: started.clone(),
            }),
            shutdown.clone(),
        ));
        started.acquire().await.unwrap().forget();
        bus.broadcast(cancel_message(9)).await.unwrap();
        let delivery = results.next().await.unwrap();
        let reported = StepResult::decode(&delivery.body).unwrap();
        assert_eq!(
            (reported.step_id, reported.status),
            (9, StepStatus::Cancelled)
        );
        shutdown.cancel();
        worker.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn undecodable_messages_are_dropped_not_retried() {
        let bus = MemoryBus::new();
        bus.publish(&queue(), b"garbage".to_vec()).await.unwrap();
        bus.publish(&queue(), step(1).encode()).await.unwrap();
        let mut results = bus
            .consume(&[QueueName::results()], 1, "coordinator")
            .await
            .unwrap();
        let shutdown = CancellationToken::new();
        let worker = tokio::spawn(serve_steps(
            Arc::new(bus.clone()),
            vec![queue()],
            1,
            "w".into(),
            Arc::new(Instant),
            shutdown.clone(),
        ));
        let delivery = results.next().await.unwrap();
        assert_eq!(StepResult::decode(&delivery.body).unwrap().step_id, 1);
        shutdown.cancel();
        worker.await.unwrap().unwrap();
        assert_eq!(bus.ready_count(&queue()).await.unwrap(), 0);
    }
}
