//! `kiln token`: create tokens for cache readers, pushers and admins.

use clap::Subcommand;
use kiln_cache::Permission;

use super::common::{ConfigArgs, admin_runtime, open_service};

/// The `kiln token` commands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; it is printed once, as the last line, and stored only as a hash.
    Create {
        #[command(flatten)]
        config: ConfigArgs,
        /// The cache the token is for.
        #[arg(long)]
        cache: String,
        /// What it may do there: read, push (includes read) or admin (includes push).
        #[arg(long, value_parser = parse_permission)]
        perm: Permission,
        /// A note saying who or what the token is for.
        #[arg(long, default_value = "")]
        description: String,
    },
}

fn parse_permission(s: &str) -> Result<Permission, String> {
    s.parse().map_err(|e: kiln_cache::CacheError| e.to_string())
}

/// Runs one `kiln token` command.
pub fn run(cmd: TokenCommand) -> anyhow::Result<()> {
    admin_runtime()?.block_on(async move {
        match cmd {
            TokenCommand::Create {
                config,
                cache,
                perm,
                description,
            } => {
                let service = open_service(&config.load()?).await?;
                let record = kiln_cache::caches::get(service.db(), &cache).await?;
                let token = kiln_cache::tokens::create_token(
                    service.db(),
                    &description,
                    &[(record.id, perm)],
                )
                .await?;
                eprintln!(
                    "token {} grants {perm} on cache {}; it is shown only now:",
                    token.id, record.name
                );
                println!("{}", token.secret);
                service.db().close().await;
            }
        }
        Ok(())
    })
}
