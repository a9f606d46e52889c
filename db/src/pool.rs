//! The connection pool, with its backend chosen from the URL at run time.

use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, AnyPool, ConnectOptions};
use thiserror::Error;
use tokio::sync::{Mutex, MutexGuard};

use crate::migrate;

/// The SQL dialect behind a [`Db`]. Queries are shared; only DDL is per dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The dialect a database URL names, from its scheme.
    pub fn of_url(url: &str) -> Option<Dialect> {
        let scheme = url.split_once(':').map(|(s, _)| s)?;
        match scheme {
            "sqlite" => Some(Dialect::Sqlite),
            "postgres" | "postgresql" => Some(Dialect::Postgres),
            _ => None,
        }
    }

    /// Folder name of this dialect's migrations under `migrations/`.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
        }
    }
}

/// Why the database could not be opened, migrated or queried.
#[derive(Debug, Error)]
pub enum DbError {
    #[error("unsupported database URL scheme {0:?}: expected sqlite:// or postgres://")]
    UnsupportedUrl(String),
    #[error("cannot open the {dialect} database: {source}")]
    Connect {
        dialect: &'static str,
        source: sqlx::Error,
    },
    #[error("cannot apply the {dialect} migrations: {source}")]
    Migrate {
        dialect: &'static str,
        source: sqlx::migrate::MigrateError,
    },
    #[error("database query failed: {0}")]
    Query(#[from] sqlx::Error),
}

/// Whether `err` is a violation of a unique or primary-key constraint.
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .is_some_and(|e| e.is_unique_violation())
}

impl DbError {
    /// Whether this is a violation of a unique or primary-key constraint.
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, DbError::Query(e) if is_unique_violation(e))
    }
}

/// How many connections a SQLite [`Db`] holds outside its pool for [`Db::reader`].
const SQLITE_READERS: usize = 4;

/// A pool of connections to Kiln's database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    dialect: Dialect,
    /// Connections held for hot reads (SQLite only; empty for PostgreSQL).
    readers: Arc<[Mutex<AnyConnection>]>,
    /// Where [`Db::reader`] starts looking for a free reader.
    next_reader: Arc<AtomicUsize>,
}

impl Db {
    /// Opens the database at `url` (`sqlite:///path/kiln.sqlite` or `postgres://...`). A SQLite
    /// file is created if missing (its directory must exist) and switched to WAL mode, so that
    /// admin commands can write while the server runs.
    pub async fn connect(url: &str) -> Result<Db, DbError> {
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);

        let dialect = Dialect::of_url(url).ok_or_else(|| {
            DbError::UnsupportedUrl(url.split_once(':').map_or(url, |(s, _)| s).to_owned())
        })?;
        let url = match dialect {
            Dialect::Sqlite if !url.contains("mode=") => {
                format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
            }
            _ => url.to_owned(),
        };
        let connect_err = |source| DbError::Connect {
            dialect: dialect.name(),
            source,
        };
        let options = AnyConnectOptions::from_str(&url).map_err(connect_err)?;
        let pool = AnyPoolOptions::new()
            .max_connections(match dialect {
                Dialect::Sqlite => 8,
                Dialect::Postgres => 16,
            })
            // Pinging before every acquire detects dropped network connections; a SQLite
            // connection cannot drop, and the ping is a round trip to its worker thread that
            // doubled the cost of a narinfo GET.
            .test_before_acquire(dialect != Dialect::Sqlite)
            .connect_with(options.clone())
            .await
            .map_err(connect_err)?;
        if dialect == Dialect::Sqlite {
            // WAL is a property of the file: set once, every later connection inherits it.
            sqlx::query("PRAGMA journal_mode=WAL")
                .execute(&pool)
                .await
                .map_err(connect_err)?;
        }
        let mut readers = Vec::new();
        if dialect == Dialect::Sqlite {
            for _ in 0..SQLITE_READERS {
                let conn = options.connect().await.map_err(connect_err)?;
                readers.push(Mutex::new(conn));
            }
        }
        Ok(Db {
            pool,
            dialect,
            readers: readers.into(),
            next_reader: Arc::default(),
        })
    }

    /// A connection held outside the pool, for a read on a hot path (one statement at a time;
    /// do not start a transaction on it). `None` means there are none (PostgreSQL): use
    /// [`Db::pool`].
    ///
    /// Every query through sqlx's pool costs two round trips to the connection's SQLite worker
    /// thread more than the query itself: the pool pings a connection whenever it is returned.
    /// On a narinfo GET those round trips cost more than the lookup. A held connection is never
    /// returned, so it is never pinged; statements run in autocommit mode, each seeing the latest
    /// commit, as through the pool.
    pub async fn reader(&self) -> Option<MutexGuard<'_, AnyConnection>> {
        if self.readers.is_empty() {
            return None;
        }
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        let n = self.readers.len();
        for i in 0..n {
            if let Ok(conn) = self.readers[(start + i) % n].try_lock() {
                return Some(conn);
            }
        }
        Some(self.readers[start % n].lock().await)
    }

    /// Applies the migrations of this database's dialect that are not applied yet.
    pub async fn migrate(&self) -> Result<(), DbError> {
        migrate::run(&self.pool, self.dialect)
            .await
            .map_err(|source| DbError::Migrate {
                dialect: self.dialect.name(),
                source,
            })
    }

    /// The pool, for running queries.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Which backend this is.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Closes every connection, waiting for those in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sqlite_database_is_created_migrated_and_in_wal_mode() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("kiln.sqlite").display());
        let db = Db::connect(&url).await.unwrap();
        db.migrate().await.unwrap();
        // A second run applies nothing and does not fail.
        db.migrate().await.unwrap();
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        let tables: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'caches'",
        )
        .fetch_one(db.pool())
        .await
        .unwrap();
        assert_eq!(tables, 1);
    }

    #[tokio::test]
    async fn held_readers_see_every_commit_made_through_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("kiln.sqlite").display());
        let db = Db::connect(&url).await.unwrap();
        sqlx::query("CREATE TABLE t (v INTEGER NOT NULL)")
            .execute(db.pool())
            .await
            .unwrap();
        let count = || async {
            let mut conn = db.reader().await.expect("SQLite has readers");
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM t")
                .fetch_one(&mut *conn)
                .await
                .unwrap()
        };
        for expected in 1..=(2 * SQLITE_READERS as i64) {
            sqlx::query("INSERT INTO t (v) VALUES (1)")
                .execute(db.pool())
                .await
                .unwrap();
            assert_eq!(count().await, expected, "a reader saw an old snapshot");
        }
        // All readers busy: the next one waits for a reader to be released.
        let mut held = Vec::new();
        for _ in 0..SQLITE_READERS {
            held.push(db.reader().await.unwrap());
        }
        let waiting = tokio::spawn({
            let db = db.clone();
            async move { db.reader().await.is_some() }
        });
        held.clear();
        assert!(waiting.await.unwrap());
    }

    #[tokio::test]
    async fn unknown_url_schemes_are_refused_without_echoing_credentials() {
        let err = Db::connect("mysql://user:secret@host/db")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"mysql\""), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }
}
