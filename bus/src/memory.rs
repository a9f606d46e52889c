//! The in-process bus of `kiln up`: RabbitMQ's delivery semantics over a mutex and a notifier.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use crate::{
    Bus, BusError, Consumer, DEFAULT_DELIVERY_LIMIT, Delivery, QueueName, Settle, Subscription,
};

/// Broadcast messages buffered per subscriber before the oldest are dropped.
const BROADCAST_BUFFER: usize = 1024;

/// The in-process implementation of [`Bus`]. Cheap to clone; clones share the queues.
///
/// It keeps messages in memory only: they survive a consumer's death (they are redelivered) but
/// not the process, which is why the coordinator, not the bus, is the source of truth and
/// dispatches unfinished steps again after a restart. Like the RabbitMQ bus, it moves a step
/// message to [`DEAD_STEPS_QUEUE`](crate::DEAD_STEPS_QUEUE) once it returned to its queue more
/// often than the delivery limit, or when it is rejected without requeueing.
#[derive(Clone)]
pub struct MemoryBus {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    /// Woken on every change a waiting consumer may care about.
    changed: Notify,
    broadcast: broadcast::Sender<Vec<u8>>,
    closed: CancellationToken,
    /// Returns to its queue a step message may make; the next one dead-letters it.
    delivery_limit: u32,
}

#[derive(Default)]
struct State {
    queues: HashMap<QueueName, VecDeque<Message>>,
    consumers: HashMap<u64, ConsumerState>,
    next_tag: u64,
    next_consumer: u64,
}

struct Message {
    body: Vec<u8>,
    redelivered: bool,
    /// How many times it came back to its queue unacknowledged.
    returns: u32,
}

/// A message out with a consumer.
struct Unacked {
    queue: QueueName,
    body: Vec<u8>,
    returns: u32,
}

struct ConsumerState {
    name: String,
    queues: Vec<QueueName>,
    prefetch: usize,
    unacked: HashMap<u64, Unacked>,
    /// Index of the queue to look at first next time, so no queue starves the others.
    next_queue: usize,
}

impl Default for MemoryBus {
    fn default() -> Self {
        MemoryBus::new()
    }
}

impl std::fmt::Debug for MemoryBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBus").finish_non_exhaustive()
    }
}

impl MemoryBus {
    /// An empty bus with the default delivery limit
    /// ([`DEFAULT_DELIVERY_LIMIT`](crate::DEFAULT_DELIVERY_LIMIT)).
    pub fn new() -> MemoryBus {
        MemoryBus::with_delivery_limit(DEFAULT_DELIVERY_LIMIT)
    }

