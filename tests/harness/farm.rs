//! A whole farm for end-to-end tests: `kiln up` with local workers and a config file, git
//! repositories made from files, and helpers that drive and read the JSON API.
//!
//! ```ignore
//! let farm = TestFarm::start().with_workers(2).run();
//! let repo = farm.repo("demo", &[("release.nix", "...")]);
//! farm.add_jobset("demo", "main", &repo, "release.nix");
//! let eval = farm.evaluate("demo", "main");
//! let eval = farm.wait_builds(eval);
//! ```
//!
//! Waiting has a generous deadline so that a hung farm fails the test instead of hanging it;
//! nothing asserts on how long anything took.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Body, Kiln, NixStore, http_request};

/// How long a wait may last before the test fails (hang protection only).
const DEADLINE: Duration = Duration::from_secs(600);

/// Builder of a [`TestFarm`].
pub struct TestFarmBuilder {
    workers: u32,
    sandbox_paths: Vec<String>,
    farm_settings: Vec<String>,
    extra_config: String,
    env: Vec<(String, String)>,
}

/// A running `kiln up` with workers, and a place for git repositories.
pub struct TestFarm {
    /// The server.
    pub kiln: Kiln,
    /// Where [`TestFarm::repo`] creates repositories.
    pub repos: tempfile::TempDir,
}

/// A new git repository `root/name` with `files` committed on its default branch; returns its
/// path.
pub fn new_repo(root: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    git(&dir, &["init", "-q"]);
    write_files(&dir, files);
    git(&dir, &["add", "-A"]);
    git(&dir, &["commit", "-q", "-m", "initial"]);
    dir
}

/// The farm's HTTP API as tests drive it, for `kiln up` ([`TestFarm`]) and the distributed farm
/// (`DistFarm`) alike.
pub trait FarmApi {
    /// How long a wait may last before the test fails.
    const DEADLINE: Duration;

    /// Where the API answers.
    fn api_addr(&self) -> std::net::SocketAddr;

    /// The end of the farm's logs, for failure messages.
    fn log_tails(&self) -> String;

    /// Sends a request with a JSON body (or none); returns the status and the JSON answer.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let bytes = body.map(|b| serde_json::to_vec(b).unwrap());
        let response = match &bytes {
            Some(b) => http_request(
                self.api_addr(),
                method,
                path,
                &[("Content-Type", "application/json")],
                Body::Bytes(b),
            ),
            None => http_request(self.api_addr(), method, path, &[], Body::Empty),
        };
        let value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        (response.status, value)
    }

    /// `GET path`, which must answer 200 with JSON.
    fn get(&self, path: &str) -> Value {
        let (status, value) = self.call("GET", path, None);
        assert_eq!(status, 200, "GET {path}: {value}\n{}", self.log_tails());
        value
    }

    /// `PUT` a jobset with `body`; must succeed.
    fn put_jobset(&self, project: &str, jobset: &str, body: Value) {
        let path = format!("/api/v1/projects/{project}/jobsets/{jobset}");
        let (status, answer) = self.call("PUT", &path, Some(&body));
        assert_eq!(status, 201, "PUT {path}: {answer}");
    }

    /// Creates a legacy jobset through the API with polling off (evaluations on request).
    fn add_jobset(&self, project: &str, jobset: &str, repo: &Path, expression: &str) {
        self.put_jobset(
            project,
            jobset,
            serde_json::json!({
                "url": repo.display().to_string(),
                "expression": expression,
                "check_interval": 0,
            }),
        );
    }

    /// Asks for an evaluation now; returns its id.
    fn evaluate(&self, project: &str, jobset: &str) -> i64 {
        let path = format!("/api/v1/projects/{project}/jobsets/{jobset}/evals");
        let (status, answer) = self.call("POST", &path, None);
        assert_eq!(status, 202, "POST {path}: {answer}");
        answer["id"].as_i64().unwrap()
    }

    /// Waits until `check` returns something, polling every 200 ms.
    fn wait_for<T>(&self, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(value) = check() {
                return value;
            }
            assert!(
                start.elapsed() < Self::DEADLINE,
                "gave up waiting for {what}\n{}",
                self.log_tails()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until evaluation `id` is finished (succeeded or failed); returns it.
    fn wait_eval(&self, id: i64) -> Value {
        self.wait_for(&format!("evaluation {id}"), || {
            let eval = self.get(&format!("/api/v1/evals/{id}"));
            matches!(eval["status"].as_str(), Some("succeeded" | "failed")).then_some(eval)
        })
    }

    /// Waits until evaluation `id` succeeded and every build of it finished; returns it.
    fn wait_builds(&self, id: i64) -> Value {
        let eval = self.wait_eval(id);
        assert_eq!(
            eval["status"], "succeeded",
            "evaluation {id} failed: {}",
            eval["error"]
        );
        self.wait_for(&format!("the builds of evaluation {id}"), || {
            let eval = self.get(&format!("/api/v1/evals/{id}"));
            eval["builds"]
                .as_array()
                .unwrap()
                .iter()
                .all(|b| !matches!(b["status"].as_str(), Some("queued" | "running")))
                .then_some(eval)
        })
    }
}

impl FarmApi for TestFarm {
    const DEADLINE: Duration = DEADLINE;

    fn api_addr(&self) -> std::net::SocketAddr {
        self.kiln.addr
    }

    fn log_tails(&self) -> String {
        self.kiln.log_tail()
    }
}

impl TestFarm {
    /// A farm with one worker and no jobsets.
    pub fn start() -> TestFarmBuilder {
        TestFarmBuilder {
            workers: 1,
            sandbox_paths: Vec::new(),
            farm_settings: Vec::new(),
            extra_config: String::new(),
            env: Vec::new(),
        }
    }
}

impl TestFarmBuilder {
    /// Runs `n` local workers.
    pub fn with_workers(mut self, n: u32) -> TestFarmBuilder {
        self.workers = n;
        self
    }

    /// Exposes `host` to builders at `inside` (a sandbox path), e.g. for a test to change what
    /// a build finds between two attempts.
    pub fn with_sandbox_path(mut self, inside: &str, host: &Path) -> TestFarmBuilder {
        self.sandbox_paths
            .push(format!("{inside}={}", host.display()));
        self
    }

    /// Adds a `key = value` line to the config file's `[farm]` table.
    pub fn with_farm_setting(mut self, line: &str) -> TestFarmBuilder {
        self.farm_settings.push(line.to_owned());
        self
    }

    /// Appends TOML to the config file (after `[worker]` and `[farm]` settings).
    pub fn with_config(mut self, toml: &str) -> TestFarmBuilder {
        self.extra_config.push_str(toml);
        self.extra_config.push('\n');
        self
    }

    /// Sets an environment variable of `kiln up`.
    pub fn with_env(mut self, key: &str, value: &str) -> TestFarmBuilder {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Starts it.
    pub fn run(self) -> TestFarm {
        let dir = tempfile::tempdir().expect("temporary directory");
        let config = dir.path().join("kiln.toml");
        let mut sandbox_paths = vec!["/bin/sh=/bin/busybox".to_owned(), "/bin/busybox".to_owned()];
        sandbox_paths.extend(self.sandbox_paths);
        let text = format!(
            "[worker]\nnix_options = {{ sandbox = \"true\", \"sandbox-paths\" = \"{}\" }}\n\n[farm]\nretry_backoff = 1\n{}\n\n{}",
            sandbox_paths.join(" "),
            self.farm_settings.join("\n"),
            self.extra_config
        );
        std::fs::write(&config, text).expect("write the config file");
        let args = vec![
            "--config".to_owned(),
            config.display().to_string(),
            "--workers".to_owned(),
            self.workers.to_string(),
        ];
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        TestFarm {
            kiln: Kiln::start_in(dir, args, &env),
            repos: tempfile::tempdir().expect("temporary directory"),
        }
    }
}

/// Runs git in `dir`, panicking on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=Kiln Test",
            "-c",
            "user.email=test@kiln.invalid",
        ])
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Writes `files` (relative path, contents) under `dir`.
pub fn write_files(dir: &Path, files: &[(&str, &str)]) {
    for (path, contents) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }
}

