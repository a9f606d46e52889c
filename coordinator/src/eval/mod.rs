//! Jobset evaluation with real Nix: from a checked-out jobset to jobs, their derivations and errors.
//!
//! Nix 2.8 has no `nix-eval-jobs`, so Kiln drives `nix-instantiate --eval` itself, keeping Hydra's
//! conventions so that Hydra users' jobsets run unchanged:
//!
//! - A legacy jobset's `expression` (a file in the checkout) evaluates to an attribute set, or to
//!   a function called with the jobset's inputs (the arguments it names). A flake jobset evaluates
//!   the flake's `hydraJobs`, or its `checks` when it has none, in pure evaluation mode.
//! - Every nested attribute set that is not a derivation is walked (`recurseForDerivations` is not
//!   needed); a job's name is its attribute path joined with `.` (an attribute name holding a dot
//!   is quoted, `"a.b"`, as nix-eval-jobs does); values that are neither derivations nor attribute
//!   sets are skipped; functions with named arguments found inside are called with the inputs.
//! - One job's failure (`throw`, `assert`, `abort`, infinite recursion, running out of memory or
//!   stack, a derivation that cannot be instantiated) is that job's [`JobError`], with Nix's
//!   message, and never hides another job. A failure of the jobset as a whole (syntax error,
//!   missing file, a top level that is not an attribute set) is an [`EvalError`].
//! - `meta` gives description, license, homepage, maintainers, `schedulingPriority` (default
//!   100), `timeout` (default 36000 s) and `maxSilent` (default 7200 s); `system`, the outputs and
//!   `requiredSystemFeatures` are read from the `.drv` file itself.
//! - Aggregates (`_hydraAggregate = true`) list their `constituents` as derivations or as job
//!   names (globs with `_hydraGlobConstituents = true`); named constituents are resolved after the
//!   whole jobset is evaluated and added to the aggregate's `.drv` as inputs, which gives it a new
//!   output path and a new `.drv`, registered with Nix through `builtins.toFile` (Nix checks the
//!   output paths of every `.drv` it registers). A name matching no job, a constituent that
//!   failed, or a cycle between aggregates makes the aggregate a [`JobError`].
//!
//! # Process model
//! The attribute tree is walked by a pool of at most `max_processes` concurrent `nix-instantiate`
//! processes, each with its address space capped at `max_memory` bytes (`RLIMIT_AS`, set
//! between fork and exec). Attribute paths wait in a queue, the top level first. A process is
//! given a batch (the queue's length divided by `max_processes`, at least 100 and at most 500
//! paths), evaluates it in order and reports every path on stderr as it finishes it. Attribute
//! sets it finds it walks itself, breadth first, while they fit a budget of about four times its
//! batch; larger ones are queued at once, so idle processes pick them up while it still runs. A
//! small jobset is thus walked by one process, a large one spread over all of them.
//!
//! A `throw` or an `assert` is caught in the process (`builtins.tryEval`) and the path is
//! evaluated again alone, in a fresh process, to get Nix's message. Anything else (`abort`,
//! infinite recursion, type errors, the memory cap, a stack overflow, a crash) ends the process:
//! the path it was on is evaluated again alone in a fresh process, and the paths it had not
//! reached go back to the queue. Alone, a failure is the path's own error (so a path that only
//! failed because earlier paths had filled the memory succeeds there); for the top level it is
//! the evaluation's [`EvalError::Nix`]. Each derivation found is then read from the store
//! (outputs, system, required features), and aggregates are resolved and rewritten by one more
//! process.
//!
//! Derivations are written (`--read-write-mode`) to the store [`NixSettings::store`] names.

mod aggregate;
mod command;
mod glob;
mod jobs;
mod process;
mod walk;

use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln_nix::StorePath;
use thiserror::Error;

pub use glob::glob_match;

/// What to evaluate, and how.
#[derive(Debug, Clone)]
pub struct EvalRequest {
    /// The jobset's tree at the commit being evaluated (see [`crate::git::GitMirror::checkout`]).
    pub checkout: PathBuf,
    /// A legacy expression with its inputs, or a flake.
    pub source: JobsetSource,
    /// The store to instantiate into and extra Nix options.
    pub nix: NixSettings,
    /// How many evaluator processes may run at once (at least 1 is used).
    pub max_processes: usize,
    /// The address-space limit of each evaluator process, in bytes; 0 for none.
    pub max_memory: u64,
}

