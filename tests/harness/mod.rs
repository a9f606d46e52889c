//! A running Kiln for end-to-end tests: `kiln up` on a free loopback port in a temporary data
//! directory, Nix stores that push to it and substitute from it, and a small HTTP client for the
//! raw requests real clients would never send.
//!
//! Every server is stopped by its PID when its [`Kiln`] is dropped, also when a test panics.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use tempfile::TempDir;

pub mod dist;
pub mod farm;

/// A `kiln up` process and its data directory.
pub struct Kiln {
    child: Option<Child>,
    dir: TempDir,
    env: Vec<(String, String)>,
    /// Arguments after `up --listen 127.0.0.1:0` (and before `--data-dir`).
    args: Vec<String>,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The default cache's public key, as printed at start.
    pub public_key: String,
    /// The default cache's substituter URL, as printed at start.
    pub substituter: String,
}

fn kiln_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kiln")
}

impl Kiln {
    /// Starts `kiln up --workers 0` with no configuration file in a new data directory.
    pub fn start() -> Kiln {
        Kiln::start_with(&[])
    }

    /// Like [`Kiln::start`], with extra environment variables (`KILN_*` overrides).
    pub fn start_with(env: &[(&str, &str)]) -> Kiln {
        let dir = tempfile::tempdir().expect("temporary directory");
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Kiln::spawn(dir, env, vec!["--workers".to_owned(), "0".to_owned()])
    }

    /// Starts `kiln up` with `args` (e.g. `--config FILE --workers 2`) in `dir` (its data
    /// directory is `dir/data`).
    pub fn start_in(dir: TempDir, args: Vec<String>, env: &[(&str, &str)]) -> Kiln {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Kiln::spawn(dir, env, args)
    }

