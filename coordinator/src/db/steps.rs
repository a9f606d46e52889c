//! Steps: dispatching them, applying their results exactly once, and loading the unfinished
//! graph.

use std::collections::BTreeMap;

use kiln_db::{BuildId, Db, JobsetId, StepId, Timestamp};
use kiln_proto::StepResult;

use super::{CHUNK, col, placeholders};
use crate::error::{CoordinatorError, Result};
use crate::model::Status;

/// What a worker needs about a step, read when it is dispatched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatched {
    /// The attempt now running.
    pub attempt: u32,
    /// `.drv` ATerm text.
    pub drv: String,
    /// Store paths the build needs.
    pub input_paths: Vec<String>,
    /// The derivation's system.
    pub system: String,
    /// Required features, sorted.
    pub required_features: Vec<String>,
    /// Seconds.
    pub timeout_secs: u64,
    /// Seconds.
    pub max_silent_secs: u64,
}

fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_owned).collect()
}

/// Reads what a message for the next attempt of queued step `id` needs, without changing the
/// step; `None` if it is no longer queued. The message is published first and the step marked
/// running after ([`mark_dispatched`]): a crash in between leaves a queued step (dispatched
/// again, with the same attempt number, so that either copy's result applies once) rather than
/// a running step whose message never left.
pub async fn prepare_dispatch(db: &Db, id: StepId) -> Result<Option<Dispatched>> {
    let row = sqlx::query(
        "SELECT attempt, drv, input_paths, system, required_features, timeout_secs, max_silent_secs \
         FROM steps WHERE id = $1 AND status = 'queued'",
    )
    .bind(id.get())
    .fetch_optional(db.pool())
    .await
    .map_err(CoordinatorError::db("reading a step to dispatch"))?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(Dispatched {
        attempt: (col::<i64>(&row, "attempt")? + 1).clamp(1, i64::from(u32::MAX)) as u32,
        drv: col(&row, "drv")?,
        input_paths: words(&col::<String>(&row, "input_paths")?),
        system: col(&row, "system")?,
        required_features: words(&col::<String>(&row, "required_features")?),
        timeout_secs: col::<i64>(&row, "timeout_secs")?.max(1) as u64,
        max_silent_secs: col::<i64>(&row, "max_silent_secs")?.max(1) as u64,
    }))
}

/// Marks queued step `id` running as `attempt` (from [`prepare_dispatch`]) once its message is
/// published. Returns false, changing nothing, if the step changed meanwhile (its message's
/// result will then be stale and ignored).
pub async fn mark_dispatched(db: &Db, id: StepId, attempt: u32, now: Timestamp) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE steps SET status = 'running', attempt = $2, dispatched_at = $3, \
             worker = NULL, started_at = NULL, finished_at = NULL, retry_at = NULL \
         WHERE id = $1 AND status = 'queued' AND attempt = $4",
    )
    .bind(id.get())
    .bind(i64::from(attempt))
    .bind(now.millis())
    .bind(i64::from(attempt) - 1)
    .execute(db.pool())
    .await
    .map_err(CoordinatorError::db("dispatching a step"))?;
    Ok(done.rows_affected() == 1)
}

/// Ends the running `attempt` of step `id` as `aborted` with `message`: its message was
/// dead-lettered after killing (or losing) too many workers. Returns false, changing
/// nothing, if that attempt is no longer running.
pub async fn abort_running(
    db: &Db,
    id: StepId,
    attempt: u32,
    message: &str,
    now: Timestamp,
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE steps SET status = 'aborted', message = $3, finished_at = $4 \
         WHERE id = $1 AND attempt = $2 AND status = 'running'",
    )
    .bind(id.get())
    .bind(i64::from(attempt))
    .bind(message)
    .bind(now.millis())
    .execute(db.pool())
    .await
    .map_err(CoordinatorError::db("aborting a step"))?;
    Ok(done.rows_affected() == 1)
}

/// Marks the queued builds among `builds` running (one of their steps was dispatched).
pub async fn mark_builds_running(db: &Db, builds: &[BuildId], now: Timestamp) -> Result<()> {
    for chunk in builds.chunks(CHUNK) {
        let sql = format!(
            "UPDATE builds SET status = 'running', started_at = COALESCE(started_at, $1) \
             WHERE status = 'queued' AND id IN ({})",
            placeholders(2, chunk.len())
        );
        let mut query = sqlx::query(&sql).bind(now.millis());
        for b in chunk {
            query = query.bind(b.get());
        }
        query
            .execute(db.pool())
            .await
            .map_err(CoordinatorError::db("marking builds running"))?;
    }
    Ok(())
}

