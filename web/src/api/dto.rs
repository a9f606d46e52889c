//! The farm API's wire types (version 1, under `/api/v1/`): what handlers return and accept,
//! with their OpenAPI schemas. Field and status names are part of the API.

use std::collections::BTreeMap;

use kiln_coordinator::Status;
use kiln_db::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A build or step status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ApiStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    DependencyFailed,
    FailedWithOutput,
    TimedOut,
    Cancelled,
    Aborted,
    Unsupported,
    LogLimitExceeded,
    OutputLimitExceeded,
}

impl From<Status> for ApiStatus {
    fn from(status: Status) -> ApiStatus {
        match status {
            Status::Queued => ApiStatus::Queued,
            Status::Running => ApiStatus::Running,
            Status::Succeeded => ApiStatus::Succeeded,
            Status::Failed => ApiStatus::Failed,
            Status::DependencyFailed => ApiStatus::DependencyFailed,
            Status::FailedWithOutput => ApiStatus::FailedWithOutput,
            Status::TimedOut => ApiStatus::TimedOut,
            Status::Cancelled => ApiStatus::Cancelled,
            Status::Aborted => ApiStatus::Aborted,
            Status::Unsupported => ApiStatus::Unsupported,
            Status::LogLimitExceeded => ApiStatus::LogLimitExceeded,
            Status::OutputLimitExceeded => ApiStatus::OutputLimitExceeded,
        }
    }
}

/// An evaluation's own status (per-job errors do not fail it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ApiEvalStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
}

impl From<kiln_coordinator::EvalStatus> for ApiEvalStatus {
    fn from(status: kiln_coordinator::EvalStatus) -> ApiEvalStatus {
        use kiln_coordinator::EvalStatus as E;
        match status {
            E::Queued => ApiEvalStatus::Queued,
            E::Running => ApiEvalStatus::Running,
            E::Succeeded => ApiEvalStatus::Succeeded,
            E::Failed => ApiEvalStatus::Failed,
        }
    }
}

/// RFC 3339 UTC text of a timestamp.
pub fn time(t: Option<Timestamp>) -> Option<String> {
    t.map(|t| t.to_string())
}

/// A project and the names of its jobsets.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProjectView {
    /// Name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Whether its jobsets are polled.
    pub enabled: bool,
    /// `config` (declared in the config file) or `api`.
    pub source: String,
    /// Its jobsets' names.
    pub jobsets: Vec<String>,
}

/// A jobset.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobsetView {
    /// Its project.
    pub project: String,
    /// Name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Git URL.
    pub url: String,
    /// Branch followed.
    pub branch: String,
    /// File evaluated (legacy jobsets).
    pub expression: Option<String>,
    /// Whether the repository is evaluated as a flake.
    pub flake: bool,
    /// Extra inputs of a legacy jobset: name → string, boolean, or `{type: "git", url, branch}`.
    #[schema(value_type = Object)]
    pub inputs: serde_json::Value,
    /// Seconds between polls; 0: only on request.
    pub check_interval: u64,
    /// Whether it is polled and evaluated.
    pub enabled: bool,
    /// Fair-share weight.
    pub shares: u32,
    /// Evaluations kept (0: all).
    pub keep_evaluations: u32,
    /// `config` or `api`.
    pub source: String,
    /// When it was last polled.
    pub last_checked_at: Option<String>,
    /// Why the last poll failed.
    pub check_error: Option<String>,
}

/// What `PUT /api/v1/projects/{p}/jobsets/{j}` takes (the config file's `[[project.jobset]]`
/// keys; the name comes from the URL).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobsetRequest {
    /// Free text. Default empty.
    #[serde(default)]
    pub description: String,
    /// Git URL (`file://`, a local path, `https://`). Required.
    pub url: String,
    /// Branch. Default `main`.
    #[serde(default)]
    pub branch: Option<String>,
    /// File to evaluate, relative to the repository (legacy jobset).
    #[serde(default)]
    pub expression: Option<String>,
    /// Evaluate the repository as a flake instead.
    #[serde(default)]
    pub flake: bool,
    /// Extra inputs of a legacy jobset.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub inputs: serde_json::Value,
    /// Seconds between polls; 0: only on request. Default 60.
    #[serde(default)]
    pub check_interval: Option<u64>,
    /// Default true.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Default 100.
    #[serde(default)]
    pub shares: Option<u32>,
    /// Default 10.
    #[serde(default)]
    pub keep_evaluations: Option<u32>,
}

/// What `PUT /api/v1/projects/{p}` takes.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectRequest {
    /// Free text. Default empty.
    #[serde(default)]
    pub description: String,
    /// Default true.
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// Build counts of an evaluation.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CountsView {
    /// Builds in all.
    pub total: i64,
    /// Waiting.
    pub queued: i64,
    /// Being built.
    pub running: i64,
    /// Succeeded.
    pub succeeded: i64,
    /// Finished otherwise.
    pub failed: i64,
    /// Whose outputs were in the cache already.
    pub cached: i64,
    /// Jobs that failed to evaluate.
    pub errors: i64,
}

