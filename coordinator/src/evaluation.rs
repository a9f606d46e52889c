//! Running evaluations: take a queued evaluation, resolve its commit, check it out, evaluate it
//! with Nix and ingest the result; and polling jobsets for new commits.
//!
//! Git and Nix are reached through [`Repositories`] and [`Evaluator`], so the flow can be tested
//! with scripted answers; `kiln up` plugs in the git mirror and the Nix evaluator.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kiln_config::InputConfig;
use kiln_db::{CacheId, Db, Timestamp};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::db::evals::{self, Evaluation, Timings};
use crate::db::projects::{self, Jobset, JobsetKind};
use crate::dispatch::{Event, Signals};
use crate::error::{CoordinatorError, Result};
use crate::ingest::{self, DrvReader, Evaluated, IngestJob, SourceUploader};

/// Git repositories: fetching branches and checking commits out.
#[async_trait]
pub trait Repositories: Send + Sync {
    /// Fetches `branch` of `url`; returns its head commit (hex).
    async fn fetch(&self, url: &str, branch: &str) -> std::result::Result<String, String>;
    /// Writes the tree of `commit` of `url` (fetched before) to the new directory `dest`.
    async fn checkout(
        &self,
        url: &str,
        commit: &str,
        dest: &Path,
    ) -> std::result::Result<(), String>;
}

/// An argument of a legacy jobset's function, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputValue {
    /// A string.
    String(String),
    /// A boolean.
    Bool(bool),
    /// The checkout of another repository at commit `rev`.
    Git {
        /// The checkout directory.
        path: PathBuf,
        /// The commit, hex.
        rev: String,
    },
}

/// What to evaluate in a checkout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvalSource {
    /// A file of the checkout, called with `inputs` if it is a function.
    Legacy {
        /// Path relative to the checkout.
        expression: String,
        /// Arguments.
        inputs: BTreeMap<String, InputValue>,
    },
    /// The checkout is a flake: `hydraJobs`, else `checks`.
    Flake {
        /// The commit checked out (the flake's `self.rev`).
        rev: String,
    },
}

/// Jobs and per-job errors of an evaluation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EvalOutput {
    /// Jobs evaluated.
    pub jobs: Vec<IngestJob>,
    /// (job, Nix's message) for jobs that failed to evaluate.
    pub errors: Vec<(String, String)>,
}

/// The Nix evaluator.
#[async_trait]
pub trait Evaluator: Send + Sync {
    /// Evaluates `source` in `checkout`; `Err` is an evaluation-level failure with Nix's
    /// message (syntax error, missing file).
    async fn evaluate(
        &self,
        checkout: &Path,
        source: &EvalSource,
    ) -> std::result::Result<EvalOutput, String>;
}

/// Everything evaluations need.
pub struct EvalContext {
    /// The database.
    pub db: Db,
    /// The cache ingest checks and uploads sources to.
    pub cache: CacheId,
    /// Git.
    pub repos: Arc<dyn Repositories>,
    /// Nix.
    pub evaluator: Arc<dyn Evaluator>,
    /// Reads `.drv` files the evaluator wrote.
    pub drvs: Arc<dyn DrvReader>,
    /// Uploads input sources.
    pub uploader: Arc<dyn SourceUploader>,
    /// Where checkouts are made (one directory per evaluation, removed afterwards).
    pub work_dir: PathBuf,
    /// Evaluations run at once.
    pub max_concurrent: usize,
    /// Tells the dispatcher about new builds.
    pub events: mpsc::UnboundedSender<Event>,
}

/// The hash that decides whether a poll found something new: the commit, what is evaluated,
/// and the inputs (git inputs by their commits).
pub fn inputs_hash(
    jobset: &Jobset,
    commit: &str,
    input_commits: &BTreeMap<String, String>,
) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"kiln-inputs-1\0");
    hasher.update(commit.as_bytes());
    hasher.update(b"\0");
    match &jobset.kind {
        JobsetKind::Legacy { expression, inputs } => {
            hasher.update(b"legacy\0");
            hasher.update(expression.as_bytes());
            for (name, input) in inputs {
                hasher.update(b"\0input\0");
                hasher.update(name.as_bytes());
                hasher.update(b"\0");
                let value = match input {
                    InputConfig::String(s) => format!("string:{s}"),
                    InputConfig::Bool(b) => format!("bool:{b}"),
                    InputConfig::Git(git) => format!(
                        "git:{}:{}:{}",
                        git.url,
                        git.branch,
                        input_commits.get(name).map_or("", String::as_str)
                    ),
                };
                hasher.update(value.as_bytes());
            }
        }
        JobsetKind::Flake => hasher.update(b"flake"),
    }
    hex::encode(hasher.finalize())
}

