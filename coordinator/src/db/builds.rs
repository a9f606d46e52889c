//! Builds: their rows and outputs, and the API's requests about them (restart, cancel, bump),
//! queued in `farm_commands` and applied by the coordinator in order.

use std::collections::BTreeMap;

use kiln_db::{BuildId, Db, EvaluationId, JobsetId, StepId, Timestamp};
use sqlx::any::AnyRow;

use super::{CHUNK, col, placeholders};
use crate::error::{CoordinatorError, Result};
use crate::model::Status;

/// A build row.
#[derive(Debug, Clone, PartialEq)]
pub struct Build {
    /// Row id.
    pub id: BuildId,
    /// Its evaluation.
    pub evaluation_id: EvaluationId,
    /// Its jobset.
    pub jobset_id: JobsetId,
    /// The attribute path joined with `.`.
    pub job: String,
    /// Its derivation.
    pub drv_path: String,
    /// Its system.
    pub system: String,
    /// Its status.
    pub status: Status,
    /// Whether its outputs were in the cache already.
    pub cached: bool,
    /// `meta.schedulingPriority`.
    pub priority: i64,
    /// Bumped priority.
    pub global_priority: i64,
    /// Seconds.
    pub timeout_secs: i64,
    /// Seconds.
    pub max_silent_secs: i64,
    /// `meta` as JSON.
    pub meta: serde_json::Value,
    /// Constituent jobs of an aggregate.
    pub constituents: Option<Vec<String>>,
    /// Its own step.
    pub top_step_id: Option<StepId>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When its first step was dispatched.
    pub started_at: Option<Timestamp>,
    /// When it finished.
    pub finished_at: Option<Timestamp>,
    /// Output name → store path.
    pub outputs: BTreeMap<String, String>,
}

const COLUMNS: &str = "id, evaluation_id, jobset_id, job, drv_path, system, status, cached, priority, \
    global_priority, timeout_secs, max_silent_secs, meta, constituents, top_step_id, created_at, \
    started_at, finished_at";

fn from_row(row: &AnyRow) -> Result<Build> {
    let status: String = col(row, "status")?;
    let meta: String = col(row, "meta")?;
    let constituents: Option<String> = col(row, "constituents")?;
    Ok(Build {
        id: BuildId(col(row, "id")?),
        evaluation_id: EvaluationId(col(row, "evaluation_id")?),
        jobset_id: JobsetId(col(row, "jobset_id")?),
        job: col(row, "job")?,
        drv_path: col(row, "drv_path")?,
        system: col(row, "system")?,
        status: status
            .parse()
            .map_err(|e| CoordinatorError::Corrupt(format!("build status: {e}")))?,
        cached: col::<i64>(row, "cached")? == 1,
        priority: col(row, "priority")?,
        global_priority: col(row, "global_priority")?,
        timeout_secs: col(row, "timeout_secs")?,
        max_silent_secs: col(row, "max_silent_secs")?,
        meta: serde_json::from_str(&meta)
            .map_err(|e| CoordinatorError::Corrupt(format!("build meta: {e}")))?,
        constituents: constituents
            .map(|c| serde_json::from_str(&c))
            .transpose()
            .map_err(|e| CoordinatorError::Corrupt(format!("build constituents: {e}")))?,
        top_step_id: col::<Option<i64>>(row, "top_step_id")?.map(StepId),
        created_at: Timestamp(col(row, "created_at")?),
        started_at: col::<Option<i64>>(row, "started_at")?.map(Timestamp),
        finished_at: col::<Option<i64>>(row, "finished_at")?.map(Timestamp),
        outputs: BTreeMap::new(),
    })
}

async fn attach_outputs(db: &Db, builds: &mut [Build]) -> Result<()> {
    let ids: Vec<BuildId> = builds.iter().map(|b| b.id).collect();
    let mut outputs: BTreeMap<BuildId, BTreeMap<String, String>> = BTreeMap::new();
    for chunk in ids.chunks(CHUNK) {
        let sql = format!(
            "SELECT build_id, name, path FROM build_outputs WHERE build_id IN ({})",
            placeholders(1, chunk.len())
        );
        let mut query = sqlx::query(&sql);
        for id in chunk {
            query = query.bind(id.get());
        }
        for row in query
            .fetch_all(db.pool())
            .await
            .map_err(CoordinatorError::db("reading build outputs"))?
        {
            outputs
                .entry(BuildId(col(&row, "build_id")?))
                .or_default()
                .insert(col(&row, "name")?, col(&row, "path")?);
        }
    }
    for build in builds {
        build.outputs = outputs.remove(&build.id).unwrap_or_default();
    }
    Ok(())
}

/// The build `id`, with its outputs.
pub async fn get(db: &Db, id: BuildId) -> Result<Build> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM builds WHERE id = $1"))
        .bind(id.get())
        .fetch_optional(db.pool())
        .await
        .map_err(CoordinatorError::db("reading a build"))?
        .ok_or_else(|| CoordinatorError::NotFound(format!("build {id}")))?;
    let mut builds = vec![from_row(&row)?];
    attach_outputs(db, &mut builds).await?;
    Ok(builds.pop().expect("one build"))
}

