//! `kiln migrate` and `kiln check-config`: the two commands an operator runs before starting
//! the distributed processes (and a deployment runs as a hook before rolling them).

use anyhow::Context;
use clap::{Args, ValueEnum};
use kiln_config::{Config, StorageConfig, redact_url};

use super::common::{ConfigArgs, admin_runtime, open_service};

/// Arguments of `kiln migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    config: ConfigArgs,
}

/// Applies pending database migrations, creates the default cache (and its signing key) if
/// missing, and writes the projects declared in the config file. Safe to run again, and while
/// other processes run.
pub fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let config = args.config.load()?;
    admin_runtime()?.block_on(async {
        let service = open_service(&config).await?;
        let (main, created) = service.ensure_default_cache().await?;
        kiln_coordinator::db::projects::sync_declared(service.db(), &config.project)
            .await
            .context("cannot save the projects of the config file")?;
        println!(
            "kiln: database {} is up to date",
            redact_url(&config.database_url())
        );
        println!(
            "kiln: cache {} {} (public key {})",
            main.name,
            if created { "created" } else { "exists" },
            main.public_key()
        );
        service.db().close().await;
        Ok(())
    })
}

/// Which process a configuration is checked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// `kiln up`.
    Up,
    /// `kiln coordinator`.
    Coordinator,
    /// `kiln worker`.
    Worker,
    /// `kiln web`.
    Web,
}

/// Arguments of `kiln check-config`.
#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Also require the settings this process needs.
    #[arg(long = "for", value_enum, value_name = "ROLE")]
    role: Option<Role>,
}

/// Loads and validates the configuration (file, `KILN_*` variables, flags) and prints what it
/// resolves to, passwords hidden; fails naming the first problem.
pub fn check_config(args: CheckConfigArgs) -> anyhow::Result<()> {
    let config = args.config.load()?;
    if let Some(role) = args.role {
        require_for(&config, role)?;
    }
    for line in summary(&config) {
        println!("{line}");
    }
    println!("kiln: configuration is valid");
    Ok(())
}

/// Fails naming the settings `role` requires that `config` lacks.
pub fn require_for(config: &Config, role: Role) -> anyhow::Result<()> {
    let missing = missing_for(config, role);
    anyhow::ensure!(
        missing.is_empty(),
        "kiln {} needs {}",
        role_name(role),
        missing.join(", ")
    );
    Ok(())
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Up => "up",
        Role::Coordinator => "coordinator",
        Role::Worker => "worker",
        Role::Web => "web",
    }
}

/// The settings `role` requires that `config` lacks, each named by key and variable.
pub fn missing_for(config: &Config, role: Role) -> Vec<&'static str> {
    let mut missing = Vec::new();
    let mut need = |present: bool, name: &'static str| {
        if !present {
            missing.push(name);
        }
    };
    match role {
        Role::Up => {}
        Role::Coordinator => {
            need(config.amqp_url.is_some(), "amqp_url (KILN_AMQP_URL)");
            need(config.redis_url.is_some(), "redis_url (KILN_REDIS_URL)");
            need(config.web_url.is_some(), "web_url (KILN_WEB_URL)");
        }
        Role::Worker => {
            need(config.amqp_url.is_some(), "amqp_url (KILN_AMQP_URL)");
            need(config.redis_url.is_some(), "redis_url (KILN_REDIS_URL)");
            need(config.web_url.is_some(), "web_url (KILN_WEB_URL)");
            need(
                config.worker_token.is_some(),
                "worker_token (KILN_WORKER_TOKEN)",
            );
        }
        Role::Web => {
            need(config.redis_url.is_some(), "redis_url (KILN_REDIS_URL)");
        }
    }
    missing
}

fn summary(config: &Config) -> Vec<String> {
    let opt = |v: &Option<String>| v.as_deref().map(redact_url).unwrap_or("-".to_owned());
    let storage = match &config.cache.storage {
        StorageConfig::Local { .. } => format!(
            "local {}",
            config
                .local_storage_dir()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ),
        StorageConfig::S3 {
            bucket, endpoint, ..
        } => format!(
            "s3 bucket {bucket}{}",
            endpoint
                .as_deref()
                .map(|e| format!(" at {e}"))
                .unwrap_or_default()
        ),
    };
    vec![
        format!("listen        {}", config.listen),
        format!("data_dir      {}", config.data_dir.display()),
        format!("database_url  {}", redact_url(&config.database_url())),
        format!("amqp_url      {}", opt(&config.amqp_url)),
        format!("redis_url     {}", opt(&config.redis_url)),
        format!("web_url       {}", opt(&config.web_url)),
        format!(
            "worker_token  {}",
            if config.worker_token.is_some() {
                "set"
            } else {
                "-"
            }
        ),
        format!("cache storage {storage}"),
        format!("projects      {}", config.project.len()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_names_what_it_lacks() {
        let config = Config::default();
        assert!(missing_for(&config, Role::Up).is_empty());
        let worker = missing_for(&config, Role::Worker);
        assert!(worker.iter().any(|m| m.contains("KILN_WORKER_TOKEN")));
        assert!(worker.iter().any(|m| m.contains("KILN_AMQP_URL")));
        let mut config = config;
        config.amqp_url = Some("amqp://127.0.0.1".into());
        config.redis_url = Some("redis://127.0.0.1".into());
        config.web_url = Some("http://127.0.0.1:8080".into());
        assert!(missing_for(&config, Role::Coordinator).is_empty());
        config.worker_token = Some("kiln_secret".into());
        assert!(missing_for(&config, Role::Worker).is_empty());
        assert!(
            summary(&config).iter().all(|l| !l.contains("kiln_secret")),
            "the token is never printed"
        );
    }
}
