//! The distributed bus: [`Bus`] over RabbitMQ (AMQP 0-9-1, `lapin`).
//!
//! Every queue is a durable quorum queue, declared on first use. Step queues
//! ([`QueueName::is_step_queue`]) carry `x-delivery-limit` ([`AmqpOptions::delivery_limit`]) and
//! dead-letter through the default exchange to [`DEAD_STEPS_QUEUE`], so a step that kills every
//! worker that takes it ends up there with its original body instead of looping forever; a
//! quorum queue counts every return (a consumer that died, a requeueing nack) against the limit.
//! A queue that already exists with other arguments (say, another delivery limit) makes the
//! broker refuse the declaration: publishing to it fails with [`BusError::Broker`] until the
//! queue is deleted or the options match again.
//!
//! Publishing waits for the broker's publisher confirm of the persistent message. The
//! connection is re-established with capped exponential backoff when it drops (a broker
//! restart): publishing retries on the new connection for up to [`AmqpOptions::retry_timeout`],
//! and consumers and subscriptions re-open their channels and carry on; deliveries of a dead
//! channel become void ([`BusError::ChannelClosed`] when settled) because the broker requeues
//! them.
//!
//! Prefetch: quorum queues refuse global QoS (the broker closes the connection with
//! `NOT_IMPLEMENTED`), so a limit spanning several queues cannot be left to the broker. A
//! consumer of one queue uses the broker's per-consumer prefetch and pushed deliveries; a
//! consumer of several queues pulls (`basic.get`, round robin over its queues) only while it has
//! fewer than `prefetch` unsettled deliveries, polling idle queues with a backoff capped at
//! [`AmqpOptions::poll_interval`]. Either way a worker never holds more messages than it has
//! slots, so no step waits in one worker's buffer while another worker is idle.
//!
//! Broker configuration: builds can run for hours with their message unacknowledged, and
//! RabbitMQ closes a channel whose delivery stays unacknowledged longer than its global
//! `consumer_timeout` (30 minutes by default; RabbitMQ 3.10 has no per-queue setting). The
//! broker must run with a `consumer_timeout` above the longest build, e.g.
//! `consumer_timeout = 86400000` (24 h) in `rabbitmq.conf`.
//!
//! Broadcasts go through the durable fanout exchange [`CONTROL_EXCHANGE`]; each subscription
//! binds an exclusive, auto-deleted, server-named queue, so a subscriber only sees what is sent
//! while it is connected.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Acker, BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    Bus, BusError, Consumer, DEAD_STEPS_QUEUE, DEFAULT_DELIVERY_LIMIT, Delivery, QueueName, Settle,
    Subscription,
};

/// The fanout exchange of [`Bus::broadcast`].
pub const CONTROL_EXCHANGE: &str = "kiln.control";

/// AMQP `delivery_mode` of a message written to disk.
const PERSISTENT: u8 = 2;

/// Tunables of [`AmqpBus`].
#[derive(Debug, Clone)]
pub struct AmqpOptions {
    /// Returns to its queue a step message may make before the next one dead-letters it to
    /// [`DEAD_STEPS_QUEUE`] (`x-delivery-limit`). Default 3.
    pub delivery_limit: u32,
    /// Longest wait for one connection attempt (TCP and AMQP handshake). Default 10 s.
    pub connect_timeout: Duration,
    /// How long publishing, [`Bus::ready_count`] and [`Bus::consume`] keep retrying while the
    /// broker is unreachable before they fail with [`BusError::Broker`]. Consumers and
    /// subscriptions that already run retry for as long as the bus is open. Default 60 s.
    pub retry_timeout: Duration,
    /// First pause between reconnection attempts; it doubles after each failure. Default 0.5 s.
    pub backoff_initial: Duration,
    /// Longest pause between reconnection attempts. Default 10 s.
    pub backoff_max: Duration,
    /// Longest pause between two polls of idle queues by a consumer of several queues. Default
    /// 1 s.
    pub poll_interval: Duration,
    /// Name of the connection shown by the broker (`rabbitmqctl list_connections`). Default
    /// `kiln`.
    pub connection_name: String,
}

impl Default for AmqpOptions {
    fn default() -> Self {
        AmqpOptions {
            delivery_limit: DEFAULT_DELIVERY_LIMIT,
            connect_timeout: Duration::from_secs(10),
            retry_timeout: Duration::from_secs(60),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(10),
            poll_interval: Duration::from_secs(1),
            connection_name: "kiln".to_owned(),
        }
    }
}

