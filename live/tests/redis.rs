//! kiln-live against a real Redis: `KILN_TEST_REDIS_URL` names it (these tests fail when it is
//! unset, rather than pass without testing anything). Each test keeps its keys under a prefix
//! of its own, so they run in parallel on one Redis.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use kiln_live::{Appended, Lease, Live, LiveError, RunningStep, WorkerInfo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

fn redis_url() -> String {
    std::env::var("KILN_TEST_REDIS_URL").unwrap_or_else(|_| {
        panic!(
            "these tests need a Redis: set KILN_TEST_REDIS_URL, e.g. via scripts/services up \
             (or redis-server --port 6399 and KILN_TEST_REDIS_URL=redis://127.0.0.1:6399)"
        )
    })
}

/// A prefix no other test (nor an earlier run) uses.
fn unique_prefix(test: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("kiln-test:{test}:{}:{nanos}:{n}:", std::process::id())
}

/// A handle on the test Redis, with keys of its own.
fn live(test: &str) -> Live {
    Live::connect(&redis_url())
        .unwrap()
        .with_prefix(unique_prefix(test))
}

/// A plain connection to the test Redis, to look behind kiln-live's back.
async fn raw() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// `url` pointing at `addr` instead of its own host and port (credentials and db kept).
fn url_via(url: &str, addr: SocketAddr) -> String {
    let rest = url
        .strip_prefix("redis://")
        .expect("KILN_TEST_REDIS_URL must be a redis:// URL");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let userinfo = authority.rfind('@').map_or("", |at| &authority[..=at]);
    format!("redis://{userinfo}{addr}{path}")
}

/// The address of the test Redis.
async fn redis_addr() -> SocketAddr {
    let url = redis_url();
    let rest = url.strip_prefix("redis://").unwrap();
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let host_port = authority.rsplit('@').next().unwrap();
    let host_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:6379")
    };
    tokio::net::lookup_host(host_port)
        .await
        .unwrap()
        .next()
        .unwrap()
}

/// A loopback port nothing listens on (bound, then closed).
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A TCP relay to the test Redis that can be cut (every connection dropped, new ones refused)
/// and restored on the same address: Redis going away and coming back, as the clients see it.
struct Relay {
    addr: SocketAddr,
    upstream: SocketAddr,
    running: Option<(CancellationToken, JoinHandle<()>)>,
}

impl Relay {
    /// A relay on a free loopback port, not yet relaying (Redis looks down).
    async fn down() -> Relay {
        Relay {
            addr: closed_port().await,
            upstream: redis_addr().await,
            running: None,
        }
    }

    /// The test Redis URL, through this relay.
    fn url(&self) -> String {
        url_via(&redis_url(), self.addr)
    }

    /// Starts relaying (Redis looks up).
    async fn up(&mut self) {
        assert!(self.running.is_none());
        let listener = TcpListener::bind(self.addr).await.unwrap();
        let upstream = self.upstream;
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            // Dropping the set at the end aborts every connection, closing both sides.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    () = stopped.cancelled() => break,
                    accepted = listener.accept() => {
                        let Ok((mut client, _)) = accepted else { continue };
                        connections.spawn(async move {
                            if let Ok(mut server) = TcpStream::connect(upstream).await {
                                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            }
                        });
                    }
                }
            }
        });
        self.running = Some((stop, task));
    }

    /// Stops relaying and drops every connection (Redis looks down).
    async fn cut(&mut self) {
        let (stop, task) = self.running.take().expect("the relay is up");
        stop.cancel();
        task.await.unwrap();
    }
}

fn worker(name: &str, running: &[i64]) -> WorkerInfo {
    WorkerInfo {
        name: name.to_owned(),
        systems: vec!["x86_64-linux".to_owned()],
        features: vec!["kvm".to_owned()],
        slots: 4,
        running: running
            .iter()
            .map(|&step_id| RunningStep {
                step_id,
                attempt: 1,
                drv_path: format!("/nix/store/{step_id}-hello.drv"),
                started_at_ms: 1_700_000_000_000,
            })
            .collect(),
        last_seen_ms: 0,
    }
}

fn names(workers: &[WorkerInfo]) -> Vec<&str> {
    workers.iter().map(|w| w.name.as_str()).collect()
}

