//! The build farm's configuration: `[worker]`, `[farm]` and the declared `[[project]]`s.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ByteSize;

/// Most system features a worker may declare (it reads one queue per subset of them).
pub const MAX_WORKER_FEATURES: usize = 8;

/// `[worker]`: the local build workers of `kiln up` (and, later, of `kiln worker`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Number of local workers `kiln up` starts, each with its own Nix store under
    /// `<data_dir>/workers/<n>`. `--workers` overrides it. Default 1.
    #[serde(default = "default_worker_count")]
    pub count: u32,
    /// Builds each worker runs at once (its prefetch on the queue). Default 1.
    #[serde(default = "default_slots")]
    pub slots: u32,
    /// Systems the workers build for. Default: what `nix` reports as `builtins.currentSystem`,
    /// plus `builtin` (Nix's built-in builders).
    #[serde(default)]
    pub systems: Option<Vec<String>>,
    /// Supported system features (`kvm`, `big-parallel`, ...): a step that requires features
    /// goes only to workers that have them all. At most 8. Default none.
    #[serde(default)]
    pub features: Vec<String>,
    /// Extra `--option NAME VALUE` pairs for every Nix command of a worker. Default
    /// `{ sandbox = "true" }`; add `sandbox-paths` so that builders find `/bin/sh`.
    #[serde(default = "default_nix_options")]
    pub nix_options: BTreeMap<String, String>,
    /// Largest build log; a longer one ends the build as `log-limit-exceeded`. Default 64 MiB.
    #[serde(default = "default_max_log_size")]
    pub max_log_size: ByteSize,
    /// Largest total NAR size of a step's outputs; more ends it as `output-limit-exceeded`.
    /// Default 8 GiB.
    #[serde(default = "default_max_output_size")]
    pub max_output_size: ByteSize,
}

/// `[farm]`: evaluation and scheduling.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FarmConfig {
    /// Evaluations run at once. Default 1.
    #[serde(default = "default_one")]
    pub max_concurrent_evals: u32,
    /// Nix evaluator processes per evaluation. Default 2.
    #[serde(default = "default_eval_processes")]
    pub eval_processes: u32,
    /// Memory cap of each evaluator process. Default 4 GiB.
    #[serde(default = "default_eval_memory")]
    pub eval_max_memory: ByteSize,
    /// Transient failures (worker lost, upload failed) of one step retried before it is
    /// `aborted`. Default 3.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Delay before the first retry, in seconds; it doubles with each further retry, up to an
    /// hour. Default 10.
    #[serde(default = "default_retry_backoff")]
    pub retry_backoff: u64,
    /// Seconds a runnable step may wait for a worker that can build its system and features
    /// before it is reported `unsupported`. Counted from when it became runnable or the
    /// coordinator started, whichever is later, so that workers have time to come up. Default
    /// 60.
    #[serde(default = "default_unsupported_after")]
    pub unsupported_after: u64,
    /// Steps published but not finished, per queue: the rest wait in the coordinator, where
    /// priorities still apply. 0 (the default) means the number of build slots that serve the
    /// queue.
    #[serde(default)]
    pub dispatch_window: u32,
    /// Seconds between checks of the database for work created by other processes (API
    /// requests in distributed mode). In `kiln up` the API wakes the coordinator directly.
    /// Default 5.
    #[serde(default = "default_db_poll")]
    pub db_poll_interval: u64,
}

/// `[[project]]`: a project declared in the file. Declared projects and jobsets are created or
/// updated at every start; ones created through the API are left alone.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectConfig {
    /// Name: letters, digits, `-`, `_`, `.`; unique. Required.
    pub name: String,
    /// Free text. Default empty.
    #[serde(default)]
    pub description: String,
    /// Whether its jobsets are polled. Default true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// `[[project.jobset]]`: its jobsets.
    #[serde(default)]
    pub jobset: Vec<JobsetConfig>,
}