/// Records the final result of the current attempt of a running step, with its outputs,
/// products, metrics, log location and duration, in one transaction. Returns false (and
/// changes nothing) if the step is not running that attempt: a duplicate or stale result.
pub async fn apply_final(
    db: &Db,
    result: &StepResult,
    status: Status,
    log_key: Option<&str>,
) -> Result<bool> {
    let mut tx = db
        .pool()
        .begin()
        .await
        .map_err(CoordinatorError::db("applying a step result"))?;
    let row = sqlx::query(
        "UPDATE steps SET status = $3, worker = $4, message = $5, started_at = $6, finished_at = $7 \
         WHERE id = $1 AND attempt = $2 AND status = 'running' RETURNING drv_name, system",
    )
    .bind(result.step_id)
    .bind(i64::from(result.attempt))
    .bind(status.as_str())
    .bind(&result.worker)
    .bind(&result.message)
    .bind(result.started_at_ms)
    .bind(result.finished_at_ms)
    .fetch_optional(&mut *tx)
    .await
    .map_err(CoordinatorError::db("applying a step result"))?;
    let Some(row) = row else {
        return Ok(false);
    };
    let drv_name: String = col(&row, "drv_name")?;
    let system: String = col(&row, "system")?;
    for (name, output) in &result.outputs {
        sqlx::query(
            "UPDATE step_outputs SET nar_hash = $3, nar_size = $4 WHERE step_id = $1 AND name = $2",
        )
        .bind(result.step_id)
        .bind(name)
        .bind(&output.nar_hash)
        .bind(i64::try_from(output.nar_size).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await
        .map_err(CoordinatorError::db("recording step outputs"))?;
    }
    // A step that ran again (restarted) replaces what the earlier run reported.
    sqlx::query("DELETE FROM step_products WHERE step_id = $1")
        .bind(result.step_id)
        .execute(&mut *tx)
        .await
        .map_err(CoordinatorError::db("recording build products"))?;
    for product in &result.products {
        sqlx::query(
            "INSERT INTO step_products (step_id, product_type, subtype, path, name, file_size, sha256) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(result.step_id)
        .bind(&product.kind)
        .bind(&product.subtype)
        .bind(&product.path)
        .bind(&product.name)
        .bind(product.file_size.map(|s| i64::try_from(s).unwrap_or(i64::MAX)))
        .bind(&product.sha256)
        .execute(&mut *tx)
        .await
        .map_err(CoordinatorError::db("recording build products"))?;
    }
    sqlx::query("DELETE FROM step_metrics WHERE step_id = $1")
        .bind(result.step_id)
        .execute(&mut *tx)
        .await
        .map_err(CoordinatorError::db("recording build metrics"))?;
    for metric in &result.metrics {
        if !metric.value.is_finite() {
            continue;
        }
        sqlx::query(
            "INSERT INTO step_metrics (step_id, name, value, unit) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (step_id, name) DO UPDATE SET value = excluded.value, unit = excluded.unit",
        )
        .bind(result.step_id)
        .bind(&metric.name)
        .bind(metric.value)
        .bind(&metric.unit)
        .execute(&mut *tx)
        .await
        .map_err(CoordinatorError::db("recording build metrics"))?;
    }
    if let Some(key) = log_key {
        sqlx::query(
            "INSERT INTO step_logs (step_id, attempt, worker, cache_key, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (step_id, attempt) DO NOTHING",
        )
        .bind(result.step_id)
        .bind(i64::from(result.attempt))
        .bind(&result.worker)
        .bind(key)
        .bind(Timestamp::now().millis())
        .execute(&mut *tx)
        .await
        .map_err(CoordinatorError::db("indexing a build log"))?;
    }
    if status == Status::Succeeded && result.finished_at_ms >= result.started_at_ms {
        let ms = result.finished_at_ms - result.started_at_ms;
        // An exponential moving average: recent builds count most.
        sqlx::query(
            "INSERT INTO step_durations (drv_name, system, mean_ms, samples, updated_at) \
             VALUES ($1, $2, $3, 1, $4) \
             ON CONFLICT (drv_name, system) DO UPDATE SET \
                 mean_ms = (step_durations.mean_ms * 3 + excluded.mean_ms) / 4, \
                 samples = step_durations.samples + 1, updated_at = excluded.updated_at",
        )
        .bind(&drv_name)
        .bind(&system)
        .bind(ms)
        .bind(Timestamp::now().millis())
        .execute(&mut *tx)
        .await
        .map_err(CoordinatorError::db("recording a step duration"))?;
    }
    tx.commit()
        .await
        .map_err(CoordinatorError::db("applying a step result"))?;
    Ok(true)
}

/// What became of a transient failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transient {
    /// Queued again, not before `at`.
    Retry {
        /// UTC ms.
        at: i64,
        /// Transient failures so far.
        failures: u32,
    },
    /// Beyond the cap: the step is `aborted`.
    Aborted,
    /// Not the running attempt: nothing changed.
    Stale,
}

/// Records a transient failure of the running attempt: queued again after a backoff
/// (`backoff_secs` doubled per earlier failure, at most an hour), or `aborted` once
/// `max_retries` retries were spent.
pub async fn apply_transient(
    db: &Db,
    result: &StepResult,
    max_retries: u32,
    backoff_secs: u64,
    now: Timestamp,
) -> Result<Transient> {
    let failures: Option<i64> = sqlx::query_scalar(
        "SELECT transient_failures FROM steps WHERE id = $1 AND attempt = $2 AND status = 'running'",
    )
    .bind(result.step_id)
    .bind(i64::from(result.attempt))
    .fetch_optional(db.pool())
    .await
    .map_err(CoordinatorError::db("reading a step"))?;
    let Some(failures) = failures else {
        return Ok(Transient::Stale);
    };
    let failures = failures.clamp(0, i64::from(u32::MAX - 1)) as u32 + 1;
    let message = result.message.as_deref().unwrap_or("transient failure");
    if failures > max_retries {
        let done = sqlx::query(
            "UPDATE steps SET status = 'aborted', transient_failures = $3, worker = $4, message = $5, \
                 started_at = $6, finished_at = $7 \
             WHERE id = $1 AND attempt = $2 AND status = 'running'",
        )
        .bind(result.step_id)
        .bind(i64::from(result.attempt))
        .bind(i64::from(failures))
        .bind(&result.worker)
        .bind(format!("aborted after {failures} transient failures; last: {message}"))
        .bind(result.started_at_ms)
        .bind(result.finished_at_ms)
        .execute(db.pool())
        .await
        .map_err(CoordinatorError::db("aborting a step"))?;
        return Ok(if done.rows_affected() == 1 {
            Transient::Aborted
        } else {
            Transient::Stale
        });
    }
    let delay = backoff_secs
        .saturating_mul(1u64 << (failures - 1).min(20))
        .min(3600);
    let at = now.millis() + i64::try_from(delay * 1000).unwrap_or(i64::MAX / 2);
    let done = sqlx::query(
        "UPDATE steps SET status = 'queued', transient_failures = $3, retry_at = $4, worker = $5, \
             message = $6 \
         WHERE id = $1 AND attempt = $2 AND status = 'running'",
    )
    .bind(result.step_id)
    .bind(i64::from(result.attempt))
    .bind(i64::from(failures))
    .bind(at)
    .bind(&result.worker)
    .bind(message)
    .execute(db.pool())
    .await
    .map_err(CoordinatorError::db("queueing a step for retry"))?;
    Ok(if done.rows_affected() == 1 {
        Transient::Retry { at, failures }
    } else {
        Transient::Stale
    })
}

/// Puts the running attempt of a step back in the queue without counting a failure (it was
/// cancelled while still needed). Returns whether it was that attempt.
pub async fn requeue(db: &Db, id: StepId, attempt: u32) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE steps SET status = 'queued', worker = NULL WHERE id = $1 AND attempt = $2 AND status = 'running'",
    )
    .bind(id.get())
    .bind(i64::from(attempt))
    .execute(db.pool())
    .await
    .map_err(CoordinatorError::db("requeueing a step"))?;
    Ok(done.rows_affected() == 1)
}