/// The builds of evaluation `id`, by job name, with their outputs.
pub async fn of_evaluation(db: &Db, id: EvaluationId) -> Result<Vec<Build>> {
    let mut builds = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM builds WHERE evaluation_id = $1 ORDER BY job"
    ))
    .bind(id.get())
    .fetch_all(db.pool())
    .await
    .map_err(CoordinatorError::db("listing builds"))?
    .iter()
    .map(from_row)
    .collect::<Result<Vec<_>>>()?;
    attach_outputs(db, &mut builds).await?;
    Ok(builds)
}

/// A step of a build, as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildStep {
    /// Row id.
    pub id: StepId,
    /// Its derivation.
    pub drv_path: String,
    /// Its status.
    pub status: Status,
    /// The worker of its last attempt.
    pub worker: Option<String>,
    /// The last attempt dispatched (0: never).
    pub attempt: u32,
    /// The last result's message.
    pub message: Option<String>,
    /// When last dispatched.
    pub dispatched_at: Option<Timestamp>,
    /// When the build started on the worker.
    pub started_at: Option<Timestamp>,
    /// When it finished.
    pub finished_at: Option<Timestamp>,
}

/// Every step of build `id`, its own last.
pub async fn steps(db: &Db, id: BuildId) -> Result<Vec<BuildStep>> {
    sqlx::query(
        "SELECT s.id, s.drv_path, s.status, s.worker, s.attempt, s.message, s.dispatched_at, \
                s.started_at, s.finished_at, CASE WHEN b.top_step_id = s.id THEN 1 ELSE 0 END AS is_top \
         FROM build_steps bs JOIN steps s ON s.id = bs.step_id JOIN builds b ON b.id = bs.build_id \
         WHERE bs.build_id = $1 ORDER BY is_top, s.id",
    )
    .bind(id.get())
    .fetch_all(db.pool())
    .await
    .map_err(CoordinatorError::db("reading build steps"))?
    .iter()
    .map(|row| {
        let status: String = col(row, "status")?;
        Ok(BuildStep {
            id: StepId(col(row, "id")?),
            drv_path: col(row, "drv_path")?,
            status: status
                .parse()
                .map_err(|e| CoordinatorError::Corrupt(format!("step status: {e}")))?,
            worker: col(row, "worker")?,
            attempt: col::<i64>(row, "attempt")?.clamp(0, i64::from(u32::MAX)) as u32,
            message: col(row, "message")?,
            dispatched_at: col::<Option<i64>>(row, "dispatched_at")?.map(Timestamp),
            started_at: col::<Option<i64>>(row, "started_at")?.map(Timestamp),
            finished_at: col::<Option<i64>>(row, "finished_at")?.map(Timestamp),
        })
    })
    .collect()
}

/// The step that built `drv_path`, if any: the source of a build's products, metrics and log,
/// also for a cached build of a derivation built earlier.
pub async fn step_of_drv(db: &Db, drv_path: &str) -> Result<Option<StepId>> {
    Ok(
        sqlx::query_scalar::<_, i64>("SELECT id FROM steps WHERE drv_path = $1")
            .bind(drv_path)
            .fetch_optional(db.pool())
            .await
            .map_err(CoordinatorError::db("looking up a step"))?
            .map(StepId),
    )
}

/// A build product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    /// `file`, `doc`, ...
    pub kind: String,
    /// Subtype.
    pub subtype: String,
    /// Full path.
    pub path: String,
    /// Base name.
    pub name: String,
    /// Bytes, for regular files.
    pub file_size: Option<i64>,
    /// Hex SHA-256, for regular files.
    pub sha256: Option<String>,
}

/// Products of step `id`.
pub async fn products(db: &Db, id: StepId) -> Result<Vec<Product>> {
    sqlx::query(
        "SELECT product_type, subtype, path, name, file_size, sha256 FROM step_products \
         WHERE step_id = $1 ORDER BY id",
    )
    .bind(id.get())
    .fetch_all(db.pool())
    .await
    .map_err(CoordinatorError::db("reading build products"))?
    .iter()
    .map(|row| {
        Ok(Product {
            kind: col(row, "product_type")?,
            subtype: col(row, "subtype")?,
            path: col(row, "path")?,
            name: col(row, "name")?,
            file_size: col(row, "file_size")?,
            sha256: col(row, "sha256")?,
        })
    })
    .collect()
}

/// Metrics of step `id`: (name, value, unit), by name.
pub async fn metrics(db: &Db, id: StepId) -> Result<Vec<(String, f64, Option<String>)>> {
    sqlx::query("SELECT name, value, unit FROM step_metrics WHERE step_id = $1 ORDER BY name")
        .bind(id.get())
        .fetch_all(db.pool())
        .await
        .map_err(CoordinatorError::db("reading build metrics"))?
        .iter()
        .map(|row| Ok((col(row, "name")?, col(row, "value")?, col(row, "unit")?)))
        .collect()
}