/// Fetches the git inputs of `jobset`: name → commit.
async fn fetch_inputs(
    repos: &dyn Repositories,
    jobset: &Jobset,
) -> std::result::Result<BTreeMap<String, String>, String> {
    let mut commits = BTreeMap::new();
    for (name, input) in jobset.inputs() {
        if let InputConfig::Git(git) = input {
            let commit = repos
                .fetch(&git.url, &git.branch)
                .await
                .map_err(|e| format!("input {name}: {e}"))?;
            commits.insert(name, commit);
        }
    }
    Ok(commits)
}

/// Polls every due jobset once: a branch whose inputs changed gets a queued evaluation.
/// Returns how many were queued.
pub async fn poll_once(db: &Db, repos: &dyn Repositories) -> Result<usize> {
    let mut queued = 0;
    for jobset in projects::due_for_poll(db, Timestamp::now()).await? {
        let now = Timestamp::now();
        let fetched = match repos.fetch(&jobset.url, &jobset.branch).await {
            Ok(commit) => fetch_inputs(repos, &jobset)
                .await
                .map(|inputs| (commit, inputs)),
            Err(e) => Err(e),
        };
        match fetched {
            Ok((commit, inputs)) => {
                let hash = inputs_hash(&jobset, &commit, &inputs);
                if evals::latest_inputs_hash(db, jobset.id).await?.as_deref() != Some(hash.as_str())
                {
                    let id = evals::enqueue_poll(db, jobset.id, &commit, &hash).await?;
                    tracing::info!(jobset = %format!("{}/{}", jobset.project, jobset.name), %commit, evaluation = %id, "new inputs: evaluation queued");
                    queued += 1;
                }
                projects::mark_checked(db, jobset.id, now, None).await?;
            }
            Err(error) => {
                tracing::warn!(jobset = %format!("{}/{}", jobset.project, jobset.name), %error, "polling failed");
                projects::mark_checked(db, jobset.id, now, Some(&error)).await?;
            }
        }
    }
    Ok(queued)
}

/// Polls due jobsets every second until `shutdown`, waking the evaluator when it queued one.
pub async fn run_poller(
    db: Db,
    repos: Arc<dyn Repositories>,
    signals: Arc<Signals>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match poll_once(&db, repos.as_ref()).await {
            Ok(0) => {}
            Ok(_) => signals.evaluations.notify_one(),
            Err(err) => tracing::error!(error = %err, "polling jobsets failed"),
        }
    }
}

/// Runs queued evaluations (at most `max_concurrent` at once) until `shutdown`. Evaluations
/// left running by a previous process are queued again first.
pub async fn run_evaluator(
    ctx: Arc<EvalContext>,
    signals: Arc<Signals>,
    shutdown: CancellationToken,
) -> Result<()> {
    let requeued = evals::requeue_running(&ctx.db).await?;
    if requeued > 0 {
        tracing::info!(
            evaluations = requeued,
            "queued again the evaluations a previous process left running"
        );
    }
    let mut running = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        while running.len() < ctx.max_concurrent.max(1) {
            match evals::claim_next(&ctx.db).await {
                Ok(Some(evaluation)) => {
                    let ctx = ctx.clone();
                    let stop = shutdown.clone();
                    running.spawn(async move {
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            () = run_one(&ctx, evaluation) => {}
                        }
                    });
                }
                Ok(None) => break,
                Err(err) => {
                    tracing::error!(error = %err, "claiming an evaluation failed");
                    break;
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = signals.evaluations.notified() => {}
            _ = tick.tick() => {}
            Some(joined) = running.join_next(), if !running.is_empty() => {
                if let Err(err) = joined {
                    tracing::error!(error = %err, "an evaluation task failed");
                }
            }
        }
    }
    // Interrupted evaluations stay `running` in the database and are queued again at the next
    // start; nothing of them was written (ingest is one transaction).
    running.shutdown().await;
    Ok(())
}

/// Runs one claimed evaluation to its end, recording failure in the evaluation.
async fn run_one(ctx: &EvalContext, evaluation: Evaluation) {
    let id = evaluation.id;
    let mut timings = Timings::default();
    let dir = ctx.work_dir.join(format!("eval-{id}"));
    let outcome = evaluate_and_ingest(ctx, &evaluation, &dir, &mut timings).await;
    if let Err(e) = tokio::fs::remove_dir_all(&dir).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(evaluation = %id, error = %e, "cannot remove a checkout");
    }
    match outcome {
        Ok(()) => {}
        Err(Failure::Evaluation(message)) => {
            tracing::warn!(evaluation = %id, %message, "evaluation failed");
            if let Err(err) = evals::fail(&ctx.db, id, &message, timings).await {
                tracing::error!(evaluation = %id, error = %err, "cannot record a failed evaluation");
            }
        }
        Err(Failure::Internal(err)) => {
            tracing::error!(evaluation = %id, error = %err, "evaluation could not be completed");
            if let Err(e) = evals::fail(&ctx.db, id, &err.to_string(), timings).await {
                tracing::error!(evaluation = %id, error = %e, "cannot record a failed evaluation");
            }
        }
    }
}