/// Ends a queued step with `status` (`unsupported`, or `dependency-failed` for steps whose
/// dependency failed). Steps not queued are left alone.
pub async fn end_queued(db: &Db, ids: &[StepId], status: Status, message: &str) -> Result<()> {
    let now = Timestamp::now().millis();
    for chunk in ids.chunks(CHUNK) {
        let sql = format!(
            "UPDATE steps SET status = $1, message = $2, finished_at = $3 \
             WHERE status = 'queued' AND id IN ({})",
            placeholders(4, chunk.len())
        );
        let mut query = sqlx::query(&sql)
            .bind(status.as_str())
            .bind(message)
            .bind(now);
        for id in chunk {
            query = query.bind(id.get());
        }
        query
            .execute(db.pool())
            .await
            .map_err(CoordinatorError::db("ending queued steps"))?;
    }
    Ok(())
}

/// Finishes unfinished builds with their statuses. Builds already finished are left alone.
pub async fn finish_builds(db: &Db, builds: &[(BuildId, Status)], now: Timestamp) -> Result<()> {
    for (build, status) in builds {
        sqlx::query(
            "UPDATE builds SET status = $2, finished_at = $3, started_at = COALESCE(started_at, $3) \
             WHERE id = $1 AND status IN ('queued', 'running')",
        )
        .bind(build.get())
        .bind(status.as_str())
        .bind(now.millis())
        .execute(db.pool())
        .await
        .map_err(CoordinatorError::db("finishing a build"))?;
    }
    Ok(())
}

