//! The `nix-store --serve --write` child process: start, greeting, one command at a time with
//! its stderr pumped to a sink, and stopping it.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio_util::sync::CancellationToken;

use super::Interrupted;
use super::wire::{Request, WireError, read_int};

/// `SERVE_MAGIC_1`: the client's greeting.
const SERVE_MAGIC_1: u64 = 0x390c_9deb;
/// `SERVE_MAGIC_2`: the server's answer.
const SERVE_MAGIC_2: u64 = 0x5452_eecb;
/// The protocol version this client speaks: 2.7 (Nix 2.8's own).
const CLIENT_VERSION: u64 = 0x207;
/// Oldest server minor version understood: 6 writes path info hashes and built outputs.
const MIN_SERVER_MINOR: u64 = 6;
/// How long the greeting may take (Nix opens the store first).
const GREETING_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a process gets to stop its build and exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How much of the latest stderr output is kept for error messages.
const TAIL_BYTES: usize = 4096;

/// Receives what the serve process prints on stderr while a command runs.
pub trait StderrSink: Send {
    /// Called with each chunk as it is read; chunks do not respect line boundaries.
    fn chunk(&mut self, data: &[u8]);
}

impl StderrSink for Vec<u8> {
    fn chunk(&mut self, data: &[u8]) {
        self.extend_from_slice(data);
    }
}

/// How to start a serve process.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The `nix-store` program (a name looked up in `PATH`, or a path).
    pub program: PathBuf,
    /// The chroot store it serves (`--store`).
    pub store_root: PathBuf,
    /// `--option NAME VALUE` pairs, in order (later ones win).
    pub options: Vec<(String, String)>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
}

/// Why a serve process failed.
#[derive(Debug, Error)]
pub enum ServeError {
    /// The program could not be started.
    #[error("cannot start {program}")]
    Spawn {
        /// The program.
        program: String,
        /// The operating system's error.
        source: io::Error,
    },
    /// Setting up the pipes failed.
    #[error("cannot set up the pipes to nix-store --serve")]
    Pipes(#[source] io::Error),
    /// The greeting was wrong or came too late.
    #[error("nix-store --serve did not greet correctly: {0}")]
    Greeting(String),
    /// An earlier command failed or was abandoned half-way, so the process cannot be trusted
    /// to be in step with the protocol.
    #[error("nix-store --serve failed earlier and cannot take commands")]
    Unusable,
    /// Writing a request failed.
    #[error("cannot write to nix-store --serve")]
    Write(#[source] io::Error),
    /// Reading an answer failed; `exit` and `stderr` say what the process reported.
    #[error("nix-store --serve failed ({exit}): {source}{}", stderr_suffix(.stderr))]
    Failed {
        /// The exit status if it has exited, else "still running".
        exit: String,
        /// The last lines the process printed on stderr.
        stderr: String,
        /// The read error.
        source: WireError,
    },
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; it printed: {stderr}")
    }
}

/// A running `nix-store --serve --write` that has been greeted.
pub struct ServeProcess {
    child: Child,
    /// `None` once the process is being stopped.
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    stderr: pipe::Receiver,
    tail: VecDeque<u8>,
    healthy: bool,
}

impl std::fmt::Debug for ServeProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeProcess")
            .field("pid", &self.child.id())
            .field("healthy", &self.healthy)
            .finish()
    }
}

/// The boxed future a command's answer reader returns.
pub type AnswerFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, WireError>> + Send + 'a>>;

