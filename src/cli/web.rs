//! `kiln web`: the stateless web tier of the distributed mode: the binary cache (serving,
//! uploads from workers and `nix copy`), the JSON API and the dashboard. Any number may run
//! behind a load balancer. It writes requests (restart, cancel, evaluate now) to the database,
//! where the leading coordinator finds them on its next poll, and reads live logs and the
//! farm's status from Redis.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use kiln_live::Live;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::common::{ConfigArgs, open_service, server_runtime, stop_on_signal};
use super::live::{RedisLogs, RedisStatus};
use super::migrate::{Role, require_for};

/// How often reads of cached paths are written to the index.
const ACCESS_FLUSH_INTERVAL: Duration = Duration::from_secs(30);

/// Arguments of `kiln web`.
#[derive(Debug, Args)]
pub struct WebArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Address to listen on; overrides `listen`.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
}

/// Serves until SIGINT or SIGTERM, then drains in-flight requests.
pub fn run(args: WebArgs) -> anyhow::Result<()> {
    let mut config = args.config.load()?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    require_for(&config, Role::Web)?;
    let runtime = server_runtime()?;
    runtime.block_on(async move {
        let service = open_service(&config).await?;
        let (main, _) = service.ensure_default_cache().await?;
        let live = Live::connect(config.redis_url.as_deref().expect("checked"))
            .context("invalid redis_url")?;
        let (logs, log_writer) = RedisLogs::new(live.clone());
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let base = config
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{addr}"));
        let app = kiln_web::router(
            service.clone(),
            kiln_web::FarmState {
                db: service.db().clone(),
                cache: service.clone(),
                cache_name: main.name.clone(),
                logs: Arc::new(logs),
                signals: None,
                status: Arc::new(RedisStatus { live }),
            },
        );
        println!("kiln: web serving {base}");
        println!(
            "kiln: substituter {}{}/{}",
            base.trim_end_matches('/'),
            kiln_cache::http::NIX_MOUNT,
            main.name
        );
        println!("kiln: public key {}", main.public_key());
        let shutdown = CancellationToken::new();
        let (served, signalled, (), (), ()) = tokio::join!(
            kiln_web::serve(listener, app, shutdown.clone()),
            stop_on_signal(shutdown.clone()),
            service
                .access_log()
                .run(service.db(), ACCESS_FLUSH_INTERVAL, shutdown.clone()),
            kiln_cache::gc::run_periodically(&service, &config.cache.gc, shutdown.clone()),
            async {
                tokio::select! {
                    () = log_writer => {}
                    () = shutdown.cancelled() => {}
                }
            },
        );
        signalled?;
        served?;
        service.db().close().await;
        Ok(())
    })
}
