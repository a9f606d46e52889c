//! The connection pool, with its backend chosen from the URL at run time.

use std::str::FromStr;
use std::sync::Once;

use sqlx::AnyPool;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use thiserror::Error;

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

/// A pool of connections to Kiln's database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    dialect: Dialect,
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
            .connect_with(options)
            .await
            .map_err(connect_err)?;
        if dialect == Dialect::Sqlite {
            // WAL is a property of the file: set once, every later connection inherits it.
            sqlx::query("PRAGMA journal_mode=WAL")
                .execute(&pool)
                .await
                .map_err(connect_err)?;
        }
        Ok(Db { pool, dialect })
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
    async fn unknown_url_schemes_are_refused_without_echoing_credentials() {
        let err = Db::connect("mysql://user:secret@host/db")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"mysql\""), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }
}
