//! The registry of live workers: heartbeats with an expiry.
//!
//! Each worker is a key `<prefix>worker:<name>` holding its [`WorkerInfo`] as JSON, with the
//! heartbeat's ttl, and a member of the set `<prefix>workers`. Listing reads the set and drops
//! the names whose key expired, atomically, so a worker heart-beating at that moment is never
//! lost from the set. The set itself expires once its last worker has.

use std::sync::LazyLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Live, LiveError, expiry_ms, now_ms};

/// A worker as it last described itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Unique name of the worker (its host name, or what its configuration says).
    pub name: String,
    /// Nix systems it builds for, e.g. `x86_64-linux`.
    pub systems: Vec<String>,
    /// Nix system features it supports, e.g. `kvm`, `big-parallel`.
    pub features: Vec<String>,
    /// How many steps it builds at once.
    pub slots: u32,
    /// The steps it is building now.
    pub running: Vec<RunningStep>,
    /// When it last heart-beat, in milliseconds since the Unix epoch (set by
    /// [`Live::heartbeat`]).
    pub last_seen_ms: i64,
}

/// A step a worker is building.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningStep {
    /// The step's id in the database.
    pub step_id: i64,
    /// Which attempt at the step this is (1 for the first).
    pub attempt: u32,
    /// The derivation being built.
    pub drv_path: String,
    /// When the worker started it, in milliseconds since the Unix epoch.
    pub started_at_ms: i64,
}

/// Stores the record `ARGV[1]` at `KEYS[1]` for `ARGV[2]` ms and adds the name `ARGV[3]` to the
/// set `KEYS[2]`, whose expiry is pushed to at least that of the record: the set outlives its
/// last live member by no more than it must, so names of workers long gone do not pile up.
static HEARTBEAT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('SADD', KEYS[2], ARGV[3])
if redis.call('PTTL', KEYS[2]) < ttl then
  redis.call('PEXPIRE', KEYS[2], ttl)
end
",
    )
});

/// Returns the records of the workers in the set `KEYS[1]` whose key `ARGV[1] .. name` still
/// exists, removing the others from the set.
static LIST_WORKERS: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local found = {}
for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local record = redis.call('GET', ARGV[1] .. name)
  if record then
    table.insert(found, record)
  else
    redis.call('SREM', KEYS[1], name)
  end
end
return found
",
    )
});

impl Live {
    fn workers_key(&self) -> String {
        self.key("workers")
    }

    fn worker_key_prefix(&self) -> String {
        self.key("worker:")
    }

    /// Records that `worker` is alive, as described, for `ttl` from now: unless it heart-beats
    /// again, [`Live::workers`] stops listing it then. `last_seen_ms` is stamped with the
    /// current time.
    pub async fn heartbeat(&self, worker: &WorkerInfo, ttl: Duration) -> Result<(), LiveError> {
        let key = format!("{}{}", self.worker_key_prefix(), worker.name);
        let record = WorkerInfo {
            last_seen_ms: now_ms(),
            ..worker.clone()
        };
        let json = serde_json::to_vec(&record).map_err(|source| LiveError::Json {
            key: key.clone(),
            source,
        })?;
        let mut invocation = HEARTBEAT.prepare_invoke();
        invocation
            .key(&key)
            .key(self.workers_key())
            .arg(json)
            .arg(expiry_ms(ttl))
            .arg(&worker.name);
        self.script(invocation).await
    }

    /// Forgets worker `name` now (it is shutting down).
    pub async fn remove_worker(&self, name: &str) -> Result<(), LiveError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("DEL")
            .arg(format!("{}{name}", self.worker_key_prefix()))
            .ignore()
            .cmd("SREM")
            .arg(self.workers_key())
            .arg(name)
            .ignore();
        self.bounded(|mut conn| async move { pipe.query_async::<()>(&mut conn).await })
            .await
    }

    /// The live workers, sorted by name. A record that cannot be decoded (written by another
    /// version of Kiln, say) is skipped with a warning rather than hiding every other worker.
    pub async fn workers(&self) -> Result<Vec<WorkerInfo>, LiveError> {
        let mut invocation = LIST_WORKERS.prepare_invoke();
        invocation
            .key(self.workers_key())
            .arg(self.worker_key_prefix());
        let records: Vec<Vec<u8>> = self.script(invocation).await?;
        Ok(decode_workers(&records))
    }
}

/// The workers among `records` (JSON), sorted by name, skipping the malformed ones.
fn decode_workers(records: &[Vec<u8>]) -> Vec<WorkerInfo> {
    let mut workers: Vec<WorkerInfo> = records
        .iter()
        .filter_map(
            |record| match serde_json::from_slice::<WorkerInfo>(record) {
                Ok(worker) => Some(worker),
                Err(e) => {
                    tracing::warn!(error = %e, "skipping a malformed worker record");
                    None
                }
            },
        )
        .collect();
    workers.sort_by(|a, b| a.name.cmp(&b.name));
    workers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(name: &str) -> WorkerInfo {
        WorkerInfo {
            name: name.to_owned(),
            systems: vec!["x86_64-linux".to_owned()],
            features: vec![],
            slots: 2,
            running: vec![RunningStep {
                step_id: 7,
                attempt: 1,
                drv_path: "/nix/store/aaaa-hello.drv".to_owned(),
                started_at_ms: 1_700_000_000_000,
            }],
            last_seen_ms: 1_700_000_000_500,
        }
    }

    #[test]
    fn records_round_trip_through_json() {
        let w = worker("w1");
        let json = serde_json::to_vec(&w).unwrap();
        assert_eq!(decode_workers(&[json]), vec![w]);
    }

    #[test]
    fn workers_are_sorted_by_name_and_malformed_records_skipped() {
        let records = vec![
            serde_json::to_vec(&worker("b")).unwrap(),
            b"{not json".to_vec(),
            serde_json::to_vec(&worker("a")).unwrap(),
        ];
        let names: Vec<String> = decode_workers(&records)
            .into_iter()
            .map(|w| w.name)
            .collect();
        assert_eq!(names, ["a", "b"]);
    }
}
