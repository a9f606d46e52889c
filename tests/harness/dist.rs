//! A distributed farm for fault tests: `kiln web`, two `kiln coordinator`s and three
//! `kiln worker`s, each its own process with its own data directory, on the shared services of
//! `scripts/services` (PostgreSQL, RabbitMQ, Redis, S3).
//!
//! ```ignore
//! let farm = DistFarm::start().run();
//! let repo = farm.repo("demo", &[("release.nix", "...")]);
//! farm.add_jobset("demo", "main", &repo, "release.nix");
//! farm.kill("w1");
//! let eval = farm.wait_builds(farm.evaluate("demo", "main"));
//! ```
//!
//! Each farm isolates itself on the services: a database of its own (created on the
//! `KILN_TEST_POSTGRES_URL` server, dropped at the end), a RabbitMQ virtual host of its own
//! (`KILN_TEST_RABBITMQCTL`, deleted at the end), the Redis database of `KILN_TEST_REDIS_URL`
//! (flushed at the start: farms of one test binary run one at a time, see [`FARM_LOCK`]) and a
//! random prefix in the services' S3 bucket. The services must be running: without the
//! `KILN_TEST_*` variables the harness panics saying how to start them, it never skips.
//!
//! Every process it started is killed by its PID (with the processes it started, such as
//! `nix-store --serve`) when the farm is dropped, also when a test panics.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use super::farm::{FarmApi, TestFarm, new_repo, step_ids};
use super::{NixStore, kiln_bin};

/// How long a wait may last before the test fails (hang protection only).
const DEADLINE: Duration = Duration::from_secs(240);

/// The farms of one test binary share the Redis database, so they run one at a time.
static FARM_LOCK: Mutex<()> = Mutex::new(());

/// The coordinators every farm runs; `c1` is started first and leads.
pub const COORDINATORS: [&str; 2] = ["c1", "c2"];

/// The workers a farm runs unless told otherwise.
pub const WORKERS: [&str; 3] = ["w1", "w2", "w3"];

/// A variable the harness cannot run without.
fn required(name: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => value,
        _ => panic!(
            "set {name}, e.g. via scripts/services up DIR (then `. DIR/env`): the distributed \
             tests need PostgreSQL, RabbitMQ, Redis and S3 (scripts/test starts them)"
        ),
    }
}

/// A random lowercase hexadecimal name part.
fn random_hex() -> String {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    format!("{:016x}", hasher.finish())
}

/// The shared services, from the `KILN_TEST_*` variables.
struct Services {
    postgres_url: String,
    amqp_url: String,
    redis_url: String,
    rabbitmqctl: Vec<String>,
    dir: PathBuf,
    /// `KILN_CACHE_STORAGE` of the services' bucket, and the S3 credentials.
    s3_env: BTreeMap<String, String>,
}

impl Services {
    fn from_env() -> Services {
        let dir = PathBuf::from(required("KILN_TEST_SERVICES_DIR"));
        let services = Services {
            postgres_url: required("KILN_TEST_POSTGRES_URL"),
            amqp_url: required("KILN_TEST_AMQP_URL"),
            redis_url: required("KILN_TEST_REDIS_URL"),
            rabbitmqctl: required("KILN_TEST_RABBITMQCTL")
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            s3_env: read_env_file(&dir.join("env")),
            dir,
        };
        for name in [
            "KILN_CACHE_STORAGE",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
        ] {
            assert!(
                services.s3_env.contains_key(name),
                "{} has no {name}: was it written by scripts/services up?",
                services.dir.join("env").display()
            );
        }
        services
    }

    /// Runs rabbitmqctl of the services' node; panics on failure.
    fn rabbitmqctl(&self, args: &[&str]) -> String {
        let out = Command::new(&self.rabbitmqctl[0])
            .args(&self.rabbitmqctl[1..])
            .args(args)
            .output()
            .expect("run rabbitmqctl (KILN_TEST_RABBITMQCTL)");
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The `export NAME=value` lines of a `scripts/services` env file (single quotes removed).
fn read_env_file(path: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "cannot read {} ({e}): set KILN_TEST_SERVICES_DIR to the DIR of scripts/services up DIR",
            path.display()
        )
    });
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
        .collect()
}