    /// An empty bus that dead-letters a step message on its return number `delivery_limit + 1`.
    pub fn with_delivery_limit(delivery_limit: u32) -> MemoryBus {
        let (broadcast, _) = broadcast::channel(BROADCAST_BUFFER);
        MemoryBus {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                changed: Notify::new(),
                broadcast,
                closed: CancellationToken::new(),
                delivery_limit,
            }),
        }
    }

    /// Shuts the bus down: consumers and subscriptions end, publishing fails.
    pub fn close(&self) {
        self.inner.closed.cancel();
        self.inner.changed.notify_waiters();
    }

    /// Messages delivered and not yet settled, over all consumers.
    pub fn unacked_count(&self) -> usize {
        self.inner
            .lock()
            .consumers
            .values()
            .map(|c| c.unacked.len())
            .sum()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind, still consistent enough to
        // deliver; recover rather than poison every later call.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    /// Hands the next message of `consumer`'s queues to it, if its prefetch allows.
    fn take(&mut self, consumer: u64) -> Option<(u64, QueueName, Message)> {
        let state = self.consumers.get(&consumer)?;
        if state.unacked.len() >= state.prefetch {
            return None;
        }
        let count = state.queues.len();
        let start = state.next_queue;
        for i in 0..count {
            let index = (start + i) % count;
            let queue = &self.consumers[&consumer].queues[index];
            if let Some(message) = self.queues.get_mut(queue).and_then(VecDeque::pop_front) {
                let queue = queue.clone();
                let tag = self.next_tag;
                self.next_tag += 1;
                let state = self.consumers.get_mut(&consumer).expect("checked above");
                state.next_queue = (index + 1) % count;
                state.unacked.insert(
                    tag,
                    Unacked {
                        queue: queue.clone(),
                        body: message.body.clone(),
                        returns: message.returns,
                    },
                );
                return Some((tag, queue, message));
            }
        }
        None
    }

    /// Puts a message that came back unacknowledged at the head of its queue, or dead-letters
    /// it if it is a step message past `delivery_limit` returns (as RabbitMQ's quorum queues do
    /// with `x-delivery-limit`).
    fn requeue(&mut self, message: Unacked, delivery_limit: u32) {
        let returns = message.returns + 1;
        if message.queue.is_step_queue() && returns > delivery_limit {
            tracing::warn!(queue = %message.queue, returns, "step message past its delivery limit: dead-lettered");
            self.dead_letter(message.body);
            return;
        }
        self.queues
            .entry(message.queue)
            .or_default()
            .push_front(Message {
                body: message.body,
                redelivered: true,
                returns,
            });
    }

    fn dead_letter(&mut self, body: Vec<u8>) {
        self.queues
            .entry(QueueName::dead_steps())
            .or_default()
            .push_back(Message {
                body,
                redelivered: false,
                returns: 0,
            });
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, queue: &QueueName, body: Vec<u8>) -> Result<(), BusError> {
        if self.inner.closed.is_cancelled() {
            return Err(BusError::Closed);
        }
        self.inner
            .lock()
            .queues
            .entry(queue.clone())
            .or_default()
            .push_back(Message {
                body,
                redelivered: false,
                returns: 0,
            });
        self.inner.changed.notify_waiters();
        Ok(())
    }

    async fn consume(
        &self,
        queues: &[QueueName],
        prefetch: u32,
        name: &str,
    ) -> Result<Box<dyn Consumer>, BusError> {
        if prefetch == 0 {
            return Err(BusError::ZeroPrefetch);
        }
        if self.inner.closed.is_cancelled() {
            return Err(BusError::Closed);
        }
        let mut state = self.inner.lock();
        let id = state.next_consumer;
        state.next_consumer += 1;
        state.consumers.insert(
            id,
            ConsumerState {
                name: name.to_owned(),
                queues: queues.to_vec(),
                prefetch: prefetch as usize,
                unacked: HashMap::new(),
                next_queue: 0,
            },
        );
        Ok(Box::new(MemoryConsumer {
            settle: Arc::new(MemorySettle {
                inner: self.inner.clone(),
                consumer: id,
            }),
        }))
    }

    async fn ready_count(&self, queue: &QueueName) -> Result<u64, BusError> {
        Ok(self
            .inner
            .lock()
            .queues
            .get(queue)
            .map_or(0, |q| q.len() as u64))
    }

    async fn broadcast(&self, body: Vec<u8>) -> Result<(), BusError> {
        if self.inner.closed.is_cancelled() {
            return Err(BusError::Closed);
        }
        // No subscriber is not an error: broadcasts are best effort.
        let _ = self.inner.broadcast.send(body);
        Ok(())
    }

    async fn subscribe(&self) -> Result<Box<dyn Subscription>, BusError> {
        if self.inner.closed.is_cancelled() {
            return Err(BusError::Closed);
        }
        Ok(Box::new(MemorySubscription {
            receiver: self.inner.broadcast.subscribe(),
            closed: self.inner.closed.clone(),
        }))
    }
}

/// Settles deliveries of one consumer.
struct MemorySettle {
    inner: Arc<Inner>,
    consumer: u64,
}

impl MemorySettle {
    fn settle(&self, tag: u64, requeue: Option<bool>) -> Result<(), BusError> {
        let mut state = self.inner.lock();
        let Some(consumer) = state.consumers.get_mut(&self.consumer) else {
            return Err(BusError::ChannelClosed { tag });
        };
        let Some(message) = consumer.unacked.remove(&tag) else {
            return Err(BusError::Broker(format!(
                "unknown delivery tag {tag} (already settled)"
            )));
        };
        match requeue {
            None => {}
            Some(true) => state.requeue(message, self.inner.delivery_limit),
            Some(false) if message.queue.is_step_queue() => state.dead_letter(message.body),
            Some(false) => {}
        }
        drop(state);
        self.inner.changed.notify_waiters();
        Ok(())
    }
}

#[async_trait]
impl Settle for MemorySettle {
    async fn ack(&self, tag: u64) -> Result<(), BusError> {
        self.settle(tag, None)
    }

    async fn nack(&self, tag: u64, requeue: bool) -> Result<(), BusError> {
        self.settle(tag, Some(requeue))
    }
}

struct MemoryConsumer {
    settle: Arc<MemorySettle>,
}

