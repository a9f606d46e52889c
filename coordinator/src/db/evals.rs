//! Evaluations: queued by polls and API requests, claimed by the evaluator, finished with their
//! builds or with the error that failed them.

use kiln_db::{Db, EvaluationId, JobsetId, Timestamp};
use sqlx::any::AnyRow;

use super::col;
use crate::error::{CoordinatorError, Result};
use crate::model::EvalStatus;

/// An evaluation row, with its counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Row id.
    pub id: EvaluationId,
    /// Its jobset.
    pub jobset_id: JobsetId,
    /// The commit evaluated (none yet while queued on request).
    pub commit: Option<String>,
    /// Hash of the commit and inputs.
    pub inputs_hash: Option<String>,
    /// The evaluation's own status.
    pub status: EvalStatus,
    /// Nix's message when it failed.
    pub error: Option<String>,
    /// `poll` or `api`.
    pub requested_by: String,
    /// When it was queued.
    pub queued_at: Timestamp,
    /// When an evaluator took it.
    pub started_at: Option<Timestamp>,
    /// When it finished.
    pub finished_at: Option<Timestamp>,
    /// Fetch and checkout time, ms.
    pub checkout_ms: Option<i64>,
    /// Time in Nix, ms.
    pub eval_ms: Option<i64>,
    /// Graph ingest time, ms.
    pub ingest_ms: Option<i64>,
    /// Jobs evaluated.
    pub job_count: i64,
    /// Jobs that failed to evaluate.
    pub error_count: i64,
}

/// Build counts of an evaluation, by outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildCounts {
    /// Builds in all.
    pub total: i64,
    /// Not finished.
    pub queued: i64,
    /// Being built.
    pub running: i64,
    /// Succeeded.
    pub succeeded: i64,
    /// Finished otherwise.
    pub failed: i64,
    /// Whose outputs were all in the cache already.
    pub cached: i64,
}

const COLUMNS: &str = "id, jobset_id, git_commit, inputs_hash, status, error, requested_by, \
    queued_at, started_at, finished_at, checkout_ms, eval_ms, ingest_ms, job_count, error_count";

fn from_row(row: &AnyRow) -> Result<Evaluation> {
    let status: String = col(row, "status")?;
    Ok(Evaluation {
        id: EvaluationId(col(row, "id")?),
        jobset_id: JobsetId(col(row, "jobset_id")?),
        commit: col(row, "git_commit")?,
        inputs_hash: col(row, "inputs_hash")?,
        status: status
            .parse()
            .map_err(|e| CoordinatorError::Corrupt(format!("evaluation status: {e}")))?,
        error: col(row, "error")?,
        requested_by: col(row, "requested_by")?,
        queued_at: Timestamp(col(row, "queued_at")?),
        started_at: col::<Option<i64>>(row, "started_at")?.map(Timestamp),
        finished_at: col::<Option<i64>>(row, "finished_at")?.map(Timestamp),
        checkout_ms: col(row, "checkout_ms")?,
        eval_ms: col(row, "eval_ms")?,
        ingest_ms: col(row, "ingest_ms")?,
        job_count: col(row, "job_count")?,
        error_count: col(row, "error_count")?,
    })
}

/// Queues an evaluation of `jobset` found by a poll at `commit` with `inputs_hash`.
pub async fn enqueue_poll(
    db: &Db,
    jobset: JobsetId,
    commit: &str,
    inputs_hash: &str,
) -> Result<EvaluationId> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO evaluations (jobset_id, git_commit, inputs_hash, status, requested_by, queued_at) \
         VALUES ($1, $2, $3, 'queued', 'poll', $4) RETURNING id",
    )
    .bind(jobset.get())
    .bind(commit)
    .bind(inputs_hash)
    .bind(Timestamp::now().millis())
    .fetch_one(db.pool())
    .await
    .map_err(CoordinatorError::db("queueing an evaluation"))?;
    Ok(EvaluationId(id))
}