    /// The temporary directory holding the data directory and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn spawn(dir: TempDir, env: Vec<(String, String)>, args: Vec<String>) -> Kiln {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("kiln.log"))
            .expect("log file");
        let mut child = Command::new(kiln_bin())
            .args(["up", "--listen", "127.0.0.1:0"])
            .args(&args)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("KILN_LOG", "info,kiln_cache=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start kiln up");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut fact = |prefix: &str| -> String {
            match lines.next() {
                Some(Ok(line)) => line
                    .strip_prefix(prefix)
                    .unwrap_or_else(|| panic!("expected {prefix:?}, kiln printed {line:?}"))
                    .to_owned(),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "kiln up exited before announcing itself:\n{}",
                        std::fs::read_to_string(dir.path().join("kiln.log")).unwrap_or_default()
                    )
                }
            }
        };
        let serving = fact("kiln: serving ");
        let substituter = fact("kiln: substituter ");
        let public_key = fact("kiln: public key ");
        let base = serving.split(' ').next().unwrap().to_owned();
        let addr = base
            .strip_prefix("http://")
            .unwrap()
            .parse()
            .expect("bound address");
        Kiln {
            child: Some(child),
            dir,
            env,
            args,
            base,
            addr,
            public_key,
            substituter,
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The substituter URL of cache `name`.
    pub fn cache_url(&self, name: &str) -> String {
        format!("{}/cache/{name}", self.base)
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The most resident memory the server has used so far (`VmHWM`), in bytes.
    pub fn peak_memory(&self) -> u64 {
        let pid = self.pid().expect("kiln up is running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse().ok())
            .expect("a VmHWM line in kB");
        kib * 1024
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kiln.log")).unwrap_or_default()
    }

    /// Runs an admin command (`kiln <args> --data-dir <data>`) against this server's data.
    pub fn admin(&self, args: &[&str]) -> Output {
        Command::new(kiln_bin())
            .args(args)
            .arg("--data-dir")
            .arg(self.data_dir())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("run kiln")
    }

    fn admin_ok(&self, args: &[&str]) -> String {
        let out = self.admin(args);
        assert!(
            out.status.success(),
            "kiln {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `kiln cache create`; returns the new cache's public key.
    pub fn create_cache(&self, name: &str, private: bool) -> String {
        let mut args = vec!["cache", "create", name];
        if private {
            args.push("--private");
        }
        let out = self.admin_ok(&args);
        out.lines()
            .find_map(|l| l.strip_prefix("public key: "))
            .expect("public key line")
            .to_owned()
    }

    /// `kiln token create`; returns the token (the last line printed).
    pub fn token(&self, cache: &str, perm: &str) -> String {
        let out = self.admin_ok(&["token", "create", "--cache", cache, "--perm", perm]);
        out.lines().last().expect("token line").to_owned()
    }

    /// Stops the server with SIGTERM and waits for it; panics unless it exits cleanly.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("a child has a PID");
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("send SIGTERM");
        let exit = child.wait().expect("wait for kiln");
        assert!(
            exit.success(),
            "kiln up exited with {exit} after SIGTERM:\n{}",
            self.log()
        );
    }

    /// Kills the server with SIGKILL (no chance to clean up) and starts a new one on the same
    /// data directory (on a new port).
    pub fn crash_and_restart(mut self) -> Kiln {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL kiln");
            child.wait().expect("wait for kiln");
        }
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let env = std::mem::take(&mut self.env);
        let args = std::mem::take(&mut self.args);
        Kiln::spawn(dir, env, args)
    }

    /// Stops the server and starts a new one on the same data directory (on a new port).
    pub fn restart(mut self) -> Kiln {
        self.stop();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let env = std::mem::take(&mut self.env);
        let args = std::mem::take(&mut self.args);
        Kiln::spawn(dir, env, args)
    }

    /// Sends one HTTP request to the server.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Body<'_>,
    ) -> Response {
        http_request(self.addr, method, path, headers, body)
    }
}

impl Drop for Kiln {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Which blob store a test server keeps its cache in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A directory under the server's data directory (the default).
    Local,
    /// A bucket of an [`S3Server`] started for the test.
    S3,
}

/// The bucket test servers use on an [`S3Server`].
pub const S3_BUCKET: &str = "kiln";

/// An S3-compatible server (s3s-fs, started through `scripts/s3-server`) on a free loopback port
/// with its data in a temporary directory; stopped by its PID when dropped. s3s-fs keeps each
/// object as a file under `<data>/<bucket>/<key>`, so tests can look at what is stored.
pub struct S3Server {
    dir: TempDir,
    pid: i32,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// The access key id it accepts.
    pub access_key_id: String,
    secret_file: PathBuf,
}

impl S3Server {
    /// Starts a server with one bucket, [`S3_BUCKET`]. Panics, saying how to install it, if
    /// s3s-fs is not installed.
    pub fn start() -> S3Server {
        let dir = tempfile::tempdir().expect("temporary directory");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/s3-server");
        let out = Command::new(script)
            .arg("start")
            .arg(dir.path())
            .arg(S3_BUCKET)
            .output()
            .expect("run scripts/s3-server");
        assert!(
            out.status.success(),
            "cannot start the S3 test server: {}\nThe S3 tests need s3s-fs: install it with \
             `scripts/s3-server install` (cargo install s3s-fs --version 0.14.1 --features \
             binary --locked); scripts/test does this before running the tests.",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        let value = |name: &str| -> String {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("scripts/s3-server did not print {name}: {stdout}"))
                .to_owned()
        };
        let secret_file = dir.path().join("secret");
        std::fs::write(&secret_file, value("S3_SECRET_ACCESS_KEY")).unwrap();
        S3Server {
            pid: value("S3_PID").parse().expect("numeric PID"),
            endpoint: value("S3_ENDPOINT"),
            access_key_id: value("S3_ACCESS_KEY_ID"),
            secret_file,
            dir,
        }
    }

    /// The folder holding the objects of [`S3_BUCKET`], one file per object.
    pub fn bucket_dir(&self) -> PathBuf {
        self.dir.path().join("data").join(S3_BUCKET)
    }

    /// The `KILN_*` variables that put a server's cache in this bucket.
    pub fn kiln_env(&self) -> Vec<(String, String)> {
        [
            ("KILN_CACHE__STORAGE__TYPE", "s3".to_owned()),
            ("KILN_CACHE__STORAGE__BUCKET", S3_BUCKET.to_owned()),
            ("KILN_CACHE__STORAGE__ENDPOINT", self.endpoint.clone()),
            ("KILN_CACHE__STORAGE__ALLOW_HTTP", "true".to_owned()),
            (
                "KILN_CACHE__STORAGE__ACCESS_KEY_ID",
                self.access_key_id.clone(),
            ),
            (
                "KILN_CACHE__STORAGE__SECRET_ACCESS_KEY_FILE",
                self.secret_file.display().to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let Some(pid) = rustix::process::Pid::from_raw(self.pid) else {
            return;
        };
        if rustix::process::kill_process(pid, rustix::process::Signal::TERM).is_err() {
            return;
        }
        // Not our child (the script started it), so it cannot be waited for: watch it end.
        for _ in 0..500 {
            if !process_runs(self.pid) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// Whether process `pid` runs; a zombie that nobody has reaped yet does not.
fn process_runs(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            Some(state != 'Z')
        })
        .unwrap_or(false)
}

/// A Kiln server on a chosen backend, with the S3 server it uses if any (stopped after it).
pub struct TestCache {
    /// The server.
    pub kiln: Kiln,
    /// The S3 server, for [`Backend::S3`].
    pub s3: Option<S3Server>,
}

impl TestCache {
    /// Starts an S3 server if `backend` needs one, then `kiln up` on it with `env` on top.
    pub fn start(backend: Backend, env: &[(&str, &str)]) -> TestCache {
        let s3 = (backend == Backend::S3).then(S3Server::start);
        let mut all: Vec<(String, String)> =
            s3.as_ref().map(S3Server::kiln_env).unwrap_or_default();
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let pairs: Vec<(&str, &str)> = all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        TestCache {
            kiln: Kiln::start_with(&pairs),
            s3,
        }
    }

    /// The folder where the objects of cache `name` are files: a static binary cache that
    /// `file://` substitution can read.
    pub fn objects(&self, name: &str) -> PathBuf {
        match &self.s3 {
            Some(s3) => s3.bucket_dir().join(name),
            None => self.kiln.data_dir().join("cache").join(name),
        }
    }
}

impl std::ops::Deref for TestCache {
    type Target = Kiln;

    fn deref(&self) -> &Kiln {
        &self.kiln
    }
}

/// A Nix store in a directory of its own (a chroot store), with its own narinfo disk cache so
/// that what one client pushed is not taken from a local cache by another.
pub struct NixStore {
    /// The directory (`--store`).
    pub root: PathBuf,
    xdg_cache: PathBuf,
}

/// Options every Nix call gets: no substituter but the ones a test names, and the sandbox.
const SANDBOX: &[&str] = &[
    "--option",
    "sandbox",
    "true",
    "--option",
    "sandbox-paths",
    "/bin/sh=/bin/busybox /bin/busybox",
];

impl NixStore {
    /// A new, empty store under `parent/name`.
    pub fn new(parent: &Path, name: &str) -> NixStore {
        NixStore {
            root: parent.join(name),
            xdg_cache: parent.join(format!("{name}-xdg-cache")),
        }
    }

    /// The same store used by another client: its own narinfo disk cache. Nix 2.8 processes
    /// sharing one disk cache can fail with a SQLite constraint error when they start together.
    pub fn another_client(&self, name: &str) -> NixStore {
        NixStore {
            root: self.root.clone(),
            xdg_cache: self.xdg_cache.with_extension(name),
        }
    }

    fn command(&self, program: &str, before: &[&str]) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(before)
            .arg("--store")
            .arg(&self.root)
            .args(SANDBOX)
            .env("XDG_CACHE_HOME", &self.xdg_cache);
        if program == "nix" {
            cmd.args(["--extra-experimental-features", "nix-command"]);
        }
        cmd
    }

    /// Builds the derivations of the Nix expression `expr` with no substituters; returns the
    /// output paths.
    pub fn build(&self, expr: &str) -> Vec<String> {
        let file = self.root.with_extension("nix");
        std::fs::write(&file, expr).unwrap();
        let out = self
            .command("nix-build", &[])
            .args(["--option", "substituters", "", "--no-out-link"])
            .arg(&file)
            .output()
            .expect("run nix-build");
        assert!(
            out.status.success(),
            "nix-build failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// `nix-store -qR`: the closure of `paths`.
    pub fn closure(&self, paths: &[String]) -> Vec<String> {
        let out = self
            .command("nix-store", &["-qR"])
            .args(paths)
            .output()
            .expect("run nix-store");
        assert!(
            out.status.success(),
            "nix-store -qR failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// `nix-store --query --references`: the references of one path.
    pub fn references(&self, path: &str) -> Vec<String> {
        let out = self
            .command("nix-store", &["--query", "--references"])
            .arg(path)
            .output()
            .expect("run nix-store");
        assert!(
            out.status.success(),
            "nix-store --query --references failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// `nix copy --to <url>` of `paths`, optionally with a netrc file.
    pub fn copy_to(&self, url: &str, paths: &[String], netrc: Option<&Path>) -> Output {
        let mut cmd = self.command("nix", &["copy"]);
        cmd.args(["--option", "substituters", ""])
            .arg("--to")
            .arg(url)
            .args(paths);
        if let Some(netrc) = netrc {
            cmd.arg("--option").arg("netrc-file").arg(netrc);
        }
        cmd.output().expect("run nix copy")
    }

    /// Like [`NixStore::copy_to`], with extra Nix options (`--option NAME VALUE`).
    pub fn copy_to_with_options(
        &self,
        url: &str,
        paths: &[String],
        netrc: Option<&Path>,
        options: &[(&str, &str)],
    ) -> Output {
        let mut cmd = self.command("nix", &["copy"]);
        cmd.args(["--option", "substituters", ""])
            .arg("--to")
            .arg(url)
            .args(paths);
        if let Some(netrc) = netrc {
            cmd.arg("--option").arg("netrc-file").arg(netrc);
        }
        for (name, value) in options {
            cmd.args(["--option", name, value]);
        }
        cmd.output().expect("run nix copy")
    }

    /// `nix store copy-log --to <url>` for the derivation of `path`.
    pub fn copy_log(&self, url: &str, path: &str, netrc: Option<&Path>) -> Output {
        let mut cmd = self.command("nix", &["store", "copy-log"]);
        cmd.args(["--option", "substituters", ""])
            .arg("--to")
            .arg(url)
            .arg(path);
        if let Some(netrc) = netrc {
            cmd.arg("--option").arg("netrc-file").arg(netrc);
        }
        cmd.output().expect("run nix store copy-log")
    }

    /// `nix-store -r --max-jobs 0` of `paths`, substituting only from `url` and trusting only
    /// `trusted_key`.
    pub fn substitute(
        &self,
        url: &str,
        trusted_key: &str,
        paths: &[String],
        netrc: Option<&Path>,
    ) -> Output {
        let mut cmd = self.command("nix-store", &["-r"]);
        cmd.args([
            "--max-jobs",
            "0",
            "--option",
            "substituters",
            url,
            "--option",
            "trusted-public-keys",
            trusted_key,
        ])
        .args(paths);
        if let Some(netrc) = netrc {
            cmd.arg("--option").arg("netrc-file").arg(netrc);
        }
        cmd.output().expect("run nix-store -r")
    }

    /// Whether `path` (a full store path) is in this store.
    pub fn has(&self, path: &str) -> bool {
        self.root.join(path.trim_start_matches('/')).exists()
    }

    /// The file system location of `path` in this store.
    pub fn real_path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }
}

/// A netrc file giving `token` as the password for 127.0.0.1.
pub fn write_netrc(dir: &Path, name: &str, token: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!("machine 127.0.0.1\nlogin kiln\npassword {token}\n"),
    )
    .unwrap();
    path
}

/// A chain of `n` sandboxed derivations, each referring to the previous one (input-addressed,
/// so Nix needs a trusted signature to substitute them). `tag` makes the paths unique to a test.
pub fn chain_expr(tag: &str, n: usize) -> String {
    let mut expr = String::from("let\n");
    expr.push_str(&format!(
        "  d0 = derivation {{ name = \"{tag}-0\"; system = builtins.currentSystem; builder = \"/bin/sh\"; \
         args = [ \"-c\" \"echo {tag} leaf > $out\" ]; }};\n"
    ));
    for i in 1..n {
        expr.push_str(&format!(
            "  d{i} = derivation {{ name = \"{tag}-{i}\"; system = builtins.currentSystem; builder = \"/bin/sh\"; \
             args = [ \"-c\" \"echo building {tag}-{i}; echo ${{d{}}} > $out\" ]; }};\n",
            i - 1
        ));
    }
    expr.push_str(&format!("in d{}\n", n - 1));
    expr
}

/// What a test sends as a request body.
pub enum Body<'a> {
    /// No body.
    Empty,
    /// A body with its Content-Length.
    Bytes(&'a [u8]),
    /// A body in chunked transfer encoding (no Content-Length).
    Chunked(&'a [u8]),
    /// Only a Content-Length header claiming this size, and no bytes.
    ClaimedLength(u64),
}

/// An HTTP response.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header names in lower case, with their values.
    pub headers: Vec<(String, String)>,
    /// The decoded body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Body<'_>,
) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect to kiln");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    match &body {
        Body::Empty => head.push_str("Content-Length: 0\r\n"),
        Body::Bytes(b) => head.push_str(&format!("Content-Length: {}\r\n", b.len())),
        Body::Chunked(_) => head.push_str("Transfer-Encoding: chunked\r\n"),
        Body::ClaimedLength(n) => head.push_str(&format!("Content-Length: {n}\r\n")),
    }
    head.push_str("\r\n");
    // Writes may fail once the server has answered early and closed; the answer still counts.
    let _ = stream.write_all(head.as_bytes());
    match body {
        Body::Bytes(b) => {
            let _ = stream.write_all(b);
        }
        Body::Chunked(b) => {
            for chunk in b.chunks(16 * 1024) {
                let _ = stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes());
                let _ = stream.write_all(chunk);
                let _ = stream.write_all(b"\r\n");
            }
            let _ = stream.write_all(b"0\r\n\r\n");
        }
        Body::Empty | Body::ClaimedLength(_) => {}
    }
    let mut raw = Vec::new();
    if let Err(e) = stream.read_to_end(&mut raw)
        && raw.is_empty()
    {
        panic!("no response to {method} {path}: {e}");
    }
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Response {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head");
    let head = std::str::from_utf8(&raw[..split]).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap().trim(), 16)
                .unwrap();
        data = &data[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}