/// After a restart with a bus that does not keep messages: steps and builds left running are
/// queued again (a new attempt number will make any late result of the old one stale).
pub async fn requeue_running(db: &Db) -> Result<u64> {
    let done =
        sqlx::query("UPDATE steps SET status = 'queued', worker = NULL WHERE status = 'running'")
            .execute(db.pool())
            .await
            .map_err(CoordinatorError::db("requeueing running steps"))?;
    sqlx::query("UPDATE builds SET status = 'queued' WHERE status = 'running'")
        .execute(db.pool())
        .await
        .map_err(CoordinatorError::db("requeueing running builds"))?;
    Ok(done.rows_affected())
}

/// A step as the graph loader reads it.
#[derive(Debug, Clone)]
pub struct StepRow {
    /// Row id.
    pub id: StepId,
    /// `.drv` path.
    pub drv_path: String,
    /// Derivation name.
    pub drv_name: String,
    /// System.
    pub system: String,
    /// Required features, sorted.
    pub required_features: Vec<String>,
    /// Current status.
    pub status: Status,
    /// Last attempt dispatched.
    pub attempt: u32,
    /// Transient failures since the last restart.
    pub transient_failures: u32,
    /// Retry time after a transient failure.
    pub retry_at: Option<i64>,
    /// Historical mean duration of the same derivation name, if known.
    pub estimate_ms: Option<u64>,
}

/// A build as the graph loader reads it.
#[derive(Debug, Clone)]
pub struct BuildRow {
    /// Row id.
    pub id: BuildId,
    /// Its jobset.
    pub jobset: JobsetId,
    /// `meta.schedulingPriority`.
    pub priority: i64,
    /// Bumped priority.
    pub global_priority: i64,
    /// Its own step.
    pub top: Option<StepId>,
}

/// The unfinished builds (all, or those of `only`), with their steps, the steps' outputs and
/// the dependencies between those steps.
#[derive(Debug, Default)]
pub struct Unfinished {
    /// Unfinished builds.
    pub builds: Vec<BuildRow>,
    /// Each build's steps.
    pub closures: BTreeMap<BuildId, Vec<StepId>>,
    /// Every step of those builds, whatever its status.
    pub steps: BTreeMap<StepId, StepRow>,
    /// Outputs of the steps: step → name → path.
    pub outputs: BTreeMap<StepId, BTreeMap<String, String>>,
    /// (step, dependency) pairs among those steps.
    pub deps: Vec<(StepId, StepId)>,
}

