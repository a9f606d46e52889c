//! One walker process: runs a batch of attribute paths and reports each as its line arrives.

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc::UnboundedSender;

use super::EvalError;
use super::command::Command;
use super::jobs::Record;
use super::walk::MAX_DEPTH;

/// An attribute path, from the top level down.
pub(crate) type AttrPath = Vec<String>;

/// The most of Nix's output kept as a failure's message (the end is kept: Nix prints the error
/// last).
const MAX_MESSAGE_BYTES: usize = 32 * 1024;

/// The line Nix adds after every error, which says nothing about the error.
const SHOW_TRACE_HINT: &str = "(use '--show-trace' to show detailed location information)";

/// The longest stderr line read whole; longer lines are cut (a `names` record of a huge set
/// fits well within it).
const MAX_LINE_BYTES: usize = 256 * 1024 * 1024;

/// What a batch reports, in order; [`Report::Finished`] comes last.
#[derive(Debug)]
pub(crate) enum Report {
    /// A path evaluated to `record`.
    Record {
        /// The path.
        path: AttrPath,
        /// What it is.
        record: Record,
        /// For attribute sets: whether this process walks the children itself (else they are
        /// for the queue).
        walked_here: bool,
    },
    /// A path failed with a `throw` or an `assert`, caught in the process (no message).
    Caught {
        /// The path.
        path: AttrPath,
    },
    /// The process is gone.
    Finished {
        /// Whether the batch ran alone (one path whose failure is its own).
        alone: bool,
        /// `Ok(None)` when every path was reported, `Ok(Some(..))` when the process ended
        /// before that, `Err` when the evaluator could not run or spoke nonsense.
        result: Result<Option<Crash>, EvalError>,
    },
}

/// How a process ended early.
#[derive(Debug)]
pub(crate) struct Crash {
    /// The path it was evaluating, if it had started one.
    pub(crate) in_progress: Option<AttrPath>,
    /// What Nix printed since that path started (or since the start), or how the process died.
    pub(crate) message: String,
    /// Paths of the batch it never started.
    pub(crate) unreported: Vec<AttrPath>,
}

/// Runs `paths` (alone or as a batch that may take on up to `budget` paths in all, descendants
/// included) in one walker process and sends what happens to `reports`.
pub(crate) async fn run_batch(
    command: &Command,
    paths: Vec<AttrPath>,
    alone: bool,
    budget: usize,
    reports: UnboundedSender<Report>,
) {
    let result = run(command, paths, alone, budget, &reports).await;
    // The receiver only goes away when the evaluation is abandoned.
    let _ = reports.send(Report::Finished { alone, result });
}

async fn run(
    command: &Command,
    mut paths: Vec<AttrPath>,
    alone: bool,
    budget: usize,
    reports: &UnboundedSender<Report>,
) -> Result<Option<Crash>, EvalError> {
    let request = command.batch_request(&paths, alone, budget);
    let mut total = paths.len();
    let mut child = command
        .walker(&request)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| EvalError::Spawn {
            program: command.program.display().to_string(),
            source,
        })?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| EvalError::Protocol("no stderr pipe".into()))?;
    let mut reader = BufReader::new(stderr);

    let prefix = format!("trace: {}", command.marker);
    let mut next = 0;
    let mut in_progress: Option<usize> = None;
    let mut output = Tail::default();
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = read_line(&mut reader, &mut line).await.map_err(|e| {
            EvalError::Protocol(format!("reading the evaluator's output failed: {e}"))
        })?;
        if read == 0 {
            break;
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        let Some(event) = text.strip_prefix(&prefix) else {
            output.push(text);
            continue;
        };
        let protocol =
            |what: &str| EvalError::Protocol(format!("{what}: {}", truncate(event, 200)));
        if let Some(started) = event.strip_prefix('S') {
            let path: AttrPath =
                serde_json::from_str(started).map_err(|_| protocol("bad start line"))?;
            if in_progress.is_some() || paths.get(next) != Some(&path) {
                return Err(protocol("start of an unexpected attribute"));
            }
            in_progress = Some(next);
            next += 1;
            output.clear();
        } else if let Some(result) = event.strip_prefix('R') {
            let index = in_progress
                .take()
                .ok_or_else(|| protocol("result before start"))?;
            let record: Record =
                serde_json::from_str(result).map_err(|e| protocol(&format!("bad result ({e})")))?;
            let path = paths[index].clone();
            // The walker's `takes`: the same rule, applied to the same sequence.
            let mut walked_here = false;
            if let Record::Attrs { names } = &record
                && path.len() < MAX_DEPTH
                && total + names.len() <= budget
            {
                walked_here = true;
                total += names.len();
                for name in names {
                    let mut child = path.clone();
                    child.push(name.clone());
                    paths.push(child);
                }
            }
            let _ = reports.send(Report::Record {
                path,
                record,
                walked_here,
            });
        } else if event == "C" {
            let index = in_progress
                .take()
                .ok_or_else(|| protocol("failure before start"))?;
            let _ = reports.send(Report::Caught {
                path: paths[index].clone(),
            });
        } else {
            return Err(protocol("unknown line"));
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|e| EvalError::Protocol(format!("waiting for the evaluator failed: {e}")))?;

    if status.success() && in_progress.is_none() && next == paths.len() {
        return Ok(None);
    }
    let mut message = output.text();
    if !status.success() {
        let how = describe_exit(status);
        if message.is_empty() {
            message = format!("the evaluator process {how}");
        } else if status.signal().is_some() {
            message = format!("{message}\n(the evaluator process {how})");
        }
    } else if message.is_empty() {
        message = "the evaluator process exited before evaluating this attribute".into();
    }
    Ok(Some(Crash {
        in_progress: in_progress.map(|i| paths[i].clone()),
        message,
        unreported: paths[next..].to_vec(),
    }))
}

