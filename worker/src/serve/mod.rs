//! A client for `nix-store --serve --write`, the legacy serve protocol Hydra drives builds with.
//!
//! One long-lived process per build slot answers commands on stdin/stdout; everything it prints
//! on stderr (the builder's output and Nix's warnings) belongs to the command in flight. Since
//! Nix writes a command's stderr before its answer on stdout, the stderr pipe is drained without
//! blocking once the answer has been read, which frames the log exactly per command.
//!
//! What lives where: [`wire`] encodes integers and strings, [`derivation`] the
//! `BasicDerivation`, [`build_result`] Nix's `BuildResult`, [`process`] the child process and
//! its stderr pump. This module holds the commands.

pub mod build_result;
pub mod derivation;
pub mod process;
pub mod wire;

use std::collections::BTreeSet;

use kiln_nix::StoreDir;
use tokio_util::sync::CancellationToken;

pub use build_result::{BuildResult, NixBuildStatus};
pub use derivation::BasicDerivation;
pub use process::{ServeError, ServeOptions, ServeProcess, StderrSink};
use wire::{Request, read_int, read_string, read_strings};

/// `cmdQueryValidPaths`.
const CMD_QUERY_VALID_PATHS: u64 = 1;
/// `cmdQueryPathInfos`.
const CMD_QUERY_PATH_INFOS: u64 = 2;
/// `cmdBuildDerivation`.
const CMD_BUILD_DERIVATION: u64 = 8;

/// What the store knows about a valid path (`cmdQueryPathInfos`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    /// The full store path.
    pub path: String,
    /// The derivation that produced it, if known (full path).
    pub deriver: Option<String>,
    /// The full store paths it refers to (possibly itself).
    pub references: Vec<String>,
    /// Size of its NAR in bytes.
    pub nar_size: u64,
    /// `sha256:<nix32>` of its NAR.
    pub nar_hash: String,
    /// Its content address, if it is content-addressed (`fixed:r:sha256:...`, `text:...`).
    pub ca: Option<String>,
    /// Signatures the store holds for it.
    pub sigs: Vec<String>,
}

/// Per-build limits sent with `cmdBuildDerivation`; 0 means no limit, as in Nix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BuildLimits {
    /// `max-silent-time`: seconds without output before the build is killed.
    pub max_silent_secs: u64,
    /// `timeout`: seconds the build may run.
    pub timeout_secs: u64,
    /// `max-log-size`: bytes of builder output before the build is killed.
    pub max_log_bytes: u64,
}

/// How a command ended when it was not answered.
#[derive(Debug)]
pub enum Interrupted {
    /// The cancellation token fired; the process was stopped.
    Cancelled,
    /// The process failed or broke the protocol; it must be replaced.
    Broken(ServeError),
}

impl From<ServeError> for Interrupted {
    fn from(err: ServeError) -> Interrupted {
        Interrupted::Broken(err)
    }
}

impl ServeProcess {
    /// `cmdQueryValidPaths`: which of `paths` are valid, after trying to substitute the missing
    /// ones (with their closures) when `substitute` is set. Nix reports substitution failures
    /// only as warnings on stderr, which go to `stderr`.
    pub async fn query_valid_paths(
        &mut self,
        paths: &[String],
        substitute: bool,
        stderr: &mut dyn StderrSink,
        cancel: &CancellationToken,
    ) -> Result<BTreeSet<String>, Interrupted> {
        let mut req = Request::new();
        // No temporary GC roots (`lock`): nothing collects garbage in a worker's store while
        // it runs, and roots would pile up for the life of the process.
        req.int(CMD_QUERY_VALID_PATHS)
            .int(0)
            .int(u64::from(substitute))
            .strings(paths);
        self.exchange(req, stderr, Some(cancel), |out| {
            Box::pin(async move { read_strings(out, "store path").await })
        })
        .await
        .map(|valid| valid.into_iter().collect())
    }

    /// `cmdQueryPathInfos` for `paths`; invalid paths are left out of the answer.
    pub async fn query_path_infos(
        &mut self,
        paths: &[String],
        stderr: &mut dyn StderrSink,
    ) -> Result<Vec<PathInfo>, Interrupted> {
        let mut req = Request::new();
        req.int(CMD_QUERY_PATH_INFOS).strings(paths);
        let asked = paths.len();
        self.exchange(req, stderr, None, move |out| {
            Box::pin(async move {
                let mut infos = Vec::new();
                loop {
                    let path = read_string(out, "store path").await?;
                    if path.is_empty() {
                        return Ok(infos);
                    }
                    let deriver = read_string(out, "deriver").await?;
                    let references = read_strings(out, "reference").await?;
                    let _download_size = read_int(out).await?;
                    let nar_size = read_int(out).await?;
                    let nar_hash = read_string(out, "NAR hash").await?;
                    let ca = read_string(out, "content address").await?;
                    let sigs = read_strings(out, "signature").await?;
                    infos.push(PathInfo {
                        path,
                        deriver: (!deriver.is_empty()).then_some(deriver),
                        references,
                        nar_size,
                        nar_hash,
                        ca: (!ca.is_empty()).then_some(ca),
                        sigs,
                    });
                    if infos.len() > asked {
                        return Err(wire::WireError::Protocol(
                            "more path infos than paths asked for".to_owned(),
                        ));
                    }
                }
            })
        })
        .await
    }

    /// `cmdBuildDerivation`: builds `drv` in the sandbox with `limits`; the build log goes to
    /// `log` as it arrives. Cancelling stops the process (and with it the build).
    pub async fn build_derivation(
        &mut self,
        store_dir: &StoreDir,
        drv: &BasicDerivation,
        limits: BuildLimits,
        log: &mut dyn StderrSink,
        cancel: &CancellationToken,
    ) -> Result<BuildResult, Interrupted> {
        let mut req = Request::new();
        req.int(CMD_BUILD_DERIVATION)
            .str(&store_dir.display(&drv.drv_path));
        drv.encode(store_dir, &mut req);
        req.int(limits.max_silent_secs)
            .int(limits.timeout_secs)
            .int(limits.max_log_bytes)
            // Rounds (repeat) and enforce-determinism: one build, no comparison.
            .int(0)
            .int(0)
            // keep-failed: nothing inspects failed build directories.
            .int(0);
        self.exchange(req, log, Some(cancel), |out| {
            Box::pin(async move { BuildResult::read(out).await })
        })
        .await
    }
}
