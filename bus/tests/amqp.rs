//! `AmqpBus` against a real RabbitMQ: the broker at `KILN_TEST_AMQP_URL`, and for the
//! reconnection test, `KILN_TEST_RABBITMQCTL` (a command prefix that runs `rabbitmqctl` for that
//! broker's node).

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kiln_bus::{AmqpBus, AmqpOptions, Bus, BusError, Consumer, QueueName, Subscription};
use lapin::options::QueueDeleteOptions;
use lapin::{Connection, ConnectionProperties};

fn url() -> String {
    std::env::var("KILN_TEST_AMQP_URL").expect(
        "set KILN_TEST_AMQP_URL, e.g. via scripts/services up (amqp://guest:guest@127.0.0.1:5672/%2f)",
    )
}

fn suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    format!("{:012x}", hasher.finish() & 0xffff_ffff_ffff)
}

fn options() -> AmqpOptions {
    AmqpOptions {
        retry_timeout: Duration::from_secs(20),
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
        poll_interval: Duration::from_millis(100),
        ..AmqpOptions::default()
    }
}

async fn bus() -> AmqpBus {
    AmqpBus::connect(&url(), options()).await.unwrap()
}

/// Queues of one test, deleted when it ends, passed or not.
struct Queues(Vec<QueueName>);

impl Queues {
    fn new() -> Queues {
        Queues(Vec::new())
    }

    /// A fresh step queue (subject to the delivery limit).
    fn step(&mut self) -> QueueName {
        self.add(format!("kiln.steps.test-{}", suffix()))
    }

    /// A fresh plain queue.
    fn plain(&mut self) -> QueueName {
        self.add(format!("kiln.test.{}", suffix()))
    }

    fn add(&mut self, name: String) -> QueueName {
        let queue = QueueName::new(name);
        self.0.push(queue.clone());
        queue
    }
}

impl Drop for Queues {
    fn drop(&mut self) {
        let names: Vec<String> = self.0.iter().map(|q| q.as_str().to_owned()).collect();
        if names.is_empty() {
            return;
        }
        // Drop cannot await, and may run while the test's runtime unwinds: delete from a thread
        // of its own.
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let connection = Connection::connect(&url(), ConnectionProperties::default())
                    .await
                    .unwrap();
                let channel = connection.create_channel().await.unwrap();
                for name in names {
                    channel
                        .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                        .await
                        .unwrap();
                }
                connection.close(200, "done".into()).await.unwrap();
            })
        })
        .join();
        if deleted.is_err() && !std::thread::panicking() {
            panic!("could not delete the test's queues");
        }
    }
}

async fn next(consumer: &mut Box<dyn Consumer>) -> kiln_bus::Delivery {
    tokio::time::timeout(Duration::from_secs(20), consumer.next())
        .await
        .expect("a delivery within 20 s")
        .expect("the consumer is open")
}

/// Whether `consumer` delivers nothing within a second.
async fn nothing_within_a_second(consumer: &mut Box<dyn Consumer>) -> bool {
    tokio::time::timeout(Duration::from_secs(1), consumer.next())
        .await
        .is_err()
}

async fn ready(bus: &AmqpBus, queue: &QueueName) -> u64 {
    bus.ready_count(queue).await.unwrap()
}

#[tokio::test]
async fn published_messages_are_consumed_in_order_and_leave_when_acked() {
    let mut queues = Queues::new();
    let queue = queues.step();
    let bus = bus().await;
    for i in 0..3u8 {
        bus.publish(&queue, vec![i]).await.unwrap();
    }
    assert_eq!(ready(&bus, &queue).await, 3);
    let mut consumer = bus
        .consume(std::slice::from_ref(&queue), 10, "test")
        .await
        .unwrap();
    let first = next(&mut consumer).await;
    assert_eq!(first.body, [0]);
    assert_eq!(first.queue, queue);
    assert!(!first.redelivered);
    first.ack().await.unwrap();
    let second = next(&mut consumer).await;
    let third = next(&mut consumer).await;
    assert_eq!(
        (second.body.as_slice(), third.body.as_slice()),
        (&[1][..], &[2][..])
    );
    assert_ne!(second.tag, third.tag);
    second.ack().await.unwrap();
    third.ack().await.unwrap();
    drop(consumer);
    assert_eq!(ready(&bus, &queue).await, 0);
    bus.close().await;
}

