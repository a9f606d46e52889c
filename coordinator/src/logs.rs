//! Live build logs: lines streamed by workers while a step runs, kept per step so the API can
//! show them before the whole log reaches the cache.

use std::io::Write;
use std::path::PathBuf;

use async_trait::async_trait;
use kiln_db::StepId;

/// Where live log lines of running steps are kept (files in `kiln up`; Redis in the
/// distributed mode). Writes are fire-and-forget: a live log is a convenience, and failing to
/// keep it must never fail a build.
#[async_trait]
pub trait LogStore: Send + Sync {
    /// Appends one line (without its newline) to the log of `step`.
    fn append(&self, step: StepId, line: &[u8]);
    /// Forgets the log of `step` (a new attempt starts).
    fn reset(&self, step: StepId);
    /// The log of `step` so far, if any.
    async fn read(&self, step: StepId) -> std::io::Result<Option<Vec<u8>>>;
}

/// Live logs as files `<dir>/<step id>.log`.
#[derive(Debug, Clone)]
pub struct FileLogs {
    dir: PathBuf,
}

impl FileLogs {
    /// Logs under `dir` (created if missing).
    pub fn new(dir: PathBuf) -> std::io::Result<FileLogs> {
        std::fs::create_dir_all(&dir)?;
        Ok(FileLogs { dir })
    }

    fn path(&self, step: StepId) -> PathBuf {
        self.dir.join(format!("{step}.log"))
    }
}

#[async_trait]
impl LogStore for FileLogs {
    fn append(&self, step: StepId, line: &[u8]) {
        let result = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(step))
            .and_then(|mut file| {
                let mut buf = Vec::with_capacity(line.len() + 1);
                buf.extend_from_slice(line);
                buf.push(b'\n');
                file.write_all(&buf)
            });
        if let Err(e) = result {
            tracing::warn!(step = %step, error = %e, "cannot store a live log line");
        }
    }

    fn reset(&self, step: StepId) {
        match std::fs::remove_file(self.path(step)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(step = %step, error = %e, "cannot reset a live log"),
        }
    }

    async fn read(&self, step: StepId) -> std::io::Result<Option<Vec<u8>>> {
        match tokio::fs::read(self.path(step)).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_accumulate_until_reset() {
        let dir = tempfile::tempdir().unwrap();
        let logs = FileLogs::new(dir.path().join("logs")).unwrap();
        assert_eq!(logs.read(StepId(1)).await.unwrap(), None);
        logs.append(StepId(1), b"one");
        logs.append(StepId(1), b"two");
        assert_eq!(logs.read(StepId(1)).await.unwrap().unwrap(), b"one\ntwo\n");
        logs.reset(StepId(1));
        assert_eq!(logs.read(StepId(1)).await.unwrap(), None);
    }
}
