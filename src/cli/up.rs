//! `kiln up`: every role in one process: the coordinator, the web tier with the binary cache,
//! and N local workers, over SQLite and the in-process bus, all state under one data directory.
//!
//! Layout of the data directory: `kiln.sqlite` (the database), `cache/` (the cache's objects),
//! `git/` (bare mirrors of jobset repositories), `eval-store/` (the chroot Nix store evaluations
//! write derivations to), `checkouts/` (one tree per running evaluation), `logs/` (live logs of
//! running steps), `workers/<n>/` (each worker's own chroot Nix store).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use clap::Args;
use kiln_bus::{Bus, MemoryBus, StepRunner, queues_served, serve_steps};
use kiln_cache::Permission;
use kiln_cache::client::CacheClient;
use kiln_config::Config;
use kiln_coordinator::db::projects;
use kiln_coordinator::logs::{FileLogs, LogStore};
use kiln_coordinator::workers::StaticPool;
use kiln_db::StepId;
use kiln_proto::{StepMessage, StepResult};
use kiln_worker::{Executor, LogSink, UploadSettings, WorkerConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::activity::{Activity, LocalStatus, Tracked, default_name};
use super::common::{ConfigArgs, open_service, server_runtime, stop_on_signal};

/// How often reads of cached paths are written to the index.
const ACCESS_FLUSH_INTERVAL: Duration = Duration::from_secs(30);

/// Description of the token `kiln up` makes at each start for its own uploads.
const INTERNAL_TOKEN: &str = "kiln up: internal push token (replaced at every start)";

/// Arguments of `kiln up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Address to listen on; overrides `listen` (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Number of local build workers; overrides `worker.count`.
    #[arg(long, value_name = "N")]
    workers: Option<u32>,
}

/// Runs the farm until SIGINT or SIGTERM, then stops: running builds are handed back (they run
/// again at the next start), in-flight requests are drained.
pub fn run(args: UpArgs) -> anyhow::Result<()> {
    let mut config = args.config.load()?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(workers) = args.workers {
        config.worker.count = workers;
    }
    config
        .validate()
        .map_err(|message| anyhow::anyhow!("invalid configuration: {message}"))?;
    let runtime = server_runtime()?;
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let service = open_service(&config).await?;
    let (main, created) = service.ensure_default_cache().await?;
    if created {
        tracing::info!(cache = %main.name, key = %main.public_key(), "created the default cache");
    }
    projects::sync_declared(service.db(), &config.project)
        .await
        .context("cannot save the projects of the config file")?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let base = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let base = base.trim_end_matches('/').to_owned();
    // Workers and the coordinator reach this process directly, whatever the public URL.
    let local_ip = match addr.ip() {
        ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        ip => ip,
    };
    let internal = format!("http://{}", SocketAddr::new(local_ip, addr.port()));
    let token = kiln_cache::tokens::replace_internal(
        service.db(),
        INTERNAL_TOKEN,
        &[(main.id, Permission::Push)],
    )
    .await?
    .secret;

    let data = config.data_dir.clone();
    let bus = MemoryBus::new();
    let logs: Arc<dyn LogStore> = Arc::new(FileLogs::new(data.join("logs"))?);
    let systems = match &config.worker.systems {
        Some(systems) => systems.clone(),
        None => default_systems().await?,
    };
    let pool = Arc::new(StaticPool::new());
    let activity = Arc::new(Activity::default());
    let shutdown = CancellationToken::new();

    let mut workers = Vec::new();
    for n in 0..config.worker.count {
        let name = format!("local-{n}");
        let mut worker = WorkerConfig::new(
            name.clone(),
            data.join("workers").join(n.to_string()),
            format!("{internal}{}/{}", kiln_cache::http::NIX_MOUNT, main.name),
            main.public_key().to_string(),
            UploadSettings {
                base_url: internal.clone(),
                cache: main.name.clone(),
                token: Some(token.clone()),
            },
        );
        worker.systems = systems.clone();
        worker.features = config.worker.features.clone();
        worker.nix_options = config.worker.nix_options.clone();
        worker.slots = config.worker.slots as usize;
        let executor = Executor::start(worker)
            .await
            .with_context(|| format!("cannot start worker {name}"))?;
        pool.add(&systems, &config.worker.features, config.worker.slots);
        activity.register(
            &name,
            &systems,
            &config.worker.features,
            config.worker.slots,
        );
        workers.push((name, executor));
    }

    let coordinator = super::farm::coordinator(
        &config,
        super::farm::CoordinatorParts {
            db: service.db().clone(),
            bus: Arc::new(bus.clone()),
            pool: pool.clone(),
            logs: logs.clone(),
            cache: main.id,
            uploads: CacheClient::new(&internal, &main.name, Some(token.clone()))
                .expect("the internal URL and the default cache name are valid"),
            // The in-process bus loses its messages with the process.
            requeue_running_at_start: true,
        },
    );
    let app = kiln_web::router(
        service.clone(),
        kiln_web::FarmState {
            db: service.db().clone(),
            cache: service.clone(),
            cache_name: main.name.clone(),
            logs: logs.clone(),
            signals: Some(coordinator.signals()),
            status: Arc::new(LocalStatus {
                leader: default_name(),
                activity: activity.clone(),
            }),
        },
    );

    // The operator's (and scripts') handle on the server: stdout, one fact per line.
    println!(
        "kiln: serving {base} (dashboard and API; data in {})",
        data.display()
    );
    println!(
        "kiln: substituter {base}{}/{}",
        kiln_cache::http::NIX_MOUNT,
        main.name
    );
    println!("kiln: public key {}", main.public_key());
    tracing::info!(workers = workers.len(), systems = ?systems, features = ?config.worker.features, "farm starting");

    let bus: Arc<dyn Bus> = Arc::new(bus.clone());
    let worker_loops =
        futures_util::future::join_all(workers.into_iter().map(|(name, executor)| {
            let queues = queues_served(&systems, &config.worker.features);
            let runner = Arc::new(Tracked {
                worker: name.clone(),
                activity: activity.clone(),
                inner: Arc::new(LocalWorker {
                    executor,
                    logs: logs.clone(),
                }),
            });
            run_worker(
                bus.clone(),
                queues,
                config.worker.slots,
                name,
                runner,
                shutdown.clone(),
            )
        }));
    // Everything `kiln up` runs, driven here until `shutdown`: nothing is spawned detached.
    let (served, signalled, (), (), coordinated, ()) = tokio::join!(
        kiln_web::serve(listener, app, shutdown.clone()),
        stop_on_signal(shutdown.clone()),
        service
            .access_log()
            .run(service.db(), ACCESS_FLUSH_INTERVAL, shutdown.clone()),
        kiln_cache::gc::run_periodically(&service, &config.cache.gc, shutdown.clone()),
        stop_on_error(coordinator.run(shutdown.clone()), shutdown.clone()),
        async {
            worker_loops.await;
        },
    );
    signalled?;
    served?;
    coordinated.context("the coordinator stopped")?;
    service.db().close().await;
    Ok(())
}

