//! The per-cache lock that orders garbage collection against the transactions that make things
//! visible (path commits, NAR records, pins).
//!
//! Collection decides what to delete and deletes its rows in one transaction holding the lock
//! exclusively; the others hold it shared for their whole transaction and re-check what they
//! depend on (the NAR row, the references, the pinned path) inside it. So each of them runs
//! entirely before a collection (which then sees what it added and keeps it) or entirely after
//! (and then sees what was deleted and refuses).
//!
//! On SQLite there is a single writer: a transaction holds the database's write lock from its
//! first write to its end, so the exclusive lock is a first statement that writes and the shared
//! lock is the caller's own first statement, which must write too (a deferred transaction that
//! reads first cannot always upgrade). On PostgreSQL it is a row lock on the cache's `caches`
//! row: `FOR UPDATE` against `FOR SHARE`, so commits do not wait for each other.

use kiln_db::{CacheId, Dialect};
use sqlx::AnyConnection;

use crate::error::CacheError;

/// Takes the cache's lock exclusively until the end of the transaction on `conn`. Must be the
/// transaction's first statement.
pub(crate) async fn exclusive(
    conn: &mut AnyConnection,
    dialect: Dialect,
    cache: CacheId,
) -> Result<(), CacheError> {
    let sql = match dialect {
        // A write that changes nothing: it takes the database write lock.
        Dialect::Sqlite => "UPDATE caches SET priority = priority WHERE id = $1",
        Dialect::Postgres => "SELECT id FROM caches WHERE id = $1 FOR UPDATE",
    };
    sqlx::query(sql)
        .bind(cache.get())
        .execute(conn)
        .await
        .map_err(CacheError::db("locking the cache for garbage collection"))?;
    Ok(())
}

/// Takes the cache's lock shared until the end of the transaction on `conn`. Must be the
/// transaction's first statement; on SQLite the caller's next statement must write.
pub(crate) async fn shared(
    conn: &mut AnyConnection,
    dialect: Dialect,
    cache: CacheId,
) -> Result<(), CacheError> {
    match dialect {
        Dialect::Sqlite => Ok(()),
        Dialect::Postgres => {
            sqlx::query("SELECT id FROM caches WHERE id = $1 FOR SHARE")
                .bind(cache.get())
                .execute(conn)
                .await
                .map_err(CacheError::db("locking the cache"))?;
            Ok(())
        }
    }
}