/// Waits (at most 10 s) until `rx` holds `leading`.
async fn until_leading(rx: &mut watch::Receiver<bool>, leading: bool) {
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|&l| l == leading))
        .await
        .unwrap_or_else(|_| panic!("the lease loop never reported leading = {leading}"))
        .unwrap();
}

// ---- Worker registry ----

#[tokio::test]
async fn heart_beating_workers_are_listed_by_name_until_their_ttl_passes() {
    let live = live("heartbeat");
    assert!(live.workers().await.unwrap().is_empty());

    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    live.heartbeat(&worker("w-b", &[]), Duration::from_secs(1))
        .await
        .unwrap();
    live.heartbeat(&worker("w-a", &[7]), Duration::from_secs(60))
        .await
        .unwrap();
    let workers = live.workers().await.unwrap();
    assert_eq!(names(&workers), ["w-a", "w-b"]);
    assert_eq!(workers[0].running, worker("w-a", &[7]).running);
    assert_eq!(workers[0].slots, 4);
    assert!(workers.iter().all(|w| w.last_seen_ms >= before));

    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(names(&live.workers().await.unwrap()), ["w-a"]);
    // The expired worker's name was pruned from the set as well.
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("{}workers", live.prefix()))
        .query_async(&mut raw().await)
        .await
        .unwrap();
    assert_eq!(members, ["w-a"]);
}

#[tokio::test]
async fn nothing_of_the_registry_outlives_the_last_worker() {
    let live = live("registry-expiry");
    live.heartbeat(&worker("w1", &[]), Duration::from_millis(1500))
        .await
        .unwrap();
    live.heartbeat(&worker("w2", &[]), Duration::from_millis(500))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // w2 is gone, but the set of names lasts as long as w1.
    assert_eq!(names(&live.workers().await.unwrap()), ["w1"]);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut raw = raw().await;
    let left: Vec<String> = redis::cmd("SCAN")
        .arg(0)
        .arg("MATCH")
        .arg(format!("{}*", live.prefix()))
        .arg("COUNT")
        .arg(10_000)
        .query_async::<(u64, Vec<String>)>(&mut raw)
        .await
        .unwrap()
        .1;
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test]
async fn a_heartbeat_replaces_what_the_worker_said_before() {
    let live = live("replace");
    let ttl = Duration::from_secs(60);
    live.heartbeat(&worker("w", &[1, 2]), ttl).await.unwrap();
    live.heartbeat(&worker("w", &[3]), ttl).await.unwrap();
    let workers = live.workers().await.unwrap();
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0].running, worker("w", &[3]).running);
}

#[tokio::test]
async fn a_removed_worker_disappears_at_once() {
    let live = live("remove");
    let ttl = Duration::from_secs(60);
    live.heartbeat(&worker("w1", &[]), ttl).await.unwrap();
    live.heartbeat(&worker("w2", &[]), ttl).await.unwrap();
    live.remove_worker("w1").await.unwrap();
    live.remove_worker("never-seen").await.unwrap();
    assert_eq!(names(&live.workers().await.unwrap()), ["w2"]);
}

#[tokio::test]
async fn farms_with_different_prefixes_do_not_see_each_other() {
    let url = redis_url();
    let a = Live::connect(&url)
        .unwrap()
        .with_prefix(unique_prefix("farm-a"));
    let b = Live::connect(&url)
        .unwrap()
        .with_prefix(unique_prefix("farm-b"));
    a.heartbeat(&worker("w", &[]), Duration::from_secs(60))
        .await
        .unwrap();
    a.append_log(1, &[b"a".to_vec()]).await.unwrap();
    assert!(b.workers().await.unwrap().is_empty());
    assert_eq!(b.read_log(1).await.unwrap(), None);
}

// ---- Live logs ----

