//! `kiln cache gc`, `pin`, `unpin` and `pins`: garbage collection and the paths it must keep.

use clap::Args;
use kiln_cache::gc::{self, Policy};
use kiln_config::TimeSpan;
use kiln_nix::StorePath;

use super::common::{ConfigArgs, open_service};

fn parse_span(s: &str) -> Result<TimeSpan, String> {
    TimeSpan::parse(s)
}

fn parse_store_path(s: &str) -> Result<StorePath, String> {
    s.parse::<StorePath>().map_err(|e| e.to_string())
}

/// Arguments of `kiln cache gc`.
#[derive(Debug, Args)]
pub struct GcArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The cache to collect.
    name: String,
    /// Report what would be deleted; delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Expire paths uploaded longer ago than this (e.g. 90d), for this run; default from
    /// `cache.gc`.
    #[arg(long, value_name = "SPAN", value_parser = parse_span)]
    max_age: Option<TimeSpan>,
    /// Expire paths not read for this long (e.g. 30d), for this run; default from `cache.gc`.
    #[arg(long, value_name = "SPAN", value_parser = parse_span)]
    max_idle: Option<TimeSpan>,
    /// Keep unused NAR files and upload leftovers younger than this, for this run; default from
    /// `cache.gc.grace`.
    #[arg(long, value_name = "SPAN", value_parser = parse_span)]
    grace: Option<TimeSpan>,
}

/// Arguments of `kiln cache pin`.
#[derive(Debug, Args)]
pub struct PinArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The cache.
    name: String,
    /// Store paths the cache serves (`/nix/store/...` or base names).
    #[arg(required = true, value_parser = parse_store_path)]
    paths: Vec<StorePath>,
    /// Also pin every path of their closures by itself, so that they stay pinned if these are
    /// unpinned. (A pinned path always keeps its closure while it is pinned.)
    #[arg(long)]
    keep_closure: bool,
}

/// Arguments of `kiln cache unpin`.
#[derive(Debug, Args)]
pub struct UnpinArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The cache.
    name: String,
    /// Pinned store paths.
    #[arg(required = true, value_parser = parse_store_path)]
    paths: Vec<StorePath>,
}

/// Arguments of `kiln cache pins`.
#[derive(Debug, Args)]
pub struct PinsArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The cache.
    name: String,
}

/// `kiln cache gc`: prints the report.
pub async fn collect(args: GcArgs) -> anyhow::Result<()> {
    let config = args.config.load()?;
    let service = open_service(&config).await?;
    let cache = kiln_cache::caches::get(service.db(), &args.name).await?;
    let mut policy = Policy::from_config(&config.cache.gc, &cache.name);
    if args.max_age.is_some() {
        policy.retention.max_age = args.max_age;
    }
    if args.max_idle.is_some() {
        policy.retention.max_idle = args.max_idle;
    }
    if let Some(grace) = args.grace {
        policy.grace = grace.duration();
    }
    let report = gc::collect(&service, &cache, &policy, args.dry_run).await;
    service.db().close().await;
    println!("{}", report?);
    Ok(())
}

/// `kiln cache pin`: one line per path.
pub async fn pin(args: PinArgs) -> anyhow::Result<()> {
    let service = open_service(&args.config.load()?).await?;
    let cache = kiln_cache::caches::get(service.db(), &args.name).await?;
    let pinned = gc::pins::pin(service.db(), cache.id, &args.paths, args.keep_closure).await;
    service.db().close().await;
    for p in pinned? {
        println!(
            "{} {}",
            if p.new { "pinned" } else { "already pinned" },
            p.store_path.to_absolute()
        );
    }
    Ok(())
}

/// `kiln cache unpin`.
pub async fn unpin(args: UnpinArgs) -> anyhow::Result<()> {
    let service = open_service(&args.config.load()?).await?;
    let cache = kiln_cache::caches::get(service.db(), &args.name).await?;
    let result = gc::pins::unpin(service.db(), cache.id, &args.paths).await;
    service.db().close().await;
    result?;
    for path in &args.paths {
        println!("unpinned {}", path.to_absolute());
    }
    Ok(())
}

/// `kiln cache pins`: one pinned path per line, with the time it was pinned.
pub async fn list(args: PinsArgs) -> anyhow::Result<()> {
    let service = open_service(&args.config.load()?).await?;
    let cache = kiln_cache::caches::get(service.db(), &args.name).await?;
    let pins = gc::pins::list(service.db(), cache.id).await;
    service.db().close().await;
    for pin in pins? {
        println!("{}\t{}", pin.store_path.to_absolute(), pin.created_at);
    }
    Ok(())
}