/// Reads one line (up to `\n`), keeping at most [`MAX_LINE_BYTES`] of it.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
) -> std::io::Result<usize> {
    let mut total = 0;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(total);
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        let len = chunk.len();
        let room = MAX_LINE_BYTES.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..len.min(room)]);
        reader.consume(len);
        total += len;
        if done {
            return Ok(total);
        }
    }
}

/// How a process ended, in words.
pub(crate) fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(9)) => "was killed (signal 9, SIGKILL)".into(),
        (None, Some(11)) => "crashed (signal 11, SIGSEGV)".into(),
        (None, Some(6)) => "aborted (signal 6, SIGABRT)".into(),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => "ended".into(),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The last [`MAX_MESSAGE_BYTES`] of the lines Nix printed, with terminal escapes and the
/// `--show-trace` hint removed.
#[derive(Default)]
pub(crate) struct Tail {
    lines: std::collections::VecDeque<String>,
    bytes: usize,
}

impl Tail {
    pub(crate) fn push(&mut self, line: &str) {
        let line = strip_ansi(line);
        if line == SHOW_TRACE_HINT {
            return;
        }
        self.bytes += line.len() + 1;
        self.lines.push_back(line);
        while self.bytes > MAX_MESSAGE_BYTES && self.lines.len() > 1 {
            if let Some(old) = self.lines.pop_front() {
                self.bytes -= old.len() + 1;
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        self.lines.clear();
        self.bytes = 0;
    }

    pub(crate) fn text(&self) -> String {
        let joined = self
            .lines
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n");
        let trimmed = joined.trim();
        truncate(trimmed, MAX_MESSAGE_BYTES).to_owned()
    }
}

/// Removes ANSI escape sequences (`ESC [ ... letter`), which Nix adds on terminals.
pub(crate) fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_escapes_are_removed_from_messages() {
        assert_eq!(
            strip_ansi("\u{1b}[31;1merror:\u{1b}[0m boom"),
            "error: boom"
        );
    }

    #[test]
    fn exits_are_described_by_status_or_signal() {
        assert_eq!(
            describe_exit(ExitStatus::from_raw(1 << 8)),
            "exited with status 1"
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(9)),
            "was killed (signal 9, SIGKILL)"
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(11)),
            "crashed (signal 11, SIGSEGV)"
        );
    }

    #[test]
    fn message_tail_keeps_the_last_lines() {
        let mut tail = Tail::default();
        for i in 0..100_000 {
            tail.push(&format!("line {i}"));
        }
        let text = tail.text();
        assert!(text.ends_with("line 99999"));
        assert!(text.len() <= MAX_MESSAGE_BYTES);
    }
}