#[async_trait]
impl Consumer for MemoryConsumer {
    async fn next(&mut self) -> Option<Delivery> {
        let inner = &self.settle.inner;
        loop {
            let notified = inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if inner.closed.is_cancelled() {
                return None;
            }
            if let Some((tag, queue, message)) = inner.lock().take(self.settle.consumer) {
                return Some(Delivery::new(
                    message.body,
                    queue,
                    message.redelivered,
                    tag,
                    self.settle.clone(),
                ));
            }
            notified.await;
        }
    }
}

impl Drop for MemoryConsumer {
    /// A consumer that goes away (a worker that died) returns what it had not settled.
    fn drop(&mut self) {
        let inner = &self.settle.inner;
        let mut state = inner.lock();
        if let Some(consumer) = state.consumers.remove(&self.settle.consumer) {
            if !consumer.unacked.is_empty() {
                tracing::info!(
                    consumer = %consumer.name,
                    count = consumer.unacked.len(),
                    "consumer closed: requeueing its unacknowledged deliveries"
                );
            }
            let mut unacked: Vec<_> = consumer.unacked.into_iter().collect();
            // Oldest deliveries end up first in their queues.
            unacked.sort_by_key(|(tag, _)| std::cmp::Reverse(*tag));
            for (_, message) in unacked {
                state.requeue(message, inner.delivery_limit);
            }
        }
        drop(state);
        inner.changed.notify_waiters();
    }
}