#[tokio::test]
async fn log_lines_accumulate_until_reset() {
    let live = live("logs");
    assert_eq!(live.read_log(1).await.unwrap(), None);
    let appended = live
        .append_log(1, &[b"one".to_vec(), b"two".to_vec()])
        .await
        .unwrap();
    assert_eq!(appended, Appended::All);
    live.append_log(1, &[b"".to_vec(), b"four \xff".to_vec()])
        .await
        .unwrap();
    live.append_log(1, &[]).await.unwrap();
    live.append_log(2, &[b"other step".to_vec()]).await.unwrap();
    assert_eq!(
        live.read_log(1).await.unwrap().unwrap(),
        b"one\ntwo\n\nfour \xff\n"
    );

    live.reset_log(1).await.unwrap();
    assert_eq!(live.read_log(1).await.unwrap(), None);
    assert_eq!(live.read_log(2).await.unwrap().unwrap(), b"other step\n");
    live.append_log(1, &[b"second attempt".to_vec()])
        .await
        .unwrap();
    assert_eq!(
        live.read_log(1).await.unwrap().unwrap(),
        b"second attempt\n"
    );
}

#[tokio::test]
async fn a_log_stops_growing_at_its_cap() {
    let live = live("cap").with_max_log_bytes(16);
    let line = |s: &str| s.as_bytes().to_vec();
    assert_eq!(
        live.append_log(5, &[line("0123456789")]).await.unwrap(),
        Appended::All
    );
    // 11 bytes stored; the next 11 cross the cap at 16: cut there, then the marker.
    assert_eq!(
        live.append_log(5, &[line("abcdefghij")]).await.unwrap(),
        Appended::Capped
    );
    let capped = live.read_log(5).await.unwrap().unwrap();
    let text = String::from_utf8(capped.clone()).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("0123456789"));
    assert_eq!(lines.next(), Some("abcde"));
    assert!(lines.next().unwrap().contains("truncated"));
    assert_eq!(lines.next(), None);
    assert!(text.ends_with('\n'));

    // Nothing more gets in, however small.
    assert_eq!(
        live.append_log(5, &[line("x")]).await.unwrap(),
        Appended::Capped
    );
    assert_eq!(live.read_log(5).await.unwrap().unwrap(), capped);

    // A new attempt starts from an empty log.
    live.reset_log(5).await.unwrap();
    assert_eq!(
        live.append_log(5, &[line("x")]).await.unwrap(),
        Appended::All
    );
}

#[tokio::test]
async fn a_log_expires_after_its_last_append() {
    let live = live("log-ttl").with_log_ttl(Duration::from_secs(1));
    live.append_log(9, &[b"hello".to_vec()]).await.unwrap();
    let key = format!("{}log:9", live.prefix());
    let ttl_ms: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut raw().await)
        .await
        .unwrap();
    assert!(0 < ttl_ms && ttl_ms <= 1000, "ttl {ttl_ms} ms");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(live.read_log(9).await.unwrap(), None);
}

// ---- Leader lease ----

#[tokio::test]
async fn only_one_holder_gets_the_lease_until_it_stops_renewing() {
    let live = live("lease");
    let ttl = Duration::from_secs(1);
    let a = Lease::new(live.clone(), "coordinator", "a", ttl);
    let b = Lease::new(live.clone(), "coordinator", "b", ttl);
    assert_eq!(live.leader("coordinator").await.unwrap(), None);

    assert!(a.try_acquire().await.unwrap());
    assert!(!b.try_acquire().await.unwrap());
    assert!(!a.try_acquire().await.unwrap(), "SET NX never re-takes");
    assert!(!b.renew().await.unwrap());
    assert!(!b.release().await.unwrap());
    assert_eq!(
        live.leader("coordinator").await.unwrap().as_deref(),
        Some("a")
    );

    // Renewing keeps the lease well past its ttl.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(a.renew().await.unwrap());
        assert!(!b.try_acquire().await.unwrap());
    }

    // a stops renewing: b takes over once the ttl has passed, and a cannot renew b's lease.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(b.try_acquire().await.unwrap());
    assert!(!a.renew().await.unwrap());
    assert!(!a.release().await.unwrap());
    assert_eq!(
        live.leader("coordinator").await.unwrap().as_deref(),
        Some("b")
    );

    assert!(b.release().await.unwrap());
    assert_eq!(live.leader("coordinator").await.unwrap(), None);
    assert!(a.try_acquire().await.unwrap());
}