/// Where a jobset's jobs come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobsetSource {
    /// A Nix file of the checkout, evaluating to an attribute set or to a function of `inputs`.
    Legacy {
        /// The file's path relative to the checkout (no `..`, not absolute).
        expression: String,
        /// The jobset's inputs: each is passed to the function if it names it, and inputs that
        /// are paths are also on the search path (`<name>`), as Hydra does.
        inputs: BTreeMap<String, EvalInput>,
    },
    /// The checkout's `flake.nix`: `hydraJobs`, or `checks` when it has no `hydraJobs`.
    Flake {
        /// The commit the checkout was made from, as 40 hexadecimal digits: the flake sees it
        /// as `self.rev` (and `self.shortRev`). Without it the flake is locked by its NAR hash.
        rev: Option<String>,
    },
}

/// One input of a legacy jobset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvalInput {
    /// A string argument.
    String(String),
    /// A directory (another repository's checkout), passed as a Nix path.
    Checkout(PathBuf),
    /// A boolean argument.
    Bool(bool),
    /// A git checkout in Hydra's form: an attribute set with `outPath` (the directory, as a
    /// path), `rev` and `shortRev`, usable wherever a path is (`import`, `"${input}"`).
    Git {
        /// The checkout directory.
        path: PathBuf,
        /// The commit, as 40 hexadecimal digits.
        rev: String,
    },
}

/// Which Nix store evaluation writes derivations to, and extra Nix settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NixSettings {
    /// `None` for the system store (`/nix/store`), or the root of a chroot store (`--store
    /// DIR`: files under `DIR/nix/store`, paths still named `/nix/store/...`).
    pub store: Option<PathBuf>,
    /// Extra `--option NAME VALUE` pairs, given after Kiln's own so they can override them
    /// (Kiln sets `restrict-eval true` for legacy jobsets and `pure-eval true` for flakes).
    pub options: Vec<(String, String)>,
    /// When set, a symbolic link named after each job's `.drv` is made here, pointing to it,
    /// so that a directory under the store's `gcroots` keeps the derivations alive.
    pub gc_roots_dir: Option<PathBuf>,
    /// The directory holding `nix-instantiate`; `None` to look it up in `PATH`.
    pub bin_dir: Option<PathBuf>,
}

/// The outcome of an evaluation that did not fail as a whole.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EvalResult {
    /// Every job, sorted by name.
    pub jobs: Vec<EvaluatedJob>,
    /// Every job that failed to evaluate, sorted by name.
    pub errors: Vec<JobError>,
    /// How the work was done.
    pub stats: EvalStats,
}

/// Counters describing how an evaluation ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EvalStats {
    /// `nix-instantiate` processes started, including the one rewriting aggregates.
    pub processes: usize,
    /// Attribute paths evaluated again alone, after a caught error or a process that ended.
    pub isolated: usize,
    /// Attribute paths evaluated in all.
    pub attributes: usize,
}

/// One job: a derivation found in the jobset, now in the store.
#[derive(Debug, Clone, PartialEq)]
pub struct EvaluatedJob {
    /// The attribute path joined with `.`.
    pub name: String,
    /// The `.drv`, present in the chosen store (for aggregates with named constituents, the
    /// rewritten one).
    pub drv_path: StorePath,
    /// Output name → output path, for outputs whose path is known before building (all but
    /// floating content-addressed ones).
    pub outputs: BTreeMap<String, StorePath>,
    /// The platform the derivation builds on (`x86_64-linux`...).
    pub system: String,
    /// Hydra's metadata.
    pub meta: JobMeta,
    /// Features a builder must offer (`requiredSystemFeatures`), in the derivation's order.
    pub required_system_features: Vec<String>,
    /// For aggregates, the names of the constituent jobs, sorted: those named (or matched by a
    /// glob) and the jobs whose derivation is a constituent given as a derivation. `None` for
    /// other jobs.
    pub constituents: Option<Vec<String>>,
}

/// Hydra's job metadata, from the derivation's `meta` attribute.
#[derive(Debug, Clone, PartialEq)]
pub struct JobMeta {
    /// `meta.description`, when it is a string.
    pub description: Option<String>,
    /// `meta.license` as JSON (a string, a nixpkgs license set, or a list of those); null when
    /// absent or failing. In all free-form fields functions become null, derivations their
    /// name, and values more than six levels below the field null.
    pub license: serde_json::Value,
    /// `meta.homepage` as JSON (usually a string); null when absent.
    pub homepage: serde_json::Value,
    /// `meta.maintainers` as JSON (usually a list of sets with `email`, `name`, `github`...);
    /// null when absent.
    pub maintainers: serde_json::Value,
    /// `meta.schedulingPriority` (an integer or a string of one); 100 otherwise. Higher runs
    /// first.
    pub scheduling_priority: i64,
    /// `meta.timeout`, in seconds: the longest a build may take; 36000 otherwise.
    pub timeout: u64,
    /// `meta.maxSilent`, in seconds: the longest a build may go without output; 7200 otherwise.
    pub max_silent: u64,
}

