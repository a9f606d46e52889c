//! Kiln's configuration: one TOML file, `KILN_*` environment overrides, then command-line flags.
//!
//! This crate owns the shape of the configuration and nothing else: it reads the file and the
//! environment, refuses unknown keys with a message naming them, and fills in every default, so
//! `kiln up` runs with no configuration at all. It never opens sockets, databases or stores, and
//! never logs secret values.
//!
//! Precedence, lowest first: built-in defaults, the file, `KILN_*` variables, command-line flags
//! (applied by the binary on the loaded [`Config`]). A variable names a key path with `__` between
//! table names: `KILN_LISTEN`, `KILN_DATA_DIR`, `KILN_CACHE__MAX_NAR_SIZE`,
//! `KILN_CACHE__STORAGE__TYPE`. Its value is read as a TOML value when it parses as one (`1024`,
//! `true`, `"text"`) and as a plain string otherwise. `KILN_LOG` (the log filter) and the
//! `KILN_TEST_*`, `KILN_SERVICES_*` and `KILN_FUZZ_*` variables of Kiln's scripts and tests are
//! the only `KILN_` variables that are not configuration keys.

mod distributed;
mod farm;
mod gc;
mod size;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use distributed::{DistributedConfig, parse_cache_storage};
pub use farm::{
    FarmConfig, GitInputConfig, InputConfig, JobsetConfig, MAX_WORKER_FEATURES, ProjectConfig,
    WorkerConfig, valid_name,
};
pub use gc::{GcConfig, Retention, TimeSpan};
pub use size::ByteSize;

/// Environment variables with this prefix override configuration keys.
pub const ENV_PREFIX: &str = "KILN_";
/// The one `KILN_` variable that is not a configuration key: the log filter.
pub const LOG_ENV: &str = "KILN_LOG";
/// Prefixes of `KILN_` variables that belong to Kiln's scripts and tests, not to the
/// configuration: `KILN_TEST_*` (services the test suite uses), `KILN_SERVICES_*`
/// (`scripts/services`), `KILN_FUZZ_*` (`scripts/test`).
pub const NON_CONFIG_PREFIXES: [&str; 3] = ["KILN_TEST_", "KILN_SERVICES_", "KILN_FUZZ_"];

/// Whether environment variable `name` overrides a configuration key.
pub fn is_config_var(name: &str) -> bool {
    name.starts_with(ENV_PREFIX)
        && name != LOG_ENV
        && !NON_CONFIG_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Why the configuration could not be loaded.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("environment variable {var} does not name a config key: {reason}")]
    EnvKey { var: String, reason: String },
    #[error("invalid configuration (after applying {sources}): {message}")]
    Invalid { sources: String, message: String },
}

/// Kiln's whole configuration. Every field has a default; an empty file is a valid file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server (dashboard, API, binary cache) listens on.
    /// Default `127.0.0.1:8080`; port 0 picks a free port.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Directory holding all of `kiln up`'s state: the SQLite database and, unless storage says
    /// otherwise, the cache's objects. Created if missing. Default `/var/lib/kiln`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// URL at which clients reach this server, e.g. `https://kiln.example.org`, used in the
    /// substituter URLs Kiln prints and returns. Default: `http://` + the address actually bound,
    /// or, in API answers, the request's `Host` header.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Database URL (`sqlite://...` or `postgres://...`). Default: SQLite at
    /// `<data_dir>/kiln.sqlite`.
    #[serde(default)]
    pub database_url: Option<String>,
    /// RabbitMQ URL (`amqp://user:pass@host:5672/%2f`) of the distributed mode's work queues
    /// (`KILN_AMQP_URL`). Required by `kiln coordinator` and `kiln worker`.
    #[serde(default)]
    pub amqp_url: Option<String>,
    /// Redis URL (`redis://host:6379/0`) for worker heartbeats, live logs and the
    /// coordinators' leader lease (`KILN_REDIS_URL`). Required by `kiln coordinator`,
    /// `kiln worker` and `kiln web`; while Redis is down builds go on and only live views
    /// degrade.
    #[serde(default)]
    pub redis_url: Option<String>,
    /// The cache's storage as one string (`KILN_CACHE_STORAGE`): a local directory, or
    /// `s3://BUCKET?endpoint=URL`. When set it replaces `[cache.storage]`.
    #[serde(default)]
    pub cache_storage: Option<String>,
    /// Where a remote worker finds the web tier, i.e. the binary cache and its upload API
    /// (`KILN_WEB_URL`, e.g. `http://kiln-web:8080`).
    #[serde(default)]
    pub web_url: Option<String>,
    /// A remote worker's token, with `push` permission on the cache (`KILN_WORKER_TOKEN`).
    #[serde(default)]
    pub worker_token: Option<String>,
    /// Timings of the distributed mode.
    #[serde(default)]
    pub distributed: DistributedConfig,
    /// The binary cache.
    #[serde(default)]
    pub cache: CacheConfig,
    /// The local build workers.
    #[serde(default)]
    pub worker: WorkerConfig,
    /// Evaluation and scheduling.
    #[serde(default)]
    pub farm: FarmConfig,
    /// Projects and their jobsets declared in the file (`[[project]]`, `[[project.jobset]]`).
    #[serde(default)]
    pub project: Vec<ProjectConfig>,
}