#[tokio::test]
async fn leases_of_different_names_are_independent() {
    let live = live("lease-names");
    let ttl = Duration::from_secs(10);
    assert!(
        Lease::new(live.clone(), "one", "a", ttl)
            .try_acquire()
            .await
            .unwrap()
    );
    assert!(
        Lease::new(live.clone(), "two", "b", ttl)
            .try_acquire()
            .await
            .unwrap()
    );
    assert_eq!(live.leader("one").await.unwrap().as_deref(), Some("a"));
    assert_eq!(live.leader("two").await.unwrap().as_deref(), Some("b"));
}

#[tokio::test]
async fn the_lease_loop_hands_over_when_the_leader_shuts_down() {
    let live = live("lease-run");
    let ttl = Duration::from_secs(1);
    let shutdown_a = CancellationToken::new();
    let shutdown_b = CancellationToken::new();
    let (tx_a, mut rx_a) = watch::channel(false);
    let (tx_b, mut rx_b) = watch::channel(false);

    let run_a = tokio::spawn(
        Lease::new(live.clone(), "coordinator", "a", ttl).run(tx_a, shutdown_a.clone()),
    );
    until_leading(&mut rx_a, true).await;
    let run_b = tokio::spawn(
        Lease::new(live.clone(), "coordinator", "b", ttl).run(tx_b, shutdown_b.clone()),
    );

    // Several ttls go by: a keeps the lease by renewing it, b waits.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(*rx_a.borrow());
    assert!(!*rx_b.borrow());
    assert_eq!(
        live.leader("coordinator").await.unwrap().as_deref(),
        Some("a")
    );

    // a shuts down: it releases the lease and says so; b takes over.
    shutdown_a.cancel();
    run_a.await.unwrap();
    assert!(!*rx_a.borrow());
    until_leading(&mut rx_b, true).await;
    assert_eq!(
        live.leader("coordinator").await.unwrap().as_deref(),
        Some("b")
    );

    shutdown_b.cancel();
    run_b.await.unwrap();
    assert!(!*rx_b.borrow());
    assert_eq!(live.leader("coordinator").await.unwrap(), None);
}

