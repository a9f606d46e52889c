//! One collection of one cache: list the objects, decide and delete rows under the lock, then
//! delete the objects (see the module above for the order and why it is safe).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use kiln_db::{CacheId, Timestamp};
use kiln_nix::store_path::HASH_CHARS;
use sqlx::AnyConnection;

use super::mark::{self, Graph, PathNode};
use super::{GcReport, Policy, Tally, lock, pins};
use crate::caches::CacheRecord;
use crate::error::CacheError;
use crate::index;
use crate::layout::CacheLayout;
use crate::service::CacheService;
use crate::storage::{BlobKey, BlobStore, ByteStream};

/// Most values bound in one statement.
const CHUNK: usize = 500;
/// Narinfo objects deleted at once.
const PARALLEL_DELETES: usize = 8;

/// An object found by the listing.
#[derive(Debug, Clone)]
struct Listed {
    key: BlobKey,
    size: u64,
    modified: Option<SystemTime>,
}

/// A cache's objects by role in the layout. Logs, `nix-cache-info` and anything unknown are
/// left alone.
#[derive(Debug, Default)]
struct Listing {
    /// `<cache>/<hash>.narinfo`, by hash part.
    narinfos: Vec<String>,
    /// `<cache>/nar/...`, by key relative to the cache (as `nars.file_key`).
    nars: Vec<(String, Listed)>,
    /// `<cache>/tmp/...`.
    staging: Vec<Listed>,
}

fn is_narinfo_hash(hash: &str) -> bool {
    hash.len() == HASH_CHARS && hash.bytes().all(kiln_nix::base32::is_base32_char)
}

async fn list(store: &dyn BlobStore, layout: &CacheLayout) -> Result<Listing, CacheError> {
    let mut listing = Listing::default();
    let mut objects = store.list(layout.root());
    while let Some(meta) = objects.try_next().await? {
        let Some(relative) = meta.key.strip_prefix(layout.root()).map(str::to_owned) else {
            continue;
        };
        let listed = Listed {
            key: meta.key,
            size: meta.size,
            modified: meta.modified,
        };
        if let Some(hash) = relative.strip_suffix(".narinfo")
            && is_narinfo_hash(hash)
        {
            listing.narinfos.push(hash.to_owned());
        } else if relative.starts_with("nar/") {
            listing.nars.push((relative, listed));
        } else if relative.starts_with("tmp/") {
            listing.staging.push(listed);
        }
    }
    Ok(listing)
}

/// Whether an object was last written before `cutoff`; unknown times count as recent.
fn older_than(listed: &Listed, cutoff: SystemTime) -> bool {
    listed.modified.is_some_and(|m| m < cutoff)
}

fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn load_graph(conn: &mut AnyConnection, cache: CacheId) -> Result<Graph, CacheError> {
    let rows: Vec<(i64, String, i64, i64)> = sqlx::query_as(
        "SELECT id, hash_part, created_at, last_accessed_at FROM paths WHERE cache_id = $1",
    )
    .bind(cache.get())
    .fetch_all(&mut *conn)
    .await
    .map_err(CacheError::db("loading paths for garbage collection"))?;
    let edges: Vec<(i64, String)> = sqlx::query_as(
        "SELECT r.path_id, r.ref_hash FROM path_refs r JOIN paths p ON p.id = r.path_id \
         WHERE p.cache_id = $1",
    )
    .bind(cache.get())
    .fetch_all(&mut *conn)
    .await
    .map_err(CacheError::db("loading references for garbage collection"))?;
    let mut refs: HashMap<i64, Vec<String>> = HashMap::new();
    for (id, hash) in edges {
        refs.entry(id).or_default().push(hash);
    }
    Ok(Graph {
        paths: rows
            .into_iter()
            .map(|(id, hash_part, created, accessed)| PathNode {
                id,
                hash_part,
                created_at: Timestamp(created),
                last_accessed_at: Timestamp(accessed),
            })
            .collect(),
        refs,
    })
}

async fn delete_paths(conn: &mut AnyConnection, ids: &[i64]) -> Result<(), CacheError> {
    for chunk in ids.chunks(CHUNK) {
        for table_sql in [
            "DELETE FROM path_refs WHERE path_id IN",
            "DELETE FROM paths WHERE id IN",
        ] {
            let sql = format!("{table_sql} ({})", placeholders(1, chunk.len()));
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(id);
            }
            query
                .execute(&mut *conn)
                .await
                .map_err(CacheError::db("deleting collected paths"))?;
        }
    }
    Ok(())
}

/// Records that the NAR object under `file_key` is to be deleted.
async fn claim(
    conn: &mut AnyConnection,
    cache: CacheId,
    file_key: &str,
    size: u64,
    now: Timestamp,
) -> Result<(), CacheError> {
    sqlx::query(
        "INSERT INTO nar_deletions (cache_id, file_key, file_size, created_at) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (cache_id, file_key) DO NOTHING",
    )
    .bind(cache.get())
    .bind(file_key)
    .bind(i64::try_from(size).unwrap_or(i64::MAX))
    .bind(now.millis())
    .execute(&mut *conn)
    .await
    .map_err(CacheError::db("claiming a NAR file for deletion"))?;
    Ok(())
}

