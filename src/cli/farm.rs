//! Assembling a coordinator from the configuration, as `kiln up` and `kiln coordinator` both do:
//! the dispatch settings, and evaluation with git mirrors, Nix and source uploads under the
//! process's data directory.

use std::sync::Arc;
use std::time::Duration;

use kiln_bus::Bus;
use kiln_cache::client::CacheClient;
use kiln_config::Config;
use kiln_coordinator::backends::{MirrorRepositories, NixEvaluator};
use kiln_coordinator::eval::NixSettings;
use kiln_coordinator::git::GitMirror;
use kiln_coordinator::ingest::StoreFiles;
use kiln_coordinator::logs::LogStore;
use kiln_coordinator::sources::StoreUploader;
use kiln_coordinator::workers::WorkerPool;
use kiln_coordinator::{Coordinator, DispatchSettings, EvalContext, Parts};
use kiln_db::{CacheId, Db};

/// What a coordinator is made of besides the configuration.
pub struct CoordinatorParts {
    /// The database.
    pub db: Db,
    /// The bus to the workers.
    pub bus: Arc<dyn Bus>,
    /// The workers it counts on.
    pub pool: Arc<dyn WorkerPool>,
    /// Live logs.
    pub logs: Arc<dyn LogStore>,
    /// The cache builds are published to.
    pub cache: CacheId,
    /// Client of that cache's upload API, for evaluation sources.
    pub uploads: CacheClient,
    /// Whether steps left running by a previous process are queued again at start (a bus that
    /// loses its messages with the process).
    pub requeue_running_at_start: bool,
}

/// A coordinator with its state (git mirrors, evaluation store, checkouts) under
/// `config.data_dir`.
pub fn coordinator(config: &Config, parts: CoordinatorParts) -> Coordinator {
    let data = &config.data_dir;
    let eval_store = data.join("eval-store");
    let store_files = StoreFiles {
        root: Some(eval_store.clone()),
    };
    let db = parts.db.clone();
    Coordinator::new(
        Parts {
            db: parts.db,
            bus: parts.bus,
            pool: parts.pool,
            logs: parts.logs,
            settings: DispatchSettings {
                max_retries: config.farm.max_retries,
                retry_backoff_secs: config.farm.retry_backoff,
                unsupported_after: Duration::from_secs(config.farm.unsupported_after),
                dispatch_window: config.farm.dispatch_window,
                db_poll: Duration::from_secs(config.farm.db_poll_interval),
                max_log_bytes: config.worker.max_log_size.bytes(),
                max_output_bytes: config.worker.max_output_size.bytes(),
                requeue_running_at_start: parts.requeue_running_at_start,
            },
        },
        |events| EvalContext {
            db: db.clone(),
            cache: parts.cache,
            repos: Arc::new(MirrorRepositories::new(GitMirror::new(data.join("git")))),
            evaluator: Arc::new(NixEvaluator {
                nix: NixSettings {
                    store: Some(eval_store),
                    options: Vec::new(),
                    gc_roots_dir: None,
                    bin_dir: None,
                },
                max_processes: config.farm.eval_processes as usize,
                max_memory: config.farm.eval_max_memory.bytes(),
            }),
            drvs: Arc::new(store_files.clone()),
            uploader: Arc::new(StoreUploader {
                store: store_files,
                db,
                cache: parts.cache,
                client: parts.uploads,
            }),
            work_dir: data.join("checkouts"),
            max_concurrent: config.farm.max_concurrent_evals as usize,
            events,
        },
    )
}