/// `[[project.jobset]]`: a git branch and what to evaluate in it: either `expression` (a file of
/// the repository, evaluating to an attribute set of jobs or to a function of `inputs` returning
/// one) or `flake = true` (the repository is a flake; `hydraJobs` is evaluated, else `checks`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobsetConfig {
    /// Name: letters, digits, `-`, `_`, `.`; unique in the project. Required.
    pub name: String,
    /// Free text. Default empty.
    #[serde(default)]
    pub description: String,
    /// Git URL: `file://`, a local path or `https://`. Required.
    pub url: String,
    /// Branch to follow. Default `main`.
    #[serde(default = "default_branch")]
    pub branch: String,
    /// Legacy jobset: the file to evaluate, relative to the repository root.
    #[serde(default)]
    pub expression: Option<String>,
    /// Flake jobset: evaluate the repository's flake.
    #[serde(default)]
    pub flake: bool,
    /// Extra arguments of a legacy jobset's function: a string, a boolean, or another git
    /// repository `{ type = "git", url = "...", branch = "main" }` (passed as its checkout).
    #[serde(default)]
    pub inputs: BTreeMap<String, InputConfig>,
    /// Seconds between polls of the branch; 0 = only on request. Default 60.
    #[serde(default = "default_check_interval")]
    pub check_interval: u64,
    /// Whether it is polled and evaluated. Default true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Weight in fair-share scheduling between jobsets. Default 100.
    #[serde(default = "default_shares")]
    pub shares: u32,
    /// Evaluations kept; older finished ones are deleted with their builds. 0 keeps all.
    /// Default 10.
    #[serde(default = "default_keep_evaluations")]
    pub keep_evaluations: u32,
}

/// One extra input of a legacy jobset.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum InputConfig {
    /// A string argument.
    String(String),
    /// A boolean argument.
    Bool(bool),
    /// Another git repository, passed as the path of its checkout.
    Git(GitInputConfig),
}

/// A git repository input.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GitInputConfig {
    /// Must be `"git"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Git URL.
    pub url: String,
    /// Branch. Default `main`.
    #[serde(default = "default_branch")]
    pub branch: String,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            count: default_worker_count(),
            slots: default_slots(),
            systems: None,
            features: Vec::new(),
            nix_options: default_nix_options(),
            max_log_size: default_max_log_size(),
            max_output_size: default_max_output_size(),
        }
    }
}

impl Default for FarmConfig {
    fn default() -> Self {
        FarmConfig {
            max_concurrent_evals: default_one(),
            eval_processes: default_eval_processes(),
            eval_max_memory: default_eval_memory(),
            max_retries: default_max_retries(),
            retry_backoff: default_retry_backoff(),
            unsupported_after: default_unsupported_after(),
            dispatch_window: 0,
            db_poll_interval: default_db_poll(),
        }
    }
}

fn default_worker_count() -> u32 {
    1
}
fn default_slots() -> u32 {
    1
}
fn default_one() -> u32 {
    1
}
fn default_nix_options() -> BTreeMap<String, String> {
    BTreeMap::from([("sandbox".to_owned(), "true".to_owned())])
}
fn default_max_log_size() -> ByteSize {
    ByteSize(64 << 20)
}
fn default_max_output_size() -> ByteSize {
    ByteSize(8 << 30)
}
fn default_eval_processes() -> u32 {
    2
}
fn default_eval_memory() -> ByteSize {
    ByteSize(4 << 30)
}
fn default_max_retries() -> u32 {
    3
}
fn default_retry_backoff() -> u64 {
    10
}
fn default_unsupported_after() -> u64 {
    60
}
fn default_db_poll() -> u64 {
    5
}
fn default_true() -> bool {
    true
}
fn default_branch() -> String {
    "main".to_owned()
}
fn default_check_interval() -> u64 {
    60
}
fn default_shares() -> u32 {
    100
}
fn default_keep_evaluations() -> u32 {
    10
}