impl Default for JobMeta {
    fn default() -> JobMeta {
        JobMeta {
            description: None,
            license: serde_json::Value::Null,
            homepage: serde_json::Value::Null,
            maintainers: serde_json::Value::Null,
            scheduling_priority: 100,
            timeout: 36000,
            max_silent: 7200,
        }
    }
}

/// A job that failed to evaluate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobError {
    /// The attribute path joined with `.`.
    pub name: String,
    /// Nix's message (or, for aggregates, which constituents are broken and why).
    pub message: String,
}

/// Why an evaluation failed as a whole.
#[derive(Debug, Error)]
pub enum EvalError {
    /// The request itself is unusable (an expression path leaving the checkout, a bad revision).
    #[error("invalid evaluation request: {0}")]
    InvalidRequest(String),
    /// Nix could not evaluate the jobset's top level (syntax error, missing file, a failing
    /// function call...): Nix's message.
    #[error("{message}")]
    Nix {
        /// What Nix printed.
        message: String,
    },
    /// The top level evaluated, but to something that is not an attribute set of jobs.
    #[error("the jobset evaluates to {found}, not to an attribute set of jobs")]
    NotAJobset {
        /// What it evaluates to (`a string`, `a derivation`...).
        found: String,
    },
    /// `nix-instantiate` could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// A file operation of the evaluator failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The evaluator printed something Kiln cannot read (a bug, or a Nix that behaves unlike 2.8).
    #[error("unexpected evaluator output: {0}")]
    Protocol(String),
}

/// Evaluates a jobset: every job's derivation is written to the store, every job that fails is
/// recorded with Nix's message; `Err` only when the jobset as a whole cannot be evaluated.
///
/// Needs a Tokio runtime (child processes and blocking file work run on it); dropping the
/// future kills the evaluator processes.
pub async fn evaluate(req: &EvalRequest) -> Result<EvalResult, EvalError> {
    // Preparing may hash a flake's checkout: off the async threads.
    let prepared = req.clone();
    let command = tokio::task::spawn_blocking(move || command::Command::prepare(&prepared))
        .await
        .map_err(|e| EvalError::Protocol(format!("preparing the evaluation panicked: {e}")))??;
    let walked = walk::walk(&command, req.max_processes.max(1)).await?;
    let mut stats = walked.stats;
    let mut errors = walked.errors;

    let store_root = req.nix.store.clone();
    let raw_jobs = walked.jobs;
    let (mut jobs, aggregates, job_errors) =
        tokio::task::spawn_blocking(move || jobs::finish(store_root.as_deref(), raw_jobs))
            .await
            .map_err(|e| EvalError::Protocol(format!("reading derivations panicked: {e}")))?;
    errors.extend(job_errors);

    let processes = aggregate::resolve(&command, &mut jobs, &mut errors, aggregates).await?;
    stats.processes += processes;

    if let Some(dir) = &req.nix.gc_roots_dir {
        let paths: Vec<StorePath> = jobs.values().map(|job| job.drv_path.clone()).collect();
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || jobs::add_gc_roots(&dir, &paths))
            .await
            .map_err(|e| EvalError::Protocol(format!("adding GC roots panicked: {e}")))??;
    }

    Ok(EvalResult {
        jobs: jobs.into_values().collect(),
        errors: errors
            .into_iter()
            .map(|(name, message)| JobError { name, message })
            .collect(),
        stats,
    })
}

/// A job's name: the attribute path joined with `.`, names holding a dot quoted.
pub fn job_name(path: &[String]) -> String {
    let mut name = String::new();
    for (i, attr) in path.iter().enumerate() {
        if i > 0 {
            name.push('.');
        }
        if attr.contains('.') {
            name.push('"');
            name.push_str(attr);
            name.push('"');
        } else {
            name.push_str(attr);
        }
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_join_attributes_with_dots_and_quote_dotted_names() {
        let path = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(job_name(&path(&["hello"])), "hello");
        assert_eq!(job_name(&path(&["packages", "hello"])), "packages.hello");
        assert_eq!(
            job_name(&path(&["pkgs", "python3.11"])),
            "pkgs.\"python3.11\""
        );
        assert_eq!(job_name(&[]), "");
    }
}