/// `url` with its last path segment (database or virtual host) replaced by `name`.
fn with_last_segment(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let (prefix, _) = base.rsplit_once('/').expect("a URL with a path");
    format!("{prefix}/{name}{query}")
}

/// The user name of `scheme://user:password@host...`.
fn url_user(url: &str) -> String {
    let rest = url.split_once("://").expect("a URL").1;
    let userinfo = rest.split_once('@').expect("a URL with credentials").0;
    userinfo.split(':').next().unwrap().to_owned()
}

/// Runs `psql` on `url` with one SQL command; returns its unaligned output.
pub fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"])
        .arg(url)
        .args(["-c", sql])
        .output()
        .expect("run psql (apt-get install postgresql-client)");
    assert!(
        out.status.success(),
        "psql {sql:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Sends one Redis command (RESP) and returns the first line of the answer.
fn redis_command(stream: &mut TcpStream, args: &[&str]) -> String {
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream
        .write_all(request.as_bytes())
        .expect("write to Redis");
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n") {
        stream.read_exact(&mut byte).expect("read from Redis");
        answer.push(byte[0]);
    }
    String::from_utf8_lossy(&answer).trim().to_owned()
}

/// Empties the Redis database of `url` (`redis://host:port/db`).
fn flush_redis(url: &str) {
    let rest = url.strip_prefix("redis://").expect("a redis:// URL");
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let (addr, db) = rest.split_once('/').unwrap_or((rest, "0"));
    let mut stream = TcpStream::connect(addr).expect("connect to Redis (KILN_TEST_REDIS_URL)");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(redis_command(&mut stream, &["SELECT", db]), "+OK");
    assert_eq!(redis_command(&mut stream, &["FLUSHDB"]), "+OK");
}

/// The per-farm database and virtual host, removed when dropped.
struct Isolation {
    services: Services,
    database: String,
    vhost: String,
}

impl Isolation {
    fn create(services: Services) -> Isolation {
        let tag = random_hex();
        let isolation = Isolation {
            database: format!("kiln_dist_{tag}"),
            vhost: format!("kiln-dist-{tag}"),
            services,
        };
        psql(
            &isolation.services.postgres_url,
            &format!("CREATE DATABASE {}", isolation.database),
        );
        let user = url_user(&isolation.services.amqp_url);
        isolation
            .services
            .rabbitmqctl(&["add_vhost", &isolation.vhost]);
        isolation.services.rabbitmqctl(&[
            "set_permissions",
            "-p",
            &isolation.vhost,
            &user,
            ".*",
            ".*",
            ".*",
        ]);
        flush_redis(&isolation.services.redis_url);
        isolation
    }

    fn database_url(&self) -> String {
        with_last_segment(&self.services.postgres_url, &self.database)
    }

    fn amqp_url(&self) -> String {
        with_last_segment(&self.services.amqp_url, &self.vhost)
    }
}

impl Drop for Isolation {
    fn drop(&mut self) {
        // Best effort: a test that failed because a service is down must not panic again here.
        let _ = Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
            .arg(&self.services.postgres_url)
            .args([
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.database),
            ])
            .output();
        let _ = Command::new(&self.services.rabbitmqctl[0])
            .args(&self.services.rabbitmqctl[1..])
            .args(["delete_vhost", &self.vhost])
            .output();
    }
}

/// Builder of a [`DistFarm`].
pub struct DistFarmBuilder {
    workers: Vec<String>,
    settings: BTreeMap<String, Vec<String>>,
}

impl DistFarmBuilder {
    /// Starts these workers (by name) instead of [`WORKERS`]; none with an empty list.
    pub fn with_workers(mut self, names: &[&str]) -> DistFarmBuilder {
        self.workers = names.iter().map(|n| n.to_string()).collect();
        self
    }

