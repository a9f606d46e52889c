//! Live logs of running steps: one string per step, appended to in batches.
//!
//! A log is the key `<prefix>log:<step id>`, its lines each ending with `\n`. Every append
//! refreshes its expiry, so the log of a step that runs for days stays, while one whose worker
//! vanished goes away on its own. A log stops growing at the size cap: the line that crosses it
//! is cut there, a marker line follows, and later appends change nothing, so a runaway build
//! cannot fill Redis. The whole log reaches the cache when the step ends; this is only the view
//! while it runs.

use std::sync::LazyLock;
use std::time::Duration;

use crate::{Live, LiveError, expiry_ms};

/// How big a live log may grow, unless [`Live::with_max_log_bytes`] says otherwise: 16 MiB.
pub const DEFAULT_MAX_LOG_BYTES: u64 = 16 << 20;

/// How long a live log is kept after its last append, unless [`Live::with_log_ttl`] says
/// otherwise: 24 h.
pub const DEFAULT_LOG_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The line that ends a log cut at the size cap.
pub(crate) const TRUNCATED_MARKER: &[u8] =
    b"kiln: live log truncated here (size limit); the full log is kept when the step ends\n";

/// What [`Live::append_log`] did with the lines it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Every line was stored.
    All,
    /// The log is at its size cap: some or all of the lines were dropped.
    Capped,
}

/// Appends `ARGV[4]` to the string `KEYS[1]` while it stays within `ARGV[1]` bytes; the part
/// past the cap is dropped and `ARGV[3]` (the marker line) appended once, after which the
/// string is at least `ARGV[1]` long and never grows again. Sets the expiry to `ARGV[2]` ms.
/// Returns 1 if everything was appended, 0 if the cap dropped something.
static APPEND_LOG: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local max = tonumber(ARGV[1])
local len = redis.call('STRLEN', KEYS[1])
local data = ARGV[4]
local all = 1
if len >= max then
  all = 0
elseif len + #data <= max then
  redis.call('APPEND', KEYS[1], data)
else
  local piece = string.sub(data, 1, max - len)
  if string.sub(piece, -1) ~= '\n' then
    piece = piece .. '\n'
  end
  redis.call('APPEND', KEYS[1], piece .. ARGV[3])
  all = 0
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return all
",
    )
});

impl Live {
    fn log_key(&self, step_id: i64) -> String {
        self.key(&format!("log:{step_id}"))
    }

    /// Appends `lines` (each without its newline) to the live log of step `step_id`, in one
    /// round trip, and keeps the log for the log ttl from now.
    pub async fn append_log(&self, step_id: i64, lines: &[Vec<u8>]) -> Result<Appended, LiveError> {
        if lines.is_empty() {
            return Ok(Appended::All);
        }
        let mut invocation = APPEND_LOG.prepare_invoke();
        invocation
            .key(self.log_key(step_id))
            .arg(self.max_log_bytes)
            .arg(expiry_ms(self.log_ttl))
            .arg(TRUNCATED_MARKER)
            .arg(join_lines(lines));
        let all: i64 = self.script(invocation).await?;
        Ok(if all == 1 {
            Appended::All
        } else {
            Appended::Capped
        })
    }

    /// The live log of step `step_id` so far: its lines, each ending with `\n`; `None` if it
    /// has none (nothing appended yet, reset, or expired).
    pub async fn read_log(&self, step_id: i64) -> Result<Option<Vec<u8>>, LiveError> {
        self.run(redis::cmd("GET").arg(self.log_key(step_id))).await
    }

    /// Forgets the live log of step `step_id` (a new attempt starts, or the step ended).
    pub async fn reset_log(&self, step_id: i64) -> Result<(), LiveError> {
        self.run(redis::cmd("DEL").arg(self.log_key(step_id))).await
    }
}

/// `lines` as one text, each line followed by `\n`.
fn join_lines(lines: &[Vec<u8>]) -> Vec<u8> {
    let mut text = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
    for line in lines {
        text.extend_from_slice(line);
        text.push(b'\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_joined_line_ends_with_a_newline() {
        assert_eq!(join_lines(&[]), b"");
        assert_eq!(join_lines(&[b"one".to_vec()]), b"one\n");
        assert_eq!(
            join_lines(&[b"one".to_vec(), Vec::new(), b"three".to_vec()]),
            b"one\n\nthree\n"
        );
    }

    #[test]
    fn the_marker_is_one_whole_line() {
        assert!(TRUNCATED_MARKER.ends_with(b"\n"));
        assert_eq!(TRUNCATED_MARKER.iter().filter(|&&b| b == b'\n').count(), 1);
    }
}