/// What the locked transaction decided.
struct Decision {
    report: GcReport,
    /// Hash parts whose narinfo objects go.
    narinfos: Vec<String>,
}

/// Step 2: decides and deletes rows in one transaction holding the cache's lock exclusively;
/// rolls back in a dry run.
async fn decide(
    service: &CacheService,
    cache: &CacheRecord,
    policy: &Policy,
    listing: &Listing,
    now: Timestamp,
    dry_run: bool,
) -> Result<Decision, CacheError> {
    let db = service.db();
    let cutoff = now.minus(policy.grace);
    let cutoff_time = system_time(cutoff);
    let mut report = GcReport {
        cache: cache.name.clone(),
        dry_run,
        ..GcReport::default()
    };
    let context = "garbage collection";
    let mut tx = db.pool().begin().await.map_err(CacheError::db(context))?;
    lock::exclusive(&mut tx, db.dialect(), cache.id).await?;

    let graph = load_graph(&mut tx, cache.id).await?;
    let pinned: HashSet<String> = pins::pinned_hashes(&mut tx, cache.id)
        .await?
        .into_iter()
        .collect();
    let marked = mark::mark(&graph, &pinned, &policy.retention, now);
    let (kept, dead): (Vec<&PathNode>, Vec<&PathNode>) = graph
        .paths
        .iter()
        .partition(|p| marked.live.contains(&p.id));
    report.paths_total = graph.paths.len() as u64;
    report.paths_kept = kept.len() as u64;
    report.roots_unexpired = marked.unexpired as u64;
    report.roots_pinned = marked.pinned as u64;
    report.paths_deleted = dead.len() as u64;
    let dead_ids: Vec<i64> = dead.iter().map(|p| p.id).collect();
    delete_paths(&mut tx, &dead_ids).await?;

    let unused: Vec<(i64, String, i64, i64)> = sqlx::query_as(
        "SELECT n.id, n.file_key, n.file_size, n.created_at FROM nars n \
         WHERE n.cache_id = $1 AND NOT EXISTS (SELECT 1 FROM paths p WHERE p.nar_id = n.id)",
    )
    .bind(cache.id.get())
    .fetch_all(&mut *tx)
    .await
    .map_err(CacheError::db("finding unused NAR files"))?;
    let mut doomed = Vec::new();
    for (id, file_key, size, created_at) in unused {
        if created_at < cutoff.millis() {
            claim(&mut tx, cache.id, &file_key, size.max(0) as u64, now).await?;
            doomed.push(id);
        } else {
            report.nars_spared += 1;
        }
    }
    for chunk in doomed.chunks(CHUNK) {
        let sql = format!(
            "DELETE FROM nars WHERE id IN ({})",
            placeholders(1, chunk.len())
        );
        let mut query = sqlx::query(&sql);
        for id in chunk {
            query = query.bind(id);
        }
        query
            .execute(&mut *tx)
            .await
            .map_err(CacheError::db("deleting unused NAR rows"))?;
    }

    let recorded: HashSet<String> =
        sqlx::query_scalar::<_, String>("SELECT file_key FROM nars WHERE cache_id = $1")
            .bind(cache.id.get())
            .fetch_all(&mut *tx)
            .await
            .map_err(CacheError::db("reading NAR rows"))?
            .into_iter()
            .collect();
    let pending: HashSet<String> =
        sqlx::query_scalar::<_, String>("SELECT file_key FROM nar_deletions WHERE cache_id = $1")
            .bind(cache.id.get())
            .fetch_all(&mut *tx)
            .await
            .map_err(CacheError::db("reading NAR deletions"))?
            .into_iter()
            .collect();
    for (file_key, listed) in &listing.nars {
        if !recorded.contains(file_key)
            && !pending.contains(file_key)
            && older_than(listed, cutoff_time)
        {
            claim(&mut tx, cache.id, file_key, listed.size, now).await?;
            report.orphans.add(listed.size);
        }
    }
    if dry_run {
        // What the deletion step would go through: this run's claims and any left by a run
        // that was interrupted.
        let sizes: Vec<i64> =
            sqlx::query_scalar("SELECT file_size FROM nar_deletions WHERE cache_id = $1")
                .bind(cache.id.get())
                .fetch_all(&mut *tx)
                .await
                .map_err(CacheError::db("reading NAR deletions"))?;
        for size in sizes {
            report.nars_deleted.add(size.max(0) as u64);
        }
    }

    let served: HashSet<&str> = kept.iter().map(|p| p.hash_part.as_str()).collect();
    let mut narinfos: Vec<String> = dead.iter().map(|p| p.hash_part.clone()).collect();
    narinfos.extend(
        listing
            .narinfos
            .iter()
            .filter(|h| !served.contains(h.as_str()))
            .cloned(),
    );
    narinfos.sort();
    narinfos.dedup();

    if dry_run {
        tx.rollback().await.map_err(CacheError::db(context))?;
        report.narinfos_deleted = narinfos.len() as u64;
    } else {
        tx.commit().await.map_err(CacheError::db(context))?;
    }
    Ok(Decision { report, narinfos })
}