/// `[cache]`: the binary cache's limits and storage.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Largest NAR accepted by an upload, counted both as bytes received and as the uncompressed
    /// NAR. Bytes, or a string with a unit (`"8 GiB"`). Default 8 GiB.
    #[serde(default = "default_max_nar_size")]
    pub max_nar_size: ByteSize,
    /// Largest build log accepted under `log/`. Default 64 MiB.
    #[serde(default = "default_max_log_size")]
    pub max_log_size: ByteSize,
    /// zstd level used when Kiln compresses NARs itself (the upload API). Default 3.
    #[serde(default = "default_zstd_level")]
    pub zstd_level: i32,
    /// `Priority` advertised in `nix-cache-info` by caches created without an explicit one
    /// (lower is preferred; cache.nixos.org uses 40). Default 30.
    #[serde(default = "default_priority")]
    pub default_priority: u32,
    /// First part of the names of generated signing keys, which read
    /// `<key_name_prefix>-<cache>-1`. Nix identifies trusted keys by name, so installations
    /// should differ here. Default: this machine's host name.
    #[serde(default)]
    pub key_name_prefix: Option<String>,
    /// How long a narinfo read from the index is served from memory, and how long a garbage
    /// collection that deleted paths waits before it deletes their files, so that no server
    /// (several `kiln web` may share one index) still advertises them. `0` turns the memory off:
    /// every narinfo GET reads the index. Seconds, or `"5s"`, `"1m"`. Default 5 s; at most 1 h.
    #[serde(default = "default_narinfo_ttl")]
    pub narinfo_ttl: TimeSpan,
    /// Where NARs, narinfos and logs are stored. A `[cache.storage]` table must name its `type`.
    #[serde(default)]
    pub storage: StorageConfig,
    /// Garbage collection: retention, grace period, periodic runs. Default: no path is deleted.
    #[serde(default)]
    pub gc: GcConfig,
}