    /// Adds a `key = value` line to the config file's table `table` (`farm`, `distributed`,
    /// `worker`), replacing the harness's line for the same key.
    pub fn with_setting(mut self, table: &str, line: &str) -> DistFarmBuilder {
        let key = line.split('=').next().unwrap().trim().to_owned();
        let lines = self.settings.entry(table.to_owned()).or_default();
        lines.retain(|l| l.split('=').next().unwrap().trim() != key);
        lines.push(line.to_owned());
        self
    }

    /// Starts the farm: migrations, the web tier, the coordinators (`c1` leading), the
    /// workers; returns once every worker is registered.
    pub fn run(self) -> DistFarm {
        let guard = FARM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let services = Services::from_env();
        let services_dir = services.dir.clone();
        let mut storage = services.s3_env["KILN_CACHE_STORAGE"].clone();
        let isolation = Isolation::create(services);
        let dir = tempfile::tempdir().expect("temporary directory");
        // The S3 prefix of this farm's cache.
        let (bucket, query) = storage.split_once('?').unwrap_or((&storage, ""));
        storage = format!(
            "{}/{}?{query}",
            bucket.trim_end_matches('/'),
            isolation.vhost
        );

        let config = dir.path().join("kiln.toml");
        let mut text = String::new();
        for (table, lines) in &self.settings {
            text.push_str(&format!("[{table}]\n{}\n\n", lines.join("\n")));
        }
        std::fs::write(&config, text).expect("write the config file");

        let web_port = free_port();
        let web_url = format!("http://127.0.0.1:{web_port}");
        let mut env: Vec<(String, String)> = vec![
            ("KILN_DATABASE_URL".into(), isolation.database_url()),
            ("KILN_AMQP_URL".into(), isolation.amqp_url()),
            (
                "KILN_REDIS_URL".into(),
                isolation.services.redis_url.clone(),
            ),
            ("KILN_CACHE_STORAGE".into(), storage),
            ("KILN_WEB_URL".into(), web_url.clone()),
            ("KILN_LOG".into(), "info".into()),
        ];
        for name in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"] {
            if let Some(value) = isolation.services.s3_env.get(name) {
                env.push((name.to_owned(), value.clone()));
            }
        }
        let mut farm = DistFarm {
            procs: BTreeMap::new(),
            env,
            config,
            web_addr: format!("127.0.0.1:{web_port}").parse().unwrap(),
            web_url,
            public_key: String::new(),
            worker_token: String::new(),
            repos: tempfile::tempdir().expect("temporary directory"),
            services_dir,
            isolation,
            dir,
            _guard: guard,
        };
        let migrated = farm.admin(&["migrate"]);
        farm.public_key = migrated
            .lines()
            .find_map(|l| l.split("(public key ").nth(1))
            .and_then(|k| k.strip_suffix(')'))
            .unwrap_or_else(|| panic!("kiln migrate printed no public key: {migrated}"))
            .to_owned();
        let token = farm.admin(&["token", "create", "--cache", "main", "--perm", "push"]);
        farm.worker_token = token.lines().last().expect("a token line").to_owned();

        farm.spawn(
            "web",
            vec!["web".into(), "--listen".into(), farm.web_addr.to_string()],
        );
        farm.wait_output("web", "kiln: web serving ");
        for name in COORDINATORS {
            farm.spawn(
                name,
                vec!["coordinator".into(), "--name".into(), name.into()],
            );
            if name == "c1" {
                farm.wait_output("c1", "kiln: coordinator c1 leads");
            }
        }
        for name in &self.workers {
            farm.start_worker(name);
        }
        farm.wait_for("every worker to register", || {
            let status = farm.status();
            let registered = status["workers"].as_array().map_or(0, Vec::len);
            (registered == self.workers.len()).then_some(())
        });
        farm
    }
}

/// A free TCP port on 127.0.0.1 (free now; a later bind may race, which tests accept).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .unwrap()
        .port()
}

