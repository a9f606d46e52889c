//! Command-line definition: one subcommand per mode or operator tool.

mod activity;
mod cache;
mod common;
mod coordinator;
mod drv;
mod farm;
mod gc;
mod key;
mod live;
mod migrate;
mod nar;
mod push;
mod token;
mod up;
mod web;
mod worker;

use clap::{Parser, Subcommand};

/// Kiln: a continuous build farm for Nix.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work with NAR archives.
    #[command(subcommand)]
    Nar(nar::NarCommand),
    /// Work with derivation (.drv) files.
    #[command(subcommand)]
    Drv(drv::DrvCommand),
    /// Manage binary-cache signing keys.
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Run the whole farm in one process (SQLite, in-process queue, local workers).
    Up(up::UpArgs),
    /// Manage binary caches.
    #[command(subcommand)]
    Cache(cache::CacheCommand),
    /// Manage access tokens.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Distributed mode: a coordinator (run two; the lease holder leads).
    Coordinator(coordinator::CoordinatorArgs),
    /// Distributed mode: a remote build worker.
    Worker(worker::WorkerArgs),
    /// Distributed mode: the web tier (binary cache, API, dashboard).
    Web(web::WebArgs),
    /// Apply database migrations, create the default cache, save declared projects.
    Migrate(migrate::MigrateArgs),
    /// Validate the configuration and print what it resolves to (secrets hidden).
    CheckConfig(migrate::CheckConfigArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    init_logging(matches!(
        cli.command,
        Command::Up(_) | Command::Coordinator(_) | Command::Worker(_) | Command::Web(_)
    ));
    match cli.command {
        Command::Nar(cmd) => nar::run(cmd),
        Command::Drv(cmd) => drv::run(cmd),
        Command::Key(cmd) => key::run(cmd),
        Command::Up(args) => up::run(args),
        Command::Cache(cmd) => cache::run(cmd),
        Command::Token(cmd) => token::run(cmd),
        Command::Coordinator(args) => coordinator::run(args),
        Command::Worker(args) => worker::run(args),
        Command::Web(args) => web::run(args),
        Command::Migrate(args) => migrate::migrate(args),
        Command::CheckConfig(args) => migrate::check_config(args),
    }
}

/// Logs to stderr, filtered by `KILN_LOG` (default: `info` for the server, `warn` otherwise).
fn init_logging(server: bool) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let default = if server { "info" } else { "warn" };
    let filter =
        EnvFilter::try_from_env(kiln_config::LOG_ENV).unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