#[tokio::test]
async fn a_leader_keeps_leading_while_redis_is_unreachable_and_retakes_a_free_lease() {
    let prefix = unique_prefix("lease-down");
    let direct = Live::connect(&redis_url()).unwrap().with_prefix(&prefix);
    let mut relay = Relay::down().await;
    relay.up().await;
    let through_relay = Live::connect(&relay.url())
        .unwrap()
        .with_prefix(&prefix)
        .with_timeout(Duration::from_millis(300));
    let ttl = Duration::from_secs(1);
    let shutdown = CancellationToken::new();
    let (tx, mut rx) = watch::channel(false);
    let run =
        tokio::spawn(Lease::new(through_relay, "coordinator", "a", ttl).run(tx, shutdown.clone()));
    until_leading(&mut rx, true).await;

    // Redis unreachable for longer than the ttl: the lease expires in Redis, yet a leads on.
    relay.cut().await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(direct.leader("coordinator").await.unwrap(), None);
    assert!(
        *rx.borrow(),
        "a leader must not step down because Redis is unreachable"
    );

    // Redis is back and nobody took the lease: a holds it again.
    relay.up().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while direct.leader("coordinator").await.unwrap().as_deref() != Some("a") {
        assert!(
            Instant::now() < deadline,
            "the leader never re-took its lease"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(*rx.borrow());

    shutdown.cancel();
    run.await.unwrap();
}

#[tokio::test]
async fn a_leader_steps_down_when_redis_returns_with_another_holder() {
    let prefix = unique_prefix("lease-taken");
    let direct = Live::connect(&redis_url()).unwrap().with_prefix(&prefix);
    let mut relay = Relay::down().await;
    relay.up().await;
    let through_relay = Live::connect(&relay.url())
        .unwrap()
        .with_prefix(&prefix)
        .with_timeout(Duration::from_millis(300));
    let ttl = Duration::from_secs(1);
    let shutdown = CancellationToken::new();
    let (tx, mut rx) = watch::channel(false);
    let run =
        tokio::spawn(Lease::new(through_relay, "coordinator", "a", ttl).run(tx, shutdown.clone()));
    until_leading(&mut rx, true).await;

    // Cut off from a only: its lease expires and b, who still reaches Redis, takes it.
    relay.cut().await;
    let b = Lease::new(direct.clone(), "coordinator", "b", Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b.try_acquire().await.unwrap() {
        assert!(Instant::now() < deadline, "a's lease never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(*rx.borrow());

    // a reaches Redis again, finds b's name there and steps down; b's lease is untouched.
    relay.up().await;
    until_leading(&mut rx, false).await;
    assert_eq!(
        direct.leader("coordinator").await.unwrap().as_deref(),
        Some("b")
    );

    shutdown.cancel();
    run.await.unwrap();
    assert_eq!(
        direct.leader("coordinator").await.unwrap().as_deref(),
        Some("b"),
        "shutting down must not release another holder's lease"
    );
}

#[tokio::test]
async fn a_standby_never_leads_without_taking_the_lease() {
    let relay = Relay::down().await;
    let unreachable = Live::connect(&relay.url())
        .unwrap()
        .with_prefix(unique_prefix("standby"))
        .with_timeout(Duration::from_millis(200));
    let shutdown = CancellationToken::new();
    let (tx, rx) = watch::channel(true);
    let run = tokio::spawn(
        Lease::new(unreachable, "coordinator", "a", Duration::from_millis(300))
            .run(tx, shutdown.clone()),
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!*rx.borrow());
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("the lease loop shuts down even while Redis is unreachable")
        .unwrap();
}

// ---- Redis down ----

/// `operation` fails, and within 5 s (it is bounded by a timeout well under that).
async fn fails<T: std::fmt::Debug>(
    operation: &str,
    result: impl Future<Output = Result<T, LiveError>>,
) {
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(30), result)
        .await
        .unwrap_or_else(|_| panic!("{operation} hangs without Redis"));
    assert!(result.is_err(), "{operation} succeeded without Redis");
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(5),
        "{operation} took {elapsed:?}"
    );
}

/// Every operation of `live` fails, none hangs or panics.
async fn every_operation_fails(live: &Live) {
    let ttl = Duration::from_secs(10);
    let lease = Lease::new(live.clone(), "coordinator", "a", ttl);
    fails("ping", live.ping()).await;
    fails("heartbeat", live.heartbeat(&worker("w", &[]), ttl)).await;
    fails("remove_worker", live.remove_worker("w")).await;
    fails("workers", live.workers()).await;
    fails("append_log", live.append_log(1, &[b"x".to_vec()])).await;
    fails("read_log", live.read_log(1)).await;
    fails("reset_log", live.reset_log(1)).await;
    fails("leader", live.leader("coordinator")).await;
    fails("try_acquire", lease.try_acquire()).await;
    fails("renew", lease.renew()).await;
    fails("release", lease.release()).await;
}

#[tokio::test]
async fn with_nothing_listening_operations_fail_instead_of_hanging() {
    let url = format!("redis://{}", closed_port().await);
    let live = Live::connect(&url)
        .expect("connecting does not need Redis to be up")
        .with_timeout(Duration::from_millis(500));
    every_operation_fails(&live).await;
}

#[tokio::test]
async fn a_redis_that_never_answers_times_out() {
    // Accepts connections and reads what is sent, but never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let silent = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    let live = Live::connect(&format!("redis://{addr}"))
        .unwrap()
        .with_timeout(Duration::from_millis(300));
    let started = Instant::now();
    match live.ping().await {
        Err(LiveError::Timeout(t)) => assert_eq!(t, Duration::from_millis(300)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    every_operation_fails(&live).await;
    silent.abort();
}

#[tokio::test]
async fn a_handle_made_while_redis_was_down_works_once_it_is_up() {
    let mut relay = Relay::down().await;
    let live = Live::connect(&relay.url())
        .unwrap()
        .with_prefix(unique_prefix("late"))
        .with_timeout(Duration::from_millis(500));
    assert!(live.ping().await.is_err());

    relay.up().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = live.ping().await {
        assert!(Instant::now() < deadline, "never reconnected: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    live.append_log(1, &[b"hello".to_vec()]).await.unwrap();
    assert_eq!(live.read_log(1).await.unwrap().unwrap(), b"hello\n");

    // Redis goes away again, and comes back: the same handle reconnects by itself.
    relay.cut().await;
    assert!(live.read_log(1).await.is_err());
    relay.up().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match live.read_log(1).await {
            Ok(log) => {
                assert_eq!(log.unwrap(), b"hello\n");
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "never reconnected: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