/// Queues an evaluation of the branch head of `jobset` on request; if one requested so is
/// still queued, returns it instead (asking twice evaluates once).
pub async fn enqueue_request(db: &Db, jobset: JobsetId) -> Result<(EvaluationId, bool)> {
    let existing: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM evaluations WHERE jobset_id = $1 AND status = 'queued' \
           AND requested_by = 'api' AND git_commit IS NULL ORDER BY id LIMIT 1",
    )
    .bind(jobset.get())
    .fetch_optional(db.pool())
    .await
    .map_err(CoordinatorError::db("looking for a queued evaluation"))?;
    if let Some(id) = existing {
        return Ok((EvaluationId(id), false));
    }
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO evaluations (jobset_id, status, requested_by, queued_at) \
         VALUES ($1, 'queued', 'api', $2) RETURNING id",
    )
    .bind(jobset.get())
    .bind(Timestamp::now().millis())
    .fetch_one(db.pool())
    .await
    .map_err(CoordinatorError::db("queueing an evaluation"))?;
    Ok((EvaluationId(id), true))
}

/// The inputs hash of the newest evaluation of `jobset` that has one.
pub async fn latest_inputs_hash(db: &Db, jobset: JobsetId) -> Result<Option<String>> {
    sqlx::query_scalar(
        "SELECT inputs_hash FROM evaluations WHERE jobset_id = $1 AND inputs_hash IS NOT NULL \
         ORDER BY id DESC LIMIT 1",
    )
    .bind(jobset.get())
    .fetch_optional(db.pool())
    .await
    .map_err(CoordinatorError::db("reading the last evaluation"))
}

/// Takes the oldest queued evaluation, marking it running; `None` if there is none.
pub async fn claim_next(db: &Db) -> Result<Option<Evaluation>> {
    loop {
        let candidate: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM evaluations WHERE status = 'queued' ORDER BY id LIMIT 1",
        )
        .fetch_optional(db.pool())
        .await
        .map_err(CoordinatorError::db("finding a queued evaluation"))?;
        let Some(id) = candidate else {
            return Ok(None);
        };
        let row = sqlx::query(&format!(
            "UPDATE evaluations SET status = 'running', started_at = $2, error = NULL \
             WHERE id = $1 AND status = 'queued' RETURNING {COLUMNS}"
        ))
        .bind(id)
        .bind(Timestamp::now().millis())
        .fetch_optional(db.pool())
        .await
        .map_err(CoordinatorError::db("claiming an evaluation"))?;
        // Another evaluator may have taken it between the two statements: look again.
        if let Some(row) = row {
            return from_row(&row).map(Some);
        }
    }
}

/// Puts evaluations left running by a previous process back in the queue.
pub async fn requeue_running(db: &Db) -> Result<u64> {
    let done = sqlx::query(
        "UPDATE evaluations SET status = 'queued', started_at = NULL WHERE status = 'running'",
    )
    .execute(db.pool())
    .await
    .map_err(CoordinatorError::db("requeueing interrupted evaluations"))?;
    Ok(done.rows_affected())
}

/// Records the commit an evaluation requested through the API resolved to.
pub async fn set_commit(db: &Db, id: EvaluationId, commit: &str, inputs_hash: &str) -> Result<()> {
    sqlx::query("UPDATE evaluations SET git_commit = $2, inputs_hash = $3 WHERE id = $1")
        .bind(id.get())
        .bind(commit)
        .bind(inputs_hash)
        .execute(db.pool())
        .await
        .map_err(CoordinatorError::db("recording an evaluation's commit"))?;
    Ok(())
}

/// Timings of an evaluation, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// Fetch and checkout.
    pub checkout_ms: Option<i64>,
    /// Nix.
    pub eval_ms: Option<i64>,
    /// Graph ingest.
    pub ingest_ms: Option<i64>,
}