#[tokio::test]
async fn an_unacked_delivery_returns_redelivered_when_its_consumer_goes_away() {
    let mut queues = Queues::new();
    let queue = queues.step();
    let bus = bus().await;
    bus.publish(&queue, b"build me".to_vec()).await.unwrap();
    let mut dying = bus
        .consume(std::slice::from_ref(&queue), 1, "dying")
        .await
        .unwrap();
    let delivery = next(&mut dying).await;
    drop(dying);
    assert!(matches!(
        delivery.ack().await,
        Err(BusError::ChannelClosed { .. })
    ));
    let mut other = bus
        .consume(std::slice::from_ref(&queue), 1, "other")
        .await
        .unwrap();
    let again = next(&mut other).await;
    assert_eq!(again.body, b"build me");
    assert!(again.redelivered);
    again.ack().await.unwrap();
    bus.close().await;
}

#[tokio::test]
async fn prefetch_bounds_unsettled_deliveries_across_queues() {
    let mut queues = Queues::new();
    let (a, b) = (queues.step(), queues.step());
    let bus = bus().await;
    for queue in [&a, &b] {
        bus.publish(queue, b"1".to_vec()).await.unwrap();
        bus.publish(queue, b"2".to_vec()).await.unwrap();
    }
    let mut consumer = bus
        .consume(&[a.clone(), b.clone()], 2, "two slots")
        .await
        .unwrap();
    let first = next(&mut consumer).await;
    let second = next(&mut consumer).await;
    assert!(nothing_within_a_second(&mut consumer).await);
    // The rest stays in the broker for other workers, not in this consumer's buffer.
    assert_eq!(ready(&bus, &a).await + ready(&bus, &b).await, 2);
    first.ack().await.unwrap();
    let third = next(&mut consumer).await;
    assert!(nothing_within_a_second(&mut consumer).await);
    second.ack().await.unwrap();
    third.ack().await.unwrap();
    next(&mut consumer).await.ack().await.unwrap();
    assert_eq!(ready(&bus, &a).await + ready(&bus, &b).await, 0);
    bus.close().await;
}

#[tokio::test]
async fn a_pulling_consumer_hears_of_new_steps_without_waiting_for_its_poll() {
    let mut queues = Queues::new();
    let (a, b) = (queues.step(), queues.step());
    // Idle polls at most once a minute: only the publisher's notice can wake it sooner.
    let slow = AmqpOptions {
        poll_interval: Duration::from_secs(60),
        ..options()
    };
    let worker = AmqpBus::connect(&url(), slow).await.unwrap();
    let mut consumer = worker
        .consume(&[a.clone(), b.clone()], 1, "idle worker")
        .await
        .unwrap();
    // One wait for a delivery, begun now: its idle pauses grow (50 ms, 100 ms, … 6.4 s), so
    // without a notice its next poll after the publish below comes at about 12.7 s.
    let waiting = tokio::spawn(async move {
        let delivery = consumer.next().await.unwrap();
        (delivery, tokio::time::Instant::now(), consumer)
    });
    tokio::time::sleep(Duration::from_secs(8)).await;
    let publisher = bus().await;
    let published = tokio::time::Instant::now();
    publisher.publish(&b, b"wake".to_vec()).await.unwrap();
    let (delivery, received, _consumer) = waiting.await.unwrap();
    assert!(
        received - published < Duration::from_secs(3),
        "the notice should wake the consumer before its next poll; it took {:?}",
        received - published
    );
    assert_eq!(delivery.body, b"wake");
    delivery.ack().await.unwrap();
    publisher.close().await;
    worker.close().await;
}

