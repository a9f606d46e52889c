//! Graph ingest: an evaluation's jobs become builds, and the derivations they need that the
//! cache does not hold yet become steps.
//!
//! Each job's `.drv` is read with Kiln's own parser and its `inputDrvs` are walked level by level
//! (so the cache and the database are asked in batches). A derivation whose outputs are all in
//! the cache needs no step and its inputs are not visited; one that failed before (a cached
//! failure) is not built again until restarted; every other one becomes a step, keyed by its
//! `.drv` path and shared with every build, evaluation and jobset that needs it. The input
//! sources of new steps are uploaded to the cache before the steps are written, so workers find
//! everything they need there. The builds, steps and links of one evaluation are written in one
//! transaction, so a crash leaves either all of them or none (the evaluation is then run again).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use async_trait::async_trait;
use kiln_db::{BuildId, CacheId, Db, EvaluationId, JobsetId, StepId, Timestamp};
use kiln_nix::derivation::Derivation;
use kiln_nix::{StoreDir, StorePath};

use crate::db::evals::Timings;
use crate::db::{CHUNK, col, placeholders};
use crate::error::{CoordinatorError, Result};
use crate::model::Status;

/// `meta.timeout` when a job sets none (Hydra's default), seconds.
pub const DEFAULT_TIMEOUT_SECS: u64 = 36_000;
/// `meta.maxSilent` when a job sets none (Hydra's default), seconds.
pub const DEFAULT_MAX_SILENT_SECS: u64 = 7_200;

/// One evaluated job, as ingest needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestJob {
    /// The attribute path joined with `.`.
    pub name: String,
    /// Its derivation (present in the evaluation store).
    pub drv_path: StorePath,
    /// Output name → path.
    pub outputs: BTreeMap<String, StorePath>,
    /// The derivation's system.
    pub system: String,
    /// `meta` (description, license, homepage, maintainers, ...) as JSON.
    pub meta: serde_json::Value,
    /// `meta.schedulingPriority`.
    pub priority: i64,
    /// `meta.timeout`, seconds.
    pub timeout_secs: u64,
    /// `meta.maxSilent`, seconds.
    pub max_silent_secs: u64,
    /// Constituent job names of an aggregate.
    pub constituents: Option<Vec<String>>,
}

/// Reads `.drv` files of the store the evaluator wrote them to.
pub trait DrvReader: Send + Sync {
    /// The bytes of `drv`.
    fn read(&self, drv: &StorePath) -> std::io::Result<Vec<u8>>;
}

/// Reads `.drv` files from a store on disk: `/nix/store`, or a chroot store's directory.
#[derive(Debug, Clone)]
pub struct StoreFiles {
    /// The chroot store's directory, or `None` for `/nix/store` itself.
    pub root: Option<std::path::PathBuf>,
}

impl StoreFiles {
    /// Where the files of `path` are.
    pub fn location(&self, path: &StorePath) -> std::path::PathBuf {
        let full = StoreDir::default().display(path);
        match &self.root {
            Some(root) => root.join(full.trim_start_matches('/')),
            None => std::path::PathBuf::from(full),
        }
    }
}

impl DrvReader for StoreFiles {
    fn read(&self, drv: &StorePath) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.location(drv))
    }
}

/// Puts store paths of the evaluation store (input sources) into the cache, with their
/// references.
#[async_trait]
pub trait SourceUploader: Send + Sync {
    /// Makes sure every path of `paths` is served by the cache.
    async fn upload(&self, paths: &[StorePath]) -> Result<()>;
}

/// What ingest produced.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Ingested {
    /// Builds created, unfinished ones first.
    pub queued_builds: Vec<BuildId>,
    /// Builds finished at once (cached, or cached failures).
    pub finished_builds: Vec<BuildId>,
    /// Steps created.
    pub new_steps: usize,
    /// Job errors recorded (evaluation errors and unreadable derivations).
    pub errors: usize,
}

/// Why a derivation gets no step.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    /// Every output is in the cache.
    Cached,
    /// It failed before with this status (a cached failure).
    Failed(StepId, Status),
    /// It must be built: an existing step (with its status) or a new one.
    Build(Option<(StepId, Status)>),
    /// It cannot be used.
    Broken(String),
}

struct Node {
    drv: Option<Derivation>,
    text: String,
    kind: Kind,
}

fn drv_error(path: &StorePath, reason: impl std::fmt::Display) -> String {
    format!("{}: {reason}", StoreDir::default().display(path))
}

