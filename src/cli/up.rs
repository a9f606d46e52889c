//! `kiln up`: every role in one process. Today that is the binary cache behind the web tier.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use super::common::{ConfigArgs, open_service};

/// How often reads of cached paths are written to the index.
const ACCESS_FLUSH_INTERVAL: Duration = Duration::from_secs(30);

/// Arguments of `kiln up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Address to listen on; overrides `listen` (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Number of local build workers. Only 0 is supported until the build farm arrives.
    #[arg(long, default_value_t = 0)]
    workers: u32,
}

/// Runs the server until SIGINT or SIGTERM, then drains in-flight requests.
pub fn run(args: UpArgs) -> anyhow::Result<()> {
    if args.workers != 0 {
        bail!(
            "--workers {}: local build workers are not available yet; run with --workers 0",
            args.workers
        );
    }
    let mut config = args.config.load()?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let service = open_service(&config).await?;
        let (main, created) = service.ensure_default_cache().await?;
        if created {
            tracing::info!(cache = %main.name, key = %main.public_key(), "created the default cache");
        }
        let listener =
            TcpListener::bind(config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let base = config.public_url.clone().unwrap_or_else(|| format!("http://{addr}"));
        let base = base.trim_end_matches('/');
        // The operator's (and scripts') handle on the server: stdout, one fact per line.
        println!("kiln: serving {base} (data in {})", config.data_dir.display());
        println!("kiln: substituter {base}{}/{}", kiln_cache::http::NIX_MOUNT, main.name);
        println!("kiln: public key {}", main.public_key());

        let shutdown = CancellationToken::new();
        let app = kiln_web::router(service.clone());
        // Everything `kiln up` runs, driven here until `shutdown`: nothing is spawned detached.
        let (served, signalled, (), ()) = tokio::join!(
            kiln_web::serve(listener, app, shutdown.clone()),
            stop_on_signal(shutdown.clone()),
            service.access_log().run(service.db(), ACCESS_FLUSH_INTERVAL, shutdown.clone()),
            kiln_cache::gc::run_periodically(&service, &config.cache.gc, shutdown.clone()),
        );
        signalled?;
        served?;
        service.db().close().await;
        Ok(())
    })
}

/// Cancels `shutdown` on SIGINT or SIGTERM; returns when it is cancelled either way.
async fn stop_on_signal(shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    tokio::select! {
        _ = interrupt.recv() => tracing::info!("SIGINT: shutting down"),
        _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = shutdown.cancelled() => {}
    }
    shutdown.cancel();
    Ok(())
}