/// An evaluation in a list.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EvalSummary {
    /// Id.
    pub id: i64,
    /// The commit evaluated (null while queued on request).
    pub commit: Option<String>,
    /// The evaluation's own status.
    pub status: ApiEvalStatus,
    /// Nix's message when it failed.
    pub error: Option<String>,
    /// `poll` or `api`.
    pub requested_by: String,
    /// When it was queued.
    pub queued_at: Option<String>,
    /// When it started.
    pub started_at: Option<String>,
    /// When it finished.
    pub finished_at: Option<String>,
    /// Milliseconds in git, Nix and ingest.
    pub checkout_ms: Option<i64>,
    /// Milliseconds in Nix.
    pub eval_ms: Option<i64>,
    /// Milliseconds ingesting the graph.
    pub ingest_ms: Option<i64>,
    /// Build counts.
    pub counts: CountsView,
}

/// A build in an evaluation.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BuildSummary {
    /// Id.
    pub id: i64,
    /// The attribute path joined with `.`.
    pub job: String,
    /// Its derivation.
    pub drv_path: String,
    /// Its system.
    pub system: String,
    /// Its status.
    pub status: ApiStatus,
    /// Whether its outputs were in the cache already.
    pub cached: bool,
    /// Output name → store path.
    pub outputs: BTreeMap<String, String>,
}

/// A job that failed to evaluate.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobErrorView {
    /// The attribute path joined with `.`.
    pub job: String,
    /// Nix's message.
    pub message: String,
}

/// An evaluation with its builds and job errors.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EvalDetail {
    /// Id.
    pub id: i64,
    /// Its project.
    pub project: String,
    /// Its jobset.
    pub jobset: String,
    /// The commit evaluated.
    pub commit: Option<String>,
    /// The evaluation's own status.
    pub status: ApiEvalStatus,
    /// Nix's message when it failed.
    pub error: Option<String>,
    /// When it was queued.
    pub queued_at: Option<String>,
    /// When it finished.
    pub finished_at: Option<String>,
    /// Build counts.
    pub counts: CountsView,
    /// Its builds, by job name.
    pub builds: Vec<BuildSummary>,
    /// Jobs that failed to evaluate.
    pub errors: Vec<JobErrorView>,
}

/// One derivation built for a build.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StepView {
    /// Its derivation.
    pub drv_path: String,
    /// Its status.
    pub status: ApiStatus,
    /// The worker of its last attempt.
    pub worker: Option<String>,
    /// The last attempt (0: not dispatched yet).
    pub attempt: u32,
    /// What the last attempt reported.
    pub message: Option<String>,
    /// When it was last dispatched.
    pub dispatched_at: Option<String>,
    /// When the worker started it.
    pub started_at: Option<String>,
    /// When it finished.
    pub finished_at: Option<String>,
}

/// A build product (`nix-support/hydra-build-products`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProductView {
    /// `file`, `doc`, `report`...
    #[serde(rename = "type")]
    pub kind: String,
    /// Subtype.
    pub subtype: String,
    /// Full path.
    pub path: String,
    /// Base name.
    pub name: String,
    /// Bytes, for a regular file.
    pub file_size: Option<i64>,
    /// Hex SHA-256, for a regular file.
    pub sha256: Option<String>,
}

/// A build metric (`nix-support/hydra-metrics`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MetricView {
    /// Name.
    pub name: String,
    /// Value.
    pub value: f64,
    /// Unit.
    pub unit: Option<String>,
}

/// A build.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BuildDetail {
    /// Id.
    pub id: i64,
    /// Its evaluation.
    pub evaluation: i64,
    /// The attribute path joined with `.`.
    pub job: String,
    /// Its derivation.
    pub drv_path: String,
    /// Its system.
    pub system: String,
    /// Its status.
    pub status: ApiStatus,
    /// Whether its outputs were in the cache already (nothing was built for it).
    pub cached: bool,
    /// `meta.schedulingPriority`.
    pub priority: i64,
    /// Raised by `bump`.
    pub global_priority: i64,
    /// When it was created.
    pub created_at: Option<String>,
    /// When its first step was dispatched.
    pub started_at: Option<String>,
    /// When it finished.
    pub finished_at: Option<String>,
    /// `finished_at - started_at`, ms.
    pub duration_ms: Option<i64>,
    /// `meta.timeout`, seconds.
    pub timeout: i64,
    /// `meta.maxSilent`, seconds.
    pub max_silent: i64,
    /// Output name → store path.
    pub outputs: BTreeMap<String, String>,
    /// `meta` (description, license, homepage, maintainers...).
    #[schema(value_type = Object)]
    pub meta: serde_json::Value,
    /// Constituent jobs, for an aggregate.
    pub constituents: Option<Vec<String>>,
    /// Every derivation built for it, its own last.
    pub steps: Vec<StepView>,
    /// Build products.
    pub products: Vec<ProductView>,
    /// Metrics.
    pub metrics: Vec<MetricView>,
}

/// The answer to a request that the coordinator carries out (202).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    /// The resource concerned (an evaluation or a build).
    pub id: i64,
    /// Where to poll it.
    pub url: String,
    /// Whether a new resource was created (false: an identical request was pending).
    pub created: bool,
}

/// Every error answer: `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// One error.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// `not_found`, `bad_request`, `conflict`, `internal`.
    pub code: String,
    /// What is wrong.
    pub message: String,
}