impl ServeProcess {
    /// Starts the process and exchanges the greeting.
    pub async fn start(opts: &ServeOptions) -> Result<ServeProcess, ServeError> {
        let mut cmd = Command::new(&opts.program);
        cmd.arg("--serve")
            .arg("--write")
            .arg("--store")
            .arg(&opts.store_root);
        for (name, value) in &opts.options {
            cmd.arg("--option").arg(name).arg(value);
        }
        cmd.envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| ServeError::Spawn {
            program: opts.program.display().to_string(),
            source,
        })?;
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
        let stderr = child
            .stderr
            .take()
            .expect("stderr is piped")
            .into_owned_fd()
            .and_then(pipe::Receiver::from_owned_fd)
            .map_err(ServeError::Pipes)?;
        let mut process = ServeProcess {
            child,
            stdin: Some(stdin),
            stdout,
            stderr,
            tail: VecDeque::new(),
            healthy: true,
        };
        match tokio::time::timeout(GREETING_TIMEOUT, process.greet()).await {
            Ok(Ok(())) => Ok(process),
            Ok(Err(err)) => {
                let detail = process.failure_detail().await;
                Err(ServeError::Greeting(format!("{err}{detail}")))
            }
            Err(_) => Err(ServeError::Greeting(format!(
                "no answer within {} s",
                GREETING_TIMEOUT.as_secs()
            ))),
        }
    }

    async fn greet(&mut self) -> Result<(), String> {
        let mut req = Request::new();
        req.int(SERVE_MAGIC_1).int(CLIENT_VERSION);
        self.send(&req)
            .await
            .map_err(|e| format!("cannot write the greeting: {e}"))?;
        let magic = read_int(&mut self.stdout)
            .await
            .map_err(|e| format!("no greeting: {e}"))?;
        if magic != SERVE_MAGIC_2 {
            return Err(format!("wrong magic number {magic:#x}"));
        }
        let version = read_int(&mut self.stdout)
            .await
            .map_err(|e| format!("no protocol version: {e}"))?;
        if version & 0xff00 != CLIENT_VERSION & 0xff00 || version & 0xff < MIN_SERVER_MINOR {
            return Err(format!(
                "protocol version {}.{} is not supported (need 2.{MIN_SERVER_MINOR} or later)",
                version >> 8,
                version & 0xff
            ));
        }
        Ok(())
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Whether the process can take another command: it answered every command so far.
    pub fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// Sends `req` and reads its answer with `read`, pumping stderr to `sink` meanwhile. A
    /// cancellation stops the process; any failure marks it unhealthy.
    pub(crate) async fn exchange<T, F>(
        &mut self,
        req: Request,
        sink: &mut dyn StderrSink,
        cancel: Option<&CancellationToken>,
        read: F,
    ) -> Result<T, Interrupted>
    where
        F: for<'a> FnOnce(&'a mut BufReader<ChildStdout>) -> AnswerFuture<'a, T>,
    {
        if !self.healthy {
            return Err(Interrupted::Broken(ServeError::Unusable));
        }
        // Output printed between commands (warnings at start) belongs to no command.
        let mut idle = Vec::new();
        self.drain_stderr(&mut idle);
        if !idle.is_empty() {
            tracing::debug!(output = %String::from_utf8_lossy(&idle), "nix-store --serve printed between commands");
        }
        // Unhealthy until the answer is read whole: if this future is dropped half-way, the
        // process is out of step with the protocol and must not take another command.
        self.healthy = false;
        if let Err(err) = self.send(&req).await {
            return Err(Interrupted::Broken(ServeError::Write(err)));
        }

        let outcome = {
            let answer = read(&mut self.stdout);
            pump(&self.stderr, &mut self.tail, answer, sink, cancel).await
        };
        match outcome {
            Pumped::Answer(Ok(value)) => {
                self.drain_stderr(sink);
                self.healthy = true;
                Ok(value)
            }
            Pumped::Answer(Err(source)) => {
                let detail = self.failure_detail().await;
                let exit = match self.child.try_wait() {
                    Ok(Some(status)) => describe_exit(status),
                    _ => "still running".to_owned(),
                };
                Err(Interrupted::Broken(ServeError::Failed {
                    exit,
                    stderr: detail.trim_start_matches(": ").to_owned(),
                    source,
                }))
            }
            Pumped::Cancelled => {
                self.stop().await;
                // What Nix prints while stopping ("interrupted by the user") is not the
                // build's output; it is kept only for diagnostics.
                self.drain_stderr(&mut Vec::new());
                Err(Interrupted::Cancelled)
            }
        }
    }

    async fn send(&mut self, req: &Request) -> io::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "the process is stopping"))?;
        stdin.write_all(req.as_bytes()).await?;
        stdin.flush().await
    }

    /// Reads whatever stderr holds right now, without waiting.
    fn drain_stderr(&mut self, sink: &mut dyn StderrSink) {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match self.stderr.try_read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    remember(&mut self.tail, &buf[..n]);
                    sink.chunk(&buf[..n]);
                }
            }
        }
    }

    /// After a failure: waits briefly for the process to exit and for its last words, and
    /// returns them as `": <text>"` (empty if it printed nothing).
    async fn failure_detail(&mut self) -> String {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await;
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            let mut buf = [0u8; 16 * 1024];
            loop {
                if self.stderr.readable().await.is_err() {
                    return;
                }
                match self.stderr.try_read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => rest.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        })
        .await;
        remember(&mut self.tail, &rest);
        let text = String::from_utf8_lossy(self.tail.make_contiguous())
            .trim()
            .to_owned();
        if text.is_empty() {
            text
        } else {
            format!(": {text}")
        }
    }

    /// Stops the process: closing stdin ends an idle process, SIGTERM makes Nix interrupt a
    /// build and kill the builder; SIGKILL follows if it has not exited after a grace period.
    pub async fn stop(&mut self) {
        self.healthy = false;
        self.stdin = None;
        if let Some(pid) = self
            .child
            .id()
            .and_then(|id| rustix::process::Pid::from_raw(id as i32))
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        if tokio::time::timeout(STOP_GRACE, self.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(pid = ?self.child.id(), "nix-store --serve ignored SIGTERM; killing it");
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }
}