/// Fails a running evaluation with `error` (Nix's message).
pub async fn fail(db: &Db, id: EvaluationId, error: &str, timings: Timings) -> Result<()> {
    sqlx::query(
        "UPDATE evaluations SET status = 'failed', error = $2, finished_at = $3, \
             checkout_ms = $4, eval_ms = $5, ingest_ms = $6 \
         WHERE id = $1 AND status = 'running'",
    )
    .bind(id.get())
    .bind(error)
    .bind(Timestamp::now().millis())
    .bind(timings.checkout_ms)
    .bind(timings.eval_ms)
    .bind(timings.ingest_ms)
    .execute(db.pool())
    .await
    .map_err(CoordinatorError::db("failing an evaluation"))?;
    Ok(())
}

/// The evaluation `id`.
pub async fn get(db: &Db, id: EvaluationId) -> Result<Evaluation> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM evaluations WHERE id = $1"))
        .bind(id.get())
        .fetch_optional(db.pool())
        .await
        .map_err(CoordinatorError::db("reading an evaluation"))?
        .ok_or_else(|| CoordinatorError::NotFound(format!("evaluation {id}")))?;
    from_row(&row)
}

/// Evaluations of `jobset`, newest first, at most `limit`, older than `before` if given.
pub async fn list(
    db: &Db,
    jobset: JobsetId,
    limit: i64,
    before: Option<EvaluationId>,
) -> Result<Vec<Evaluation>> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM evaluations WHERE jobset_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3"
    ))
    .bind(jobset.get())
    .bind(before.map_or(i64::MAX, |b| b.get()))
    .bind(limit)
    .fetch_all(db.pool())
    .await
    .map_err(CoordinatorError::db("listing evaluations"))?
    .iter()
    .map(from_row)
    .collect()
}

/// Build counts of evaluation `id`.
pub async fn counts(db: &Db, id: EvaluationId) -> Result<BuildCounts> {
    let rows = sqlx::query(
        "SELECT status, cached, count(*) AS n FROM builds WHERE evaluation_id = $1 GROUP BY status, cached",
    )
    .bind(id.get())
    .fetch_all(db.pool())
    .await
    .map_err(CoordinatorError::db("counting builds"))?;
    let mut counts = BuildCounts::default();
    for row in rows {
        let status: String = col(&row, "status")?;
        let n: i64 = col(&row, "n")?;
        counts.total += n;
        if col::<i64>(&row, "cached")? == 1 {
            counts.cached += n;
        }
        match status.as_str() {
            "queued" => counts.queued += n,
            "running" => counts.running += n,
            "succeeded" => counts.succeeded += n,
            _ => counts.failed += n,
        }
    }
    Ok(counts)
}

/// Job errors of evaluation `id`: (job, message), by job name.
pub async fn job_errors(db: &Db, id: EvaluationId) -> Result<Vec<(String, String)>> {
    sqlx::query("SELECT job, message FROM job_errors WHERE evaluation_id = $1 ORDER BY job")
        .bind(id.get())
        .fetch_all(db.pool())
        .await
        .map_err(CoordinatorError::db("reading job errors"))?
        .iter()
        .map(|row| Ok((col(row, "job")?, col(row, "message")?)))
        .collect()
}

/// Deletes the finished evaluations of `jobset` beyond the newest `keep` (with their builds),
/// keeping any whose builds are not all finished. Returns how many were deleted.
pub async fn prune(db: &Db, jobset: JobsetId, keep: u32) -> Result<u64> {
    if keep == 0 {
        return Ok(0);
    }
    let done = sqlx::query(
        "DELETE FROM evaluations WHERE jobset_id = $1 AND status IN ('succeeded', 'failed') \
           AND id NOT IN (SELECT id FROM evaluations WHERE jobset_id = $1 ORDER BY id DESC LIMIT $2) \
           AND NOT EXISTS (SELECT 1 FROM builds b WHERE b.evaluation_id = evaluations.id \
                           AND b.status IN ('queued', 'running'))",
    )
    .bind(jobset.get())
    .bind(i64::from(keep))
    .execute(db.pool())
    .await
    .map_err(CoordinatorError::db("deleting old evaluations"))?;
    Ok(done.rows_affected())
}