/// One process of the farm.
struct Proc {
    child: Option<Child>,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

/// A running distributed farm (see the module documentation).
pub struct DistFarm {
    procs: BTreeMap<String, Proc>,
    /// The environment every process gets.
    env: Vec<(String, String)>,
    config: PathBuf,
    web_addr: SocketAddr,
    /// `http://127.0.0.1:<port>` of the web tier.
    pub web_url: String,
    /// The public key of cache `main`.
    pub public_key: String,
    worker_token: String,
    /// Where [`DistFarm::repo`] creates repositories.
    pub repos: TempDir,
    services_dir: PathBuf,
    isolation: Isolation,
    /// Config file, data directories and logs (`NAME.out` stdout, `NAME.log` stderr).
    dir: TempDir,
    _guard: MutexGuard<'static, ()>,
}

impl DistFarm {
    /// A farm with the web tier, `c1` and `c2`, and the workers `w1`, `w2`, `w3` (one slot
    /// each), with short heartbeats, lease and polling.
    pub fn start() -> DistFarmBuilder {
        let mut builder = DistFarmBuilder {
            workers: WORKERS.iter().map(|w| w.to_string()).collect(),
            settings: BTreeMap::new(),
        };
        for line in [
            "slots = 1",
            "nix_options = { sandbox = \"true\", \"sandbox-paths\" = \"/bin/sh=/bin/busybox /bin/busybox\" }",
        ] {
            builder = builder.with_setting("worker", line);
        }
        for line in ["db_poll_interval = 1", "retry_backoff = 1"] {
            builder = builder.with_setting("farm", line);
        }
        for line in [
            "heartbeat_interval = 1",
            "worker_ttl = 5",
            "leader_lease = 5",
        ] {
            builder = builder.with_setting("distributed", line);
        }
        builder
    }

    /// The farm's temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The services' directory (`KILN_TEST_SERVICES_DIR`).
    pub fn services_dir(&self) -> &Path {
        &self.services_dir
    }

    /// The URL of this farm's RabbitMQ virtual host.
    pub fn amqp_url(&self) -> String {
        self.isolation.amqp_url()
    }

    /// Runs one SQL command on this farm's database; returns psql's unaligned output.
    pub fn sql(&self, sql: &str) -> String {
        psql(&self.isolation.database_url(), sql)
    }