/// `[cache.storage]`: the blob store backend, chosen by `type`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum StorageConfig {
    /// A local directory (the default).
    Local {
        /// Directory of the objects. Default `<data_dir>/cache`.
        #[serde(default)]
        path: Option<PathBuf>,
    },
    /// An S3-compatible bucket. Credentials come from `access_key_id` and
    /// `secret_access_key_file`, or else from the usual `AWS_*` environment variables.
    S3 {
        /// Bucket name. Required.
        bucket: String,
        /// Region. Default `us-east-1`.
        #[serde(default = "default_region")]
        region: String,
        /// Endpoint URL for S3-compatible servers (`http://127.0.0.1:3900`). Default: AWS.
        #[serde(default)]
        endpoint: Option<String>,
        /// Key prefix inside the bucket. Default: none.
        #[serde(default)]
        prefix: Option<String>,
        /// Access key id. Default: `AWS_ACCESS_KEY_ID`.
        #[serde(default)]
        access_key_id: Option<String>,
        /// File holding the secret access key. Default: `AWS_SECRET_ACCESS_KEY`.
        #[serde(default)]
        secret_access_key_file: Option<PathBuf>,
        /// Allow plain `http://` endpoints. Default false.
        #[serde(default)]
        allow_http: bool,
    },
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig::Local { path: None }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_nar_size: default_max_nar_size(),
            max_log_size: default_max_log_size(),
            zstd_level: default_zstd_level(),
            default_priority: default_priority(),
            key_name_prefix: None,
            narinfo_ttl: default_narinfo_ttl(),
            storage: StorageConfig::default(),
            gc: GcConfig::default(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: default_listen(),
            data_dir: default_data_dir(),
            public_url: None,
            database_url: None,
            amqp_url: None,
            redis_url: None,
            cache_storage: None,
            web_url: None,
            worker_token: None,
            distributed: DistributedConfig::default(),
            cache: CacheConfig::default(),
            worker: WorkerConfig::default(),
            farm: FarmConfig::default(),
            project: Vec::new(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/kiln")
}

fn default_max_nar_size() -> ByteSize {
    ByteSize(8 << 30)
}

fn default_max_log_size() -> ByteSize {
    ByteSize(64 << 20)
}

fn default_zstd_level() -> i32 {
    3
}

fn default_priority() -> u32 {
    30
}

fn default_narinfo_ttl() -> TimeSpan {
    TimeSpan(std::time::Duration::from_secs(5))
}

fn default_region() -> String {
    "us-east-1".to_owned()
}

impl Config {
    /// Loads the configuration from an optional file and the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_from(file, std::env::vars())
    }

    /// Loads the configuration from an optional file and the given environment variables.
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                toml::from_str::<toml::Table>(&text).map_err(|e| ConfigError::File {
                    path: path.to_owned(),
                    message: e.to_string(),
                })?
            }
            None => toml::Table::new(),
        };
        let overrides: BTreeMap<String, String> =
            env.into_iter().filter(|(k, _)| is_config_var(k)).collect();
        for (var, value) in &overrides {
            apply_env(&mut table, var, value)?;
        }
        let sources = describe_sources(file, &overrides);
        let mut config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Invalid {
                    sources: sources.clone(),
                    message: e.message().to_owned(),
                })?;
        if let Some(storage) = &config.cache_storage {
            config.cache.storage =
                parse_cache_storage(storage).map_err(|message| ConfigError::Invalid {
                    sources: sources.clone(),
                    message,
                })?;
        }
        config
            .validate()
            .map_err(|message| ConfigError::Invalid { sources, message })?;
        Ok(config)
    }

    /// Checks the values that the types alone do not constrain.
    pub fn validate(&self) -> Result<(), String> {
        if self.cache.max_nar_size.0 == 0 {
            return Err("cache.max_nar_size must be greater than 0".to_owned());
        }
        if self.cache.narinfo_ttl.0 > std::time::Duration::from_secs(3600) {
            return Err(format!(
                "cache.narinfo_ttl must be at most 1 hour (garbage collection waits this long \
                 before deleting files), not {} s",
                self.cache.narinfo_ttl.0.as_secs()
            ));
        }
        if !(1..=22).contains(&self.cache.zstd_level) {
            return Err(format!(
                "cache.zstd_level must be between 1 and 22, not {}",
                self.cache.zstd_level
            ));
        }
        if let Some(url) = &self.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(format!(
                "public_url must start with http:// or https://, not {url:?}"
            ));
        }
        self.cache.gc.validate()?;
        self.distributed.validate()?;
        for (key, url, schemes) in [
            ("amqp_url", &self.amqp_url, &["amqp://", "amqps://"][..]),
            (
                "redis_url",
                &self.redis_url,
                &["redis://", "rediss://", "unix://"][..],
            ),
            ("web_url", &self.web_url, &["http://", "https://"][..]),
            (
                "database_url",
                &self.database_url,
                &["sqlite:", "postgres://", "postgresql://"][..],
            ),
        ] {
            if let Some(url) = url
                && !schemes.iter().any(|s| url.starts_with(s))
            {
                return Err(format!(
                    "{key} must start with {}, not {:?}",
                    schemes.join(" or "),
                    redact_url(url)
                ));
            }
        }
        if let Some(prefix) = &self.cache.key_name_prefix
            && (prefix.is_empty() || prefix.contains(':') || prefix.contains(char::is_whitespace))
        {
            return Err(format!(
                "cache.key_name_prefix {prefix:?} must be non-empty, without ':' or spaces"
            ));
        }
        farm::validate(&self.worker, &self.farm, &self.project)
    }

    /// The database URL, defaulting to SQLite inside the data directory.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir.join("kiln.sqlite").display()),
        }
    }

    /// The local storage directory, when storage is local.
    pub fn local_storage_dir(&self) -> Option<PathBuf> {
        match &self.cache.storage {
            StorageConfig::Local { path } => {
                Some(path.clone().unwrap_or_else(|| self.data_dir.join("cache")))
            }
            StorageConfig::S3 { .. } => None,
        }
    }
}

