//! `kiln worker`: a remote build worker. It has no database access: it takes steps from
//! RabbitMQ, substitutes their inputs over HTTP from the web tier's binary cache, builds them
//! in its own Nix store with the sandbox on, uploads the outputs with its token and publishes
//! the result. It reports itself (and the steps it is building) to Redis and streams live log
//! lines there. Killing it at any moment loses nothing: RabbitMQ hands its unacknowledged
//! steps to another worker.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use clap::Args;
use kiln_bus::{AmqpBus, AmqpOptions, Bus, StepRunner, queues_served, serve_steps};
use kiln_cache::DEFAULT_CACHE;
use kiln_config::Config;
use kiln_live::Live;
use kiln_proto::{StepMessage, StepResult};
use kiln_worker::{Executor, UploadSettings, WorkerConfig};
use tokio_util::sync::CancellationToken;

use super::activity::{Activity, Tracked, default_name};
use super::common::{ConfigArgs, server_runtime, stop_on_signal};
use super::live::{RedisLogs, heartbeats};
use super::migrate::{Role, require_for};
use super::up::default_systems;

/// Arguments of `kiln worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// This worker's name, unique among workers (default: the host name).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
}

/// Builds steps until SIGINT or SIGTERM; running builds are then handed back to the queue.
pub fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let config = args.config.load()?;
    require_for(&config, Role::Worker)?;
    let name = args.name.unwrap_or_else(default_name);
    let runtime = server_runtime()?;
    runtime.block_on(serve(config, name))
}

async fn serve(config: Config, name: String) -> anyhow::Result<()> {
    let web_url = config
        .web_url
        .as_deref()
        .expect("checked")
        .trim_end_matches('/')
        .to_owned();
    let token = config.worker_token.clone().expect("checked");
    let token = token.trim().to_owned();
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {} (pass --data-dir)",
            config.data_dir.display()
        )
    })?;
    let shutdown = CancellationToken::new();
    let public_key = tokio::select! {
        key = cache_public_key(&web_url, DEFAULT_CACHE) => key?,
        _ = stop_on_signal(shutdown.clone()) => return Ok(()),
    };
    // A worker whose uploads would be refused must not take steps: it would fail every one.
    check_push(&web_url, DEFAULT_CACHE, &token).await?;
    let systems = match &config.worker.systems {
        Some(systems) => systems.clone(),
        None => default_systems().await?,
    };
    let mut worker = WorkerConfig::new(
        name.clone(),
        config.data_dir.join("store"),
        format!("{web_url}{}/{DEFAULT_CACHE}", kiln_cache::http::NIX_MOUNT),
        public_key,
        UploadSettings {
            base_url: web_url.clone(),
            cache: DEFAULT_CACHE.to_owned(),
            token: Some(token),
        },
    );
    worker.systems = systems.clone();
    worker.features = config.worker.features.clone();
    worker.nix_options = config.worker.nix_options.clone();
    worker.slots = config.worker.slots as usize;
    let executor = Executor::start(worker)
        .await
        .with_context(|| format!("cannot start worker {name}"))?;
    let live = Live::connect(config.redis_url.as_deref().expect("checked"))
        .context("invalid redis_url")?;
    let (logs, log_writer) = RedisLogs::new(live.clone());
    let bus = AmqpBus::connect(
        config.amqp_url.as_deref().expect("checked"),
        AmqpOptions {
            delivery_limit: config.distributed.delivery_limit,
            ..AmqpOptions::default()
        },
    )
    .await
    .context("cannot connect to RabbitMQ (amqp_url)")?;
    let bus: Arc<dyn Bus> = Arc::new(bus);
    let activity = Arc::new(Activity::default());
    activity.register(
        &name,
        &systems,
        &config.worker.features,
        config.worker.slots,
    );
    let runner = Arc::new(Tracked {
        worker: name.clone(),
        activity: activity.clone(),
        inner: Arc::new(RemoteWorker { executor, logs }),
    });
    println!(
        "kiln: worker {name} building {} with {} slot(s), cache {web_url}",
        systems.join(" "),
        config.worker.slots
    );
    let queues = queues_served(&systems, &config.worker.features);
    let (signalled, served, (), ()) = tokio::join!(
        stop_on_signal(shutdown.clone()),
        async {
            let served = serve_steps(
                bus,
                queues,
                config.worker.slots,
                name.clone(),
                runner,
                shutdown.clone(),
            )
            .await;
            shutdown.cancel();
            served
        },
        heartbeats(
            live,
            activity,
            Duration::from_secs(config.distributed.heartbeat_interval),
            Duration::from_secs(config.distributed.worker_ttl),
            shutdown.clone(),
        ),
        async {
            tokio::select! {
                () = log_writer => {}
                () = shutdown.cancelled() => {}
            }
        },
    );
    signalled?;
    served.context("the worker's queue consumer failed")?;
    Ok(())
}

/// The cache's public key, from the web tier's API; waits for the web tier to come up.
async fn cache_public_key(web_url: &str, cache: &str) -> anyhow::Result<String> {
    #[derive(serde::Deserialize)]
    struct CacheInfo {
        public_key: String,
    }
    let url = format!("{web_url}/api/v1/caches/{cache}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .context("cannot build an HTTP client")?;
    let mut delay = Duration::from_millis(500);
    loop {
        match client.get(&url).send().await {
            Ok(response) if response.status().is_success() => {
                let body = response
                    .bytes()
                    .await
                    .with_context(|| format!("cannot read the answer of {url}"))?;
                let info: CacheInfo = serde_json::from_slice(&body)
                    .with_context(|| format!("{url} did not return a cache description"))?;
                return Ok(info.public_key);
            }
            Ok(response) if response.status().is_client_error() => {
                anyhow::bail!("{url} answered {}", response.status());
            }
            Ok(response) => {
                tracing::warn!(%url, status = %response.status(), "the web tier is not ready; retrying");
            }
            Err(e) => tracing::warn!(%url, error = %e, "cannot reach the web tier; retrying"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// Fails unless `token` may push to `cache` on the web tier.
async fn check_push(web_url: &str, cache: &str, token: &str) -> anyhow::Result<()> {
    #[derive(serde::Deserialize)]
    struct Access {
        push: bool,
    }
    let url = format!("{web_url}/api/v1/caches/{cache}/access");
    let response = reqwest::Client::new()
        .get(&url)
        .bearer_auth(token)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let body = response.bytes().await.unwrap_or_default();
    anyhow::ensure!(
        status != reqwest::StatusCode::UNAUTHORIZED,
        "worker_token (KILN_WORKER_TOKEN) is not a valid token of {web_url}"
    );
    anyhow::ensure!(
        status.is_success(),
        "{url} answered {status}: {}",
        String::from_utf8_lossy(&body)
    );
    let access: Access = serde_json::from_slice(&body)
        .with_context(|| format!("{url} did not describe the token's access"))?;
    anyhow::ensure!(
        access.push,
        "worker_token (KILN_WORKER_TOKEN) may not push to cache {cache}: create one with \
         `kiln token create --cache {cache} --perm push`"
    );
    Ok(())
}

/// The executor, with live log lines going to Redis.
struct RemoteWorker {
    executor: Executor,
    logs: RedisLogs,
}

#[async_trait]
impl StepRunner for RemoteWorker {
    async fn run(&self, step: &StepMessage, cancel: CancellationToken) -> StepResult {
        self.executor.run(step, &self.logs, cancel).await
    }
}
