//! The farm's vocabulary: build, step and evaluation statuses, with the names the database and
//! the API use.

use std::fmt;
use std::str::FromStr;

use kiln_proto::StepStatus;

/// The status of a build or of a step (Hydra's status set, with its names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    /// Waiting for its dependencies or for a worker.
    Queued,
    /// At least one of its steps is being built (a step: sent to a worker).
    Running,
    /// Built, outputs in the cache.
    Succeeded,
    /// The builder failed.
    Failed,
    /// A dependency failed, so it cannot be built.
    DependencyFailed,
    /// Built, but an output holds `nix-support/failed`.
    FailedWithOutput,
    /// `timeout` or `maxSilent` exceeded.
    TimedOut,
    /// Cancelled on request.
    Cancelled,
    /// Transient failures beyond the retry cap.
    Aborted,
    /// No worker can build its system or features.
    Unsupported,
    /// The log grew beyond the limit.
    LogLimitExceeded,
    /// The outputs grew beyond the limit.
    OutputLimitExceeded,
}

impl Status {
    /// Every status.
    pub const ALL: [Status; 12] = [
        Status::Queued,
        Status::Running,
        Status::Succeeded,
        Status::Failed,
        Status::DependencyFailed,
        Status::FailedWithOutput,
        Status::TimedOut,
        Status::Cancelled,
        Status::Aborted,
        Status::Unsupported,
        Status::LogLimitExceeded,
        Status::OutputLimitExceeded,
    ];

    /// The name in the database and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::DependencyFailed => "dependency-failed",
            Status::FailedWithOutput => "failed-with-output",
            Status::TimedOut => "timed-out",
            Status::Cancelled => "cancelled",
            Status::Aborted => "aborted",
            Status::Unsupported => "unsupported",
            Status::LogLimitExceeded => "log-limit-exceeded",
            Status::OutputLimitExceeded => "output-limit-exceeded",
        }
    }

    /// Whether nothing more will happen without a restart.
    pub fn is_final(self) -> bool {
        !matches!(self, Status::Queued | Status::Running)
    }

    /// Whether a step that ended so is a cached failure: a new build that needs the same
    /// derivation is not built again until restarted. Failures of the derivation itself are;
    /// failures of the farm (aborted, unsupported, cancelled) and dependency failures are not.
    pub fn is_cached_failure(self) -> bool {
        matches!(
            self,
            Status::Failed
                | Status::FailedWithOutput
                | Status::TimedOut
                | Status::LogLimitExceeded
                | Status::OutputLimitExceeded
        )
    }

    /// The final status of a step whose attempt ended with `status`; `None` for `Transient`,
    /// which is retried.
    pub fn of_step_result(status: StepStatus) -> Option<Status> {
        Some(match status {
            StepStatus::Succeeded => Status::Succeeded,
            StepStatus::Failed => Status::Failed,
            StepStatus::FailedWithOutput => Status::FailedWithOutput,
            StepStatus::TimedOut => Status::TimedOut,
            StepStatus::LogLimitExceeded => Status::LogLimitExceeded,
            StepStatus::OutputLimitExceeded => Status::OutputLimitExceeded,
            StepStatus::Cancelled => Status::Cancelled,
            StepStatus::Transient => return None,
        })
    }

    /// The status of a build that needs a step which ended with `self` (not as its own step):
    /// `unsupported` carries over, as in Hydra; every other failure is a dependency failure.
    pub fn for_dependent_build(self) -> Status {
        match self {
            Status::Unsupported => Status::Unsupported,
            _ => Status::DependencyFailed,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status name that is not one of [`Status::ALL`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for Status {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Status, UnknownStatus> {
        Status::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// The status of an evaluation (the evaluation itself: per-job errors do not fail it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EvalStatus {
    /// Waiting for an evaluator.
    Queued,
    /// Fetching, evaluating or ingesting.
    Running,
    /// Evaluated; its builds exist.
    Succeeded,
    /// The evaluation as a whole failed (fetch, syntax error, missing file...).
    Failed,
}

impl EvalStatus {
    /// The name in the database and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            EvalStatus::Queued => "queued",
            EvalStatus::Running => "running",
            EvalStatus::Succeeded => "succeeded",
            EvalStatus::Failed => "failed",
        }
    }
}

impl fmt::Display for EvalStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EvalStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<EvalStatus, UnknownStatus> {
        [
            EvalStatus::Queued,
            EvalStatus::Running,
            EvalStatus::Succeeded,
            EvalStatus::Failed,
        ]
        .into_iter()
        .find(|status| status.as_str() == s)
        .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_are_the_issues_and_round_trip() {
        let names: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "queued",
                "running",
                "succeeded",
                "failed",
                "dependency-failed",
                "failed-with-output",
                "timed-out",
                "cancelled",
                "aborted",
                "unsupported",
                "log-limit-exceeded",
                "output-limit-exceeded"
            ]
        );
        for status in Status::ALL {
            assert_eq!(status.as_str().parse::<Status>().unwrap(), status);
        }
        assert!("done".parse::<Status>().is_err());
    }

    #[test]
    fn only_failures_of_the_derivation_are_cached() {
        assert!(Status::Failed.is_cached_failure());
        assert!(Status::TimedOut.is_cached_failure());
        assert!(!Status::Aborted.is_cached_failure());
        assert!(!Status::Cancelled.is_cached_failure());
        assert!(!Status::DependencyFailed.is_cached_failure());
        assert!(!Status::Succeeded.is_cached_failure());
    }
}
