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
//! slots, so no step waits in one worker's buffer while another worker is idle. So that pulling
//! does not add the polling delay to every step, each publish to a step queue is followed by a
//! transient notice on the fanout exchange [`READY_EXCHANGE`] naming the queue; a pulling
//! consumer that serves the queue polls as soon as it hears it. A lost notice costs at most one
//! poll interval.
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

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    Bus, BusError, Consumer, DEAD_STEPS_QUEUE, DEFAULT_DELIVERY_LIMIT, QueueName, Subscription,
};
use consume::{AmqpConsumer, AmqpSubscription};

mod consume;

/// The fanout exchange of [`Bus::broadcast`].
pub const CONTROL_EXCHANGE: &str = "kiln.control";

/// The fanout exchange that announces new step messages (the body names the queue) so that
/// pulling consumers poll at once instead of at their next idle poll.
pub const READY_EXCHANGE: &str = "kiln.ready";

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

pub(super) struct Shared {
    pub(super) url: String,
    pub(super) options: AmqpOptions,
    /// The current connection, replaced when it drops.
    pub(super) link: tokio::sync::Mutex<Option<Link>>,
    /// Delivery tags handed out, unique over the bus's lifetime (AMQP's restart per channel).
    pub(super) next_tag: AtomicU64,
    pub(super) closed: CancellationToken,
}

/// One connection with its channels for publishing (in confirm mode) and for queries.
#[derive(Clone)]
pub(super) struct Link {
    pub(super) connection: Arc<Connection>,
    pub(super) publish: Channel,
    pub(super) query: Channel,
    /// Queues and exchanges declared on this connection.
    pub(super) declared: Arc<Mutex<HashSet<String>>>,
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

pub(super) fn broker(context: &str, err: impl std::fmt::Display) -> BusError {
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
    pub(super) fn deadline(&self) -> Option<Instant> {
        Some(Instant::now() + self.options.retry_timeout)
    }

    /// The open connection, connecting (again) if needed until `deadline` (for ever if `None`,
    /// unless the bus is closed).
    pub(super) async fn link(&self, deadline: Option<Instant>) -> Result<Link, BusError> {
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
    pub(super) fn retryable(&self, link: &Link, err: &lapin::Error) -> bool {
        let lost = !link.connection.status().connected();
        if lost {
            tracing::warn!(error = %err, "AMQP connection lost; retrying on a new one");
        }
        lost && !self.closed.is_cancelled()
    }

    /// Declares `queue` on `channel` unless `link` already did.
    pub(super) async fn declare(
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

    pub(super) async fn declare_control(
        &self,
        link: &Link,
        channel: &Channel,
    ) -> lapin::Result<()> {
        self.declare_fanout(link, channel, CONTROL_EXCHANGE).await
    }

    pub(super) async fn declare_fanout(
        &self,
        link: &Link,
        channel: &Channel,
        exchange: &str,
    ) -> lapin::Result<()> {
        let key = format!("exchange {exchange}");
        if link.declared().contains(&key) {
            return Ok(());
        }
        channel
            .exchange_declare(
                exchange.into(),
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

impl Shared {
    /// Tells pulling consumers that `queue` has a new message; best effort (a lost notice
    /// costs a poll interval), so failures are only logged.
    async fn announce(&self, queue: &QueueName) {
        let Ok(link) = self
            .link(Some(Instant::now() + Duration::from_secs(1)))
            .await
        else {
            return;
        };
        let sent = async {
            self.declare_fanout(&link, &link.publish, READY_EXCHANGE)
                .await?;
            // Not awaited for its confirm: the notice is transient.
            let _confirm = link
                .publish
                .basic_publish(
                    READY_EXCHANGE.into(),
                    "".into(),
                    BasicPublishOptions::default(),
                    queue.as_str().as_bytes(),
                    BasicProperties::default(),
                )
                .await?;
            lapin::Result::Ok(())
        };
        if let Err(err) = sent.await {
            tracing::debug!(%queue, error = %err, "cannot announce a step message");
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
        self.shared.publish("", Some(queue), &body).await?;
        if queue.is_step_queue() {
            self.shared.announce(queue).await;
        }
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
        if queues.is_empty() {
            return Err(BusError::Broker(
                "a consumer needs at least one queue".into(),
            ));
        }
        let consumer =
            AmqpConsumer::start(self.shared.clone(), queues.to_vec(), prefetch, name).await?;
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
        let subscription = AmqpSubscription::start(self.shared.clone()).await?;
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
