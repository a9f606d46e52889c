//! Consumers and broadcast subscriptions of [`AmqpBus`](super::AmqpBus): channels that outlive
//! the connections under them.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicQosOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Acker, Channel};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{CONTROL_EXCHANGE, Link, READY_EXCHANGE, Shared, broker};
use crate::{BusError, Consumer, Delivery, QueueName, Settle, Subscription};

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
    /// A pulling consumer's notices of new step messages ([`READY_EXCHANGE`]).
    ready: Option<lapin::Consumer>,
    /// The queue a pulling consumer looks at first next time, so no queue starves the others.
    next_queue: usize,
    /// Current pause between polls of idle queues.
    idle: Duration,
}

pub(super) struct AmqpConsumer {
    shared: Arc<Shared>,
    queues: Vec<QueueName>,
    prefetch: u32,
    name: String,
    settle: Arc<AmqpSettle>,
    session: Option<Session>,
}

impl AmqpConsumer {
    /// A consumer of `queues` whose channel is open, or the reason it could not be opened
    /// within the bus's retry timeout.
    pub(super) async fn start(
        shared: Arc<Shared>,
        queues: Vec<QueueName>,
        prefetch: u32,
        name: &str,
    ) -> Result<AmqpConsumer, BusError> {
        let deadline = shared.deadline();
        let mut consumer = AmqpConsumer {
            shared,
            queues,
            prefetch,
            name: name.to_owned(),
            settle: Arc::new(AmqpSettle::default()),
            session: None,
        };
        consumer.session = Some(consumer.open(deadline).await?);
        Ok(consumer)
    }

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
        let mut ready = None;
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
            if self.queues.iter().any(QueueName::is_step_queue) {
                self.shared
                    .declare_fanout(link, &channel, READY_EXCHANGE)
                    .await?;
                let notices = channel
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
                        notices.name().as_str().into(),
                        READY_EXCHANGE.into(),
                        "".into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                ready = Some(
                    channel
                        .basic_consume(
                            notices.name().as_str().into(),
                            format!("{}-ready", self.name).as_str().into(),
                            BasicConsumeOptions {
                                no_ack: true,
                                ..BasicConsumeOptions::default()
                            },
                            FieldTable::default(),
                        )
                        .await?,
                );
            }
            None
        };
        tracing::info!(consumer = %self.name, queues = self.queues.len(), prefetch = self.prefetch, "consuming");
        Ok(Session {
            channel,
            pushed,
            ready,
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
                    let queues = &self.queues;
                    let notice = async {
                        match session.ready.as_mut() {
                            // Only notices for a queue this consumer reads end the wait.
                            Some(ready) => loop {
                                match ready.next().await {
                                    Some(Ok(notice)) => {
                                        if queues
                                            .iter()
                                            .any(|q| q.as_str().as_bytes() == notice.data)
                                        {
                                            session.idle = Duration::ZERO;
                                            break;
                                        }
                                    }
                                    // The channel failed: the next poll finds out and reopens.
                                    Some(Err(_)) | None => std::future::pending::<()>().await,
                                }
                            },
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        _ = closed.cancelled() => return None,
                        () = tokio::time::sleep(idle) => {}
                        () = notice => {}
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

pub(super) struct AmqpSubscription {
    shared: Arc<Shared>,
    session: Option<SubscriptionSession>,
}

impl AmqpSubscription {
    /// A subscription whose queue is bound, or the reason it could not be within the bus's
    /// retry timeout.
    pub(super) async fn start(shared: Arc<Shared>) -> Result<AmqpSubscription, BusError> {
        let deadline = shared.deadline();
        let mut subscription = AmqpSubscription {
            shared,
            session: None,
        };
        subscription.session = Some(subscription.open(deadline).await?);
        Ok(subscription)
    }

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