#[tokio::test]
async fn prefetch_bounds_a_single_queue_consumer() {
    let mut queues = Queues::new();
    let queue = queues.plain();
    let bus = bus().await;
    for i in 0..3u8 {
        bus.publish(&queue, vec![i]).await.unwrap();
    }
    let mut consumer = bus
        .consume(std::slice::from_ref(&queue), 2, "c")
        .await
        .unwrap();
    let first = next(&mut consumer).await;
    let _second = next(&mut consumer).await;
    assert!(nothing_within_a_second(&mut consumer).await);
    first.ack().await.unwrap();
    assert_eq!(next(&mut consumer).await.body, [2]);
    bus.close().await;
}

#[tokio::test]
async fn nack_requeues_or_drops() {
    let mut queues = Queues::new();
    let queue = queues.plain();
    let bus = bus().await;
    bus.publish(&queue, b"x".to_vec()).await.unwrap();
    let mut consumer = bus
        .consume(std::slice::from_ref(&queue), 1, "c")
        .await
        .unwrap();
    next(&mut consumer).await.nack(true).await.unwrap();
    let again = next(&mut consumer).await;
    assert!(again.redelivered);
    let tag = again.tag;
    again.nack(false).await.unwrap();
    assert!(nothing_within_a_second(&mut consumer).await);
    assert_eq!(ready(&bus, &queue).await, 0);
    assert!(tag > 0);
    bus.close().await;
}

#[tokio::test]
async fn a_step_past_its_delivery_limit_is_dead_lettered_with_its_body() {
    let mut queues = Queues::new();
    let queue = queues.step();
    let bus = AmqpBus::connect(
        &url(),
        AmqpOptions {
            delivery_limit: 1,
            ..options()
        },
    )
    .await
    .unwrap();
    let body = format!("poison {}", suffix()).into_bytes();
    bus.publish(&queue, body.clone()).await.unwrap();
    // First delivery: the worker dies (one return, within the limit).
    let mut dying = bus
        .consume(std::slice::from_ref(&queue), 1, "dying")
        .await
        .unwrap();
    assert_eq!(next(&mut dying).await.body, body);
    drop(dying);
    // Second delivery: handed back once more, past the limit.
    let mut consumer = bus
        .consume(std::slice::from_ref(&queue), 1, "c")
        .await
        .unwrap();
    let again = next(&mut consumer).await;
    assert!(again.redelivered);
    again.nack(true).await.unwrap();
    assert!(nothing_within_a_second(&mut consumer).await);
    assert_eq!(ready(&bus, &queue).await, 0);
    drop(consumer);

    // The dead-letter queue is shared by every step queue: look for this test's message.
    let mut dead = bus
        .consume(&[QueueName::dead_steps()], 1, "operator")
        .await
        .unwrap();
    loop {
        let delivery = next(&mut dead).await;
        if delivery.body == body {
            delivery.ack().await.unwrap();
            break;
        }
        delivery.nack(true).await.unwrap();
    }
    bus.close().await;
}

#[tokio::test]
async fn broadcasts_reach_every_subscriber() {
    let bus = bus().await;
    let mut first = bus.subscribe().await.unwrap();
    let mut second = bus.subscribe().await.unwrap();
    let body = format!("cancel-step {}", suffix()).into_bytes();
    bus.broadcast(body.clone()).await.unwrap();
    for subscription in [&mut first, &mut second] {
        receive(subscription, &body).await;
    }
    bus.close().await;
    assert!(first.next().await.is_none());
}

/// Waits for `body` on `subscription`, skipping other tests' broadcasts.
async fn receive(subscription: &mut Box<dyn Subscription>, body: &[u8]) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while subscription.next().await.expect("subscribed") != body {}
    })
    .await
    .expect("the broadcast within 20 s");
}