enum Failure {
    /// The evaluation itself failed (git, Nix): the message is for users.
    Evaluation(String),
    /// Kiln failed.
    Internal(CoordinatorError),
}

impl From<CoordinatorError> for Failure {
    fn from(e: CoordinatorError) -> Failure {
        Failure::Internal(e)
    }
}

fn millis(since: Instant) -> Option<i64> {
    Some(i64::try_from(since.elapsed().as_millis()).unwrap_or(i64::MAX))
}

async fn evaluate_and_ingest(
    ctx: &EvalContext,
    evaluation: &Evaluation,
    dir: &Path,
    timings: &mut Timings,
) -> std::result::Result<(), Failure> {
    let started = Instant::now();
    let jobset = projects::jobset_by_id(&ctx.db, evaluation.jobset_id).await?;
    let name = format!("{}/{}", jobset.project, jobset.name);
    tracing::info!(evaluation = %evaluation.id, jobset = %name, "evaluating");
    let input_commits = fetch_inputs(ctx.repos.as_ref(), &jobset)
        .await
        .map_err(Failure::Evaluation)?;
    let commit = match &evaluation.commit {
        Some(commit) => {
            // Fetched by the poll; fetch again in case the mirror is new (another machine).
            if let Err(e) = ctx.repos.fetch(&jobset.url, &jobset.branch).await {
                tracing::warn!(evaluation = %evaluation.id, error = %e, "fetch before checkout failed");
            }
            commit.clone()
        }
        None => {
            let commit = ctx
                .repos
                .fetch(&jobset.url, &jobset.branch)
                .await
                .map_err(Failure::Evaluation)?;
            let hash = inputs_hash(&jobset, &commit, &input_commits);
            evals::set_commit(&ctx.db, evaluation.id, &commit, &hash).await?;
            commit
        }
    };
    if tokio::fs::metadata(dir).await.is_ok() {
        tokio::fs::remove_dir_all(dir).await.map_err(|e| {
            Failure::Internal(CoordinatorError::Internal(format!(
                "cannot clear {}: {e}",
                dir.display()
            )))
        })?;
    }
    tokio::fs::create_dir_all(dir).await.map_err(|e| {
        Failure::Internal(CoordinatorError::Internal(format!(
            "cannot create {}: {e}",
            dir.display()
        )))
    })?;
    let tree = dir.join("source");
    ctx.repos
        .checkout(&jobset.url, &commit, &tree)
        .await
        .map_err(Failure::Evaluation)?;
    let source = match &jobset.kind {
        JobsetKind::Flake => EvalSource::Flake {
            rev: commit.clone(),
        },
        JobsetKind::Legacy { expression, inputs } => {
            let mut values = BTreeMap::new();
            for (input_name, input) in inputs {
                let value = match input {
                    InputConfig::String(s) => InputValue::String(s.clone()),
                    InputConfig::Bool(b) => InputValue::Bool(*b),
                    InputConfig::Git(git) => {
                        let path = dir.join(format!("input-{input_name}"));
                        let commit = &input_commits[input_name];
                        ctx.repos
                            .checkout(&git.url, commit, &path)
                            .await
                            .map_err(|e| Failure::Evaluation(format!("input {input_name}: {e}")))?;
                        InputValue::Git {
                            path,
                            rev: commit.clone(),
                        }
                    }
                };
                values.insert(input_name.clone(), value);
            }
            EvalSource::Legacy {
                expression: expression.clone(),
                inputs: values,
            }
        }
    };
    timings.checkout_ms = millis(started);
    let eval_started = Instant::now();
    let output = ctx
        .evaluator
        .evaluate(&tree, &source)
        .await
        .map_err(Failure::Evaluation)?;
    timings.eval_ms = millis(eval_started);
    let ingested = ingest::ingest(
        &ctx.db,
        ctx.cache,
        ctx.drvs.as_ref(),
        ctx.uploader.as_ref(),
        Evaluated {
            evaluation: evaluation.id,
            jobset: jobset.id,
            jobs: &output.jobs,
            errors: &output.errors,
            timings: *timings,
        },
    )
    .await?;
    tracing::info!(
        evaluation = %evaluation.id,
        jobset = %name,
        %commit,
        jobs = output.jobs.len(),
        errors = ingested.errors,
        new_steps = ingested.new_steps,
        queued = ingested.queued_builds.len(),
        finished = ingested.finished_builds.len(),
        "evaluation ingested"
    );
    if !ingested.queued_builds.is_empty() {
        let _ = ctx
            .events
            .send(Event::BuildsCreated(ingested.queued_builds));
    }
    let pruned = evals::prune(&ctx.db, jobset.id, jobset.keep_evaluations).await?;
    if pruned > 0 {
        tracing::info!(jobset = %name, evaluations = pruned, "deleted old evaluations");
    }
    Ok(())
}
