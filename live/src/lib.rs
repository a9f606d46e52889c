//! Kiln's ephemeral state in Redis, for the distributed mode: the registry of live workers and
//! their heartbeats ([`Live::heartbeat`], [`Live::workers`]), the logs of running steps as they
//! are streamed ([`Live::append_log`], [`Live::read_log`]), and the coordinators' leader lease
//! ([`Lease`]).
//!
//! Nothing here is a source of truth: the database is. Everything stored expires by itself (a
//! worker that stops heart-beating disappears after its ttl, a live log 24 h after its last line,
//! a lease after its ttl), so a Redis that is flushed or restarted empty costs a few seconds of
//! heartbeats and the live view of running logs, never a build. Redis being down must never
//! break a build either: every operation is bounded by a short timeout (2 s by default,
//! [`Live::with_timeout`]) and returns a [`LiveError`] the caller logs and goes on; nothing in
//! this crate panics on a Redis failure, and [`Live::connect`] does not even need Redis to be up
//! (the connection is made on first use and remade automatically after it drops).
//!
//! # The leader lease
//!
//! One coordinator leads at a time; the others wait. The lease is a Redis key holding the
//! leader's name, taken with `SET NX PX` and kept alive by renewing its expiry, only while the
//! key still holds our name (a compare-and-`PEXPIRE` in Lua); [`Lease::release`] deletes it
//! only if it is still ours. [`Lease::run`] drives it: every ttl/3 it renews (leader) or tries
//! to take it (standby), and reports each change through a `watch` channel. When Redis cannot
//! be reached:
//!
//! - a leader keeps leading. It cannot renew, but nobody else can take the lease either, and
//!   the database's conditional writes make a brief double leader (say, during a partition
//!   that only cuts the leader off) harmless;
//! - a standby stays a standby: nobody becomes leader without a successful `SET NX`;
//! - when Redis answers again, a leader finding the key still its own, or gone (a Redis that
//!   restarted empty), takes it again; if someone else holds it, the leader steps down.
//!
//! This crate assumes a single Redis (or a primary with replicas), not Redis Cluster: the
//! worker registry is read in one Lua script over keys it derives itself.

mod lease;
mod logs;
mod workers;

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use thiserror::Error;

pub use lease::Lease;
pub use logs::{Appended, DEFAULT_LOG_TTL, DEFAULT_MAX_LOG_BYTES};
pub use workers::{RunningStep, WorkerInfo};

/// The prefix of every key Kiln stores, unless [`Live::with_prefix`] says otherwise.
pub const DEFAULT_PREFIX: &str = "kiln:";

/// How long one operation may take before it fails with [`LiveError::Timeout`], unless
/// [`Live::with_timeout`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why an operation on the live state failed.
#[derive(Debug, Error)]
pub enum LiveError {
    /// The Redis URL given to [`Live::connect`] is malformed.
    #[error("invalid Redis URL: {0}")]
    Url(#[source] redis::RedisError),
    /// [`Live::connect`] was called outside a Tokio runtime.
    #[error("the Redis connection needs a Tokio runtime")]
    NoRuntime,
    /// Redis did not answer in time (it is down, unreachable or overloaded).
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis answered with an error, or the connection failed.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A stored record could not be encoded or decoded.
    #[error("malformed record {key}: {source}")]
    Json {
        /// The Redis key of the record.
        key: String,
        /// What serde_json said.
        #[source]
        source: serde_json::Error,
    },
}

/// A handle on Kiln's live state in one Redis. Cheap to clone: clones share one connection.
#[derive(Clone)]
pub struct Live {
    conn: ConnectionManager,
    /// Prepended to every key, so several farms (or parallel tests) can share a Redis.
    prefix: Arc<str>,
    /// The bound on each operation, reconnection included.
    timeout: Duration,
    /// Bytes past which a step's live log stops growing.
    max_log_bytes: u64,
    /// How long a live log is kept after its last append.
    log_ttl: Duration,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connection's debug output includes the URL, which may carry a password.
        f.debug_struct("Live")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("max_log_bytes", &self.max_log_bytes)
            .field("log_ttl", &self.log_ttl)
            .finish_non_exhaustive()
    }
}