/// Reads and checks one `.drv`: UTF-8 (it travels as text), every output with a path.
fn read_node(reader: &dyn DrvReader, path: &StorePath) -> Node {
    let broken = |reason: String| Node {
        drv: None,
        text: String::new(),
        kind: Kind::Broken(reason),
    };
    let bytes = match reader.read(path) {
        Ok(bytes) => bytes,
        Err(e) => return broken(drv_error(path, format!("cannot read it: {e}"))),
    };
    let drv = match Derivation::parse_drv_file(&StoreDir::default(), path, &bytes) {
        Ok(drv) => drv,
        Err(e) => return broken(drv_error(path, e)),
    };
    if let Some((name, _)) = drv.outputs.iter().find(|(_, o)| o.path().is_none()) {
        return broken(drv_error(
            path,
            format!(
                "output {name:?} has no path (content-addressed derivations are not supported)"
            ),
        ));
    }
    match String::from_utf8(bytes) {
        Ok(text) => Node {
            drv: Some(drv),
            text,
            kind: Kind::Build(None),
        },
        Err(_) => broken(drv_error(
            path,
            "it is not valid UTF-8, which step messages cannot carry",
        )),
    }
}

fn output_paths(drv: &Derivation) -> Vec<StorePath> {
    drv.outputs
        .values()
        .filter_map(|o| o.path().cloned())
        .collect()
}

