//! Aggregate jobs: constituents named by job name or glob, resolved after the whole jobset is
//! evaluated, and added to the aggregate's derivation as Hydra's evaluator does.
//!
//! A constituent given as a derivation is an input of the aggregate already. A constituent
//! given by name is not: Hydra (nix-eval-jobs' `--constituents`) resolves the names once every
//! job is known, adds each named job's derivation to the aggregate's `inputDrvs` (with the
//! first of its outputs, in name order), recomputes the output paths (`hashDerivationModulo`)
//! and writes the new `.drv`. Kiln does the same with kiln-nix, then registers the new `.drv`
//! with real Nix through `builtins.toFile`: a `.drv` is a text store path whose references are
//! its input derivations and sources, which is exactly what `toFile` makes from a string whose
//! context holds those paths (`builtins.storePath`), and Nix checks the derivation's output
//! paths when it registers any `.drv`, so a wrong rewrite is refused rather than stored.
//!
//! Resolution rules (nix-eval-jobs'): a name is first looked up exactly; otherwise, without
//! `_hydraGlobConstituents`, it "does not exist"; with it, it is a glob ([`glob_match`]) over
//! every job but the aggregate itself, and a glob matching nothing is an error too. A
//! constituent that failed to evaluate (or an aggregate that is itself broken) makes the
//! aggregate a job error listing every broken constituent and why. Aggregates naming each
//! other are processed dependencies first; a cycle makes every aggregate on it an error.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::rc::Rc;

use kiln_nix::derivation::{Derivation, DerivationKind, DerivationOutput, DrvHasher, ResolveError};
use kiln_nix::{StoreDir, StorePath};

use super::command::Command;
use super::glob::glob_match;
use super::jobs::read_drv;
use super::process::{Tail, describe_exit};
use super::{EvalError, EvaluatedJob};

/// An aggregate job as the walker found it.
#[derive(Debug, Clone)]
pub(crate) struct AggregateSpec {
    /// The aggregate's job name.
    pub(crate) name: String,
    /// Constituents given as derivations.
    pub(crate) drvs: Vec<StorePath>,
    /// Constituents given as names (or globs).
    pub(crate) names: Vec<String>,
    /// Whether `names` are globs.
    pub(crate) glob: bool,
}

/// A rewritten aggregate `.drv` to register in the store.
#[derive(Debug)]
struct Write {
    job: String,
    path: StorePath,
    aterm: Vec<u8>,
    references: BTreeSet<StorePath>,
}

/// Resolves every aggregate's constituents, rewrites the derivations of those with named
/// constituents and writes them to the store. Returns how many Nix processes it ran.
pub(crate) async fn resolve(
    command: &Command,
    jobs: &mut BTreeMap<String, EvaluatedJob>,
    errors: &mut BTreeMap<String, String>,
    specs: Vec<AggregateSpec>,
) -> Result<usize, EvalError> {
    if specs.is_empty() {
        return Ok(0);
    }
    let store = command.store.clone();
    let owned_jobs = std::mem::take(jobs);
    let owned_errors = std::mem::take(errors);
    let (new_jobs, new_errors, writes) = tokio::task::spawn_blocking(move || {
        let mut planner = Planner {
            store_root: store.as_deref(),
            jobs: owned_jobs,
            errors: owned_errors,
        };
        let writes = planner.plan(specs);
        (planner.jobs, planner.errors, writes)
    })
    .await
    .map_err(|e| EvalError::Protocol(format!("resolving aggregates panicked: {e}")))?;
    *jobs = new_jobs;
    *errors = new_errors;
    if writes.is_empty() {
        return Ok(0);
    }
    if let Err(message) = write_to_store(command, &writes).await? {
        for write in writes {
            jobs.remove(&write.job);
            errors.insert(
                write.job,
                format!("cannot write the aggregate's rewritten derivation: {message}"),
            );
        }
    }
    Ok(1)
}

struct Planner<'a> {
    store_root: Option<&'a Path>,
    jobs: BTreeMap<String, EvaluatedJob>,
    errors: BTreeMap<String, String>,
}

/// An aggregate's resolved constituents.
#[derive(Debug, Default)]
struct Resolution {
    /// Named constituents that are jobs.
    named: BTreeSet<String>,
    /// Broken constituents (name or pattern → why).
    broken: BTreeMap<String, String>,
}