/// The RabbitMQ implementation of [`Bus`] (see the module documentation). Cheap to clone; clones
/// share one connection.
#[derive(Clone)]
pub struct AmqpBus {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AmqpBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpBus").finish_non_exhaustive()
    }
}

struct Shared {
    url: String,
    options: AmqpOptions,
    /// The current connection, replaced when it drops.
    link: tokio::sync::Mutex<Option<Link>>,
    /// Delivery tags handed out, unique over the bus's lifetime (AMQP's restart per channel).
    next_tag: AtomicU64,
    closed: CancellationToken,
}

/// One connection with its channels for publishing (in confirm mode) and for queries.
#[derive(Clone)]
struct Link {
    connection: Arc<Connection>,
    publish: Channel,
    query: Channel,
    /// Queues and exchanges declared on this connection.
    declared: Arc<Mutex<HashSet<String>>>,
}

impl Link {
    fn declared(&self) -> MutexGuard<'_, HashSet<String>> {
        self.declared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_open(&self) -> bool {
        self.connection.status().connected()
            && self.publish.status().connected()
            && self.query.status().connected()
    }
}

fn broker(context: &str, err: impl std::fmt::Display) -> BusError {
    BusError::Broker(format!("{context}: {err}"))
}

impl AmqpBus {
    /// Connects to the broker at `url` (`amqp://user:password@host:port/vhost`), retrying for
    /// up to [`AmqpOptions::retry_timeout`].
    pub async fn connect(url: &str, options: AmqpOptions) -> Result<AmqpBus, BusError> {
        let bus = AmqpBus {
            shared: Arc::new(Shared {
                url: url.to_owned(),
                options,
                link: tokio::sync::Mutex::new(None),
                next_tag: AtomicU64::new(1),
                closed: CancellationToken::new(),
            }),
        };
        bus.shared.link(bus.shared.deadline()).await?;
        Ok(bus)
    }

    /// Closes the connection: consumers and subscriptions end (their unsettled deliveries
    /// return to their queues), and every later operation fails with [`BusError::Closed`].
    pub async fn close(&self) {
        self.shared.closed.cancel();
        if let Some(link) = self.shared.link.lock().await.take() {
            if let Err(err) = link.connection.close(200, "bus closed".into()).await {
                tracing::debug!(error = %err, "closing the AMQP connection");
            }
        }
    }
}

impl Shared {
    fn deadline(&self) -> Option<Instant> {
        Some(Instant::now() + self.options.retry_timeout)
    }