/// Runs `work`; if it fails, cancels `shutdown` so the whole process stops with its error.
async fn stop_on_error<E>(
    work: impl std::future::Future<Output = Result<(), E>>,
    shutdown: CancellationToken,
) -> Result<(), E> {
    let result = work.await;
    if result.is_err() {
        shutdown.cancel();
    }
    result
}

async fn run_worker(
    bus: Arc<dyn Bus>,
    queues: Vec<kiln_bus::QueueName>,
    slots: u32,
    name: String,
    runner: Arc<dyn StepRunner>,
    shutdown: CancellationToken,
) {
    if let Err(err) = serve_steps(bus, queues, slots, name.clone(), runner, shutdown.clone()).await
    {
        tracing::error!(worker = %name, error = %err, "worker stopped");
        shutdown.cancel();
    }
}

/// A worker of this process: the executor, with live log lines going to the log store.
struct LocalWorker {
    executor: Executor,
    logs: Arc<dyn LogStore>,
}

struct LiveLog(Arc<dyn LogStore>);

impl LogSink for LiveLog {
    fn line(&self, step_id: i64, line: &[u8]) {
        self.0.append(StepId(step_id), line);
    }
}

#[async_trait]
impl StepRunner for LocalWorker {
    async fn run(&self, step: &StepMessage, cancel: CancellationToken) -> StepResult {
        self.executor
            .run(step, &LiveLog(self.logs.clone()), cancel)
            .await
    }
}

/// `builtins.currentSystem` as `nix` reports it, plus Nix's built-in builders.
pub(super) async fn default_systems() -> anyhow::Result<Vec<String>> {
    let out = tokio::process::Command::new("nix-instantiate")
        .args(["--eval", "--json", "-E", "builtins.currentSystem"])
        .args(["--option", "substituters", ""])
        .output()
        .await
        .context(
            "cannot run nix-instantiate to learn this machine's system (set worker.systems)",
        )?;
    anyhow::ensure!(
        out.status.success(),
        "nix-instantiate failed to report builtins.currentSystem (set worker.systems): {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let system: String = serde_json::from_slice(&out.stdout)
        .context("nix-instantiate printed something other than a system name")?;
    Ok(vec![system, "builtin".to_owned()])
}