    fn command(&self, args: &[String], data_dir: &Path, extra_env: &[(String, String)]) -> Command {
        let mut cmd = Command::new(kiln_bin());
        cmd.args(args)
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(data_dir);
        // Only this farm's settings: a developer's shell may hold another farm's.
        for (key, _) in std::env::vars() {
            if key.starts_with("KILN_") || key.starts_with("AWS_") {
                cmd.env_remove(key);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `kiln <args>` on the admin data directory; panics on failure; returns stdout.
    pub fn admin(&self, args: &[&str]) -> String {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let out: Output = self
            .command(&args, &self.dir.path().join("admin"), &[])
            .output()
            .expect("run kiln");
        assert!(
            out.status.success(),
            "kiln {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn spawn(&mut self, name: &str, args: Vec<String>) {
        let extra = if args[0] == "worker" {
            vec![("KILN_WORKER_TOKEN".to_owned(), self.worker_token.clone())]
        } else {
            Vec::new()
        };
        self.spawn_with(name, args, extra);
    }

    fn spawn_with(&mut self, name: &str, args: Vec<String>, env: Vec<(String, String)>) {
        let open = |file: String| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.path().join(file))
                .expect("log file")
        };
        let child = self
            .command(&args, &self.dir.path().join(name), &env)
            .stdout(open(format!("{name}.out")))
            .stderr(open(format!("{name}.log")))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start kiln {}: {e}", args[0]));
        self.procs.insert(
            name.to_owned(),
            Proc {
                child: Some(child),
                args,
                env,
            },
        );
    }

    /// Starts worker `name` (its data directory and Nix store are `DIR/name`).
    pub fn start_worker(&mut self, name: &str) {
        self.spawn(name, vec!["worker".into(), "--name".into(), name.into()]);
    }

    /// Whether process `name` was started and has not exited.
    pub fn is_running(&mut self, name: &str) -> bool {
        self.procs
            .get_mut(name)
            .and_then(|p| p.child.as_mut())
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Kills process `name` with SIGKILL, together with the processes it started (a worker's
    /// `nix-store --serve` and its builders): as if its machine died.
    pub fn kill(&mut self, name: &str) {
        let proc = self
            .procs
            .get_mut(name)
            .unwrap_or_else(|| panic!("no process {name}"));
        if let Some(mut child) = proc.child.take() {
            kill_tree(child.id() as i32);
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM to process `name` and waits for it to exit; panics unless it exits
    /// cleanly.
    pub fn stop(&mut self, name: &str) {
        let proc = self
            .procs
            .get_mut(name)
            .unwrap_or_else(|| panic!("no process {name}"));
        if let Some(mut child) = proc.child.take() {
            let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
            rustix::process::kill_process(pid, rustix::process::Signal::TERM)
                .expect("send SIGTERM");
            let exit = child.wait().expect("wait for kiln");
            assert!(exit.success(), "{name} exited with {exit} after SIGTERM");
        }
    }

    /// Starts process `name` again (after [`DistFarm::kill`] or [`DistFarm::stop`]) with the
    /// same arguments and data directory; its logs continue in the same files.
    pub fn restart(&mut self, name: &str) {
        assert!(!self.is_running(name), "{name} is still running");
        let proc = self.procs.remove(name).expect("a known process");
        self.spawn_with(name, proc.args, proc.env);
    }

    /// What process `name` printed on stdout so far.
    pub fn output(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.out"))).unwrap_or_default()
    }

    /// What process `name` logged (stderr) so far.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Both coordinators' logs, one after the other.
    pub fn coordinator_logs(&self) -> String {
        COORDINATORS.iter().map(|c| self.log(c)).collect()
    }

    fn wait_output(&mut self, name: &str, line_prefix: &str) {
        let start = Instant::now();
        loop {
            if self
                .output(name)
                .lines()
                .any(|l| l.starts_with(line_prefix))
            {
                return;
            }
            assert!(
                self.is_running(name),
                "{name} exited before printing {line_prefix:?}:\n{}",
                self.log(name)
            );
            assert!(
                start.elapsed() < DEADLINE,
                "{name} did not print {line_prefix:?}:\n{}",
                self.log(name)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The end of every process's log, for failure messages.
    pub fn log_tails(&self) -> String {
        let mut text = String::new();
        for name in self.procs.keys() {
            let log = self.log(name);
            let start = log.len().saturating_sub(3000);
            let start = (start..log.len())
                .find(|i| log.is_char_boundary(*i))
                .unwrap_or(log.len());
            text.push_str(&format!("--- {name} (log tail) ---\n{}\n", &log[start..]));
        }
        text
    }

    /// `GET /api/v1/status`.
    pub fn status(&self) -> Value {
        self.get("/api/v1/status")
    }

    /// The leading coordinator, as the status shows it.
    pub fn leader(&self) -> Option<String> {
        self.status()["coordinator_leader"]
            .as_str()
            .map(str::to_owned)
    }

    /// The workers building a derivation whose path contains `drv_part`, as the last
    /// heartbeats tell: (worker, step id, started at in ms).
    pub fn running(&self, drv_part: &str) -> Vec<(String, i64, i64)> {
        let status = self.status();
        let mut found = Vec::new();
        for worker in status["workers"].as_array().into_iter().flatten() {
            for step in worker["running"].as_array().into_iter().flatten() {
                if step["drv_path"].as_str().unwrap_or("").contains(drv_part) {
                    found.push((
                        worker["name"].as_str().unwrap().to_owned(),
                        step["step_id"].as_i64().unwrap(),
                        step["started_at_ms"].as_i64().unwrap(),
                    ));
                }
            }
        }
        found
    }

    /// A new git repository `name` with `files` committed on `main`; returns its path.
    pub fn repo(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        new_repo(self.repos.path(), name, files)
    }

    /// The statuses of an evaluation's builds: job → status.
    pub fn statuses(eval: &Value) -> BTreeMap<String, String> {
        TestFarm::statuses(eval)
    }

    /// The build of `job` in evaluation `eval` (as listed in the evaluation).
    pub fn build_of<'a>(eval: &'a Value, job: &str) -> &'a Value {
        TestFarm::build_of(eval, job)
    }

    /// Step ids with the number of `step result applied` lines and of `aborted: its message
    /// reached the delivery limit` lines across both coordinators' logs, for every step either
    /// dispatched.
    pub fn step_settlements(&self) -> BTreeMap<i64, (usize, usize)> {
        let logs = self.coordinator_logs();
        let mut counts: BTreeMap<i64, (usize, usize)> = BTreeMap::new();
        for id in step_ids(&logs, "dispatched") {
            counts.entry(id).or_default();
        }
        for id in step_ids(&logs, "step result applied") {
            counts.entry(id).or_default().0 += 1;
        }
        for id in step_ids(&logs, "aborted: its message reached the delivery limit") {
            counts.entry(id).or_default().1 += 1;
        }
        counts
    }

    /// Asserts that every dispatched step settled exactly once across both coordinators: one
    /// applied result, or one abort at the delivery limit. Returns the number of steps.
    pub fn assert_settled_once(&self) -> usize {
        let counts = self.step_settlements();
        let wrong: Vec<_> = counts
            .iter()
            .filter(|(_, c)| !matches!(c, (1, 0) | (0, 1)))
            .collect();
        assert!(
            wrong.is_empty(),
            "steps not settled exactly once (step: (applied, aborted)): {wrong:?}\n{}",
            self.log_tails()
        );
        counts.len()
    }

    /// Asserts that every output of every succeeded build of `eval` substitutes into a fresh
    /// Nix store from cache `main`, trusting only its key, building nothing.
    pub fn assert_cache_consistent(&self, eval: &Value) {
        let mut paths = Vec::new();
        for build in eval["builds"].as_array().unwrap() {
            if build["status"] == "succeeded" {
                for path in build["outputs"].as_object().unwrap().values() {
                    paths.push(path.as_str().unwrap().to_owned());
                }
            }
        }
        assert!(!paths.is_empty(), "no succeeded build in {eval}");
        let stores = tempfile::tempdir().unwrap();
        let store = NixStore::new(stores.path(), "client");
        let out = store.substitute(
            &format!("{}/cache/main", self.web_url),
            &self.public_key,
            &paths,
            None,
        );
        assert!(
            out.status.success(),
            "substituting {paths:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for path in &paths {
            assert!(store.has(path), "{path} was not substituted");
        }
    }

    /// Runs `scripts/services ARGS... DIR NAME` on the shared services; panics on failure.
    pub fn services(&self, command: &str, service: &str) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services");
        let out = Command::new(script)
            .arg(command)
            .arg(&self.services_dir)
            .arg(service)
            .output()
            .expect("run scripts/services");
        assert!(
            out.status.success(),
            "scripts/services {command} {service} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for DistFarm {
    fn drop(&mut self) {
        for proc in self.procs.values_mut() {
            if let Some(mut child) = proc.child.take() {
                kill_tree(child.id() as i32);
                let _ = child.wait();
            }
        }
        // A failed test's logs are kept for a look at more than their tails.
        if std::thread::panicking() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
            eprintln!("the farm's logs are kept in {}", dir.keep().display());
        }
    }
}

/// The parent of each process, from /proc.
fn parents() -> BTreeMap<i32, i32> {
    let mut parents = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some(ppid) = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').nth(1))
            .and_then(|p| p.parse().ok())
        {
            parents.insert(pid, ppid);
        }
    }
    parents
}

/// Kills `root` and every process descending from it with SIGKILL.
fn kill_tree(root: i32) {
    let parents = parents();
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, p)| **p == parent)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    for pid in tree {
        if let Some(pid) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

impl FarmApi for DistFarm {
    const DEADLINE: Duration = DEADLINE;

    fn api_addr(&self) -> SocketAddr {
        self.web_addr
    }

    fn log_tails(&self) -> String {
        DistFarm::log_tails(self)
    }
}
