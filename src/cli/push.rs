//! `kiln cache push`: pushes the closures of store paths to a Kiln cache through its streaming
//! upload API, skipping what the cache has, references before the paths that need them.

mod closure;

use std::cell::Cell;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln_cache::client::{CacheClient, ClientError, UploadOutcome};
use kiln_nix::StorePath;
use tokio::task::JoinSet;

use closure::{LocalPath, LocalStore};

/// The server `kiln cache push` talks to without `--url` or `KILN_URL`: `kiln up`'s default.
const DEFAULT_URL: &str = "http://127.0.0.1:8080";
/// Variable naming the server when `--url` is absent.
const URL_ENV: &str = "KILN_URL";
/// Variable holding the push token when `--token-file` is absent.
const TOKEN_ENV: &str = "KILN_TOKEN";
/// Failures listed in the error message; the rest are counted.
const MAX_LISTED_FAILURES: usize = 10;

/// `kiln cache push NAME PATH…`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The cache to push to.
    pub cache: String,
    /// Store paths, or symlinks to them such as ./result; their whole closures are pushed.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<String>,
    /// The Kiln server (default: $KILN_URL, else http://127.0.0.1:8080).
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// A file holding a push token (default: the token in $KILN_TOKEN).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The Nix store to push from, as Nix's --store: a directory (or local?root=DIR) is a
    /// chroot store whose files are read from DIR/nix/store.
    #[arg(long, value_name = "STORE")]
    pub store: Option<String>,
    /// Uploads in flight at once.
    #[arg(long, short = 'j', default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: u16,
}

fn read_token(file: Option<&PathBuf>) -> anyhow::Result<Option<String>> {
    let token = match file {
        Some(file) => Some(
            std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the token file {}", file.display()))?,
        ),
        None => std::env::var(TOKEN_ENV).ok(),
    };
    Ok(token.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()))
}

/// Adds what to do about an authentication failure.
fn explain(err: ClientError) -> anyhow::Error {
    if err.is_auth() {
        anyhow::Error::new(err).context(format!(
            "the cache refused the credentials: give a push token with --token-file FILE or {TOKEN_ENV}"
        ))
    } else {
        err.into()
    }
}

/// Runs `kiln cache push`.
pub async fn push(args: PushArgs) -> anyhow::Result<()> {
    let url = args
        .url
        .clone()
        .or_else(|| std::env::var(URL_ENV).ok())
        .unwrap_or_else(|| DEFAULT_URL.to_owned());
    let Some(token) = read_token(args.token_file.as_ref())? else {
        bail!(
            "no token: pushing needs a push token; give it with --token-file FILE or {TOKEN_ENV}"
        );
    };
    let client = CacheClient::new(&url, &args.cache, Some(token))?;
    let store = LocalStore::new(args.store.clone());
    let closure = store.closure(&args.paths)?;
    // Fails early, with the server's reason, on an unknown cache, an unreachable server or a
    // token it refuses.
    client.cache_info().await.map_err(explain)?;
    let paths: Vec<StorePath> = closure.iter().map(|p| p.path.clone()).collect();
    let missing = client.missing(&paths).await.map_err(explain)?;
    let present = paths.len() - missing.len();
    if missing.is_empty() {
        println!(
            "nothing to push: all {} are already in cache {}",
            count(paths.len()),
            args.cache
        );
        return Ok(());
    }
    let plan = Plan::new(closure, &missing);
    let progress = Progress::new(&plan);
    let report = upload(&client, &store, plan, usize::from(args.jobs), &progress).await;
    progress.finish();

    let uploaded: Vec<&UploadOutcome> = report
        .outcomes
        .iter()
        .filter(|o| !o.already_present)
        .collect();
    let nar_bytes: u64 = uploaded.iter().map(|o| o.nar_size).sum();
    let stored_bytes: u64 = uploaded.iter().map(|o| o.file_size).sum();
    println!(
        "pushed {} to cache {} ({} NAR, {} stored); {} already there",
        count(uploaded.len()),
        args.cache,
        HumanBytes(nar_bytes),
        HumanBytes(stored_bytes),
        present + report.outcomes.len() - uploaded.len()
    );
    report.into_result()
}

/// `1 path`, `2 paths`.
fn count(n: usize) -> String {
    format!("{n} path{}", if n == 1 { "" } else { "s" })
}

/// The paths to upload and what each waits for.
struct Plan {
    nodes: Vec<Node>,
}

struct Node {
    local: LocalPath,
    /// References not uploaded yet.
    waiting_on: usize,
    /// Nodes that reference this one.
    dependents: Vec<usize>,
}

impl Plan {
    /// The paths of `closure` named in `missing`; each waits for its references that are
    /// missing too (the others are in the cache already).
    fn new(closure: Vec<LocalPath>, missing: &[StorePath]) -> Plan {
        let wanted: HashSet<&StorePath> = missing.iter().collect();
        let mut nodes: Vec<Node> = closure
            .into_iter()
            .filter(|l| wanted.contains(&l.path))
            .map(|local| Node {
                local,
                waiting_on: 0,
                dependents: Vec::new(),
            })
            .collect();
        let index: BTreeMap<StorePath, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.local.path.clone(), i))
            .collect();
        for i in 0..nodes.len() {
            let deps: Vec<usize> = nodes[i]
                .local
                .references
                .iter()
                .filter(|r| **r != nodes[i].local.path)
                .filter_map(|r| index.get(r).copied())
                .collect();
            nodes[i].waiting_on = deps.len();
            for d in deps {
                nodes[d].dependents.push(i);
            }
        }
        Plan { nodes }
    }

    fn total_nar_bytes(&self) -> u64 {
        self.nodes.iter().map(|n| n.local.nar_size).sum()
    }
}