impl Live {
    /// A handle on the Redis at `url` (`redis://[:password@]host[:port][/db]`).
    ///
    /// Fails only on a malformed URL or outside a Tokio runtime: the connection itself is made
    /// on first use, so a farm starts even while Redis is down, and is remade in the background
    /// whenever it drops.
    pub fn connect(url: &str) -> Result<Live, LiveError> {
        let client = redis::Client::open(url).map_err(LiveError::Url)?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(LiveError::NoRuntime);
        }
        let config = ConnectionManagerConfig::new()
            // Few, quick retries: the caller's timeout bounds each operation anyway, and the
            // next operation starts a new attempt.
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_millis(500))
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(DEFAULT_TIMEOUT));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Live {
            conn,
            prefix: Arc::from(DEFAULT_PREFIX),
            timeout: DEFAULT_TIMEOUT,
            max_log_bytes: DEFAULT_MAX_LOG_BYTES,
            log_ttl: DEFAULT_LOG_TTL,
        })
    }

    /// The same Redis with every key under `prefix` instead of [`DEFAULT_PREFIX`].
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Live {
        self.prefix = Arc::from(prefix.into());
        self
    }

    /// Each operation fails with [`LiveError::Timeout`] after `timeout` instead of
    /// [`DEFAULT_TIMEOUT`].
    pub fn with_timeout(mut self, timeout: Duration) -> Live {
        self.timeout = timeout;
        self
    }

    /// A step's live log stops growing past `bytes` ([`DEFAULT_MAX_LOG_BYTES`] otherwise).
    pub fn with_max_log_bytes(mut self, bytes: u64) -> Live {
        self.max_log_bytes = bytes;
        self
    }

    /// A live log is dropped `ttl` after its last append ([`DEFAULT_LOG_TTL`] otherwise).
    pub fn with_log_ttl(mut self, ttl: Duration) -> Live {
        self.log_ttl = ttl;
        self
    }

    /// The key prefix in use.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether Redis answers a `PING` now.
    pub async fn ping(&self) -> Result<(), LiveError> {
        self.run(&redis::cmd("PING")).await
    }

    /// `name` under this handle's prefix.
    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Runs `fut` on a clone of the connection, bounded by the timeout.
    async fn bounded<T, F, Fut>(&self, f: F) -> Result<T, LiveError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        match tokio::time::timeout(self.timeout, f(self.conn.clone())).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(LiveError::Timeout(self.timeout)),
        }
    }

    /// Sends one command, bounded by the timeout.
    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, LiveError> {
        self.bounded(|mut conn| async move { cmd.query_async(&mut conn).await })
            .await
    }

    /// Runs a Lua script (by its hash, loading it if Redis does not know it), bounded by the
    /// timeout.
    async fn script<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, LiveError> {
        self.bounded(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await
    }
}

/// Milliseconds of `d`, at least 1 (Redis rejects an expiry of 0) and at most `i64::MAX`.
pub(crate) fn expiry_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis())
        .unwrap_or(i64::MAX as u64)
        .clamp(1, i64::MAX as u64)
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_are_never_zero_and_never_overflow() {
        assert_eq!(expiry_ms(Duration::ZERO), 1);
        assert_eq!(expiry_ms(Duration::from_micros(300)), 1);
        assert_eq!(expiry_ms(Duration::from_millis(1500)), 1500);
        assert_eq!(expiry_ms(Duration::MAX), i64::MAX as u64);
    }

    #[test]
    fn a_malformed_url_is_refused() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        assert!(matches!(
            Live::connect("http://localhost"),
            Err(LiveError::Url(_))
        ));
    }

    #[test]
    fn connecting_outside_a_runtime_is_an_error_not_a_panic() {
        assert!(matches!(
            Live::connect("redis://127.0.0.1:1"),
            Err(LiveError::NoRuntime)
        ));
    }

    #[tokio::test]
    async fn keys_carry_the_prefix() {
        let live = Live::connect("redis://127.0.0.1:1").unwrap();
        assert_eq!(live.key("log:1"), "kiln:log:1");
        let live = live.with_prefix("t1:");
        assert_eq!(live.prefix(), "t1:");
        assert_eq!(live.key("log:1"), "t1:log:1");
    }
}