    /// The open connection, connecting (again) if needed until `deadline` (for ever if `None`,
    /// unless the bus is closed).
    async fn link(&self, deadline: Option<Instant>) -> Result<Link, BusError> {
        let mut backoff = self.options.backoff_initial;
        loop {
            if self.closed.is_cancelled() {
                return Err(BusError::Closed);
            }
            // The lock is held for one attempt at most, never across the pause below, so a
            // caller with a deadline is not held up by one that waits for ever.
            let err = {
                let mut current = self.link.lock().await;
                if let Some(link) = current.as_ref() {
                    if link.is_open() {
                        return Ok(link.clone());
                    }
                }
                let attempt = match current.take() {
                    // A channel closed by a refused operation: the connection can be kept.
                    Some(link) if link.connection.status().connected() => {
                        self.open_channels(link.connection).await
                    }
                    _ => self.open_link().await,
                };
                match attempt {
                    Ok(link) => {
                        *current = Some(link.clone());
                        return Ok(link);
                    }
                    Err(err) => err,
                }
            };
            let wait = backoff;
            backoff = (backoff * 2).min(self.options.backoff_max);
            if deadline.is_some_and(|deadline| Instant::now() + wait > deadline) {
                return Err(broker(
                    &format!(
                        "cannot reach the AMQP broker within {:?}",
                        self.options.retry_timeout
                    ),
                    err,
                ));
            }
            tracing::warn!(error = %err, retry_in = ?wait, "AMQP broker unreachable");
            tokio::select! {
                _ = self.closed.cancelled() => return Err(BusError::Closed),
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn open_link(&self) -> Result<Link, lapin::Error> {
        let properties = ConnectionProperties::default()
            .with_connection_name(self.options.connection_name.clone().into());
        let connection = tokio::time::timeout(
            self.options.connect_timeout,
            Connection::connect(&self.url, properties),
        )
        .await
        .map_err(|_| {
            lapin::Error::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connection attempt timed out",
            ))
        })??;
        tracing::info!("connected to the AMQP broker");
        self.open_channels(Arc::new(connection)).await
    }

    async fn open_channels(&self, connection: Arc<Connection>) -> Result<Link, lapin::Error> {
        let publish = connection.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let query = connection.create_channel().await?;
        Ok(Link {
            connection,
            publish,
            query,
            declared: Arc::default(),
        })
    }

    /// Whether an operation that failed with `err` on `link` is worth retrying on a new
    /// connection: only if the connection itself is gone. A refusal on a live connection (a
    /// channel error such as a mismatched declaration) would only be refused again.
    fn retryable(&self, link: &Link, err: &lapin::Error) -> bool {
        let lost = !link.connection.status().connected();
        if lost {
            tracing::warn!(error = %err, "AMQP connection lost; retrying on a new one");
        }
        lost && !self.closed.is_cancelled()
    }

    /// Declares `queue` on `channel` unless `link` already did.
    async fn declare(
        &self,
        link: &Link,
        channel: &Channel,
        queue: &QueueName,
    ) -> lapin::Result<()> {
        if link.declared().contains(queue.as_str()) {
            return Ok(());
        }
        let mut arguments = quorum();
        if queue.is_step_queue() {
            // The dead-letter target must exist before anything is dead-lettered to it.
            Box::pin(self.declare(link, channel, &QueueName::dead_steps())).await?;
            arguments.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(i64::from(self.options.delivery_limit)),
            );
            arguments.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString("".into()),
            );
            arguments.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(DEAD_STEPS_QUEUE.into()),
            );
        }
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::durable(),
                arguments,
            )
            .await?;
        link.declared().insert(queue.as_str().to_owned());
        Ok(())
    }

    async fn declare_control(&self, link: &Link, channel: &Channel) -> lapin::Result<()> {
        let key = format!("exchange {CONTROL_EXCHANGE}");
        if link.declared().contains(&key) {
            return Ok(());
        }
        channel
            .exchange_declare(
                CONTROL_EXCHANGE.into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        link.declared().insert(key);
        Ok(())
    }

    /// Publishes once on `link`; `Ok(false)` if the broker nacked the message.
    async fn publish_on(
        &self,
        link: &Link,
        exchange: &str,
        queue: Option<&QueueName>,
        body: &[u8],
        persistent: bool,
    ) -> lapin::Result<bool> {
        let routing_key = match queue {
            Some(queue) => {
                self.declare(link, &link.publish, queue).await?;
                queue.as_str()
            }
            None => {
                self.declare_control(link, &link.publish).await?;
                ""
            }
        };
        let mut properties = BasicProperties::default();
        if persistent {
            properties = properties.with_delivery_mode(PERSISTENT);
        }
        let confirmation = link
            .publish
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await?
            .await?;
        Ok(!confirmation.is_nack())
    }

    async fn publish(
        &self,
        exchange: &str,
        queue: Option<&QueueName>,
        body: &[u8],
    ) -> Result<(), BusError> {
        let deadline = self.deadline();
        loop {
            let link = self.link(deadline).await?;
            match self
                .publish_on(&link, exchange, queue, body, queue.is_some())
                .await
            {
                Ok(true) => return Ok(()),
                Ok(false) => {
                    return Err(BusError::Broker(format!(
                        "the broker refused (nacked) a message for {}",
                        queue.map_or(CONTROL_EXCHANGE, QueueName::as_str)
                    )));
                }
                Err(err) if self.retryable(&link, &err) => continue,
                Err(_) if self.closed.is_cancelled() => return Err(BusError::Closed),
                Err(err) => {
                    return Err(broker(
                        &format!(
                            "publishing to {}",
                            queue.map_or(CONTROL_EXCHANGE, QueueName::as_str)
                        ),
                        err,
                    ));
                }
            }
        }
    }
}

/// Arguments of every queue Kiln declares.
fn quorum() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    arguments
}