/// Reads the unfinished builds (of `only`, or all) and everything the graph needs about them.
pub async fn load_unfinished(db: &Db, only: Option<&[BuildId]>) -> Result<Unfinished> {
    let mut out = Unfinished::default();
    let rows = match only {
        None => sqlx::query(
            "SELECT id, jobset_id, priority, global_priority, top_step_id FROM builds \
             WHERE status IN ('queued', 'running')",
        )
        .fetch_all(db.pool())
        .await
        .map_err(CoordinatorError::db("loading unfinished builds"))?,
        Some(ids) => {
            let mut rows = Vec::new();
            for chunk in ids.chunks(CHUNK) {
                let sql = format!(
                    "SELECT id, jobset_id, priority, global_priority, top_step_id FROM builds \
                     WHERE status IN ('queued', 'running') AND id IN ({})",
                    placeholders(1, chunk.len())
                );
                let mut query = sqlx::query(&sql);
                for id in chunk {
                    query = query.bind(id.get());
                }
                rows.extend(
                    query
                        .fetch_all(db.pool())
                        .await
                        .map_err(CoordinatorError::db("loading builds"))?,
                );
            }
            rows
        }
    };
    for row in &rows {
        out.builds.push(BuildRow {
            id: BuildId(col(row, "id")?),
            jobset: JobsetId(col(row, "jobset_id")?),
            priority: col(row, "priority")?,
            global_priority: col(row, "global_priority")?,
            top: col::<Option<i64>>(row, "top_step_id")?.map(StepId),
        });
    }
    let build_ids: Vec<BuildId> = out.builds.iter().map(|b| b.id).collect();
    for chunk in build_ids.chunks(CHUNK) {
        let sql = format!(
            "SELECT bs.build_id, s.id, s.drv_path, s.drv_name, s.system, s.required_features, \
                    s.status, s.attempt, s.transient_failures, s.retry_at, d.mean_ms \
             FROM build_steps bs JOIN steps s ON s.id = bs.step_id \
             LEFT JOIN step_durations d ON d.drv_name = s.drv_name AND d.system = s.system \
             WHERE bs.build_id IN ({})",
            placeholders(1, chunk.len())
        );
        let mut query = sqlx::query(&sql);
        for id in chunk {
            query = query.bind(id.get());
        }
        for row in query
            .fetch_all(db.pool())
            .await
            .map_err(CoordinatorError::db("loading build steps"))?
        {
            let build = BuildId(col(&row, "build_id")?);
            let id = StepId(col(&row, "id")?);
            out.closures.entry(build).or_default().push(id);
            if out.steps.contains_key(&id) {
                continue;
            }
            let status: String = col(&row, "status")?;
            out.steps.insert(
                id,
                StepRow {
                    id,
                    drv_path: col(&row, "drv_path")?,
                    drv_name: col(&row, "drv_name")?,
                    system: col(&row, "system")?,
                    required_features: words(&col::<String>(&row, "required_features")?),
                    status: status
                        .parse()
                        .map_err(|e| CoordinatorError::Corrupt(format!("step status: {e}")))?,
                    attempt: col::<i64>(&row, "attempt")?.clamp(0, i64::from(u32::MAX)) as u32,
                    transient_failures: col::<i64>(&row, "transient_failures")?
                        .clamp(0, i64::from(u32::MAX))
                        as u32,
                    retry_at: col(&row, "retry_at")?,
                    estimate_ms: col::<Option<i64>>(&row, "mean_ms")?.map(|m| m.max(0) as u64),
                },
            );
        }
    }
    let step_ids: Vec<StepId> = out.steps.keys().copied().collect();
    for chunk in step_ids.chunks(CHUNK) {
        let list = placeholders(1, chunk.len());
        let sql = format!("SELECT step_id, name, path FROM step_outputs WHERE step_id IN ({list})");
        let mut query = sqlx::query(&sql);
        for id in chunk {
            query = query.bind(id.get());
        }
        for row in query
            .fetch_all(db.pool())
            .await
            .map_err(CoordinatorError::db("loading step outputs"))?
        {
            out.outputs
                .entry(StepId(col(&row, "step_id")?))
                .or_default()
                .insert(col(&row, "name")?, col(&row, "path")?);
        }
        let sql = format!("SELECT step_id, dep_id FROM step_deps WHERE step_id IN ({list})");
        let mut query = sqlx::query(&sql);
        for id in chunk {
            query = query.bind(id.get());
        }
        for row in query
            .fetch_all(db.pool())
            .await
            .map_err(CoordinatorError::db("loading step dependencies"))?
        {
            out.deps
                .push((StepId(col(&row, "step_id")?), StepId(col(&row, "dep_id")?)));
        }
    }
    Ok(out)
}

/// Statuses of `ids` (steps outside the loaded set, e.g. dependencies finished earlier).
pub async fn statuses(db: &Db, ids: &[StepId]) -> Result<BTreeMap<StepId, Status>> {
    let mut out = BTreeMap::new();
    for chunk in ids.chunks(CHUNK) {
        let sql = format!(
            "SELECT id, status FROM steps WHERE id IN ({})",
            placeholders(1, chunk.len())
        );
        let mut query = sqlx::query(&sql);
        for id in chunk {
            query = query.bind(id.get());
        }
        for row in query
            .fetch_all(db.pool())
            .await
            .map_err(CoordinatorError::db("reading step statuses"))?
        {
            let status: String = col(&row, "status")?;
            out.insert(
                StepId(col(&row, "id")?),
                status
                    .parse()
                    .map_err(|e| CoordinatorError::Corrupt(format!("step status: {e}")))?,
            );
        }
    }
    Ok(out)
}