/// How the uploads went.
struct Report {
    outcomes: Vec<UploadOutcome>,
    failures: Vec<(StorePath, String)>,
    /// Paths not attempted, with the reason.
    skipped: Vec<(StorePath, String)>,
    /// Whether the cache refused the credentials (which stopped the push).
    refused: bool,
}

impl Report {
    fn into_result(self) -> anyhow::Result<()> {
        if self.failures.is_empty() && self.skipped.is_empty() {
            return Ok(());
        }
        let mut message = format!(
            "{} could not be pushed, {} not attempted",
            count(self.failures.len()),
            self.skipped.len()
        );
        if self.refused {
            message.push_str(&format!(
                "; the cache refused the credentials: give a push token with --token-file FILE or {TOKEN_ENV}"
            ));
        }
        for (path, reason) in self
            .failures
            .iter()
            .chain(self.skipped.iter())
            .take(MAX_LISTED_FAILURES)
        {
            message.push_str(&format!("\n  {}: {reason}", path.to_absolute()));
        }
        let listed = self.failures.len() + self.skipped.len();
        if listed > MAX_LISTED_FAILURES {
            message.push_str(&format!(
                "\n  ... and {} more",
                listed - MAX_LISTED_FAILURES
            ));
        }
        bail!(message)
    }
}

/// Uploads every path of `plan`, at most `jobs` at once, each once all its references are in.
/// A failure skips the paths that need it; a refused token stops everything.
async fn upload(
    client: &CacheClient,
    store: &LocalStore,
    mut plan: Plan,
    jobs: usize,
    progress: &Progress,
) -> Report {
    let mut ready: VecDeque<usize> = (0..plan.nodes.len())
        .filter(|&i| plan.nodes[i].waiting_on == 0)
        .collect();
    let mut attempted = vec![false; plan.nodes.len()];
    let mut report = Report {
        outcomes: Vec::new(),
        failures: Vec::new(),
        skipped: Vec::new(),
        refused: false,
    };
    let mut tasks = JoinSet::new();
    loop {
        while !report.refused && tasks.len() < jobs {
            let Some(i) = ready.pop_front() else { break };
            attempted[i] = true;
            let local = plan.nodes[i].local.clone();
            let location = store.location(&local.path);
            let client = client.clone();
            let counter = progress.counter();
            tasks.spawn(async move {
                let result = client
                    .upload_path_with_progress(&local.upload_request(), &location, counter)
                    .await;
                (i, result)
            });
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        let (i, result) = match joined {
            Ok(done) => done,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => unreachable!("upload tasks are never cancelled: {e}"),
        };
        let path = plan.nodes[i].local.path.clone();
        match result {
            Ok(outcome) => {
                progress.uploaded(&outcome);
                for d in std::mem::take(&mut plan.nodes[i].dependents) {
                    plan.nodes[d].waiting_on -= 1;
                    if plan.nodes[d].waiting_on == 0 {
                        ready.push_back(d);
                    }
                }
                report.outcomes.push(outcome);
            }
            Err(err) => {
                let auth = err.is_auth();
                let reason = format!("{:#}", anyhow::Error::new(err));
                progress.failed(&path, &reason);
                report.refused |= auth;
                report.failures.push((path, reason));
            }
        }
    }
    for (i, node) in plan.nodes.iter().enumerate() {
        if !attempted[i] {
            let reason = if report.refused {
                "not attempted: the cache refused the credentials"
            } else {
                "not attempted: a path it references could not be pushed"
            };
            report
                .skipped
                .push((node.local.path.clone(), reason.to_owned()));
        }
    }
    report
}

/// Progress shown while uploading: a bar on a terminal, plain lines otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    paths: usize,
    done: Cell<usize>,
}

impl Progress {
    fn new(plan: &Plan) -> Progress {
        let paths = plan.nodes.len();
        let total = plan.total_nar_bytes();
        let bar = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
                )
                .expect("a valid progress template"),
            );
            bar.set_message(format!("0/{paths} paths"));
            bar.enable_steady_tick(Duration::from_millis(200));
            Some(bar)
        } else {
            eprintln!("kiln: pushing {} ({} NAR)", count(paths), HumanBytes(total));
            None
        };
        Progress {
            bar,
            paths,
            done: Cell::new(0),
        }
    }

    /// A callback counting NAR bytes as they are sent.
    fn counter(&self) -> impl Fn(u64) + Send + Sync + 'static {
        let bar = self.bar.clone();
        move |n| {
            if let Some(bar) = &bar {
                bar.inc(n);
            }
        }
    }

    fn uploaded(&self, outcome: &UploadOutcome) {
        self.done.set(self.done.get() + 1);
        match &self.bar {
            Some(bar) => bar.set_message(format!("{}/{} paths", self.done.get(), self.paths)),
            None => eprintln!(
                "kiln: {} {} ({} NAR, {} stored)",
                if outcome.already_present {
                    "already there:"
                } else {
                    "pushed"
                },
                outcome.store_path.to_absolute(),
                HumanBytes(outcome.nar_size),
                HumanBytes(outcome.file_size)
            ),
        }
    }

    fn failed(&self, path: &StorePath, reason: &str) {
        let line = format!("kiln: failed to push {}: {reason}", path.to_absolute());
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
