//! The walk of a jobset's attribute tree by a pool of memory-capped walker processes.
//!
//! Attribute paths wait in a queue shared by at most `max_processes` processes; the top level
//! (the empty path) is the first. Each process takes a batch (the queue's length divided by the
//! process count, capped), reports every path as it finishes it, and walks the attribute sets it
//! finds itself while they fit its budget (a few times the batch); the others are queued at
//! once, so idle slots pick them up while it still runs. A small jobset is thus walked by one
//! process, a large one spread over all of them. Paths that need isolation (a caught `throw`/`assert` whose message is wanted, or the
//! path a process was on when it died) are evaluated alone, each in a fresh process; their
//! failure there is the job's error — or, for the top level, the evaluation's.

use std::collections::{BTreeMap, VecDeque};

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::command::{Command, MAX_REQUEST_BYTES};
use super::jobs::{RawJob, Record};
use super::process::{AttrPath, Crash, Report, run_batch};
use super::{EvalError, EvalStats, job_name};

/// The fewest attribute paths one process is given when there are that many: every process
/// evaluates the jobset's top level again and opens the store, which costs about as much as
/// evaluating a hundred small jobs.
const MIN_BATCH: usize = 100;

/// The most attribute paths one process is given.
const MAX_BATCH: usize = 500;

/// A batch walks the attribute sets it finds until it has taken on this many times the paths
/// it was given (at least [`MIN_BUDGET`], at most [`MAX_BUDGET`]); the rest go to the queue.
const DESCEND_FACTOR: usize = 4;
const MIN_BUDGET: usize = 64;
const MAX_BUDGET: usize = 2000;

/// Attribute sets nested deeper than this are not walked (a set that contains itself would
/// otherwise be walked forever).
pub(crate) const MAX_DEPTH: usize = 32;

/// The most attribute paths one evaluation walks.
pub(crate) const MAX_ATTRIBUTES: usize = 2_000_000;

/// What the walk found.
#[derive(Debug, Default)]
pub(crate) struct Walked {
    /// Derivations by job name.
    pub(crate) jobs: BTreeMap<String, RawJob>,
    /// Job name → Nix's message.
    pub(crate) errors: BTreeMap<String, String>,
    /// Process counts.
    pub(crate) stats: EvalStats,
}

/// Walks the whole jobset with at most `max_processes` processes at once.
pub(crate) async fn walk(command: &Command, max_processes: usize) -> Result<Walked, EvalError> {
    let mut pool = Pool {
        command,
        max_processes,
        walked: Walked::default(),
        queue: VecDeque::new(),
        alone: VecDeque::new(),
        running: 0,
        tasks: JoinSet::new(),
        request_room: MAX_REQUEST_BYTES.saturating_sub(command.base_request_size()),
    };
    let (sender, mut receiver) = mpsc::unbounded_channel();

    // The top level is a batch like any other, walking what it finds within its budget;
    // its failure (found when it is evaluated alone) fails the evaluation.
    pool.queue.push_back(Vec::new());
    loop {
        pool.fill(&sender);
        if pool.running == 0 {
            break;
        }
        match next_report(&mut receiver).await? {
            Report::Record {
                path,
                record,
                walked_here,
            } => pool.record(path, record, walked_here)?,
            Report::Caught { path } => pool.alone.push_back(path),
            Report::Finished { alone, result } => {
                pool.running -= 1;
                if let Some(crash) = result? {
                    pool.crashed(crash, alone);
                }
            }
        }
    }
    // Every task has reported `Finished`; reap them.
    while pool.tasks.join_next().await.is_some() {}
    if let Some(message) = pool.walked.errors.remove("") {
        return Err(EvalError::Nix { message });
    }
    Ok(pool.walked)
}

async fn next_report(receiver: &mut mpsc::UnboundedReceiver<Report>) -> Result<Report, EvalError> {
    receiver
        .recv()
        .await
        .ok_or_else(|| EvalError::Protocol("an evaluator task vanished".into()))
}

struct Pool<'a> {
    command: &'a Command,
    max_processes: usize,
    walked: Walked,
    /// Paths to evaluate in batches.
    queue: VecDeque<AttrPath>,
    /// Paths to evaluate alone, one process each.
    alone: VecDeque<AttrPath>,
    running: usize,
    tasks: JoinSet<()>,
    /// Bytes of the request left for paths.
    request_room: usize,
}