#[async_trait]
impl Bus for AmqpBus {
    async fn publish(&self, queue: &QueueName, body: Vec<u8>) -> Result<(), BusError> {
        self.shared.publish("", Some(queue), &body).await
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
        if queues.is_empty() {
            return Err(BusError::Broker(
                "a consumer needs at least one queue".into(),
            ));
        }
        let mut consumer = AmqpConsumer {
            shared: self.shared.clone(),
            queues: queues.to_vec(),
            prefetch,
            name: name.to_owned(),
            settle: Arc::new(AmqpSettle::default()),
            session: None,
        };
        consumer.session = Some(consumer.open(self.shared.deadline()).await?);
        Ok(Box::new(consumer))
    }

    async fn ready_count(&self, queue: &QueueName) -> Result<u64, BusError> {
        let deadline = self.shared.deadline();
        loop {
            let link = self.shared.link(deadline).await?;
            let declared = link
                .query
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await;
            match declared {
                Ok(declared) => return Ok(u64::from(declared.message_count())),
                // A queue nobody declared yet holds nothing (the broker closed the query
                // channel; the next call opens another).
                Err(err) if is_not_found(&err) => return Ok(0),
                Err(err) if self.shared.retryable(&link, &err) => continue,
                Err(err) => return Err(broker(&format!("counting {queue}"), err)),
            }
        }
    }

    async fn broadcast(&self, body: Vec<u8>) -> Result<(), BusError> {
        self.shared.publish(CONTROL_EXCHANGE, None, &body).await
    }

    async fn subscribe(&self) -> Result<Box<dyn Subscription>, BusError> {
        let mut subscription = AmqpSubscription {
            shared: self.shared.clone(),
            session: None,
        };
        subscription.session = Some(subscription.open(self.shared.deadline()).await?);
        Ok(Box::new(subscription))
    }
}

fn is_not_found(err: &lapin::Error) -> bool {
    matches!(
        err.kind(),
        lapin::ErrorKind::ProtocolError(e)
            if matches!(e.kind(), lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::NOTFOUND))
    )
}

/// Settles the deliveries of one consumer, across the channels it goes through.
#[derive(Default)]
struct AmqpSettle {
    state: Mutex<SettleState>,
    /// Woken when a delivery is settled or voided (a pulling consumer waits for a free slot).
    changed: Notify,
}

#[derive(Default)]
struct SettleState {
    /// Unsettled deliveries of the current channel, by bus tag.
    pending: HashMap<u64, Acker>,
    /// Tags below this one belong to channels that are gone.
    first_live_tag: u64,
    /// The consumer is gone: nothing can be settled any more.
    closed: bool,
}

impl AmqpSettle {
    fn lock(&self) -> MutexGuard<'_, SettleState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn unsettled(&self) -> usize {
        self.lock().pending.len()
    }

    /// Forgets the deliveries of a channel that is gone; tags from `first_live_tag` on belong
    /// to its successor.
    fn void(&self, first_live_tag: u64, closed: bool) {
        let mut state = self.lock();
        state.pending.clear();
        state.first_live_tag = first_live_tag;
        state.closed |= closed;
        drop(state);
        self.changed.notify_waiters();
    }

    async fn settle(&self, tag: u64, requeue: Option<bool>) -> Result<(), BusError> {
        let acker = {
            let mut state = self.lock();
            if state.closed || tag < state.first_live_tag {
                return Err(BusError::ChannelClosed { tag });
            }
            state.pending.remove(&tag).ok_or_else(|| {
                BusError::Broker(format!("unknown delivery tag {tag} (already settled)"))
            })?
        };
        self.changed.notify_waiters();
        let done = match requeue {
            None => acker.ack(BasicAckOptions::default()).await,
            Some(requeue) => {
                acker
                    .nack(BasicNackOptions {
                        requeue,
                        ..BasicNackOptions::default()
                    })
                    .await
            }
        };
        match done {
            Ok(true) => Ok(()),
            Ok(false) if acker.poisoned() => Err(BusError::ChannelClosed { tag }),
            Ok(false) => Err(BusError::Broker(format!(
                "delivery tag {tag} was already settled"
            ))),
            Err(_) => Err(BusError::ChannelClosed { tag }),
        }
    }
}

#[async_trait]
impl Settle for AmqpSettle {
    async fn ack(&self, tag: u64) -> Result<(), BusError> {
        self.settle(tag, None).await
    }