impl Planner<'_> {
    fn plan(&mut self, specs: Vec<AggregateSpec>) -> Vec<Write> {
        let mut by_drv: HashMap<StorePath, Vec<String>> = HashMap::new();
        for (name, job) in &self.jobs {
            by_drv
                .entry(job.drv_path.clone())
                .or_default()
                .push(name.clone());
        }
        let mut resolutions: BTreeMap<String, (AggregateSpec, Resolution)> = BTreeMap::new();
        for spec in specs {
            let resolution = self.resolve_names(&spec);
            resolutions.insert(spec.name.clone(), (spec, resolution));
        }

        let order = order(&resolutions);
        for (name, message) in &order.cycles {
            resolutions.remove(name);
            self.jobs.remove(name);
            self.errors.insert(name.clone(), message.clone());
        }

        let store_dir = StoreDir::default();
        let pending: Rc<RefCell<HashMap<StorePath, Derivation>>> = Rc::default();
        let resolver = {
            let pending = pending.clone();
            let store_root = self.store_root.map(Path::to_owned);
            move |path: &StorePath| -> Result<Derivation, ResolveError> {
                lookup(&pending, store_root.as_deref(), path).map_err(ResolveError::from)
            }
        };
        let mut hasher = DrvHasher::new(store_dir.clone(), resolver);

        let mut writes = Vec::new();
        for name in order.sorted.iter().chain(&order.stuck) {
            // Aggregates on a cycle are errors already and have no resolution left.
            let Some((spec, mut resolution)) = resolutions.remove(name) else {
                continue;
            };
            for dep in &resolution.named {
                if order.cycles.contains_key(dep) {
                    resolution.broken.insert(
                        dep.clone(),
                        "is on a dependency cycle between aggregates".into(),
                    );
                } else if order.stuck.contains(dep) {
                    resolution.broken.insert(
                        dep.clone(),
                        "depends on a dependency cycle between aggregates".into(),
                    );
                } else if let Some(error) = self.errors.get(dep) {
                    resolution.broken.insert(dep.clone(), failed(error));
                }
            }
            if !resolution.broken.is_empty() {
                self.jobs.remove(name);
                self.errors
                    .insert(name.clone(), broken_message(name, &resolution.broken));
                continue;
            }
            let Some(job) = self.jobs.get(name) else {
                continue;
            };
            let mut constituents: BTreeSet<String> = resolution.named.clone();
            for drv in &spec.drvs {
                for other in by_drv.get(drv).into_iter().flatten() {
                    if other != name {
                        constituents.insert(other.clone());
                    }
                }
            }
            if !resolution.named.is_empty() {
                match self.rewrite(&mut hasher, &pending, &store_dir, job, &resolution.named) {
                    Ok((path, drv)) => {
                        let job = self.jobs.get_mut(name).expect("checked above");
                        job.outputs = drv
                            .outputs
                            .iter()
                            .filter_map(|(o, out)| out.path().map(|p| (o.clone(), p.clone())))
                            .collect();
                        job.drv_path = path.clone();
                        writes.push(Write {
                            job: name.clone(),
                            path: path.clone(),
                            aterm: drv.to_aterm(&store_dir),
                            references: drv.references(),
                        });
                        pending.borrow_mut().insert(path, drv);
                    }
                    Err(message) => {
                        self.jobs.remove(name);
                        self.errors.insert(name.clone(), message);
                        continue;
                    }
                }
            }
            if let Some(job) = self.jobs.get_mut(name) {
                job.constituents = Some(constituents.into_iter().collect());
            }
        }
        writes
    }

    fn resolve_names(&self, spec: &AggregateSpec) -> Resolution {
        let mut resolution = Resolution::default();
        for pattern in &spec.names {
            if let Some(error) = self.errors.get(pattern) {
                resolution.broken.insert(pattern.clone(), failed(error));
            } else if self.jobs.contains_key(pattern) {
                resolution.named.insert(pattern.clone());
            } else if !spec.glob {
                resolution
                    .broken
                    .insert(pattern.clone(), "does not exist".into());
            } else {
                let mut any = false;
                for name in self.jobs.keys().filter(|n| **n != spec.name) {
                    if glob_match(pattern, name) {
                        resolution.named.insert(name.clone());
                        any = true;
                    }
                }
                for (name, error) in self.errors.iter().filter(|(n, _)| **n != spec.name) {
                    if glob_match(pattern, name) {
                        resolution.broken.insert(name.clone(), failed(error));
                        any = true;
                    }
                }
                if !any {
                    resolution.broken.insert(
                        pattern.clone(),
                        "constituent glob pattern had no matches".into(),
                    );
                }
            }
        }
        resolution
    }

    /// The aggregate's derivation with each named constituent's derivation as an input, its
    /// output paths recomputed, and its new `.drv` path.
    fn rewrite<R: kiln_nix::derivation::DerivationResolver>(
        &self,
        hasher: &mut DrvHasher<R>,
        pending: &RefCell<HashMap<StorePath, Derivation>>,
        store_dir: &StoreDir,
        job: &EvaluatedJob,
        named: &BTreeSet<String>,
    ) -> Result<(StorePath, Derivation), String> {
        let mut drv = read_drv(self.store_root, &job.drv_path)?;
        if drv.kind() != Ok(DerivationKind::InputAddressed) {
            return Err(
                "an aggregate with named constituents must be an ordinary (input-addressed) \
                 derivation"
                    .into(),
            );
        }
        for constituent in named {
            let path = &self.jobs[constituent].drv_path;
            let input = lookup(pending, self.store_root, path)
                .map_err(|e| format!("cannot read constituent {constituent}: {e}"))?;
            let output = input
                .outputs
                .keys()
                .next()
                .ok_or_else(|| format!("constituent {constituent} has no outputs"))?
                .clone();
            drv.input_drvs
                .entry(path.clone())
                .or_default()
                .insert(output);
        }
        let paths = hasher
            .output_paths(&drv)
            .map_err(|e| format!("cannot compute the aggregate's new output paths: {e}"))?;
        for (output, path) in paths {
            let path = path.ok_or_else(|| format!("output {output} has no path"))?;
            drv.env.insert(
                output.clone().into_bytes(),
                store_dir.display(&path).into_bytes(),
            );
            drv.outputs
                .insert(output, DerivationOutput::InputAddressed(path));
        }
        let path = drv
            .drv_path(store_dir)
            .map_err(|e| format!("cannot name the rewritten derivation: {e}"))?;
        hasher
            .check(&path, &drv)
            .map_err(|e| format!("the rewritten derivation is inconsistent: {e}"))?;
        Ok((path, drv))
    }
}

