//! The real git and Nix behind [`Repositories`] and [`Evaluator`]: the bare-mirror git
//! module ([`crate::git`]) and the Nix evaluator ([`crate::eval`]).

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;

use crate::eval::{self, EvalInput, EvalRequest, JobsetSource, NixSettings};
use crate::evaluation::{EvalOutput, EvalSource, Evaluator, InputValue, Repositories};
use crate::git::GitMirror;
use crate::ingest::IngestJob;

/// Git through bare mirrors under one directory; the blocking git work runs on the blocking
/// pool.
#[derive(Clone)]
pub struct MirrorRepositories {
    mirror: Arc<GitMirror>,
}

impl MirrorRepositories {
    /// Repositories mirrored under `mirror`'s root.
    pub fn new(mirror: GitMirror) -> MirrorRepositories {
        MirrorRepositories {
            mirror: Arc::new(mirror),
        }
    }
}

#[async_trait]
impl Repositories for MirrorRepositories {
    async fn fetch(&self, url: &str, branch: &str) -> Result<String, String> {
        let mirror = self.mirror.clone();
        let (url, branch) = (url.to_owned(), branch.to_owned());
        tokio::task::spawn_blocking(move || mirror.fetch(&url, &branch))
            .await
            .map_err(|e| format!("the git task failed: {e}"))?
            .map_err(|e| e.to_string())
    }

    async fn checkout(&self, url: &str, commit: &str, dest: &Path) -> Result<(), String> {
        let mirror = self.mirror.clone();
        let (url, commit, dest) = (url.to_owned(), commit.to_owned(), dest.to_owned());
        tokio::task::spawn_blocking(move || mirror.checkout(&url, &commit, &dest))
            .await
            .map_err(|e| format!("the git task failed: {e}"))?
            .map_err(|e| e.to_string())
    }
}

/// Nix evaluation in several memory-capped processes.
#[derive(Debug, Clone)]
pub struct NixEvaluator {
    /// The store derivations are written to, and extra Nix options.
    pub nix: NixSettings,
    /// Evaluator processes at once.
    pub max_processes: usize,
    /// Address-space cap per process, bytes.
    pub max_memory: u64,
}

#[async_trait]
impl Evaluator for NixEvaluator {
    async fn evaluate(&self, checkout: &Path, source: &EvalSource) -> Result<EvalOutput, String> {
        let source = match source {
            EvalSource::Flake { rev } => JobsetSource::Flake {
                rev: Some(rev.clone()),
            },
            EvalSource::Legacy { expression, inputs } => JobsetSource::Legacy {
                expression: expression.clone(),
                inputs: inputs
                    .iter()
                    .map(|(name, value)| {
                        let input = match value {
                            InputValue::String(s) => EvalInput::String(s.clone()),
                            InputValue::Bool(b) => EvalInput::Bool(*b),
                            InputValue::Git { path, rev } => EvalInput::Git {
                                path: path.clone(),
                                rev: rev.clone(),
                            },
                        };
                        (name.clone(), input)
                    })
                    .collect(),
            },
        };
        let request = EvalRequest {
            checkout: checkout.to_owned(),
            source,
            nix: self.nix.clone(),
            max_processes: self.max_processes,
            max_memory: self.max_memory,
        };
        let result = eval::evaluate(&request).await.map_err(|e| e.to_string())?;
        let jobs = result
            .jobs
            .into_iter()
            .map(|job| {
                let meta = &job.meta;
                IngestJob {
                    meta: serde_json::json!({
                        "description": meta.description,
                        "license": meta.license,
                        "homepage": meta.homepage,
                        "maintainers": meta.maintainers,
                        "schedulingPriority": meta.scheduling_priority,
                        "timeout": meta.timeout,
                        "maxSilent": meta.max_silent,
                        "requiredSystemFeatures": job.required_system_features,
                    }),
                    priority: meta.scheduling_priority,
                    timeout_secs: meta.timeout,
                    max_silent_secs: meta.max_silent,
                    name: job.name,
                    drv_path: job.drv_path,
                    outputs: job.outputs,
                    system: job.system,
                    constituents: job.constituents,
                }
            })
            .collect();
        let errors = result
            .errors
            .into_iter()
            .map(|e| (e.name, e.message))
            .collect();
        Ok(EvalOutput { jobs, errors })
    }
}