impl Drop for ServeProcess {
    /// A process dropped while it runs gets SIGTERM, so Nix stops a build in flight and cleans
    /// up after it (SIGKILL would leave that to the kernel); an idle one also exits on its own
    /// when its stdin closes. Tokio reaps it in the background.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait()
            && let Some(pid) = self
                .child
                .id()
                .and_then(|id| rustix::process::Pid::from_raw(id as i32))
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }
}

enum Pumped<T> {
    Answer(Result<T, WireError>),
    Cancelled,
}

/// Waits for `answer` while forwarding stderr to `sink`, or for `cancel`.
async fn pump<T>(
    stderr: &pipe::Receiver,
    tail: &mut VecDeque<u8>,
    answer: AnswerFuture<'_, T>,
    sink: &mut dyn StderrSink,
    cancel: Option<&CancellationToken>,
) -> Pumped<T> {
    let mut answer = answer;
    let cancelled = async {
        match cancel {
            Some(token) => token.cancelled().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(cancelled);
    let mut buf = vec![0u8; 64 * 1024];
    let mut stderr_open = true;
    loop {
        tokio::select! {
            biased;
            () = &mut cancelled => return Pumped::Cancelled,
            ready = stderr.readable(), if stderr_open => {
                if ready.is_err() {
                    stderr_open = false;
                    continue;
                }
                loop {
                    match stderr.try_read(&mut buf) {
                        Ok(0) => {
                            stderr_open = false;
                            break;
                        }
                        Ok(n) => {
                            remember(tail, &buf[..n]);
                            sink.chunk(&buf[..n]);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            stderr_open = false;
                            break;
                        }
                    }
                }
            }
            result = &mut answer => return Pumped::Answer(result),
        }
    }
}

fn remember(tail: &mut VecDeque<u8>, data: &[u8]) {
    let data = &data[data.len().saturating_sub(TAIL_BYTES)..];
    let excess = (tail.len() + data.len()).saturating_sub(TAIL_BYTES);
    tail.drain(..excess);
    tail.extend(data);
}

fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_keeps_only_the_latest_bytes() {
        let mut tail = VecDeque::new();
        remember(&mut tail, &[b'a'; TAIL_BYTES]);
        remember(&mut tail, b"end");
        assert_eq!(tail.len(), TAIL_BYTES);
        assert!(tail.make_contiguous().ends_with(b"aend"));
        remember(&mut tail, &vec![b'z'; TAIL_BYTES * 2]);
        assert_eq!(tail.len(), TAIL_BYTES);
        assert!(tail.iter().all(|&b| b == b'z'));
    }
}