#[tokio::test]
async fn ready_count_counts_ready_messages_and_unknown_queues_hold_none() {
    let mut queues = Queues::new();
    let queue = queues.plain();
    let bus = bus().await;
    assert_eq!(ready(&bus, &queue).await, 0);
    bus.publish(&queue, b"a".to_vec()).await.unwrap();
    bus.publish(&queue, b"b".to_vec()).await.unwrap();
    assert_eq!(ready(&bus, &queue).await, 2);
    let mut consumer = bus
        .consume(std::slice::from_ref(&queue), 1, "c")
        .await
        .unwrap();
    let _taken = next(&mut consumer).await;
    assert_eq!(ready(&bus, &queue).await, 1);
    bus.close().await;
}

#[tokio::test]
async fn closing_ends_consumers_and_refuses_publishing() {
    let mut queues = Queues::new();
    let queue = queues.plain();
    let bus = bus().await;
    let mut consumer = bus
        .consume(std::slice::from_ref(&queue), 1, "c")
        .await
        .unwrap();
    bus.close().await;
    assert!(consumer.next().await.is_none());
    assert!(matches!(
        bus.publish(&queue, vec![]).await,
        Err(BusError::Closed)
    ));
}

#[tokio::test]
async fn an_unreachable_broker_fails_after_the_retry_timeout() {
    let started = std::time::Instant::now();
    let result = AmqpBus::connect(
        "amqp://guest:guest@127.0.0.1:1/%2f",
        AmqpOptions {
            retry_timeout: Duration::from_secs(1),
            backoff_initial: Duration::from_millis(100),
            ..AmqpOptions::default()
        },
    )
    .await;
    assert!(matches!(result, Err(BusError::Broker(_))));
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// Runs `rabbitmqctl` through `KILN_TEST_RABBITMQCTL` with `args`; its standard output.
fn rabbitmqctl(args: &str) -> String {
    let prefix = std::env::var("KILN_TEST_RABBITMQCTL").expect(
        "set KILN_TEST_RABBITMQCTL to a command prefix running rabbitmqctl for the test broker's \
         node, e.g. via scripts/services up (\"rabbitmqctl -n rabbit@localhost\")",
    );
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{prefix} {args}"))
        .output()
        .expect("running rabbitmqctl");
    assert!(
        output.status.success(),
        "rabbitmqctl {args} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Closes, from the broker's side, the connection named `name` (and no other test's).
fn close_connection(name: &str) {
    let listing = rabbitmqctl("list_connections -q --no-table-headers pid client_properties");
    let pids: Vec<&str> = listing
        .lines()
        .filter(|line| line.contains(&format!("\"{name}\"")))
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert_eq!(pids.len(), 1, "one connection named {name} in:\n{listing}");
    rabbitmqctl(&format!(
        "close_connection '{}' 'test: forced close'",
        pids[0]
    ));
}

#[tokio::test]
async fn consumers_publishers_and_subscribers_survive_a_lost_connection() {
    // Fail early, before anything is set up, when rabbitmqctl is not configured.
    rabbitmqctl("status -q > /dev/null");
    let mut queues = Queues::new();
    let (single, a, b) = (queues.step(), queues.step(), queues.step());
    let name = format!("kiln-test-{}", suffix());
    let bus = AmqpBus::connect(
        &url(),
        AmqpOptions {
            connection_name: name.clone(),
            ..options()
        },
    )
    .await
    .unwrap();
    let mut pushed = bus
        .consume(std::slice::from_ref(&single), 1, "pushed")
        .await
        .unwrap();
    let mut pulled = bus
        .consume(&[a.clone(), b.clone()], 1, "pulled")
        .await
        .unwrap();
    let mut subscription = bus.subscribe().await.unwrap();
    bus.publish(&single, b"before".to_vec()).await.unwrap();
    let in_flight = next(&mut pushed).await;
    assert!(!in_flight.redelivered);

    close_connection(&name);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The delivery of the dead channel is void; the broker hands it out again.
    assert!(matches!(
        in_flight.ack().await,
        Err(BusError::ChannelClosed { .. })
    ));
    let again = next(&mut pushed).await;
    assert_eq!(again.body, b"before");
    assert!(again.redelivered);
    again.ack().await.unwrap();

    bus.publish(&b, b"after".to_vec()).await.unwrap();
    let delivery = next(&mut pulled).await;
    assert_eq!(
        (delivery.queue.clone(), delivery.body.clone()),
        (b.clone(), b"after".to_vec())
    );
    delivery.ack().await.unwrap();

    // The subscription re-binds a new queue after the reconnection; a broadcast sent before
    // that is lost (best effort), so send until one arrives.
    let body = format!("cancel-step {}", suffix()).into_bytes();
    let received = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            bus.broadcast(body.clone()).await.unwrap();
            if let Ok(Some(message)) =
                tokio::time::timeout(Duration::from_millis(300), subscription.next()).await
            {
                if message == body {
                    return;
                }
            }
        }
    })
    .await;
    assert!(received.is_ok(), "no broadcast after the reconnection");
    bus.close().await;
}

