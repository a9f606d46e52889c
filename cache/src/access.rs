//! When paths were last read: recorded in memory on every narinfo hit and written to the index in
//! batches, so that serving never waits for a database write. Garbage collection reads
//! `paths.last_accessed_at`; losing the last batch in a crash only makes paths look a little older.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use kiln_db::{Db, PathId, Timestamp};
use tokio_util::sync::CancellationToken;

use crate::error::CacheError;

/// Most ids written by one statement.
const BATCH: usize = 500;

/// Paths read since the last flush.
#[derive(Debug, Default)]
pub struct AccessLog {
    pending: Mutex<HashSet<i64>>,
}

impl AccessLog {
    /// Notes that `path` was just read.
    pub fn touch(&self, path: PathId) {
        self.pending
            .lock()
            .expect("access log lock")
            .insert(path.get());
    }

    /// Writes the pending reads as `last_accessed_at = now`; returns how many paths it updated.
    pub async fn flush(&self, db: &Db) -> Result<usize, CacheError> {
        let ids: Vec<i64> = std::mem::take(&mut *self.pending.lock().expect("access log lock"))
            .into_iter()
            .collect();
        let now = Timestamp::now().millis();
        for chunk in ids.chunks(BATCH) {
            let placeholders: Vec<String> =
                (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!(
                "UPDATE paths SET last_accessed_at = $1 WHERE id IN ({})",
                placeholders.join(", ")
            );
            let mut query = sqlx::query(&sql).bind(now);
            for id in chunk {
                query = query.bind(id);
            }
            if let Err(err) = query.execute(db.pool()).await {
                // Keep what was not written for the next flush.
                self.pending.lock().expect("access log lock").extend(chunk);
                return Err(CacheError::db("recording path accesses")(err));
            }
        }
        Ok(ids.len())
    }

    /// Flushes every `every` until `shutdown`, then once more.
    pub async fn run(&self, db: &Db, every: Duration, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.cancelled() => break,
            }
            if let Err(err) = self.flush(db).await {
                tracing::warn!(error = %err, "could not record path accesses; will retry");
            }
        }
        if let Err(err) = self.flush(db).await {
            tracing::warn!(error = %err, "could not record the last path accesses");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caches::{self, NewCache};
    use crate::index::{self, Committed, Compression, NarFacts};
    use crate::storage::LocalStore;
    use kiln_db::testing::{Backend, TestDb};
    use kiln_nix::narinfo::NarInfo;
    use kiln_nix::{Hash, StoreDir};

    async fn flush_writes_the_time_of_the_last_read(backend: Backend) {
        let db = TestDb::migrated(backend).await;
        let store = LocalStore::open(db.dir().join("blobs")).await.unwrap();
        let new = NewCache {
            name: "main".to_owned(),
            public: true,
            priority: 30,
        };
        let (cache, _) = caches::ensure(&db, &store, &new, "test").await.unwrap();
        let facts = NarFacts {
            file_key: "nar/x.nar".to_owned(),
            compression: Compression::None,
            file_hash: Hash::sha256("x"),
            file_size: 1,
            nar_hash: Hash::sha256("x"),
            nar_size: 1,
        };
        let nar = index::record_nar(&db, cache.id, &facts).await.unwrap();
        let path = StoreDir::default().make_store_path("source", &Hash::sha256("p"), "p");
        let info = NarInfo::new(path, facts.file_key.clone(), facts.nar_hash.clone(), 1);
        let Committed::Inserted(id) = index::commit_path(&db, cache.id, nar.id, &info)
            .await
            .unwrap()
        else {
            panic!("not inserted");
        };
        sqlx::query("UPDATE paths SET last_accessed_at = 0")
            .execute(db.pool())
            .await
            .unwrap();

        let log = AccessLog::default();
        assert_eq!(log.flush(&db).await.unwrap(), 0);
        log.touch(id);
        log.touch(id);
        let before = Timestamp::now().millis();
        assert_eq!(log.flush(&db).await.unwrap(), 1);
        let accessed: i64 = sqlx::query_scalar("SELECT last_accessed_at FROM paths")
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert!(accessed >= before, "{accessed} < {before}");
        assert_eq!(log.flush(&db).await.unwrap(), 0, "a flush empties the log");
    }

    kiln_db::both_backends!(flush_writes_the_time_of_the_last_read,);
}
