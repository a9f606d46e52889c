//! `kiln cache`: manage binary caches, directly in the database (works while the server runs).

use clap::Subcommand;

use super::common::{ConfigArgs, admin_runtime, open_service};
use super::gc;
use super::push::{self, PushArgs};

/// The `kiln cache` commands.
#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Create a cache with a new signing key; prints its public key.
    Create {
        #[command(flatten)]
        config: ConfigArgs,
        /// Cache name: letters, digits, '-' and '_'.
        name: String,
        /// Require a read token to substitute from it.
        #[arg(long)]
        private: bool,
        /// `Priority` advertised to Nix (lower is preferred); default from the configuration.
        #[arg(long)]
        priority: Option<u32>,
    },
    /// List the caches: name, visibility, priority, public key.
    List {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Delete the paths retention no longer keeps (never one a kept path refers to), unused NAR
    /// files and upload leftovers; prints what was deleted.
    Gc(gc::GcArgs),
    /// Keep store paths, and their closures, whatever the retention.
    Pin(gc::PinArgs),
    /// Remove pins; the paths stay until a collection finds them expired.
    Unpin(gc::UnpinArgs),
    /// List the pinned paths of a cache.
    Pins(gc::PinsArgs),
    /// Push the closures of store paths to a cache over HTTP (needs a push token), skipping
    /// what it has, references first.
    Push(PushArgs),
}

/// Runs one `kiln cache` command.
pub fn run(cmd: CacheCommand) -> anyhow::Result<()> {
    admin_runtime()?.block_on(async move {
        match cmd {
            CacheCommand::Create {
                config,
                name,
                private,
                priority,
            } => {
                let service = open_service(&config.load()?).await?;
                let cache = service.create_cache(&name, !private, priority).await?;
                println!(
                    "created {} cache {}",
                    if cache.public { "public" } else { "private" },
                    cache.name
                );
                println!("public key: {}", cache.public_key());
                service.db().close().await;
            }
            CacheCommand::List { config } => {
                let service = open_service(&config.load()?).await?;
                for cache in kiln_cache::caches::list(service.db()).await? {
                    println!(
                        "{}\t{}\tpriority {}\t{}",
                        cache.name,
                        if cache.public { "public" } else { "private" },
                        cache.priority,
                        cache.public_key()
                    );
                }
                service.db().close().await;
            }
            CacheCommand::Gc(args) => gc::collect(args).await?,
            CacheCommand::Pin(args) => gc::pin(args).await?,
            CacheCommand::Unpin(args) => gc::unpin(args).await?,
            CacheCommand::Pins(args) => gc::list(args).await?,
            CacheCommand::Push(args) => push::push(args).await?,
        }
        Ok(())
    })
}
