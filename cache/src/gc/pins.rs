//! Pins: store paths that garbage collection keeps, with their closures, whatever the retention.
//!
//! A pin is named after its path's base name, so pinning twice is harmless. Pinning happens in a
//! transaction holding the cache's lock shared and checks there that the paths are served, so a
//! collection either runs before it (and the pin fails naming the paths it deleted) or after it
//! (and keeps them).

use std::collections::BTreeSet;

use kiln_db::{CacheId, Db, Timestamp};
use kiln_nix::{StoreDir, StorePath};
use sqlx::AnyConnection;

use super::lock;
use crate::error::CacheError;

/// Most values bound in one statement.
const CHUNK: usize = 500;

/// One pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// The pinned path.
    pub store_path: StorePath,
    /// When it was pinned.
    pub created_at: Timestamp,
}

/// What [`pin`] did to one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned {
    /// The path (one of those asked for, or of their closures).
    pub store_path: StorePath,
    /// Whether it was pinned now (`false`: it was pinned already).
    pub new: bool,
}

fn full(path: &StorePath) -> String {
    StoreDir::default().display(path)
}

fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Inserts a pin for each path; returns them with whether each is new.
async fn insert_pins(
    conn: &mut AnyConnection,
    cache: CacheId,
    paths: &BTreeSet<StorePath>,
) -> Result<Vec<Pinned>, CacheError> {
    let now = Timestamp::now().millis();
    let mut out = Vec::with_capacity(paths.len());
    for path in paths {
        let inserted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO pins (cache_id, name, store_path, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (cache_id, name) DO NOTHING RETURNING id",
        )
        .bind(cache.get())
        .bind(path.to_string())
        .bind(full(path))
        .bind(now)
        .fetch_optional(&mut *conn)
        .await
        .map_err(CacheError::db("pinning a path"))?;
        out.push(Pinned {
            store_path: path.clone(),
            new: inserted.is_some(),
        });
    }
    Ok(out)
}

/// Which of `paths` the cache serves.
async fn served(
    conn: &mut AnyConnection,
    cache: CacheId,
    paths: &BTreeSet<StorePath>,
) -> Result<BTreeSet<StorePath>, CacheError> {
    let names: Vec<String> = paths.iter().map(full).collect();
    let mut present = BTreeSet::new();
    for chunk in names.chunks(CHUNK) {
        let sql = format!(
            "SELECT store_path FROM paths WHERE cache_id = $1 AND store_path IN ({})",
            placeholders(2, chunk.len())
        );
        let mut query = sqlx::query_scalar::<_, String>(&sql).bind(cache.get());
        for name in chunk {
            query = query.bind(name);
        }
        for found in query
            .fetch_all(&mut *conn)
            .await
            .map_err(CacheError::db("checking pinned paths"))?
        {
            present.insert(StorePath::parse(&found).map_err(|e| {
                CacheError::Internal(format!("corrupt index row (store path): {e}"))
            })?);
        }
    }
    Ok(present)
}

/// The paths that `paths` refer to, as the index records them.
async fn references(
    conn: &mut AnyConnection,
    cache: CacheId,
    paths: &BTreeSet<StorePath>,
) -> Result<BTreeSet<StorePath>, CacheError> {
    let hashes: Vec<String> = paths.iter().map(StorePath::hash_part).collect();
    let mut out = BTreeSet::new();
    for chunk in hashes.chunks(CHUNK) {
        let sql = format!(
            "SELECT DISTINCT t.store_path FROM paths p \
             JOIN path_refs r ON r.path_id = p.id \
             JOIN paths t ON t.cache_id = p.cache_id AND t.hash_part = r.ref_hash \
             WHERE p.cache_id = $1 AND p.hash_part IN ({})",
            placeholders(2, chunk.len())
        );
        let mut query = sqlx::query_scalar::<_, String>(&sql).bind(cache.get());
        for hash in chunk {
            query = query.bind(hash);
        }
        for found in query
            .fetch_all(&mut *conn)
            .await
            .map_err(CacheError::db("reading references"))?
        {
            out.insert(StorePath::parse(&found).map_err(|e| {
                CacheError::Internal(format!("corrupt index row (store path): {e}"))
            })?);
        }
    }
    Ok(out)
}