    async fn nack(&self, tag: u64, requeue: bool) -> Result<(), BusError> {
        self.settle(tag, Some(requeue)).await
    }
}

/// A consumer's channel. Dropping it closes the channel, which returns its unsettled
/// deliveries to their queues.
struct Session {
    channel: Channel,
    /// The pushed deliveries of a one-queue consumer; `None` for a pulling consumer.
    pushed: Option<lapin::Consumer>,
    /// The queue a pulling consumer looks at first next time, so no queue starves the others.
    next_queue: usize,
    /// Current pause between polls of idle queues.
    idle: Duration,
}

struct AmqpConsumer {
    shared: Arc<Shared>,
    queues: Vec<QueueName>,
    prefetch: u32,
    name: String,
    settle: Arc<AmqpSettle>,
    session: Option<Session>,
}

impl AmqpConsumer {
    /// Opens a channel on the current connection and starts consuming, retrying until
    /// `deadline` (for ever if `None`, unless the bus is closed).
    async fn open(&self, deadline: Option<Instant>) -> Result<Session, BusError> {
        let mut backoff = self.shared.options.backoff_initial;
        loop {
            let link = self.shared.link(deadline).await?;
            let err = match self.try_open(&link).await {
                Ok(session) => {
                    self.settle
                        .void(self.shared.next_tag.load(Ordering::SeqCst), false);
                    return Ok(session);
                }
                Err(err) => err,
            };
            if !self.shared.retryable(&link, &err) {
                // A refusal on a live connection (say, a mismatched queue declaration).
                if deadline.is_some() {
                    return Err(broker(&format!("consumer {} cannot start", self.name), err));
                }
                tracing::error!(consumer = %self.name, error = %err, retry_in = ?backoff, "cannot start consuming");
                tokio::select! {
                    _ = self.shared.closed.cancelled() => return Err(BusError::Closed),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(self.shared.options.backoff_max);
            }
        }
    }

    async fn try_open(&self, link: &Link) -> lapin::Result<Session> {
        let channel = link.connection.create_channel().await?;
        for queue in &self.queues {
            self.shared.declare(link, &channel, queue).await?;
        }
        let pushed = if let [queue] = self.queues.as_slice() {
            let prefetch = u16::try_from(self.prefetch).unwrap_or(u16::MAX);
            channel
                .basic_qos(prefetch, BasicQosOptions { global: false })
                .await?;
            Some(
                channel
                    .basic_consume(
                        queue.as_str().into(),
                        self.name.as_str().into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await?,
            )
        } else {
            None
        };
        tracing::info!(consumer = %self.name, queues = self.queues.len(), prefetch = self.prefetch, "consuming");
        Ok(Session {
            channel,
            pushed,
            next_queue: 0,
            idle: Duration::ZERO,
        })
    }

    /// Drops the session after its channel or connection failed; its deliveries are void.
    fn reset(&mut self, err: impl std::fmt::Display) {
        if !self.shared.closed.is_cancelled() {
            tracing::warn!(consumer = %self.name, error = %err, "consumer channel lost; reopening");
        }
        self.session = None;
        self.settle
            .void(self.shared.next_tag.load(Ordering::SeqCst), false);
    }

    fn delivery(&self, queue: QueueName, delivery: lapin::message::Delivery) -> Delivery {
        let tag = self.shared.next_tag.fetch_add(1, Ordering::SeqCst);
        self.settle
            .lock()
            .pending
            .insert(tag, delivery.acker.clone());
        Delivery::new(
            delivery.data,
            queue,
            delivery.redelivered,
            tag,
            self.settle.clone(),
        )
    }

    /// Waits until fewer than `prefetch` deliveries are unsettled; `false` if the bus closed.
    async fn free_slot(&self) -> bool {
        loop {
            let changed = self.settle.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.settle.unsettled() < self.prefetch as usize {
                return true;
            }
            tokio::select! {
                _ = self.shared.closed.cancelled() => return false,
                () = changed => {}
            }
        }
    }

    /// One round of `basic.get` over the queues, starting where the last one left off.
    async fn poll(&mut self) -> Result<Option<Delivery>, lapin::Error> {
        let Some(session) = self.session.as_mut() else {
            return Ok(None);
        };
        let count = self.queues.len();
        for i in 0..count {
            let index = (session.next_queue + i) % count;
            let queue = &self.queues[index];
            let got = session
                .channel
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
                .await?;
            if let Some(message) = got {
                session.next_queue = (index + 1) % count;
                session.idle = Duration::ZERO;
                let queue = queue.clone();
                return Ok(Some(self.delivery(queue, message.delivery)));
            }
        }
        Ok(None)
    }
}

#[async_trait]
impl Consumer for AmqpConsumer {
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            if self.shared.closed.is_cancelled() {
                return None;
            }
            if self.session.is_none() {
                match self.open(None).await {
                    Ok(session) => self.session = Some(session),
                    Err(_) => return None,
                }
            }
            let closed = self.shared.closed.clone();
            let session = self.session.as_mut().expect("opened above");
            if let Some(pushed) = session.pushed.as_mut() {
                let item = tokio::select! {
                    _ = closed.cancelled() => return None,
                    item = pushed.next() => item,
                };
                match item {
                    Some(Ok(delivery)) => {
                        let queue = self.queues[0].clone();
                        return Some(self.delivery(queue, delivery));
                    }
                    Some(Err(err)) => self.reset(err),
                    None => self.reset("the broker cancelled the consumer"),
                }
                continue;
            }
            if !self.free_slot().await {
                return None;
            }
            match self.poll().await {
                Ok(Some(delivery)) => return Some(delivery),
                Ok(None) => {
                    let Some(session) = self.session.as_mut() else {
                        continue;
                    };
                    session.idle = (session.idle * 2)
                        .clamp(Duration::from_millis(50), self.shared.options.poll_interval);
                    let idle = session.idle;
                    tokio::select! {
                        _ = closed.cancelled() => return None,
                        () = tokio::time::sleep(idle) => {}
                    }
                }
                Err(err) => self.reset(err),
            }
        }
    }
}

