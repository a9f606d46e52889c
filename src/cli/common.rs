//! What the server and the admin commands share: how configuration is found and how the cache
//! service is opened on it.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use kiln_cache::{CacheService, Settings};
use kiln_config::Config;
use kiln_db::Db;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// `--config` and `--data-dir`, taken by `kiln up` and every admin command.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Configuration file (TOML). Without it, defaults and KILN_* variables apply.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory; overrides `data_dir` from the file and KILN_DATA_DIR.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

impl ConfigArgs {
    /// The configuration: defaults, then the file, then the environment, then these flags.
    pub fn load(&self) -> anyhow::Result<Config> {
        let mut config = Config::load(self.config.as_deref())?;
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        Ok(config)
    }
}

/// Opens the database (applying pending migrations) and the blob store of `config`.
pub async fn open_service(config: &Config) -> anyhow::Result<CacheService> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {} (pass --data-dir)",
            config.data_dir.display()
        )
    })?;
    let db = Db::connect(&config.database_url()).await?;
    db.migrate().await?;
    let store = kiln_cache::open_store(config).await?;
    Ok(CacheService::new(db, store, Settings::from_config(config)))
}

/// The multi-threaded runtime of the long-running modes.
pub fn server_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// A single-threaded runtime for the short admin commands.
pub fn admin_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Cancels `shutdown` on SIGINT or SIGTERM; returns when it is cancelled either way.
pub async fn stop_on_signal(shutdown: CancellationToken) -> anyhow::Result<()> {
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
