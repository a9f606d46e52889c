//! The executor: a worker's build slots, each a pair of long-lived `nix-store --serve`
//! processes on the worker's own store, and the entry point that runs one step.
//!
//! Each slot has a builder process and a substituter process. Two, because Nix 2.8's
//! `cmdBuildDerivation` switches `substitute` off for the rest of the process's life (its
//! `getBuildSettings` sets `settings.useSubstitutes = false`): after the first build, that
//! process answers `cmdQueryValidPaths` with substitution as if no substituter existed. The
//! substituter process never builds, so it keeps substituting.

use std::path::Path;
use std::sync::{Arc, Mutex};

use kiln_cache::client::CacheClient;
use kiln_proto::{StepMessage, StepResult};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;

use crate::config::WorkerConfig;
use crate::error::WorkerError;
use crate::log::LogSink;
use crate::serve::{ServeError, ServeOptions, ServeProcess};

/// Runs steps: builds them with Nix in the worker's store and uploads their results.
///
/// Cheap to clone; clones share the slots. Dropping the last clone stops the Nix processes.
#[derive(Clone)]
pub struct Executor {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("name", &self.shared.config.name)
            .field("store_root", &self.shared.config.store_root)
            .finish()
    }
}

/// What every step of an executor shares.
pub(crate) struct Shared {
    /// The configuration.
    pub config: WorkerConfig,
    /// The cache the results go to.
    pub client: CacheClient,
    serve: ServeOptions,
    idle: Mutex<Vec<SlotProcesses>>,
    slots: Semaphore,
}

/// The processes of one slot; either may be missing (not started yet, or replaced after a
/// failure) and is started when needed.
#[derive(Default)]
struct SlotProcesses {
    builder: Option<ServeProcess>,
    substituter: Option<ServeProcess>,
}

impl Executor {
    /// Prepares the store and state directory, checks the cache client settings and starts
    /// one builder process per slot (so a Nix that cannot start fails here, not on a step).
    pub async fn start(config: WorkerConfig) -> Result<Executor, WorkerError> {
        if config.slots == 0 {
            return Err(WorkerError::Config("slots must be at least 1".to_owned()));
        }
        if config.name.is_empty() {
            return Err(WorkerError::Config("the worker needs a name".to_owned()));
        }
        let state = config.store_root.join("kiln-worker");
        create_dir(&state).await?;
        let client = CacheClient::new(
            &config.upload.base_url,
            &config.upload.cache,
            config.upload.token.clone(),
        )
        .map_err(WorkerError::Cache)?;
        let serve = serve_options(&config, &state).await?;
        let mut idle = Vec::new();
        for _ in 0..config.slots {
            let builder = ServeProcess::start(&serve)
                .await
                .map_err(WorkerError::Nix)?;
            idle.push(SlotProcesses {
                builder: Some(builder),
                substituter: None,
            });
        }
        tracing::info!(worker = %config.name, store = %config.store_root.display(), slots = config.slots, "worker started");
        Ok(Executor {
            shared: Arc::new(Shared {
                slots: Semaphore::new(config.slots),
                config,
                client,
                serve,
                idle: Mutex::new(idle),
            }),
        })
    }

    /// The worker's configuration.
    pub fn config(&self) -> &WorkerConfig {
        &self.shared.config
    }

    /// Runs one step to its final status: checks the message, substitutes the inputs from the
    /// cache, builds in the sandbox while streaming the log to `log`, reads `nix-support`,
    /// uploads the outputs (in reference order) and the log. Never panics on bad input: a
    /// malformed message is a `Failed` result. Cancelling `cancel` stops the build and gives
    /// `Cancelled`. Trouble of the worker or the cache gives `Transient`.
    pub async fn run(
        &self,
        step: &StepMessage,
        log: &dyn LogSink,
        cancel: CancellationToken,
    ) -> StepResult {
        crate::step::run(&self.shared, step, log, &cancel).await
    }
}

impl Executor {
    /// Waits for the steps in flight to end (cancel them first to hurry), then stops every
    /// Nix process gracefully. The executor stays usable: a later step starts new processes.
    pub async fn shutdown(&self) {
        let slots = u32::try_from(self.shared.config.slots).unwrap_or(u32::MAX);
        let _all = self
            .shared
            .slots
            .acquire_many(slots)
            .await
            .expect("the semaphore is never closed");
        let idle = std::mem::take(
            &mut *self
                .shared
                .idle
                .lock()
                .expect("the slot list is never poisoned"),
        );
        for slot in idle {
            for mut process in [slot.builder, slot.substituter].into_iter().flatten() {
                process.stop().await;
            }
        }
        tracing::info!(worker = %self.shared.config.name, "worker stopped its Nix processes");
    }
}