impl Drop for AmqpConsumer {
    /// Dropping the session closes its channel: the broker requeues what was not settled.
    fn drop(&mut self) {
        self.settle.void(u64::MAX, true);
    }
}

/// A subscription's channel and its consumer.
struct SubscriptionSession {
    _channel: Channel,
    messages: lapin::Consumer,
}

struct AmqpSubscription {
    shared: Arc<Shared>,
    session: Option<SubscriptionSession>,
}

impl AmqpSubscription {
    async fn open(&self, deadline: Option<Instant>) -> Result<SubscriptionSession, BusError> {
        let mut backoff = self.shared.options.backoff_initial;
        loop {
            let link = self.shared.link(deadline).await?;
            let err = match self.try_open(&link).await {
                Ok(session) => return Ok(session),
                Err(err) => err,
            };
            if !self.shared.retryable(&link, &err) {
                if deadline.is_some() {
                    return Err(broker("cannot subscribe to broadcasts", err));
                }
                tracing::error!(error = %err, retry_in = ?backoff, "cannot subscribe to broadcasts");
                tokio::select! {
                    _ = self.shared.closed.cancelled() => return Err(BusError::Closed),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(self.shared.options.backoff_max);
            }
        }
    }

    async fn try_open(&self, link: &Link) -> lapin::Result<SubscriptionSession> {
        let channel = link.connection.create_channel().await?;
        self.shared.declare_control(link, &channel).await?;
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                queue.name().clone(),
                CONTROL_EXCHANGE.into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let messages = channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(SubscriptionSession {
            _channel: channel,
            messages,
        })
    }
}

#[async_trait]
impl Subscription for AmqpSubscription {
    async fn next(&mut self) -> Option<Vec<u8>> {
        loop {
            if self.shared.closed.is_cancelled() {
                return None;
            }
            if self.session.is_none() {
                match self.open(None).await {
                    Ok(session) => self.session = Some(session),
                    Err(_) => return None,
                }
            }
            let closed = self.shared.closed.clone();
            let session = self.session.as_mut().expect("opened above");
            let item = tokio::select! {
                _ = closed.cancelled() => return None,
                item = session.messages.next() => item,
            };
            match item {
                Some(Ok(message)) => return Some(message.data),
                Some(Err(err)) => {
                    tracing::warn!(error = %err, "broadcast subscription lost; resubscribing");
                    self.session = None;
                }
                None => {
                    tracing::warn!("broadcast subscription cancelled by the broker; resubscribing");
                    self.session = None;
                }
            }
        }
    }
}