impl Pool<'_> {
    fn start(&mut self, paths: Vec<AttrPath>, alone: bool, sender: &mpsc::UnboundedSender<Report>) {
        self.running += 1;
        self.walked.stats.processes += 1;
        if alone {
            self.walked.stats.isolated += 1;
        }
        // A path alone takes on nothing more; a batch walks what it finds up to a few times
        // its size, so that small nested sets cost no extra process.
        let budget = if alone {
            1
        } else {
            (paths.len() * DESCEND_FACTOR).clamp(MIN_BUDGET, MAX_BUDGET)
        };
        let command = self.command.clone();
        let sender = sender.clone();
        self.tasks.spawn(async move {
            run_batch(&command, paths, alone, budget, sender).await;
        });
    }

    /// Starts processes while there are free slots and work.
    fn fill(&mut self, sender: &mpsc::UnboundedSender<Report>) {
        // Share what is queued now between all the processes, not only the free ones: others
        // will be free soon, and a last small batch is cheaper than a long one holding up the
        // end (guided self-scheduling, with a floor so that process start-up stays amortised).
        let want = self
            .queue
            .len()
            .div_ceil(self.max_processes)
            .clamp(MIN_BATCH, MAX_BATCH);
        while self.running < self.max_processes {
            if let Some(path) = self.alone.pop_front() {
                self.start(vec![path], true, sender);
                continue;
            }
            if self.queue.is_empty() {
                break;
            }
            let mut batch = Vec::with_capacity(want);
            let mut bytes = 0;
            while batch.len() < want {
                let Some(path) = self.queue.front() else {
                    break;
                };
                let size = serde_json::to_string(path).map_or(0, |s| s.len()) + 1;
                if !batch.is_empty() && bytes + size > self.request_room {
                    break;
                }
                bytes += size;
                batch.push(self.queue.pop_front().expect("front exists"));
            }
            if bytes > self.request_room {
                // One path too long to pass to Nix at all.
                for path in batch {
                    self.error(&path, "the attribute path is too long to evaluate".into());
                }
                continue;
            }
            self.start(batch, false, sender);
        }
    }

    fn record(
        &mut self,
        path: AttrPath,
        record: Record,
        walked_here: bool,
    ) -> Result<(), EvalError> {
        self.walked.stats.attributes += 1;
        if path.is_empty() {
            match &record {
                Record::Attrs { .. } => {}
                Record::Job(_) => {
                    return Err(EvalError::NotAJobset {
                        found: "a derivation".into(),
                    });
                }
                Record::Skip { type_of } => {
                    return Err(EvalError::NotAJobset {
                        found: with_article(type_of),
                    });
                }
            }
        }
        match record {
            Record::Job(job) => {
                self.walked.jobs.insert(job_name(&path), *job);
                Ok(())
            }
            Record::Attrs { .. } if walked_here => Ok(()),
            Record::Attrs { names } => self.children(&path, names),
            Record::Skip { .. } => Ok(()),
        }
    }

    fn children(&mut self, parent: &[String], names: Vec<String>) -> Result<(), EvalError> {
        if self.walked.stats.attributes + self.queue.len() + names.len() > MAX_ATTRIBUTES {
            return Err(EvalError::InvalidRequest(format!(
                "the jobset has more than {MAX_ATTRIBUTES} attributes"
            )));
        }
        for name in names {
            let mut path = parent.to_vec();
            path.push(name);
            if path.len() > MAX_DEPTH {
                self.error(
                    &path,
                    format!(
                        "attribute sets are nested more than {MAX_DEPTH} deep here \
                         (does a set contain itself?)"
                    ),
                );
            } else {
                self.queue.push_back(path);
            }
        }
        Ok(())
    }

    fn crashed(&mut self, crash: Crash, alone: bool) {
        let Crash {
            in_progress,
            message,
            unreported,
        } = crash;
        if alone {
            // Evaluated alone in a fresh process: the failure is the path's own.
            for path in in_progress.iter().chain(&unreported) {
                self.walked.stats.attributes += 1;
                self.error(path, message.clone());
            }
            return;
        }
        match in_progress {
            Some(path) => {
                self.alone.push_back(path);
                self.queue.extend(unreported);
            }
            // Died outside any path: isolate every path it had not finished.
            None => self.alone.extend(unreported),
        }
    }

    fn error(&mut self, path: &[String], message: String) {
        self.walked.errors.insert(job_name(path), message);
    }
}

/// `builtins.typeOf`'s name for a value, as a phrase: "a string", "an integer"...
fn with_article(type_of: &str) -> String {
    match type_of {
        "int" => "an integer".into(),
        "bool" => "a Boolean".into(),
        "lambda" => "a function".into(),
        "set" => "an attribute set".into(),
        "null" => "null".into(),
        other => format!("a {other}"),
    }
}