/// A derivation rewritten in this evaluation (not yet in the store), or one from the store.
fn lookup(
    pending: &RefCell<HashMap<StorePath, Derivation>>,
    store_root: Option<&Path>,
    path: &StorePath,
) -> Result<Derivation, String> {
    if let Some(drv) = pending.borrow().get(path) {
        return Ok(drv.clone());
    }
    read_drv(store_root, path)
}

/// Why a constituent that is an error is broken: the first line of Nix's message, or, for an
/// aggregate, that it is broken itself.
fn failed(error: &str) -> String {
    if error.starts_with(BROKEN_PREFIX) {
        return "is an aggregate with broken constituents".into();
    }
    let first = error.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    format!("failed to evaluate: {}", first.trim())
}

const BROKEN_PREFIX: &str = "aggregate job '";

fn broken_message(name: &str, broken: &BTreeMap<String, String>) -> String {
    let mut message = format!("{BROKEN_PREFIX}{name}' has broken constituents:");
    for (constituent, why) in broken {
        message.push_str(&format!("\n  {constituent}: {why}"));
    }
    message
}

/// Aggregates in dependency order.
#[derive(Debug, Default)]
struct Order {
    /// Every aggregate whose aggregate constituents come before it.
    sorted: Vec<String>,
    /// Aggregates on or behind a cycle (all errors).
    stuck: BTreeSet<String>,
    /// Aggregates on a cycle → the message naming it.
    cycles: BTreeMap<String, String>,
}

