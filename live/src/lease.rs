//! The leader lease: one holder at a time, kept by renewing before it expires.
//!
//! The policy when Redis is unreachable is in the crate documentation.

use std::sync::LazyLock;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{Live, LiveError, expiry_ms};

/// Sets the expiry of `KEYS[1]` to `ARGV[2]` ms if it holds `ARGV[1]`; returns 1 if it did.
static RENEW: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
",
    )
});

/// Deletes `KEYS[1]` if it holds `ARGV[1]`; returns 1 if it did.
static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
",
    )
});

/// One contender for the lease `<prefix>lease:<name>`.
#[derive(Debug, Clone)]
pub struct Lease {
    live: Live,
    /// The Redis key of the lease.
    key: String,
    /// Who we are: the value the key holds while we lead.
    holder: String,
    /// How long the lease lasts without renewal.
    ttl: Duration,
}

impl Lease {
    /// `holder`'s claim on the lease `name`, which lasts `ttl` unless renewed. `holder` must
    /// be unique among the contenders (host name and process id, say).
    pub fn new(live: Live, name: &str, holder: impl Into<String>, ttl: Duration) -> Lease {
        Lease {
            key: live.lease_key(name),
            live,
            holder: holder.into(),
            ttl,
        }
    }

    /// Who we are.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Takes the lease if nobody holds it (`SET NX PX`). True if we hold it now, false if
    /// somebody does — including ourselves from an earlier acquisition: use [`Lease::renew`]
    /// to keep a lease.
    pub async fn try_acquire(&self) -> Result<bool, LiveError> {
        let set: Option<String> = self
            .live
            .run(
                redis::cmd("SET")
                    .arg(&self.key)
                    .arg(&self.holder)
                    .arg("NX")
                    .arg("PX")
                    .arg(expiry_ms(self.ttl)),
            )
            .await?;
        Ok(set.is_some())
    }

    /// Extends the lease by its ttl from now, if we still hold it. False if it expired or
    /// somebody else holds it.
    pub async fn renew(&self) -> Result<bool, LiveError> {
        let mut invocation = RENEW.prepare_invoke();
        invocation
            .key(&self.key)
            .arg(&self.holder)
            .arg(expiry_ms(self.ttl));
        let renewed: i64 = self.live.script(invocation).await?;
        Ok(renewed == 1)
    }

    /// Gives the lease up now if we hold it, so a standby takes over without waiting for the
    /// ttl. True if we held it.
    pub async fn release(&self) -> Result<bool, LiveError> {
        let mut invocation = RELEASE.prepare_invoke();
        invocation.key(&self.key).arg(&self.holder);
        let released: i64 = self.live.script(invocation).await?;
        Ok(released == 1)
    }

    /// Whether we lead after one round, having led before it or not: a leader renews, or takes
    /// the lease again if it is free; a standby tries to take it.
    async fn round(&self, leading: bool) -> Result<bool, LiveError> {
        if leading && self.renew().await? {
            return Ok(true);
        }
        self.try_acquire().await
    }

    /// Contends for the lease until `shutdown`: every ttl/3 a leader renews it (or takes it
    /// again if it is free) and a standby tries to take it; each change of leadership is
    /// reported on `on_change` (true: we lead). Starts as a standby (it reports false if the
    /// channel said otherwise). At shutdown it releases the lease (if it holds it) and reports
    /// false. Redis failures are logged and, as the crate documentation says, change no role.
    pub async fn run(self, on_change: watch::Sender<bool>, shutdown: CancellationToken) {
        let interval = round_interval(self.ttl);
        let mut leading = false;
        report(&on_change, false);
        loop {
            let outcome = tokio::select! {
                () = shutdown.cancelled() => break,
                outcome = self.round(leading) => outcome,
            };
            if let Err(e) = &outcome {
                tracing::warn!(lease = %self.key, holder = %self.holder, leading, error = %e,
                    "cannot reach the lease; keeping the current role");
            }
            let now_leading = next_role(leading, outcome);
            if now_leading != leading {
                if now_leading {
                    tracing::info!(lease = %self.key, holder = %self.holder, "leading");
                } else {
                    tracing::warn!(lease = %self.key, holder = %self.holder,
                        "lost the lease; stepping down");
                }
                leading = now_leading;
                report(&on_change, leading);
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(interval) => {}
            }
        }
        // Released even as a standby: a round cut short by the shutdown may have taken the
        // lease without learning it, and the compare-and-delete never touches another's lease.
        if let Err(e) = self.release().await {
            tracing::warn!(lease = %self.key, error = %e,
                "cannot release the lease; it expires by itself");
        }
        report(&on_change, false);
    }
}

impl Live {
    fn lease_key(&self, name: &str) -> String {
        self.key(&format!("lease:{name}"))
    }

    /// Who holds the lease `name` now, if anybody.
    pub async fn leader(&self, name: &str) -> Result<Option<String>, LiveError> {
        self.run(redis::cmd("GET").arg(self.lease_key(name))).await
    }
}

/// The role after a round that ended with `outcome`: what Redis said, or, when Redis could not
/// be asked, the role we had.
fn next_role(leading: bool, outcome: Result<bool, LiveError>) -> bool {
    outcome.unwrap_or(leading)
}

/// How often a contender renews or retries: a third of the ttl, so a leader survives two lost
/// renewals, and at least 10 ms so a tiny ttl does not spin.
fn round_interval(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(10))
}

/// Tells the watchers we lead (or not), if that is news; having no watchers is fine.
fn report(on_change: &watch::Sender<bool>, leading: bool) {
    on_change.send_if_modified(|current| {
        let changed = *current != leading;
        *current = leading;
        changed
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unreachable() -> Result<bool, LiveError> {
        Err(LiveError::Timeout(Duration::from_secs(2)))
    }

    #[test]
    fn redis_answers_decide_the_role() {
        assert!(next_role(false, Ok(true)));
        assert!(next_role(true, Ok(true)));
        assert!(!next_role(true, Ok(false)));
        assert!(!next_role(false, Ok(false)));
    }

    #[test]
    fn an_unreachable_redis_changes_no_role() {
        assert!(next_role(true, unreachable()));
        assert!(!next_role(false, unreachable()));
    }

    #[test]
    fn rounds_come_three_times_per_ttl_but_not_faster_than_every_10_ms() {
        assert_eq!(
            round_interval(Duration::from_secs(3)),
            Duration::from_secs(1)
        );
        assert_eq!(
            round_interval(Duration::from_millis(6)),
            Duration::from_millis(10)
        );
    }

    #[test]
    fn only_changes_are_reported() {
        let (tx, mut rx) = watch::channel(true);
        rx.mark_unchanged();
        report(&tx, true);
        assert!(!rx.has_changed().unwrap());
        report(&tx, false);
        assert!(rx.has_changed().unwrap());
        assert!(!*rx.borrow_and_update());
        drop(rx);
        report(&tx, true);
        assert!(*tx.borrow());
    }
}
