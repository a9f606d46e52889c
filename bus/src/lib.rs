//! Kiln's work queue between the coordinator and its workers.
//!
//! [`Bus`] is the contract RabbitMQ gives in the distributed mode, and nothing more: named
//! durable queues; [`Bus::publish`] returns once the message is accepted (a publisher confirm);
//! [`Bus::consume`] hands out at most `prefetch` unacknowledged deliveries at a time across the
//! queues it reads; a delivery leaves the queue only when acknowledged ([`Delivery::ack`]);
//! [`Delivery::nack`] returns it (or drops it); and when a consumer goes away — its handle is
//! dropped, as when a worker dies — every delivery it had not acknowledged returns to its queue,
//! marked redelivered. Delivery is therefore at least once: receivers must apply messages
//! idempotently. Besides the queues there is a best-effort broadcast ([`Bus::broadcast`],
//! [`Bus::subscribe`]) for short-lived control messages such as "cancel step 42".
//!
//! Queues: one per (system, required features) for steps ([`step_queue`]), read by every worker
//! that can serve it ([`queues_served`]), and [`RESULTS_QUEUE`] for step results going back to
//! the coordinator. A step message that returns to its queue more often than the delivery limit
//! (a step that kills every worker that takes it), or is rejected without requeueing, moves to
//! [`DEAD_STEPS_QUEUE`] with its body instead of looping for ever.
//!
//! Two implementations: [`MemoryBus`] in process for `kiln up`, and [`AmqpBus`] over RabbitMQ
//! for the distributed mode (durable quorum queues, publisher confirms, reconnection; see its
//! module for the broker configuration it needs). [`serve_steps`] is the worker-side loop over
//! any bus (take a step, run it, publish the result, then acknowledge). This crate never decides
//! what to build or in which order.

mod amqp;
mod memory;
mod queue;
mod serve;

use async_trait::async_trait;
use thiserror::Error;

pub use amqp::{AmqpBus, AmqpOptions, CONTROL_EXCHANGE};
pub use memory::MemoryBus;
pub use queue::{
    DEAD_STEPS_QUEUE, DEFAULT_DELIVERY_LIMIT, MAX_FEATURES, QueueName, RESULTS_QUEUE,
    queues_served, step_queue,
};
pub use serve::{StepRunner, cancel_message, serve_steps};

/// Why a bus operation failed.
#[derive(Debug, Error)]
pub enum BusError {
    /// The bus is shut down; nothing more is accepted or delivered.
    #[error("the bus is closed")]
    Closed,
    /// The consumer (channel) of a delivery is gone: the message went back to its queue, and
    /// this acknowledgement no longer means anything.
    #[error("cannot settle delivery {tag}: its consumer is closed and the message was requeued")]
    ChannelClosed {
        /// The delivery's tag.
        tag: u64,
    },
    /// A consumer must be allowed at least one delivery.
    #[error("prefetch must be at least 1")]
    ZeroPrefetch,
    /// The broker refused or failed (distributed implementations).
    #[error("bus failure: {0}")]
    Broker(String),
}

/// A message queue service with RabbitMQ's delivery semantics (see the crate documentation).
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Appends `body` to `queue` (creating the queue if needed); returns once it is durably
    /// accepted.
    async fn publish(&self, queue: &QueueName, body: Vec<u8>) -> Result<(), BusError>;

    /// Starts consuming `queues` with at most `prefetch` deliveries unacknowledged at once.
    /// `name` identifies the consumer in logs.
    async fn consume(
        &self,
        queues: &[QueueName],
        prefetch: u32,
        name: &str,
    ) -> Result<Box<dyn Consumer>, BusError>;

    /// Number of messages ready (not delivered) in `queue`.
    async fn ready_count(&self, queue: &QueueName) -> Result<u64, BusError>;

    /// Sends `body` to every current subscriber, at most once, not durably.
    async fn broadcast(&self, body: Vec<u8>) -> Result<(), BusError>;

    /// Receives broadcasts sent from now on.
    async fn subscribe(&self) -> Result<Box<dyn Subscription>, BusError>;
}

/// One consumer: the deliveries of the queues it reads. Dropping it returns every delivery it
/// has not settled to its queue.
#[async_trait]
pub trait Consumer: Send {
    /// The next delivery, waiting while none is ready or `prefetch` are unsettled; `None` once
    /// the bus is closed. Not cancel-safe: a call dropped before it returns may have taken a
    /// delivery that then stays unsettled until the consumer is dropped. In a `select!` loop,
    /// keep the unfinished call (as [`serve_steps`] does, through a stream).
    async fn next(&mut self) -> Option<Delivery>;
}

/// A stream of broadcast messages.
#[async_trait]
pub trait Subscription: Send {
    /// The next broadcast message; `None` once the bus is closed.
    async fn next(&mut self) -> Option<Vec<u8>>;
}

/// Settles one delivery; implemented by each bus.
#[async_trait]
pub trait Settle: Send + Sync {
    /// Acknowledges delivery `tag`: the message leaves its queue for good.
    async fn ack(&self, tag: u64) -> Result<(), BusError>;
    /// Rejects delivery `tag`: back to its queue if `requeue`, otherwise dropped (dead-lettered
    /// where the broker has a dead-letter queue).
    async fn nack(&self, tag: u64, requeue: bool) -> Result<(), BusError>;
}

/// One message handed to a consumer. It stays unacknowledged (and counts against the
/// consumer's prefetch) until [`Delivery::ack`] or [`Delivery::nack`]; dropping it unsettled
/// keeps it so until the consumer itself is dropped, as in AMQP.
pub struct Delivery {
    /// The message.
    pub body: Vec<u8>,
    /// The queue it came from.
    pub queue: QueueName,
    /// Whether it was delivered before (to a consumer that did not acknowledge it).
    pub redelivered: bool,
    /// The delivery tag, unique per bus.
    pub tag: u64,
    settle: std::sync::Arc<dyn Settle>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("queue", &self.queue)
            .field("tag", &self.tag)
            .field("redelivered", &self.redelivered)
            .field("bytes", &self.body.len())
            .finish()
    }
}

impl Delivery {
    /// A delivery settled through `settle` (for bus implementations).
    pub fn new(
        body: Vec<u8>,
        queue: QueueName,
        redelivered: bool,
        tag: u64,
        settle: std::sync::Arc<dyn Settle>,
    ) -> Delivery {
        Delivery {
            body,
            queue,
            redelivered,
            tag,
            settle,
        }
    }

    /// Acknowledges the message: it leaves the queue for good.
    pub async fn ack(self) -> Result<(), BusError> {
        self.settle.ack(self.tag).await
    }

    /// Rejects the message: back to its queue if `requeue`, otherwise dropped.
    pub async fn nack(self, requeue: bool) -> Result<(), BusError> {
        self.settle.nack(self.tag, requeue).await
    }
}
