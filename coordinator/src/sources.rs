//! Uploading input sources (paths the evaluator added to its store: files, `builtins.toFile`
//! texts) to the cache, so that workers can substitute them like any other input.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use async_trait::async_trait;
use kiln_cache::client::{CacheClient, UploadRequest};
use kiln_db::{CacheId, Db};
use kiln_nix::narinfo::ContentAddress;
use kiln_nix::{StoreDir, StorePath};
use serde::Deserialize;
use tokio::process::Command;

use crate::error::{CoordinatorError, Result};
use crate::ingest::{SourceUploader, StoreFiles};

/// Uploads paths of a local Nix store (the evaluation store) through the cache's upload API,
/// asking `nix path-info` for their references and content addresses.
pub struct StoreUploader {
    /// The store the paths are in.
    pub store: StoreFiles,
    /// The cache's database, to skip paths it serves already.
    pub db: Db,
    /// The cache, in that database.
    pub cache: CacheId,
    /// A client of the same cache with a push token.
    pub client: CacheClient,
}

/// One entry of `nix path-info --json`.
#[derive(Debug, Deserialize)]
struct PathInfo {
    path: String,
    #[serde(default)]
    references: Vec<String>,
    #[serde(default)]
    ca: Option<String>,
}

impl StoreUploader {
    async fn path_info(&self, paths: &[StorePath]) -> Result<Vec<PathInfo>> {
        let mut cmd = Command::new("nix");
        cmd.args([
            "--extra-experimental-features",
            "nix-command",
            "path-info",
            "--json",
            "--recursive",
        ]);
        if let Some(root) = &self.store.root {
            cmd.arg("--store").arg(root);
        }
        cmd.args(paths.iter().map(|p| StoreDir::default().display(p)))
            .kill_on_drop(true);
        let out = cmd.output().await.map_err(|e| CoordinatorError::Upload {
            path: "input sources".to_owned(),
            reason: format!("cannot run nix path-info: {e}"),
        })?;
        if !out.status.success() {
            return Err(CoordinatorError::Upload {
                path: "input sources".to_owned(),
                reason: format!(
                    "nix path-info failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        serde_json::from_slice(&out.stdout).map_err(|e| CoordinatorError::Upload {
            path: "input sources".to_owned(),
            reason: format!("unexpected nix path-info output: {e}"),
        })
    }
}

fn parse_path(path: &str) -> Result<StorePath> {
    StorePath::parse(path).map_err(|e| CoordinatorError::Upload {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

#[async_trait]
impl SourceUploader for StoreUploader {
    async fn upload(&self, paths: &[StorePath]) -> Result<()> {
        if paths.is_empty() {
            return Ok(());
        }
        let hashes: Vec<String> = paths.iter().map(StorePath::hash_part).collect();
        let missing: BTreeSet<String> =
            kiln_cache::index::missing_paths(&self.db, self.cache, &hashes)
                .await?
                .into_iter()
                .collect();
        let wanted: Vec<StorePath> = paths
            .iter()
            .filter(|p| missing.contains(&p.hash_part()))
            .cloned()
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        // The closure, with references, then only what the cache lacks, references first.
        let infos = self.path_info(&wanted).await?;
        let mut by_path: BTreeMap<StorePath, PathInfo> = BTreeMap::new();
        for info in infos {
            by_path.insert(parse_path(&info.path)?, info);
        }
        let all: Vec<String> = by_path.keys().map(StorePath::hash_part).collect();
        let absent: BTreeSet<String> = kiln_cache::index::missing_paths(&self.db, self.cache, &all)
            .await?
            .into_iter()
            .collect();
        let mut done: BTreeSet<StorePath> = by_path
            .keys()
            .filter(|p| !absent.contains(&p.hash_part()))
            .cloned()
            .collect();
        let mut pending: Vec<StorePath> = by_path
            .keys()
            .filter(|p| absent.contains(&p.hash_part()))
            .cloned()
            .collect();
        while !pending.is_empty() {
            let before = pending.len();
            let mut rest = Vec::new();
            for path in pending {
                let info = &by_path[&path];
                let refs: Vec<StorePath> = info
                    .references
                    .iter()
                    .map(|r| parse_path(r))
                    .collect::<Result<_>>()?;
                if refs.iter().any(|r| r != &path && !done.contains(r)) {
                    rest.push(path);
                    continue;
                }
                let mut request = UploadRequest::new(path.clone());
                request.references = refs;
                request.ca = info
                    .ca
                    .as_deref()
                    .map(|ca| ca.parse::<ContentAddress>())
                    .transpose()
                    .map_err(|e| CoordinatorError::Upload {
                        path: info.path.clone(),
                        reason: format!("content address: {e}"),
                    })?;
                let location: PathBuf = self.store.location(&path);
                self.client
                    .upload_path(&request, &location)
                    .await
                    .map_err(|e| CoordinatorError::Upload {
                        path: info.path.clone(),
                        reason: e.to_string(),
                    })?;
                tracing::debug!(path = %info.path, "uploaded an input source");
                done.insert(path);
            }
            if rest.len() == before {
                return Err(CoordinatorError::Upload {
                    path: StoreDir::default().display(&rest[0]),
                    reason: "its references form a cycle or are missing from nix path-info"
                        .to_owned(),
                });
            }
            pending = rest;
        }
        Ok(())
    }
}