impl Shared {
    /// Waits for a free slot, or `None` if `cancel` fires first.
    pub async fn acquire(&self, cancel: &CancellationToken) -> Option<Slot<'_>> {
        let permit = tokio::select! {
            permit = self.slots.acquire() => permit.expect("the semaphore is never closed"),
            () = cancel.cancelled() => return None,
        };
        let processes = self
            .idle
            .lock()
            .expect("the slot list is never poisoned")
            .pop()
            .unwrap_or_default();
        Some(Slot {
            _permit: permit,
            processes,
            shared: self,
        })
    }
}

/// A slot held by one step; its processes go back to the pool when it is dropped (unless they
/// failed, in which case they are stopped and replaced on next use).
pub(crate) struct Slot<'a> {
    _permit: SemaphorePermit<'a>,
    processes: SlotProcesses,
    shared: &'a Shared,
}

impl Slot<'_> {
    /// The builder process, started if there is none or the last one failed.
    pub async fn builder(&mut self) -> Result<&mut ServeProcess, ServeError> {
        ensure(&mut self.processes.builder, &self.shared.serve).await
    }

    /// The substituter process, started if there is none or the last one failed.
    pub async fn substituter(&mut self) -> Result<&mut ServeProcess, ServeError> {
        ensure(&mut self.processes.substituter, &self.shared.serve).await
    }
}

async fn ensure<'p>(
    slot: &'p mut Option<ServeProcess>,
    opts: &ServeOptions,
) -> Result<&'p mut ServeProcess, ServeError> {
    if slot.as_ref().is_some_and(|p| !p.is_healthy()) {
        if let Some(mut old) = slot.take() {
            tracing::info!(pid = ?old.pid(), "replacing a failed nix-store --serve");
            old.stop().await;
        }
    }
    if slot.is_none() {
        *slot = Some(ServeProcess::start(opts).await?);
    }
    Ok(slot.as_mut().expect("just ensured"))
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut processes = std::mem::take(&mut self.processes);
        // A process that is not healthy may be mid-command; dropping it kills it.
        processes.builder = processes.builder.filter(ServeProcess::is_healthy);
        processes.substituter = processes.substituter.filter(ServeProcess::is_healthy);
        self.shared
            .idle
            .lock()
            .expect("the slot list is never poisoned")
            .push(processes);
    }
}

async fn create_dir(path: &Path) -> Result<(), WorkerError> {
    tokio::fs::create_dir_all(path)
        .await
        .map_err(|source| WorkerError::State {
            path: path.to_path_buf(),
            source,
        })
}

/// The serve processes' options: the configured Nix options, then the worker's own, which
/// win: only Kiln's cache as substituter and only its key trusted, negative narinfo lookups
/// not cached (an input may reach the cache a moment after a first miss), no remote builders,
/// exactly the configured system features, and a private narinfo disk cache.
async fn serve_options(config: &WorkerConfig, state: &Path) -> Result<ServeOptions, WorkerError> {
    let mut options: Vec<(String, String)> = config
        .nix_options
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let own = [
        ("substituters", config.cache_url.clone()),
        ("trusted-public-keys", config.cache_public_key.clone()),
        ("narinfo-cache-negative-ttl", "0".to_owned()),
        ("builders", String::new()),
        ("max-jobs", "1".to_owned()),
        ("system-features", config.features.join(" ")),
    ];
    options.extend(own.into_iter().map(|(k, v)| (k.to_owned(), v)));
    if let Some(token) = &config.upload.token {
        let netrc = state.join("netrc");
        let host = netrc_host(&config.cache_url).ok_or_else(|| {
            WorkerError::Config(format!(
                "cannot find a host in cache URL {:?}",
                config.cache_url
            ))
        })?;
        write_private(
            &netrc,
            format!("machine {host}\nlogin kiln\npassword {token}\n"),
        )
        .await?;
        options.push(("netrc-file".to_owned(), netrc.display().to_string()));
    }
    let xdg = state.join("xdg-cache");
    create_dir(&xdg).await?;
    Ok(ServeOptions {
        program: config.nix_store.clone(),
        store_root: config.store_root.clone(),
        options,
        env: vec![("XDG_CACHE_HOME".to_owned(), xdg.display().to_string())],
    })
}

/// The host of `url` as netrc names machines (no port, no credentials).
fn netrc_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let host_port = authority.rsplit('@').next()?;
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        host_port.split(':').next()?
    };
    (!host.is_empty()).then_some(host)
}

async fn write_private(path: &Path, contents: String) -> Result<(), WorkerError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path2 = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path2)?;
        file.write_all(contents.as_bytes())
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()))
    .and_then(|r| r)
    .map_err(|source| WorkerError::State {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netrc_names_the_bare_host() {
        assert_eq!(
            netrc_host("http://127.0.0.1:8080/cache/main"),
            Some("127.0.0.1")
        );
        assert_eq!(
            netrc_host("https://u:p@kiln.example/cache/x"),
            Some("kiln.example")
        );
        assert_eq!(netrc_host("http://[::1]:80/cache"), Some("::1"));
        assert_eq!(netrc_host("not a url"), None);
    }
}