/// Whether `name` may name a project or jobset: non-empty, at most 100 characters of
/// `[A-Za-z0-9._-]`, not starting with `.` (it is a URL path segment).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl JobsetConfig {
    /// Checks what the types do not; the message names the field.
    pub fn validate(&self, context: &str) -> Result<(), String> {
        if !valid_name(&self.name) {
            return Err(format!(
                "{context}.name {:?} must be 1-100 characters of letters, digits, '.', '_', '-'",
                self.name
            ));
        }
        if self.url.trim().is_empty() {
            return Err(format!("{context}.url must not be empty"));
        }
        if self.branch.trim().is_empty() {
            return Err(format!("{context}.branch must not be empty"));
        }
        match (&self.expression, self.flake) {
            (Some(_), true) => {
                return Err(format!(
                    "{context}: give either `expression` or `flake = true`, not both"
                ));
            }
            (None, false) => {
                return Err(format!(
                    "{context}: give `expression` (a file in the repository) or `flake = true`"
                ));
            }
            (Some(expr), false) if expr.trim().is_empty() || expr.starts_with('/') => {
                return Err(format!(
                    "{context}.expression {expr:?} must be a path relative to the repository"
                ));
            }
            _ => {}
        }
        if self.flake && !self.inputs.is_empty() {
            return Err(format!(
                "{context}.inputs: a flake jobset takes its inputs from flake.lock"
            ));
        }
        for (name, input) in &self.inputs {
            if let InputConfig::Git(git) = input
                && git.kind != "git"
            {
                return Err(format!(
                    "{context}.inputs.{name}.type must be \"git\", not {:?}",
                    git.kind
                ));
            }
        }
        if self.shares == 0 {
            return Err(format!("{context}.shares must be at least 1"));
        }
        Ok(())
    }
}

/// Checks the farm sections; the message names the field.
pub(crate) fn validate(
    worker: &WorkerConfig,
    farm: &FarmConfig,
    projects: &[ProjectConfig],
) -> Result<(), String> {
    if worker.count > 256 {
        return Err(format!("worker.count {} is more than 256", worker.count));
    }
    if worker.slots == 0 {
        return Err("worker.slots must be at least 1".to_owned());
    }
    if worker.features.len() > MAX_WORKER_FEATURES {
        return Err(format!(
            "worker.features lists {} features; at most {MAX_WORKER_FEATURES} are supported",
            worker.features.len()
        ));
    }
    if let Some(systems) = &worker.systems
        && systems.iter().any(|s| s.trim().is_empty())
    {
        return Err("worker.systems must not hold empty names".to_owned());
    }
    if farm.max_concurrent_evals == 0 || farm.eval_processes == 0 {
        return Err(
            "farm.max_concurrent_evals and farm.eval_processes must be at least 1".to_owned(),
        );
    }
    if farm.db_poll_interval == 0 {
        return Err("farm.db_poll_interval must be at least 1 second".to_owned());
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, project) in projects.iter().enumerate() {
        let context = format!("project[{i}]");
        if !valid_name(&project.name) {
            return Err(format!(
                "{context}.name {:?} must be 1-100 characters of letters, digits, '.', '_', '-'",
                project.name
            ));
        }
        if !seen.insert(project.name.as_str()) {
            return Err(format!(
                "{context}: project {:?} is declared twice",
                project.name
            ));
        }
        let mut jobsets = std::collections::BTreeSet::new();
        for (j, jobset) in project.jobset.iter().enumerate() {
            let context = format!("project[{i}].jobset[{j}]");
            jobset.validate(&context)?;
            if !jobsets.insert(jobset.name.as_str()) {
                return Err(format!(
                    "{context}: jobset {:?} is declared twice in project {:?}",
                    jobset.name, project.name
                ));
            }
        }
    }
    Ok(())
}