/// `requiredSystemFeatures`, from the environment or the structured attributes, sorted.
pub fn required_features(drv: &Derivation) -> Vec<String> {
    let mut features: Vec<String> = match drv.structured_attrs() {
        Some(Ok(attrs)) => attrs
            .get("requiredSystemFeatures")
            .and_then(|v| v.as_array())
            .map(|items| {
                items
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        _ => drv
            .env_str("requiredSystemFeatures")
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
    };
    features.sort();
    features.dedup();
    features
}

/// Steps (id, status) of the given `.drv` paths that exist.
async fn existing_steps(db: &Db, drvs: &[String]) -> Result<HashMap<String, (StepId, Status)>> {
    let mut out = HashMap::new();
    for chunk in drvs.chunks(CHUNK) {
        let sql = format!(
            "SELECT id, drv_path, status FROM steps WHERE drv_path IN ({})",
            placeholders(1, chunk.len())
        );
        let mut query = sqlx::query(&sql);
        for drv in chunk {
            query = query.bind(drv);
        }
        for row in query
            .fetch_all(db.pool())
            .await
            .map_err(CoordinatorError::db("looking up existing steps"))?
        {
            let status: String = col(&row, "status")?;
            out.insert(
                col::<String>(&row, "drv_path")?,
                (
                    StepId(col(&row, "id")?),
                    status
                        .parse()
                        .map_err(|e| CoordinatorError::Corrupt(format!("step status: {e}")))?,
                ),
            );
        }
    }
    Ok(out)
}

/// The work of one evaluation for [`ingest`].
pub struct Evaluated<'a> {
    /// The evaluation.
    pub evaluation: EvaluationId,
    /// Its jobset.
    pub jobset: JobsetId,
    /// Jobs evaluated.
    pub jobs: &'a [IngestJob],
    /// Jobs that failed to evaluate: (job, Nix's message).
    pub errors: &'a [(String, String)],
    /// Time spent so far.
    pub timings: Timings,
}

/// Turns an evaluation's jobs into builds and steps (see the module documentation) and marks
/// the evaluation succeeded, in one transaction.
pub async fn ingest(
    db: &Db,
    cache: CacheId,
    reader: &dyn DrvReader,
    uploader: &dyn SourceUploader,
    work: Evaluated<'_>,
) -> Result<Ingested> {
    let started = std::time::Instant::now();
    let store_dir = StoreDir::default();
    let mut nodes: HashMap<StorePath, Node> = HashMap::new();
    let mut frontier: Vec<StorePath> = work.jobs.iter().map(|j| j.drv_path.clone()).collect();
    frontier.sort();
    frontier.dedup();
    while !frontier.is_empty() {
        let mut level: Vec<StorePath> = Vec::new();
        for path in frontier.drain(..) {
            if !nodes.contains_key(&path) {
                let node = read_node(reader, &path);
                nodes.insert(path.clone(), node);
                level.push(path);
            }
        }
        let readable: Vec<&StorePath> = level.iter().filter(|p| nodes[*p].drv.is_some()).collect();
        let hash_parts: Vec<String> = readable
            .iter()
            .flat_map(|p| output_paths(nodes[*p].drv.as_ref().expect("readable")))
            .map(|o| o.hash_part())
            .collect();
        let missing: BTreeSet<String> = kiln_cache::index::missing_paths(db, cache, &hash_parts)
            .await?
            .into_iter()
            .collect();
        let drv_names: Vec<String> = readable.iter().map(|p| store_dir.display(p)).collect();
        let existing = existing_steps(db, &drv_names).await?;
        for path in readable {
            let node = nodes.get_mut(path).expect("read above");
            let drv = node.drv.as_ref().expect("readable");
            let all_cached = output_paths(drv)
                .iter()
                .all(|o| !missing.contains(&o.hash_part()));
            let step = existing.get(&store_dir.display(path)).copied();
            node.kind = match step {
                Some((id, status)) if status.is_cached_failure() => Kind::Failed(id, status),
                _ if all_cached => Kind::Cached,
                _ => Kind::Build(step),
            };
            if matches!(node.kind, Kind::Build(_)) {
                frontier.extend(drv.input_drvs.keys().cloned());
            }
        }
    }

    // A build node whose input derivation is broken is broken too (its job gets the error).
    let mut broken_cause: HashMap<StorePath, String> = HashMap::new();
    for job in work.jobs {
        broken_reason(&nodes, &job.drv_path, &mut broken_cause, &mut Vec::new());
    }

    // Input sources of everything to build go to the cache first.
    let mut sources: BTreeSet<StorePath> = BTreeSet::new();
    for node in nodes.values() {
        if let (Kind::Build(_), Some(drv)) = (&node.kind, &node.drv) {
            sources.extend(drv.input_srcs.iter().cloned());
        }
    }
    let sources: Vec<StorePath> = sources.into_iter().collect();
    uploader.upload(&sources).await?;

    // Per-step timeouts: a job's own step takes the job's meta; shared ones the largest.
    let mut limits: HashMap<&StorePath, (u64, u64)> = HashMap::new();
    for job in work.jobs {
        let entry = limits.entry(&job.drv_path).or_insert((0, 0));
        entry.0 = entry.0.max(job.timeout_secs);
        entry.1 = entry.1.max(job.max_silent_secs);
    }

    let now = Timestamp::now();
    let mut tx = db
        .pool()
        .begin()
        .await
        .map_err(CoordinatorError::db("ingesting an evaluation"))?;
    let mut step_ids: HashMap<&StorePath, StepId> = HashMap::new();
    let mut new_steps = 0;
    let mut build_paths: Vec<&StorePath> = nodes
        .iter()
        .filter(|(p, n)| matches!(n.kind, Kind::Build(_)) && !broken_cause.contains_key(*p))
        .map(|(p, _)| p)
        .collect();
    build_paths.sort();
    for path in &build_paths {
        let node = &nodes[*path];
        let drv = node.drv.as_ref().expect("build nodes are readable");
        let full = store_dir.display(path);
        let id = match &node.kind {
            Kind::Build(Some((id, status))) => {
                // Failures of the farm and dependency failures are not cached: try again. A
                // success whose outputs left the cache is built again too.
                if !matches!(status, Status::Queued | Status::Running) {
                    sqlx::query(
                        "UPDATE steps SET status = 'queued', transient_failures = 0, retry_at = NULL, \
                             message = NULL, finished_at = NULL \
                         WHERE id = $1 AND status NOT IN ('queued', 'running')",
                    )
                    .bind(id.get())
                    .execute(&mut *tx)
                    .await
                    .map_err(CoordinatorError::db("queueing a step again"))?;
                }
                *id
            }
            _ => {
                let mut input_paths: BTreeSet<String> = drv
                    .input_srcs
                    .iter()
                    .map(|p| store_dir.display(p))
                    .collect();
                for (input, names) in &drv.input_drvs {
                    let Some(input_drv) = nodes.get(input).and_then(|n| n.drv.as_ref()) else {
                        continue;
                    };
                    for name in names {
                        if let Some(p) = input_drv.outputs.get(name).and_then(|o| o.path()) {
                            input_paths.insert(store_dir.display(p));
                        }
                    }
                }
                let (timeout, max_silent) = limits
                    .get(path)
                    .copied()
                    .unwrap_or((DEFAULT_TIMEOUT_SECS, DEFAULT_MAX_SILENT_SECS));
                let inserted: Option<i64> = sqlx::query_scalar(
                    "INSERT INTO steps (drv_path, drv_name, drv, system, required_features, \
                         input_paths, status, timeout_secs, max_silent_secs, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7, $8, $9) \
                     ON CONFLICT (drv_path) DO NOTHING RETURNING id",
                )
                .bind(&full)
                .bind(&drv.name)
                .bind(&node.text)
                .bind(drv.system_str().unwrap_or_default())
                .bind(required_features(drv).join(" "))
                .bind(input_paths.into_iter().collect::<Vec<_>>().join(" "))
                .bind(i64::try_from(timeout).unwrap_or(i64::MAX))
                .bind(i64::try_from(max_silent).unwrap_or(i64::MAX))
                .bind(now.millis())
                .fetch_optional(&mut *tx)
                .await
                .map_err(CoordinatorError::db("creating a step"))?;
                match inserted {
                    Some(id) => {
                        new_steps += 1;
                        for (name, output) in &drv.outputs {
                            sqlx::query(
                                "INSERT INTO step_outputs (step_id, name, path) VALUES ($1, $2, $3) \
                                 ON CONFLICT (step_id, name) DO NOTHING",
                            )
                            .bind(id)
                            .bind(name)
                            .bind(store_dir.display(output.path().expect("checked when read")))
                            .execute(&mut *tx)
                            .await
                            .map_err(CoordinatorError::db("recording step outputs"))?;
                        }
                        StepId(id)
                    }
                    // Created meanwhile by another evaluation.
                    None => StepId(
                        sqlx::query_scalar("SELECT id FROM steps WHERE drv_path = $1")
                            .bind(&full)
                            .fetch_one(&mut *tx)
                            .await
                            .map_err(CoordinatorError::db("looking up a step"))?,
                    ),
                }
            }
        };
        step_ids.insert(path, id);
    }
    for (path, node) in &nodes {
        if let Kind::Failed(id, _) = node.kind {
            step_ids.insert(path, id);
        }
    }
    for path in &build_paths {
        let drv = nodes[*path].drv.as_ref().expect("build nodes are readable");
        for input in drv.input_drvs.keys() {
            if let Some(dep) = step_ids.get(input) {
                sqlx::query(
                    "INSERT INTO step_deps (step_id, dep_id) VALUES ($1, $2) ON CONFLICT (step_id, dep_id) DO NOTHING",
                )
                .bind(step_ids[*path].get())
                .bind(dep.get())
                .execute(&mut *tx)
                .await
                .map_err(CoordinatorError::db("linking steps"))?;
            }
        }
    }

    let mut out = Ingested {
        new_steps,
        ..Ingested::default()
    };
    let mut error_count = 0i64;
    for (job, message) in work.errors {
        insert_job_error(&mut tx, work.evaluation, job, message).await?;
        error_count += 1;
    }
    for job in work.jobs {
        let top = &nodes[&job.drv_path];
        if let Some(reason) = broken_cause.get(&job.drv_path) {
            insert_job_error(&mut tx, work.evaluation, &job.name, reason).await?;
            error_count += 1;
            continue;
        }
        let (status, cached, top_step) = match &top.kind {
            Kind::Cached => (Status::Succeeded, true, None),
            Kind::Failed(id, status) => (*status, true, Some(*id)),
            Kind::Build(_) => (Status::Queued, false, step_ids.get(&job.drv_path).copied()),
            Kind::Broken(_) => unreachable!("broken jobs were skipped"),
        };
        let finished = status.is_final().then_some(now.millis());
        let constituents = job
            .constituents
            .as_ref()
            .map(|c| serde_json::to_string(c).expect("strings serialize"));
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO builds (evaluation_id, jobset_id, job, drv_path, system, status, cached, \
                 priority, timeout_secs, max_silent_secs, meta, constituents, top_step_id, created_at, \
                 started_at, finished_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $15) RETURNING id",
        )
        .bind(work.evaluation.get())
        .bind(work.jobset.get())
        .bind(&job.name)
        .bind(store_dir.display(&job.drv_path))
        .bind(&job.system)
        .bind(status.as_str())
        .bind(i64::from(cached))
        .bind(job.priority)
        .bind(i64::try_from(job.timeout_secs).unwrap_or(i64::MAX))
        .bind(i64::try_from(job.max_silent_secs).unwrap_or(i64::MAX))
        .bind(job.meta.to_string())
        .bind(constituents)
        .bind(top_step.map(|s| s.get()))
        .bind(now.millis())
        .bind(finished)
        .fetch_one(&mut *tx)
        .await
        .map_err(CoordinatorError::db("creating a build"))?;
        let build = BuildId(id);
        for (name, path) in &job.outputs {
            sqlx::query("INSERT INTO build_outputs (build_id, name, path) VALUES ($1, $2, $3)")
                .bind(id)
                .bind(name)
                .bind(store_dir.display(path))
                .execute(&mut *tx)
                .await
                .map_err(CoordinatorError::db("recording build outputs"))?;
        }
        for step in closure(&nodes, &step_ids, &job.drv_path) {
            sqlx::query(
                "INSERT INTO build_steps (build_id, step_id) VALUES ($1, $2) ON CONFLICT (build_id, step_id) DO NOTHING",
            )
            .bind(id)
            .bind(step.get())
            .execute(&mut *tx)
            .await
            .map_err(CoordinatorError::db("linking a build to its steps"))?;
        }
        if status.is_final() {
            out.finished_builds.push(build);
        } else {
            out.queued_builds.push(build);
        }
    }
    out.errors = error_count as usize;
    let ingest_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
    let done = sqlx::query(
        "UPDATE evaluations SET status = 'succeeded', finished_at = $2, checkout_ms = $3, eval_ms = $4, \
             ingest_ms = $5, job_count = $6, error_count = $7 \
         WHERE id = $1 AND status = 'running'",
    )
    .bind(work.evaluation.get())
    .bind(Timestamp::now().millis())
    .bind(work.timings.checkout_ms)
    .bind(work.timings.eval_ms)
    .bind(ingest_ms)
    .bind(i64::try_from(work.jobs.len()).unwrap_or(i64::MAX))
    .bind(error_count)
    .execute(&mut *tx)
    .await
    .map_err(CoordinatorError::db("finishing an evaluation"))?;
    if done.rows_affected() != 1 {
        // Someone else finished (or requeued) it meanwhile: write nothing.
        return Err(CoordinatorError::Conflict(format!(
            "evaluation {} is no longer running",
            work.evaluation
        )));
    }
    tx.commit()
        .await
        .map_err(CoordinatorError::db("ingesting an evaluation"))?;
    Ok(out)
}

