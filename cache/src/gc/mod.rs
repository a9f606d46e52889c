//! Garbage collection: deleting the paths a cache's retention no longer keeps, the NAR files no
//! path uses, and what interrupted uploads left behind — without ever serving a path whose NAR
//! or references are gone, while uploads go on.
//!
//! A collection of one cache:
//!
//! 1. lists the cache's objects (outside any lock);
//! 2. in one transaction holding the cache's lock exclusively ([`lock`]): loads every path, its
//!    references and the pins; marks the roots (paths retention keeps, pinned paths) and their
//!    closures ([`mark`]); deletes the rows of every other path; moves NAR rows no path uses and
//!    older than the grace period, and NAR objects without a row older than the grace period,
//!    to `nar_deletions`;
//! 3. deletes the narinfo objects of the deleted paths (and any narinfo object without a path),
//!    then, one per transaction, each NAR object listed in `nar_deletions` together with its row;
//! 4. deletes staging objects and temporary files older than the grace period.
//!
//! Why uploads cannot end with a served path whose NAR or reference is gone:
//!
//! - Paths become visible only through `index::commit_path`, whose transaction holds the lock
//!   shared and inserts the row only if its NAR row still exists and all its references are
//!   rows. It runs wholly before step 2, which then decides on a graph that includes the new
//!   path (and what it keeps is closed under references, so a kept path keeps its references),
//!   or wholly after it, and then sees the deleted rows and refuses.
//! - A NAR row is deleted only in step 2 while no path row points at it; a NAR object is deleted
//!   only while its key is in `nar_deletions`, and `index::record_nar` refuses to record a key
//!   that is there (same lock, same transaction). So once a NAR is recorded, nothing deletes its
//!   object until its row is gone — and then no commit can use that row.
//! - The grace period is not needed for safety but for uploads to succeed: a NAR uploaded a
//!   moment ago whose narinfo is on its way is not deleted under it.
//!
//! The narinfo objects are the static copy of the index (the server answers from the index): they
//! are deleted before the NAR objects, and one deleted while its path was being published again
//! is written back.

pub(crate) mod lock;
pub mod mark;
pub mod pins;
mod sweep;
#[cfg(test)]
mod tests;

use std::fmt;
use std::time::Duration;

use kiln_config::{GcConfig, Retention};
use tokio_util::sync::CancellationToken;

use crate::caches;
use crate::service::CacheService;

pub use sweep::collect;

/// How one collection of one cache decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Which paths expire.
    pub retention: Retention,
    /// Unused NAR files, staging objects and temporary files younger than this are kept.
    pub grace: Duration,
}

impl Policy {
    /// The policy `config` sets for the cache `name`.
    pub fn from_config(config: &GcConfig, name: &str) -> Policy {
        Policy {
            retention: config.retention_of(name),
            grace: config.grace.duration(),
        }
    }
}

/// A number of objects and their total size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// How many.
    pub count: u64,
    /// Their total size in bytes.
    pub bytes: u64,
}

impl Tally {
    fn add(&mut self, bytes: u64) {
        self.count += 1;
        self.bytes += bytes;
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} bytes)", self.count, self.bytes)
    }
}

/// What one collection did or, in a dry run, would do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// The cache's name.
    pub cache: String,
    /// Whether nothing was deleted.
    pub dry_run: bool,
    /// Paths the cache served when the collection decided.
    pub paths_total: u64,
    /// Paths kept: roots and everything they refer to.
    pub paths_kept: u64,
    /// Paths retention keeps by themselves.
    pub roots_unexpired: u64,
    /// Pinned paths present in the cache.
    pub roots_pinned: u64,
    /// Paths no longer served.
    pub paths_deleted: u64,
    /// Narinfo objects deleted (those of the deleted paths, and any without a path).
    pub narinfos_deleted: u64,
    /// NAR files deleted (or claimed for deletion, in a dry run), orphans included.
    pub nars_deleted: Tally,
    /// Of those, objects under `nar/` that were never recorded (an upload that failed after
    /// storing, or a crash).
    pub orphans: Tally,
    /// NAR files no path uses that are younger than the grace period, kept for now.
    pub nars_spared: u64,
    /// Staging objects under `<cache>/tmp/` deleted.
    pub staging_deleted: Tally,
    /// Temporary files of interrupted writes deleted.
    pub temp_files_deleted: Tally,
}

impl fmt::Display for GcReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.dry_run {
            "would delete"
        } else {
            "deleted"
        };
        writeln!(
            f,
            "cache {}: garbage collection{}",
            self.cache,
            if self.dry_run {
                " (dry run, nothing deleted)"
            } else {
                ""
            }
        )?;
        writeln!(
            f,
            "paths: {} kept of {} ({} unexpired, {} pinned, the rest referenced by them); {verb} {}",
            self.paths_kept,
            self.paths_total,
            self.roots_unexpired,
            self.roots_pinned,
            self.paths_deleted
        )?;
        writeln!(f, "narinfo objects: {verb} {}", self.narinfos_deleted)?;
        writeln!(
            f,
            "NAR files: {verb} {}, of which orphans {}; {} unused but within the grace period",
            self.nars_deleted, self.orphans, self.nars_spared
        )?;
        writeln!(f, "staging objects: {verb} {}", self.staging_deleted)?;
        write!(f, "temporary files: {verb} {}", self.temp_files_deleted)
    }
}

/// Collects every cache every `config.interval` (never, if unset) until `shutdown`, with each
/// cache's policy from `config`. Reads recorded in memory are written first, so that `max_idle`
/// sees them. Failures are logged and retried at the next interval. A collection interrupted by
/// shutdown leaves nothing inconsistent: the next one finishes its deletions.
pub async fn run_periodically(
    service: &CacheService,
    config: &GcConfig,
    shutdown: CancellationToken,
) {
    let Some(interval) = config.interval.map(|i| i.duration()) else {
        return;
    };
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        tokio::select! {
            () = collect_all(service, config) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn collect_all(service: &CacheService, config: &GcConfig) {
    if let Err(err) = service.access_log().flush(service.db()).await {
        tracing::warn!(error = %err, "could not record path accesses before garbage collection");
    }
    let caches = match caches::list(service.db()).await {
        Ok(caches) => caches,
        Err(err) => {
            tracing::warn!(error = %err, "garbage collection: cannot list the caches");
            return;
        }
    };
    for cache in caches {
        let policy = Policy::from_config(config, &cache.name);
        match collect(service, &cache, &policy, false).await {
            Ok(report) => tracing::info!(
                cache = %cache.name,
                paths_deleted = report.paths_deleted,
                nars_deleted = report.nars_deleted.count,
                bytes_freed = report.nars_deleted.bytes + report.staging_deleted.bytes
                    + report.temp_files_deleted.bytes,
                "garbage collected"
            ),
            Err(err) => {
                tracing::warn!(cache = %cache.name, error = %err, "garbage collection failed")
            }
        }
    }
}