/// Pins `paths` in `cache`; with `closure`, also every path of their closures, each under its
/// own pin (so they stay pinned if the top ones are unpinned later). Without it the closures are
/// kept all the same, for as long as the pinned paths are. `NotFound` naming the paths the cache
/// does not serve, and nothing is pinned.
pub async fn pin(
    db: &Db,
    cache: CacheId,
    paths: &[StorePath],
    closure: bool,
) -> Result<Vec<Pinned>, CacheError> {
    let asked: BTreeSet<StorePath> = paths.iter().cloned().collect();
    let mut tx = db
        .pool()
        .begin()
        .await
        .map_err(CacheError::db("pinning paths"))?;
    lock::shared(&mut tx, db.dialect(), cache).await?;
    // Writes first (SQLite), checks after, inside the same transaction.
    let mut pinned = insert_pins(&mut tx, cache, &asked).await?;
    let present = served(&mut tx, cache, &asked).await?;
    let missing: Vec<String> = asked.difference(&present).map(full).collect();
    if !missing.is_empty() {
        tx.rollback()
            .await
            .map_err(CacheError::db("pinning paths"))?;
        return Err(CacheError::NotFound(format!(
            "in this cache (so not pinned): {}",
            missing.join(", ")
        )));
    }
    if closure {
        let mut seen = asked.clone();
        let mut frontier = asked;
        while !frontier.is_empty() {
            let next: BTreeSet<StorePath> = references(&mut tx, cache, &frontier)
                .await?
                .into_iter()
                .filter(|p| seen.insert(p.clone()))
                .collect();
            pinned.extend(insert_pins(&mut tx, cache, &next).await?);
            frontier = next;
        }
    }
    tx.commit().await.map_err(CacheError::db("pinning paths"))?;
    Ok(pinned)
}

/// Removes the pins of `paths`. `NotFound` naming the paths that are not pinned, and nothing is
/// unpinned. The paths themselves stay until a collection finds them expired.
pub async fn unpin(db: &Db, cache: CacheId, paths: &[StorePath]) -> Result<(), CacheError> {
    let mut tx = db
        .pool()
        .begin()
        .await
        .map_err(CacheError::db("unpinning paths"))?;
    let mut missing = Vec::new();
    for path in paths {
        let removed = sqlx::query("DELETE FROM pins WHERE cache_id = $1 AND name = $2")
            .bind(cache.get())
            .bind(path.to_string())
            .execute(&mut *tx)
            .await
            .map_err(CacheError::db("unpinning a path"))?
            .rows_affected();
        if removed == 0 {
            missing.push(full(path));
        }
    }
    if !missing.is_empty() {
        tx.rollback()
            .await
            .map_err(CacheError::db("unpinning paths"))?;
        return Err(CacheError::NotFound(format!(
            "pin (so nothing was unpinned) of {}",
            missing.join(", ")
        )));
    }
    tx.commit()
        .await
        .map_err(CacheError::db("unpinning paths"))?;
    Ok(())
}

/// The pins of `cache`, by path.
pub async fn list(db: &Db, cache: CacheId) -> Result<Vec<Pin>, CacheError> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT store_path, created_at FROM pins WHERE cache_id = $1 ORDER BY store_path",
    )
    .bind(cache.get())
    .fetch_all(db.pool())
    .await
    .map_err(CacheError::db("listing pins"))?;
    rows.into_iter()
        .map(|(path, at)| {
            Ok(Pin {
                store_path: StorePath::parse(&path).map_err(|e| {
                    CacheError::Internal(format!("corrupt pin row (store path): {e}"))
                })?,
                created_at: Timestamp(at),
            })
        })
        .collect()
}

/// The hash parts of the pinned paths of `cache`, read on `conn`.
pub(crate) async fn pinned_hashes(
    conn: &mut AnyConnection,
    cache: CacheId,
) -> Result<Vec<String>, CacheError> {
    let rows: Vec<String> = sqlx::query_scalar("SELECT store_path FROM pins WHERE cache_id = $1")
        .bind(cache.get())
        .fetch_all(&mut *conn)
        .await
        .map_err(CacheError::db("reading pins"))?;
    rows.iter()
        .map(|p| {
            StorePath::parse(p)
                .map(|p| p.hash_part())
                .map_err(|e| CacheError::Internal(format!("corrupt pin row (store path): {e}")))
        })
        .collect()
}