/// Copies the directory `from` into `to` (created), files only.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

impl TestFarm {
    /// A new git repository `name` with `files` committed on `main`; returns its path.
    pub fn repo(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        new_repo(self.repos.path(), name, files)
    }

    /// A new git repository `name` holding a copy of the directory `from`.
    pub fn repo_from(&self, name: &str, from: &Path) -> PathBuf {
        let dir = self.repos.path().join(name);
        copy_tree(from, &dir);
        git(&dir, &["init", "-q"]);
        git(&dir, &["add", "-A"]);
        git(&dir, &["commit", "-q", "-m", "initial"]);
        dir
    }

    /// Commits `files` to `repo`; returns the new commit.
    pub fn commit(&self, repo: &Path, files: &[(&str, &str)]) -> String {
        write_files(repo, files);
        git(repo, &["add", "-A"]);
        git(repo, &["commit", "-q", "-m", "change"]);
        git(repo, &["rev-parse", "HEAD"])
    }

    /// The build of `job` in evaluation `eval` (as listed in the evaluation).
    pub fn build_of<'a>(eval: &'a Value, job: &str) -> &'a Value {
        eval["builds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["job"] == job)
            .unwrap_or_else(|| panic!("no build of {job} in {eval}"))
    }

    /// The statuses of an evaluation's builds: job → status.
    pub fn statuses(eval: &Value) -> std::collections::BTreeMap<String, String> {
        eval["builds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                (
                    b["job"].as_str().unwrap().to_owned(),
                    b["status"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// Every step result the coordinator applied so far (one per build of a derivation), from
    /// the server's log, across restarts.
    pub fn steps_finished(&self) -> Vec<String> {
        self.kiln
            .log()
            .lines()
            .filter(|l| l.contains("step result applied"))
            .map(str::to_owned)
            .collect()
    }

    /// A fresh Nix store substituting from this farm's cache only.
    pub fn client_store(&self, parent: &Path, name: &str) -> NixStore {
        NixStore::new(parent, name)
    }
}

impl Kiln {
    /// The end of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let start = log.len().saturating_sub(6000);
        let start = (start..log.len())
            .find(|i| log.is_char_boundary(*i))
            .unwrap_or(log.len());
        format!("--- kiln log (tail) ---\n{}", &log[start..])
    }
}

impl TestFarm {
    /// Kills `kiln up` with SIGKILL in the middle of whatever it does and starts it again on
    /// the same data directory and config (on a new port).
    pub fn crash_and_restart(self) -> TestFarm {
        TestFarm {
            kiln: self.kiln.crash_and_restart(),
            repos: self.repos,
        }
    }
}

/// The `step=<id>` values of the log lines containing `event`.
pub fn step_ids(log: &str, event: &str) -> Vec<i64> {
    log.lines()
        .filter(|l| l.contains(event))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|field| field.strip_prefix("step="))
                .and_then(|id| id.parse().ok())
        })
        .collect()
}