fn system_time(t: Timestamp) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(t.millis().max(0) as u64)
}

/// Deletes the narinfo object of `hash`; writes it back if the path was published again
/// meanwhile. Returns whether an object was deleted.
pub(super) async fn delete_narinfo(
    service: &CacheService,
    cache: &CacheRecord,
    hash: &str,
) -> Result<bool, CacheError> {
    let key = cache.layout().narinfo(hash)?;
    let existed = service.store().delete(&key).await?;
    // A publication commits its row before it writes the object: if the row exists now, the
    // object may have been written before the delete above and must be restored.
    if let Some(path) = index::find_path(service.db(), cache.id, hash).await? {
        let text = Bytes::from(path.narinfo.to_string());
        let body: ByteStream = Box::pin(futures_util::stream::once(async move { Ok(text) }));
        service.store().put(&key, body).await?;
        return Ok(false);
    }
    Ok(existed)
}

/// Deletes every NAR object claimed in `nar_deletions`, each in a transaction that removes its
/// row: while the row is there no upload can record the key, and the row goes only once the
/// object is gone, so a later upload of the same file is never deleted by mistake.
async fn finish_deletions(
    service: &CacheService,
    cache: &CacheRecord,
) -> Result<Tally, CacheError> {
    let db = service.db();
    let claimed: Vec<(String, i64)> = sqlx::query_as(
        "SELECT file_key, file_size FROM nar_deletions WHERE cache_id = $1 ORDER BY file_key",
    )
    .bind(cache.id.get())
    .fetch_all(db.pool())
    .await
    .map_err(CacheError::db("reading NAR deletions"))?;
    let mut tally = Tally::default();
    let layout = cache.layout();
    for (file_key, size) in claimed {
        let key = layout.key(&file_key)?;
        let context = "deleting a NAR file";
        let mut tx = db.pool().begin().await.map_err(CacheError::db(context))?;
        let mine = sqlx::query("DELETE FROM nar_deletions WHERE cache_id = $1 AND file_key = $2")
            .bind(cache.id.get())
            .bind(&file_key)
            .execute(&mut *tx)
            .await
            .map_err(CacheError::db(context))?
            .rows_affected();
        if mine == 0 {
            // Another collection took it.
            tx.rollback().await.map_err(CacheError::db(context))?;
            continue;
        }
        if service.store().delete(&key).await? {
            tally.add(size.max(0) as u64);
        }
        tx.commit().await.map_err(CacheError::db(context))?;
    }
    Ok(tally)
}

/// Collects `cache` under `policy`: deletes the paths it no longer keeps, then their narinfo
/// objects, then the NAR files no path uses, orphan NAR objects, staging objects and temporary
/// files older than the grace period. With `dry_run`, deletes nothing and reports what it would
/// delete. Safe to run while the server serves and receives uploads, and alongside another
/// collection.
pub async fn collect(
    service: &CacheService,
    cache: &CacheRecord,
    policy: &Policy,
    dry_run: bool,
) -> Result<GcReport, CacheError> {
    let layout = cache.layout();
    let now = Timestamp::now();
    let cutoff = system_time(now.minus(policy.grace));
    let listing = list(service.store(), &layout).await?;
    let Decision {
        mut report,
        narinfos,
    } = decide(service, cache, policy, &listing, now, dry_run).await?;
    if !dry_run {
        // The rows are gone; before any object goes, stop serving what this process remembers,
        // and let what other processes remember expire (see `crate::narinfos`).
        service.narinfos().clear();
        if report.paths_deleted > 0 {
            tokio::time::sleep(service.settings().narinfo_ttl).await;
        }
    }

    let stale_staging: Vec<&Listed> = listing
        .staging
        .iter()
        .filter(|l| older_than(l, cutoff))
        .collect();
    if dry_run {
        for staged in stale_staging {
            report.staging_deleted.add(staged.size);
        }
        let temp = service
            .store()
            .reap_leftovers(layout.root(), cutoff, true)
            .await?;
        report.temp_files_deleted = Tally {
            count: temp.count,
            bytes: temp.bytes,
        };
        return Ok(report);
    }

    // The narinfo objects go before the NAR objects they point to.
    let deleted: Vec<bool> = futures_util::stream::iter(&narinfos)
        .map(|hash| delete_narinfo(service, cache, hash))
        .buffer_unordered(PARALLEL_DELETES)
        .try_collect()
        .await?;
    report.narinfos_deleted = deleted.into_iter().filter(|d| *d).count() as u64;
    report.nars_deleted = finish_deletions(service, cache).await?;
    for staged in stale_staging {
        if service.store().delete(&staged.key).await? {
            report.staging_deleted.add(staged.size);
        }
    }
    let temp = service
        .store()
        .reap_leftovers(layout.root(), cutoff, false)
        .await?;
    report.temp_files_deleted = Tally {
        count: temp.count,
        bytes: temp.bytes,
    };
    Ok(report)
}