struct MemorySubscription {
    receiver: broadcast::Receiver<Vec<u8>>,
    closed: CancellationToken,
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn next(&mut self) -> Option<Vec<u8>> {
        loop {
            tokio::select! {
                _ = self.closed.cancelled() => return None,
                received = self.receiver.recv() => match received {
                    Ok(body) => return Some(body),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "broadcast subscriber fell behind; messages dropped");
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(name: &str) -> QueueName {
        QueueName::new(name)
    }

    /// Whether `consumer` has nothing to deliver right now. The in-memory bus decides on the
    /// first poll, so this needs no waiting.
    async fn nothing_ready(consumer: &mut Box<dyn Consumer>) -> bool {
        tokio::select! {
            biased;
            _ = consumer.next() => false,
            () = std::future::ready(()) => true,
        }
    }

    #[tokio::test]
    async fn messages_are_delivered_in_order_and_leave_only_when_acked() {
        let bus = MemoryBus::new();
        for i in 0..3u8 {
            bus.publish(&q("a"), vec![i]).await.unwrap();
        }
        let mut consumer = bus.consume(&[q("a")], 10, "c").await.unwrap();
        let first = consumer.next().await.unwrap();
        assert_eq!(first.body, [0]);
        assert!(!first.redelivered);
        assert_eq!(bus.ready_count(&q("a")).await.unwrap(), 2);
        first.ack().await.unwrap();
        assert_eq!(consumer.next().await.unwrap().body, [1]);
        assert_eq!(consumer.next().await.unwrap().body, [2]);
        assert_eq!(bus.unacked_count(), 2);
    }

    #[tokio::test]
    async fn prefetch_bounds_unsettled_deliveries() {
        let bus = MemoryBus::new();
        for i in 0..3u8 {
            bus.publish(&q("a"), vec![i]).await.unwrap();
        }
        let mut consumer = bus.consume(&[q("a")], 2, "c").await.unwrap();
        let first = consumer.next().await.unwrap();
        let _second = consumer.next().await.unwrap();
        assert!(nothing_ready(&mut consumer).await);
        first.ack().await.unwrap();
        assert_eq!(consumer.next().await.unwrap().body, [2]);
    }

    #[tokio::test]
    async fn a_dropped_consumer_returns_its_deliveries_marked_redelivered() {
        let bus = MemoryBus::new();
        bus.publish(&q("a"), b"one".to_vec()).await.unwrap();
        bus.publish(&q("a"), b"two".to_vec()).await.unwrap();
        let mut dying = bus.consume(&[q("a")], 2, "dying").await.unwrap();
        let one = dying.next().await.unwrap();
        let _two = dying.next().await.unwrap();
        drop(dying);
        // Settling after the channel closed is refused: the message is already back.
        assert!(matches!(
            one.ack().await,
            Err(BusError::ChannelClosed { .. })
        ));
        let mut other = bus.consume(&[q("a")], 2, "other").await.unwrap();
        let again = other.next().await.unwrap();
        assert_eq!(again.body, b"one");
        assert!(again.redelivered);
        assert_eq!(other.next().await.unwrap().body, b"two");
    }

    #[tokio::test]
    async fn nack_requeues_or_drops() {
        let bus = MemoryBus::new();
        bus.publish(&q("a"), b"x".to_vec()).await.unwrap();
        let mut consumer = bus.consume(&[q("a")], 1, "c").await.unwrap();
        consumer.next().await.unwrap().nack(true).await.unwrap();
        let again = consumer.next().await.unwrap();
        assert!(again.redelivered);
        again.nack(false).await.unwrap();
        assert!(nothing_ready(&mut consumer).await);
        assert_eq!(bus.ready_count(&q("a")).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn double_ack_is_refused() {
        let bus = MemoryBus::new();
        bus.publish(&q("a"), b"x".to_vec()).await.unwrap();
        let mut consumer = bus.consume(&[q("a")], 1, "c").await.unwrap();
        let delivery = consumer.next().await.unwrap();
        let settle = delivery.settle.clone();
        let tag = delivery.tag;
        delivery.ack().await.unwrap();
        assert!(matches!(settle.ack(tag).await, Err(BusError::Broker(_))));
    }

    #[tokio::test]
    async fn a_waiting_consumer_wakes_on_publish_and_reads_only_its_queues() {
        let bus = MemoryBus::new();
        let mut consumer = bus.consume(&[q("a"), q("b")], 4, "c").await.unwrap();
        let waiter = tokio::spawn(async move {
            let d = consumer.next().await.unwrap();
            (d.queue.clone(), d.body.clone())
        });
        tokio::task::yield_now().await;
        bus.publish(&q("z"), b"not mine".to_vec()).await.unwrap();
        bus.publish(&q("b"), b"mine".to_vec()).await.unwrap();
        assert_eq!(waiter.await.unwrap(), (q("b"), b"mine".to_vec()));
        assert_eq!(bus.ready_count(&q("z")).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn closing_ends_consumers_and_subscriptions() {
        let bus = MemoryBus::new();
        let mut consumer = bus.consume(&[q("a")], 1, "c").await.unwrap();
        let mut subscription = bus.subscribe().await.unwrap();
        bus.broadcast(b"hello".to_vec()).await.unwrap();
        assert_eq!(subscription.next().await.unwrap(), b"hello");
        bus.close();
        assert!(consumer.next().await.is_none());
        assert!(subscription.next().await.is_none());
        assert!(matches!(
            bus.publish(&q("a"), vec![]).await,
            Err(BusError::Closed)
        ));
    }

    #[tokio::test]
    async fn a_step_that_keeps_coming_back_is_dead_lettered_with_its_body() {
        let bus = MemoryBus::with_delivery_limit(2);
        let steps = crate::step_queue("x86_64-linux", &[]);
        bus.publish(&steps, b"poison".to_vec()).await.unwrap();
        // Delivered once, then returned twice (a dying worker, a requeueing one): still queued.
        let mut dying = bus
            .consume(std::slice::from_ref(&steps), 1, "dying")
            .await
            .unwrap();
        assert!(!dying.next().await.unwrap().redelivered);
        drop(dying);
        let mut consumer = bus
            .consume(std::slice::from_ref(&steps), 1, "c")
            .await
            .unwrap();
        let second = consumer.next().await.unwrap();
        assert!(second.redelivered);
        second.nack(true).await.unwrap();
        let third = consumer.next().await.unwrap();
        assert_eq!(third.body, b"poison");
        // The third return exceeds the limit.
        drop(third);
        drop(consumer);
        assert_eq!(bus.ready_count(&steps).await.unwrap(), 0);
        let dead = QueueName::dead_steps();
        assert_eq!(bus.ready_count(&dead).await.unwrap(), 1);
        let mut reader = bus.consume(&[dead], 1, "operator").await.unwrap();
        assert_eq!(reader.next().await.unwrap().body, b"poison");
    }

    #[tokio::test]
    async fn rejected_step_messages_are_dead_lettered_and_others_dropped() {
        let bus = MemoryBus::new();
        let steps = crate::step_queue("x86_64-linux", &[]);
        bus.publish(&steps, b"undecodable".to_vec()).await.unwrap();
        bus.publish(&q("a"), b"other".to_vec()).await.unwrap();
        let mut consumer = bus.consume(&[steps, q("a")], 2, "c").await.unwrap();
        consumer.next().await.unwrap().nack(false).await.unwrap();
        consumer.next().await.unwrap().nack(false).await.unwrap();
        assert_eq!(bus.ready_count(&q("a")).await.unwrap(), 0);
        assert_eq!(bus.ready_count(&QueueName::dead_steps()).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn zero_prefetch_is_refused() {
        let bus = MemoryBus::new();
        assert!(matches!(
            bus.consume(&[q("a")], 0, "c").await,
            Err(BusError::ZeroPrefetch)
        ));
    }
}