/// `url` with any password replaced by `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{path}")
            } else {
                format!("{scheme}://{user}@{host}{path}")
            }
        }
        None => url.to_owned(),
    }
}

fn describe_sources(file: Option<&Path>, overrides: &BTreeMap<String, String>) -> String {
    let mut parts = Vec::new();
    match file {
        Some(path) => parts.push(format!("file {}", path.display())),
        None => parts.push("defaults".to_owned()),
    }
    if !overrides.is_empty() {
        parts.push(format!(
            "environment {}",
            overrides.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    parts.join(" and ")
}

/// Sets the key named by `KILN_A__B__C` in `table` (`a.b.c`).
fn apply_env(table: &mut toml::Table, var: &str, value: &str) -> Result<(), ConfigError> {
    let path = &var[ENV_PREFIX.len()..];
    let keys: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
    if keys.iter().any(|k| k.is_empty()) {
        return Err(ConfigError::EnvKey {
            var: var.to_owned(),
            reason: "empty key between '__'".to_owned(),
        });
    }
    let (last, parents) = keys.split_last().expect("split yields at least one key");
    let mut current = table;
    for key in parents {
        let entry = current
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(t) => t,
            _ => {
                return Err(ConfigError::EnvKey {
                    var: var.to_owned(),
                    reason: format!("`{key}` is a value, not a table"),
                });
            }
        };
    }
    current.insert(last.clone(), parse_env_value(value));
    Ok(())
}

/// A TOML value if `raw` is one (`42`, `true`, `"x"`, `[1, 2]`), else the string itself.
fn parse_env_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn write(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    #[test]
    fn no_file_and_no_env_gives_the_documented_defaults() {
        let config = Config::load_from(None, env(&[])).unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.cache.max_nar_size, ByteSize(8 << 30));
        assert_eq!(config.database_url(), "sqlite:///var/lib/kiln/kiln.sqlite");
        assert_eq!(
            config.local_storage_dir(),
            Some(PathBuf::from("/var/lib/kiln/cache"))
        );
    }

    #[test]
    fn file_values_replace_defaults() {
        let file = write(
            r#"
            listen = "0.0.0.0:9000"
            data_dir = "/srv/kiln"
            [cache]
            max_nar_size = "2 GiB"
            [cache.storage]
            type = "s3"
            bucket = "nars"
            endpoint = "http://127.0.0.1:3900"
            allow_http = true
            "#,
        );
        let config = Config::load_from(Some(file.path()), env(&[])).unwrap();
        assert_eq!(config.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(config.cache.max_nar_size, ByteSize(2 << 30));
        assert_eq!(config.local_storage_dir(), None);
        match &config.cache.storage {
            StorageConfig::S3 {
                bucket,
                region,
                allow_http,
                ..
            } => {
                assert_eq!(bucket, "nars");
                assert_eq!(region, "us-east-1");
                assert!(allow_http);
            }
            other => panic!("expected s3 storage, got {other:?}"),
        }
    }

    #[test]
    fn environment_overrides_the_file() {
        let file = write("listen = \"0.0.0.0:9000\"\n[cache]\nzstd_level = 5\n");
        let config = Config::load_from(
            Some(file.path()),
            env(&[
                ("KILN_LISTEN", "127.0.0.1:0"),
                ("KILN_CACHE__MAX_NAR_SIZE", "1024"),
                ("KILN_CACHE__STORAGE__TYPE", "local"),
                ("KILN_CACHE__STORAGE__PATH", "/tmp/blobs"),
                ("KILN_LOG", "debug"),
                ("KILN_TEST_AMQP_URL", "amqp://127.0.0.1"),
                ("KILN_SERVICES_REDIS_PORT", "1"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:0");
        assert_eq!(config.cache.max_nar_size, ByteSize(1024));
        assert_eq!(config.cache.zstd_level, 5);
        assert_eq!(
            config.cache.narinfo_ttl,
            TimeSpan(std::time::Duration::from_secs(5))
        );
        assert_eq!(
            config.local_storage_dir(),
            Some(PathBuf::from("/tmp/blobs"))
        );
    }

    #[test]
    fn narinfo_ttl_takes_a_length_of_time_and_zero() {
        let file = write("[cache]\nnarinfo_ttl = \"1m\"\n");
        let config = Config::load_from(Some(file.path()), env(&[])).unwrap();
        assert_eq!(
            config.cache.narinfo_ttl,
            TimeSpan(std::time::Duration::from_secs(60))
        );
        let config = Config::load_from(None, env(&[("KILN_CACHE__NARINFO_TTL", "0")])).unwrap();
        assert_eq!(
            config.cache.narinfo_ttl,
            TimeSpan(std::time::Duration::ZERO)
        );
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let file = write("[cache]\nmax_nar_sise = 10\n");
        let err = Config::load_from(Some(file.path()), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_nar_sise"), "{err}");

        let err = Config::load_from(None, env(&[("KILN_LISTN", "x")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("listn") && err.contains("KILN_LISTN"), "{err}");

        let file = write("[cache.storage]\ntype = \"local\"\nbucket = \"x\"\n");
        let err = Config::load_from(Some(file.path()), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bucket"), "{err}");
    }

    #[test]
    fn bad_values_are_refused_with_the_field() {
        let err = Config::load_from(None, env(&[("KILN_LISTEN", "nowhere")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("KILN_LISTEN"), "{err}");
        let err = Config::load_from(None, env(&[("KILN_CACHE__ZSTD_LEVEL", "40")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("zstd_level"), "{err}");
        let err = Config::load_from(None, env(&[("KILN_CACHE__NARINFO_TTL", "\"2h\"")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("narinfo_ttl"), "{err}");
        let err = Config::load_from(None, env(&[("KILN_CACHE__MAX_NAR_SIZE", "\"12 parsecs\"")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("parsecs"), "{err}");
        let file = write("listen = [\n");
        let err = Config::load_from(Some(file.path()), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid config file"), "{err}");
    }

    #[test]
    fn the_issue_example_configuration_loads() {
        let file = write(
            r#"
            listen = "127.0.0.1:8080"
            data_dir = "/var/lib/kiln"
            [worker]
            count = 2
            features = []
            nix_options = { sandbox = "true", "sandbox-paths" = "/bin/sh=/bin/busybox /bin/busybox" }
            [[project]]
            name = "demo"
            [[project.jobset]]
            name = "main"
            url = "file:///srv/repo"
            branch = "main"
            expression = "release.nix"
            check_interval = 60
            "#,
        );
        let config = Config::load_from(Some(file.path()), env(&[])).unwrap();
        assert_eq!(config.worker.count, 2);
        assert_eq!(
            config.worker.nix_options["sandbox-paths"],
            "/bin/sh=/bin/busybox /bin/busybox"
        );
        let jobset = &config.project[0].jobset[0];
        assert_eq!(config.project[0].name, "demo");
        assert_eq!(jobset.expression.as_deref(), Some("release.nix"));
        assert_eq!(jobset.check_interval, 60);
        assert_eq!(
            (jobset.shares, jobset.keep_evaluations, jobset.enabled),
            (100, 10, true)
        );
        assert!(!jobset.flake);
    }

    #[test]
    fn farm_defaults_are_documented_values() {
        let config = Config::default();
        assert_eq!(config.worker.count, 1);
        assert_eq!(config.worker.slots, 1);
        assert_eq!(config.worker.systems, None);
        assert_eq!(config.worker.nix_options["sandbox"], "true");
        assert_eq!(config.farm.max_retries, 3);
        assert_eq!(config.farm.unsupported_after, 60);
        assert!(config.project.is_empty());
    }

    #[test]
    fn jobset_inputs_are_strings_booleans_or_git_repositories() {
        let file = write(
            r#"
            [[project]]
            name = "p"
            [[project.jobset]]
            name = "j"
            url = "/srv/repo"
            expression = "release.nix"
            inputs = { label = "nightly", fast = true, lib = { type = "git", url = "/srv/lib" } }
            "#,
        );
        let config = Config::load_from(Some(file.path()), env(&[])).unwrap();
        let inputs = &config.project[0].jobset[0].inputs;
        assert_eq!(inputs["label"], InputConfig::String("nightly".into()));
        assert_eq!(inputs["fast"], InputConfig::Bool(true));
        match &inputs["lib"] {
            InputConfig::Git(git) => assert_eq!(
                (git.url.as_str(), git.branch.as_str()),
                ("/srv/lib", "main")
            ),
            other => panic!("expected a git input, got {other:?}"),
        }
    }

    #[test]
    fn bad_jobsets_are_refused_naming_the_field() {
        let cases = [
            ("name = \"j\"\nurl = \"/r\"\n", "expression"),
            (
                "name = \"j\"\nurl = \"/r\"\nexpression = \"a.nix\"\nflake = true\n",
                "not both",
            ),
            (
                "name = \"j/k\"\nurl = \"/r\"\nexpression = \"a.nix\"\n",
                "jobset[0].name",
            ),
            (
                "name = \"j\"\nurl = \"/r\"\nexpression = \"a.nix\"\nshares = 0\n",
                "shares",
            ),
            (
                "name = \"j\"\nurl = \"/r\"\nexpression = \"a.nix\"\ninputs = { x = { type = \"hg\", url = \"/x\" } }\n",
                "inputs.x.type",
            ),
            (
                "name = \"j\"\nurl = \"/r\"\nexpression = \"a.nix\"\ncheck_intervall = 3\n",
                "check_intervall",
            ),
        ];
        for (jobset, expected) in cases {
            let file = write(&format!(
                "[[project]]\nname = \"p\"\n[[project.jobset]]\n{jobset}"
            ));
            let err = Config::load_from(Some(file.path()), env(&[]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{jobset}: {err}");
        }
        let file = write("[[project]]\nname = \"p\"\n[[project]]\nname = \"p\"\n");
        let err = Config::load_from(Some(file.path()), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("declared twice"), "{err}");
        let err = Config::load_from(None, env(&[("KILN_WORKER__SLOTS", "0")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("worker.slots"), "{err}");
    }

    #[test]
    fn distributed_settings_come_from_their_variables() {
        let config = Config::load_from(
            None,
            env(&[
                (
                    "KILN_DATABASE_URL",
                    "postgres://kiln:secret@127.0.0.1:5432/kiln",
                ),
                ("KILN_AMQP_URL", "amqp://kiln:pw@127.0.0.1:5672/%2f"),
                ("KILN_REDIS_URL", "redis://127.0.0.1:6379/0"),
                (
                    "KILN_CACHE_STORAGE",
                    "s3://kiln?endpoint=http://127.0.0.1:9000",
                ),
                ("KILN_WEB_URL", "http://127.0.0.1:8080"),
                ("KILN_WORKER_TOKEN", "kiln_abc123"),
            ]),
        )
        .unwrap();
        assert_eq!(
            config.database_url(),
            "postgres://kiln:secret@127.0.0.1:5432/kiln"
        );
        assert_eq!(
            config.amqp_url.as_deref(),
            Some("amqp://kiln:pw@127.0.0.1:5672/%2f")
        );
        assert_eq!(config.web_url.as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(config.worker_token.as_deref(), Some("kiln_abc123"));
        assert!(
            matches!(config.cache.storage, StorageConfig::S3 { ref bucket, .. } if bucket == "kiln")
        );
        assert_eq!(config.local_storage_dir(), None);

        let err = Config::load_from(None, env(&[("KILN_AMQP_URL", "http://x:pw@h/")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("amqp_url") && !err.contains("pw"), "{err}");
        let err = Config::load_from(None, env(&[("KILN_CACHE_STORAGE", "s3://")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bucket"), "{err}");
        let err = Config::load_from(None, env(&[("KILN_DISTRIBUTED__WORKER_TTL", "1")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("worker_ttl"), "{err}");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://kiln:secret@db:5432/kiln"),
            "postgres://kiln:***@db:5432/kiln"
        );
        assert_eq!(redact_url("redis://db:6379/0"), "redis://db:6379/0");
        assert_eq!(redact_url("amqp://guest@h/"), "amqp://guest@h/");
    }

    #[test]
    fn environment_cannot_descend_into_a_value() {
        let err = Config::load_from(None, env(&[("KILN_LISTEN__PORT", "1")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("KILN_LISTEN__PORT"), "{err}");
    }
}