/// Succeeds at once, signing its results with its name.
struct Instant(String);

#[async_trait::async_trait]
impl kiln_bus::StepRunner for Instant {
    async fn run(
        &self,
        step: &kiln_proto::StepMessage,
        _: tokio_util::sync::CancellationToken,
    ) -> kiln_proto::StepResult {
        kiln_proto::StepResult {
            version: kiln_proto::PROTO_VERSION,
            step_id: step.step_id,
            attempt: step.attempt,
            worker: self.0.clone(),
            status: kiln_proto::StepStatus::Succeeded,
            message: None,
            started_at_ms: 0,
            finished_at_ms: 0,
            outputs: Default::default(),
            products: vec![],
            metrics: vec![],
        }
    }
}

/// A worker reading two queues pulls each step with `basic.get`. Each step it finishes wakes its
/// loop while the next `basic.get` may be under way; a loop that then dropped the fetch lost the
/// step (taken from the queue, never run nor returned) until the worker exited.
#[tokio::test]
async fn a_pulling_worker_loses_no_step_while_its_builds_finish() {
    let mut queues = Queues::new();
    let (a, b) = (queues.step(), queues.step());
    // Results of earlier runs may wait in the shared results queue: only this run's count.
    let name = format!("puller-{}", suffix());
    let worker_bus = std::sync::Arc::new(bus().await);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let worker = tokio::spawn(kiln_bus::serve_steps(
        worker_bus.clone(),
        vec![a.clone(), b.clone()],
        1,
        name.clone(),
        std::sync::Arc::new(Instant(name.clone())),
        shutdown.clone(),
    ));
    let coordinator = bus().await;
    let mut results = coordinator
        .consume(&[QueueName::results()], 64, "results")
        .await
        .unwrap();
    const STEPS: i64 = 300;
    let mut seen = std::collections::BTreeSet::new();
    for id in 1..=STEPS {
        let step = kiln_proto::StepMessage {
            version: kiln_proto::PROTO_VERSION,
            step_id: id,
            attempt: 1,
            drv_path: format!("/nix/store/{}-s{id}.drv", "a".repeat(32)),
            drv: String::new(),
            input_paths: vec![],
            outputs: Default::default(),
            system: "x86_64-linux".into(),
            required_features: vec![],
            timeout_secs: 10,
            max_silent_secs: 10,
            max_log_bytes: 1 << 20,
            max_output_bytes: 1 << 30,
        };
        let queue = if id % 2 == 0 { &a } else { &b };
        coordinator.publish(queue, step.encode()).await.unwrap();
        // One step at a time, as a coordinator releases a chain: each is published while the
        // worker is finishing the one before.
        loop {
            let delivery = tokio::time::timeout(Duration::from_secs(20), results.next())
                .await
                .unwrap_or_else(|_| panic!("no result for step {id} within 20 s: it was lost"))
                .expect("the results consumer is open");
            let result = kiln_proto::StepResult::decode(&delivery.body).unwrap();
            delivery.ack().await.unwrap();
            if result.worker == name {
                assert_eq!(result.step_id, id);
                seen.insert(result.step_id);
                break;
            }
        }
    }
    assert_eq!(seen.len(), STEPS as usize);
    shutdown.cancel();
    worker.await.unwrap().unwrap();
    coordinator.close().await;
    worker_bus.close().await;
}
