//! `kiln coordinator`: one of the distributed mode's coordinators. Run two or more; the holder
//! of the leader lease in Redis polls, evaluates and dispatches, the others wait to take over.
//! Taking over means loading the unfinished work from the database, exactly as a restarted
//! coordinator does: step messages already published stay in RabbitMQ, results wait there, and
//! every result applies once because the database accepts it only for the running attempt.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use kiln_bus::{AmqpBus, AmqpOptions, Bus};
use kiln_cache::client::CacheClient;
use kiln_cache::{CacheRecord, CacheService, Permission};
use kiln_config::Config;
use kiln_coordinator::db::projects;
use kiln_coordinator::workers::StaticPool;
use kiln_live::{Lease, Live};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::activity::default_name;
use super::common::{ConfigArgs, open_service, server_runtime, stop_on_signal};
use super::live::{LEADER_LEASE, RedisLogs, follow_registry};
use super::migrate::{Role, require_for};

/// Wait before leading again after the coordinator stopped on an error.
const RETRY_DELAY: Duration = Duration::from_secs(5);

/// Arguments of `kiln coordinator`.
#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// This coordinator's name, unique among coordinators (default: the host name).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
}

/// Contends for leadership and coordinates while leading, until SIGINT or SIGTERM.
pub fn run(args: CoordinatorArgs) -> anyhow::Result<()> {
    let config = args.config.load()?;
    require_for(&config, Role::Coordinator)?;
    let name = args.name.unwrap_or_else(default_name);
    let runtime = server_runtime()?;
    runtime.block_on(serve(config, name))
}

async fn serve(config: Config, name: String) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    let service = open_service(&config).await?;
    let main = default_cache(&service).await?;
    let live = Live::connect(config.redis_url.as_deref().expect("checked"))
        .context("invalid redis_url")?;
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
    let (logs, log_writer) = RedisLogs::new(live.clone());
    let pool = Arc::new(StaticPool::new());
    let shutdown = CancellationToken::new();
    let (leading_tx, leading) = watch::channel(false);
    let lease = Lease::new(
        live.clone(),
        LEADER_LEASE,
        name.clone(),
        Duration::from_secs(config.distributed.leader_lease),
    );
    println!("kiln: coordinator {name} started (standby until it holds the lease)");
    let heartbeat = Duration::from_secs(config.distributed.heartbeat_interval);
    let ctx = Leader {
        config: &config,
        name: &name,
        service: &service,
        main: &main,
        bus,
        logs: Arc::new(logs),
        pool: pool.clone(),
    };
    let (signalled, (), (), (), led) = tokio::join!(
        stop_on_signal(shutdown.clone()),
        lease.run(leading_tx, shutdown.clone()),
        follow_registry(live.clone(), pool, heartbeat, shutdown.clone()),
        async {
            tokio::select! {
                () = log_writer => {}
                () = shutdown.cancelled() => {}
            }
        },
        ctx.lead_while_holding(leading, shutdown.clone()),
    );
    signalled?;
    led?;
    service.db().close().await;
    Ok(())
}

/// The default cache, created if this is the first process of a new installation (several
/// may race to create it: the loser reads the winner's).
async fn default_cache(service: &CacheService) -> anyhow::Result<CacheRecord> {
    match service.ensure_default_cache().await {
        Ok((main, _)) => Ok(main),
        Err(first) => {
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok(service
                .ensure_default_cache()
                .await
                .with_context(|| format!("cannot create the default cache ({first})"))?
                .0)
        }
    }
}

/// What a leading coordinator runs with.
struct Leader<'a> {
    config: &'a Config,
    name: &'a str,
    service: &'a CacheService,
    main: &'a CacheRecord,
    bus: Arc<dyn Bus>,
    logs: Arc<RedisLogs>,
    pool: Arc<StaticPool>,
}

impl Leader<'_> {
    /// Runs a coordinator each time `leading` turns true, and stops it when it turns false.
    async fn lead_while_holding(
        &self,
        mut leading: watch::Receiver<bool>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                changed = leading.wait_for(|l| *l) => {
                    if changed.is_err() {
                        return Ok(());
                    }
                }
            }
            println!("kiln: coordinator {} leads", self.name);
            let term = shutdown.child_token();
            let run = self.coordinate(term.clone());
            tokio::pin!(run);
            let outcome = tokio::select! {
                outcome = &mut run => Some(outcome),
                _ = leading.wait_for(|l| !*l) => None,
            };
            let outcome = match outcome {
                Some(outcome) => outcome,
                None => {
                    println!(
                        "kiln: coordinator {} lost the lease; standing by",
                        self.name
                    );
                    term.cancel();
                    run.await
                }
            };
            if let Err(e) = outcome {
                tracing::error!(
                    error = format!("{e:#}"),
                    "the coordinator stopped; starting again"
                );
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(RETRY_DELAY) => {}
                }
            }
        }
    }

    /// One term as leader: loads the unfinished work and coordinates until `term` ends.
    async fn coordinate(&self, term: CancellationToken) -> anyhow::Result<()> {
        let config = self.config;
        let db = self.service.db();
        let web_url = config
            .web_url
            .as_deref()
            .expect("checked")
            .trim_end_matches('/')
            .to_owned();
        // Each coordinator has its own token for uploading evaluation sources, replaced at
        // each term.
        let token = kiln_cache::tokens::replace_internal(
            db,
            &format!("coordinator {}: internal push token", self.name),
            &[(self.main.id, Permission::Push)],
        )
        .await?
        .secret;
        projects::sync_declared(db, &config.project)
            .await
            .context("cannot save the projects of the config file")?;
        let main = self.main;
        let uploads = CacheClient::new(&web_url, &main.name, Some(token.clone()))
            .context("invalid web_url")?;
        let coordinator = super::farm::coordinator(
            config,
            super::farm::CoordinatorParts {
                db: db.clone(),
                bus: self.bus.clone(),
                pool: self.pool.clone(),
                logs: self.logs.clone(),
                cache: main.id,
                uploads,
                // RabbitMQ keeps the messages of running steps.
                requeue_running_at_start: false,
            },
        );
        coordinator.run(term).await?;
        Ok(())
    }
}