fn order(resolutions: &BTreeMap<String, (AggregateSpec, Resolution)>) -> Order {
    // Edges from an aggregate to the aggregates it names.
    let deps: BTreeMap<&String, Vec<&String>> = resolutions
        .iter()
        .map(|(name, (_, r))| {
            let d = r
                .named
                .iter()
                .filter(|d| resolutions.contains_key(*d))
                .collect();
            (name, d)
        })
        .collect();
    let mut remaining: BTreeMap<&String, usize> =
        deps.iter().map(|(name, d)| (*name, d.len())).collect();
    let mut dependents: BTreeMap<&String, Vec<&String>> = BTreeMap::new();
    for (name, d) in &deps {
        for dep in d {
            dependents.entry(*dep).or_default().push(*name);
        }
    }
    let mut ready: VecDeque<&String> = remaining
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(name, _)| *name)
        .collect();
    let mut order = Order::default();
    while let Some(name) = ready.pop_front() {
        remaining.remove(name);
        order.sorted.push(name.clone());
        for dependent in dependents.get(name).into_iter().flatten() {
            if let Some(n) = remaining.get_mut(*dependent) {
                *n -= 1;
                if *n == 0 {
                    ready.push_back(*dependent);
                }
            }
        }
    }
    // Every aggregate left names another one left: following those edges always closes a cycle.
    for start in remaining.keys() {
        if order.cycles.contains_key(*start) {
            continue;
        }
        let mut walk: Vec<&String> = vec![*start];
        loop {
            let current = walk.last().expect("not empty");
            let Some(next) = deps[current].iter().find(|d| remaining.contains_key(**d)) else {
                break;
            };
            if let Some(at) = walk.iter().position(|n| n == next) {
                let cycle = &walk[at..];
                let mut text: Vec<&str> = cycle.iter().map(|s| s.as_str()).collect();
                text.push(cycle[0]);
                let message = format!("dependency cycle between aggregates: {}", text.join(" -> "));
                for member in cycle {
                    order
                        .cycles
                        .entry((*member).clone())
                        .or_insert_with(|| message.clone());
                }
                break;
            }
            walk.push(next);
        }
    }
    order.stuck = remaining.keys().map(|s| (*s).clone()).collect();
    order
}

/// The expression registering rewritten `.drv` files: each is `builtins.toFile` of its text
/// with its references in the string's context, in order (later ones may refer to earlier ones).
const WRITE_EXPRESSION: &str = r#"
{ kilnRequest }:
let
  request = builtins.fromJSON (builtins.readFile kilnRequest);
  references = paths:
    builtins.concatStringsSep "" (map (p: builtins.substring 0 0 (builtins.storePath p)) paths);
  write = drv: builtins.toFile drv.name (references drv.references + builtins.readFile drv.file);
in
builtins.foldl' (written: drv: let path = write drv; in builtins.seq path (written ++ [ path ]))
  [ ] request.drvs
"#;

/// Registers `writes` in the store with one `nix-instantiate`; `Ok(Err(message))` when Nix
/// refuses (its message), `Err` when it cannot run.
async fn write_to_store(
    command: &Command,
    writes: &[Write],
) -> Result<Result<(), String>, EvalError> {
    let dir = tempfile::tempdir().map_err(|source| EvalError::Io {
        action: "creating a temporary directory in",
        path: std::env::temp_dir(),
        source,
    })?;
    let store_dir = StoreDir::default();
    let mut drvs = Vec::new();
    for (i, write) in writes.iter().enumerate() {
        let file = dir.path().join(format!("{i}.drv"));
        std::fs::write(&file, &write.aterm).map_err(|source| EvalError::Io {
            action: "writing",
            path: file.clone(),
            source,
        })?;
        drvs.push(serde_json::json!({
            "name": write.path.name(),
            "file": file.to_string_lossy(),
            "references": write.references.iter().map(|r| store_dir.display(r)).collect::<Vec<_>>(),
        }));
    }
    let request_file = dir.path().join("request.json");
    let request = serde_json::json!({ "drvs": drvs }).to_string();
    std::fs::write(&request_file, request).map_err(|source| EvalError::Io {
        action: "writing",
        path: request_file.clone(),
        source,
    })?;

    let output = command
        .plain(WRITE_EXPRESSION, &request_file.to_string_lossy())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .output()
        .await
        .map_err(|source| EvalError::Spawn {
            program: command.program.display().to_string(),
            source,
        })?;
    if !output.status.success() {
        let mut tail = Tail::default();
        for line in String::from_utf8_lossy(&output.stderr).lines() {
            tail.push(line);
        }
        let text = tail.text();
        return Ok(Err(if text.is_empty() {
            format!("nix-instantiate {}", describe_exit(output.status))
        } else {
            text
        }));
    }
    let written: Vec<String> = serde_json::from_slice(&output.stdout).map_err(|e| {
        EvalError::Protocol(format!("unreadable result of writing aggregates: {e}"))
    })?;
    let expected: Vec<String> = writes.iter().map(|w| store_dir.display(&w.path)).collect();
    if written != expected {
        return Ok(Err(format!(
            "Nix wrote {written:?} where {expected:?} was computed"
        )));
    }
    Ok(Ok(()))
}