/// The cache key of the newest log of step `id`.
pub async fn log_key(db: &Db, id: StepId) -> Result<Option<String>> {
    sqlx::query_scalar(
        "SELECT cache_key FROM step_logs WHERE step_id = $1 ORDER BY attempt DESC LIMIT 1",
    )
    .bind(id.get())
    .fetch_optional(db.pool())
    .await
    .map_err(CoordinatorError::db("reading the log index"))
}

/// A request of the API to the coordinator about a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Build a finished, unsuccessful build again.
    Restart,
    /// Stop an unfinished build.
    Cancel,
    /// Schedule it before everything else.
    Bump,
}

impl Command {
    /// The name in `farm_commands`.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Restart => "restart",
            Command::Cancel => "cancel",
            Command::Bump => "bump",
        }
    }

    fn parse(s: &str) -> Result<Command> {
        match s {
            "restart" => Ok(Command::Restart),
            "cancel" => Ok(Command::Cancel),
            "bump" => Ok(Command::Bump),
            other => Err(CoordinatorError::Corrupt(format!("command kind {other:?}"))),
        }
    }
}

/// Queues `command` for build `id` (which must exist); a same request still pending is not
/// queued twice.
pub async fn request(db: &Db, id: BuildId, command: Command) -> Result<()> {
    get(db, id).await?;
    sqlx::query(
        "INSERT INTO farm_commands (kind, build_id, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (kind, build_id) WHERE done_at IS NULL DO NOTHING",
    )
    .bind(command.as_str())
    .bind(id.get())
    .bind(Timestamp::now().millis())
    .execute(db.pool())
    .await
    .map_err(CoordinatorError::db("queueing a request"))?;
    Ok(())
}

/// Pending requests, oldest first: (request id, build, command).
pub async fn pending_commands(db: &Db) -> Result<Vec<(i64, BuildId, Command)>> {
    sqlx::query("SELECT id, build_id, kind FROM farm_commands WHERE done_at IS NULL ORDER BY id")
        .fetch_all(db.pool())
        .await
        .map_err(CoordinatorError::db("reading requests"))?
        .iter()
        .map(|row| {
            Ok((
                col(row, "id")?,
                BuildId(col(row, "build_id")?),
                Command::parse(&col::<String>(row, "kind")?)?,
            ))
        })
        .collect()
}

/// Marks request `id` done.
pub async fn command_done(db: &Db, id: i64) -> Result<()> {
    sqlx::query("UPDATE farm_commands SET done_at = $2 WHERE id = $1")
        .bind(id)
        .bind(Timestamp::now().millis())
        .execute(db.pool())
        .await
        .map_err(CoordinatorError::db("completing a request"))?;
    Ok(())
}

/// Restarts finished, unsuccessful build `id`: it is queued again, and so is every step of it
/// that ended in failure (shared steps too). Returns false if there was nothing to restart.
pub async fn restart(db: &Db, id: BuildId) -> Result<bool> {
    let mut tx = db
        .pool()
        .begin()
        .await
        .map_err(CoordinatorError::db("restarting a build"))?;
    let done = sqlx::query(
        "UPDATE builds SET status = 'queued', started_at = NULL, finished_at = NULL \
         WHERE id = $1 AND status NOT IN ('queued', 'running', 'succeeded')",
    )
    .bind(id.get())
    .execute(&mut *tx)
    .await
    .map_err(CoordinatorError::db("restarting a build"))?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    sqlx::query(
        "UPDATE steps SET status = 'queued', transient_failures = 0, retry_at = NULL, message = NULL, \
             finished_at = NULL \
         WHERE id IN (SELECT step_id FROM build_steps WHERE build_id = $1) \
           AND status NOT IN ('queued', 'running', 'succeeded')",
    )
    .bind(id.get())
    .execute(&mut *tx)
    .await
    .map_err(CoordinatorError::db("restarting a build's steps"))?;
    tx.commit()
        .await
        .map_err(CoordinatorError::db("restarting a build"))?;
    Ok(true)
}

/// Cancels unfinished build `id`. Returns false if it was finished already.
pub async fn cancel(db: &Db, id: BuildId) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE builds SET status = 'cancelled', finished_at = $2 WHERE id = $1 AND status IN ('queued', 'running')",
    )
    .bind(id.get())
    .bind(Timestamp::now().millis())
    .execute(db.pool())
    .await
    .map_err(CoordinatorError::db("cancelling a build"))?;
    Ok(done.rows_affected() == 1)
}

/// Raises build `id`'s global priority above every other build's, unless it is the highest
/// already. Returns its global priority.
pub async fn bump(db: &Db, id: BuildId) -> Result<i64> {
    sqlx::query(
        "UPDATE builds SET global_priority = (SELECT max(global_priority) FROM builds) + 1 \
         WHERE id = $1 AND (global_priority = 0 OR global_priority < (SELECT max(global_priority) FROM builds))",
    )
    .bind(id.get())
    .execute(db.pool())
    .await
    .map_err(CoordinatorError::db("bumping a build"))?;
    sqlx::query_scalar("SELECT global_priority FROM builds WHERE id = $1")
        .bind(id.get())
        .fetch_one(db.pool())
        .await
        .map_err(CoordinatorError::db("reading a build's priority"))
}