async fn insert_job_error(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    evaluation: EvaluationId,
    job: &str,
    message: &str,
) -> Result<()> {
    sqlx::query("INSERT INTO job_errors (evaluation_id, job, message) VALUES ($1, $2, $3)")
        .bind(evaluation.get())
        .bind(job)
        .bind(message)
        .execute(&mut **tx)
        .await
        .map_err(CoordinatorError::db("recording a job error"))?;
    Ok(())
}

/// Why `path` cannot be built, if it or a derivation it needs built is broken (memoized in
/// `causes`; `stack` guards against cycles in hostile input).
fn broken_reason(
    nodes: &HashMap<StorePath, Node>,
    path: &StorePath,
    causes: &mut HashMap<StorePath, String>,
    stack: &mut Vec<StorePath>,
) -> Option<String> {
    if let Some(reason) = causes.get(path) {
        return Some(reason.clone());
    }
    let node = nodes.get(path)?;
    let reason = match &node.kind {
        Kind::Broken(reason) => Some(reason.clone()),
        Kind::Build(_) if !stack.contains(path) => {
            stack.push(path.clone());
            let inputs: Vec<StorePath> = node
                .drv
                .as_ref()
                .map(|d| d.input_drvs.keys().cloned().collect())
                .unwrap_or_default();
            let found = inputs
                .iter()
                .find_map(|input| broken_reason(nodes, input, causes, stack));
            stack.pop();
            found
        }
        _ => None,
    };
    if let Some(reason) = &reason {
        causes.insert(path.clone(), reason.clone());
    }
    reason
}

/// The steps of the build of `top`: every step reachable from it through derivations that are
/// built (cached derivations and cached failures end the walk; a cached failure is included).
fn closure(
    nodes: &HashMap<StorePath, Node>,
    step_ids: &HashMap<&StorePath, StepId>,
    top: &StorePath,
) -> Vec<StepId> {
    let mut seen: BTreeSet<&StorePath> = BTreeSet::new();
    let mut stack = vec![top];
    let mut out = Vec::new();
    while let Some(path) = stack.pop() {
        if !seen.insert(path) {
            continue;
        }
        let Some(node) = nodes.get(path) else {
            continue;
        };
        if let Some(id) = step_ids.get(path) {
            out.push(*id);
        }
        if let (Kind::Build(_), Some(drv)) = (&node.kind, &node.drv) {
            stack.extend(drv.input_drvs.keys());
        }
    }
    out.sort();
    out
}
