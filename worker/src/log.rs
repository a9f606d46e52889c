//! Build logs: lines streamed live to the caller's [`LogSink`], and the whole log kept for the
//! cache, both within the step's log size limit.

use crate::serve::StderrSink;

/// Where a step's log lines go while it runs (in `kiln up`, the coordinator's live log).
pub trait LogSink: Send + Sync {
    /// One line of step `step_id`'s log, without its newline. Called from the task running the
    /// step, in order; it must not block for long.
    fn line(&self, step_id: i64, line: &[u8]);
}

/// A sink that drops every line.
#[derive(Debug, Default, Clone, Copy)]
pub struct DiscardLog;

impl LogSink for DiscardLog {
    fn line(&self, _step_id: i64, _line: &[u8]) {}
}

/// The most a kept log may hold, whatever the step's limit, so that a chatty builder cannot
/// exhaust the worker's memory.
pub const UNLIMITED_LOG_CAP: u64 = 256 * 1024 * 1024;
/// Lines longer than this reach the sink in pieces, so output without newlines still streams.
pub const MAX_LINE: usize = 64 * 1024;

/// Collects one step's build log from the serve process's stderr.
pub struct BuildLog<'a> {
    sink: &'a dyn LogSink,
    step_id: i64,
    limit: u64,
    partial: Vec<u8>,
    kept: Vec<u8>,
    truncated: bool,
}

impl<'a> BuildLog<'a> {
    /// A log for step `step_id` keeping at most `max_log_bytes`, and never more than
    /// [`UNLIMITED_LOG_CAP`] (also the limit when `max_log_bytes` is 0, Nix's "no limit").
    pub fn new(sink: &'a dyn LogSink, step_id: i64, max_log_bytes: u64) -> BuildLog<'a> {
        let limit = if max_log_bytes == 0 {
            UNLIMITED_LOG_CAP
        } else {
            max_log_bytes.min(UNLIMITED_LOG_CAP)
        };
        BuildLog {
            sink,
            step_id,
            limit,
            partial: Vec::new(),
            kept: Vec::new(),
            truncated: false,
        }
    }

    /// Whether output beyond the limit was dropped.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// Sends the last unterminated line and returns the log as kept.
    pub fn finish(mut self) -> (Vec<u8>, bool) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.emit(&line, false);
        }
        (self.kept, self.truncated)
    }

    /// Keeps and forwards one line (`newline`: whether it was terminated), within the limit.
    fn emit(&mut self, line: &[u8], newline: bool) {
        if self.truncated {
            return;
        }
        let cost = line.len() as u64 + u64::from(newline);
        if self.kept.len() as u64 + cost > self.limit {
            self.truncated = true;
            return;
        }
        self.kept.extend_from_slice(line);
        if newline {
            self.kept.push(b'\n');
        }
        self.sink.line(self.step_id, line);
    }
}

impl StderrSink for BuildLog<'_> {
    fn chunk(&mut self, mut data: &[u8]) {
        while !data.is_empty() && !self.truncated {
            match data.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    let line = if self.partial.is_empty() {
                        data[..end].to_vec()
                    } else {
                        let mut line = std::mem::take(&mut self.partial);
                        line.extend_from_slice(&data[..end]);
                        line
                    };
                    self.emit(&line, true);
                    data = &data[end + 1..];
                }
                None => {
                    self.partial.extend_from_slice(data);
                    data = &[];
                }
            }
            while self.partial.len() >= MAX_LINE && !self.truncated {
                let rest = self.partial.split_off(MAX_LINE);
                let piece = std::mem::replace(&mut self.partial, rest);
                self.emit(&piece, false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Lines(Mutex<Vec<(i64, Vec<u8>)>>);

    impl LogSink for Lines {
        fn line(&self, step_id: i64, line: &[u8]) {
            self.0.lock().unwrap().push((step_id, line.to_vec()));
        }
    }

    impl Lines {
        fn texts(&self) -> Vec<String> {
            self.0
                .lock()
                .unwrap()
                .iter()
                .map(|(_, l)| String::from_utf8_lossy(l).into_owned())
                .collect()
        }
    }

    #[test]
    fn lines_split_across_chunks_arrive_whole_and_in_order() {
        let sink = Lines::default();
        let mut log = BuildLog::new(&sink, 9, 0);
        log.chunk(b"first li");
        log.chunk(b"ne\nsecond\n\nthi");
        assert_eq!(sink.texts(), ["first line", "second", ""]);
        log.chunk(b"rd");
        let (kept, truncated) = log.finish();
        assert_eq!(sink.texts(), ["first line", "second", "", "third"]);
        assert_eq!(kept, b"first line\nsecond\n\nthird");
        assert!(!truncated);
        assert!(sink.0.lock().unwrap().iter().all(|(id, _)| *id == 9));
    }

    #[test]
    fn nothing_beyond_the_limit_is_kept_or_forwarded() {
        let sink = Lines::default();
        let mut log = BuildLog::new(&sink, 1, 11);
        log.chunk(b"12345\n6789\nabc\nd\n");
        let (kept, truncated) = log.finish();
        assert_eq!(kept, b"12345\n6789\n");
        assert_eq!(sink.texts(), ["12345", "6789"]);
        assert!(truncated);
    }

    #[test]
    fn long_lines_without_newlines_stream_in_pieces() {
        let sink = Lines::default();
        let mut log = BuildLog::new(&sink, 1, 0);
        log.chunk(&vec![b'x'; MAX_LINE * 2 + 5]);
        assert_eq!(sink.0.lock().unwrap().len(), 2);
        let (kept, _) = log.finish();
        assert_eq!(kept.len(), MAX_LINE * 2 + 5);
        assert_eq!(sink.0.lock().unwrap().len(), 3);
    }
}
