//! The farm's JSON API under `/api/v1/`: projects and jobsets, evaluations, builds and their
//! logs, and the requests the coordinator carries out (evaluate now, restart, cancel, bump).
//!
//! Handlers read the database and write requests to it; they never schedule. In `kiln up` they
//! also wake the coordinator so that requests apply at once ([`FarmState::signals`]); a
//! separate coordinator finds them on its next database poll. The OpenAPI document is generated
//! from these handlers and their types ([`ApiDoc`]) and served at `/api/v1/openapi.json`.

pub mod builds;
pub mod dto;
pub mod evals;
pub mod projects;
pub mod status;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kiln_cache::CacheService;
use kiln_coordinator::logs::LogStore;
use kiln_coordinator::{CoordinatorError, Signals};
use kiln_db::Db;
use utoipa::OpenApi;

/// What the farm API's handlers share.
#[derive(Clone)]
pub struct FarmState {
    /// The database.
    pub db: Db,
    /// The cache (final build logs are read from it).
    pub cache: CacheService,
    /// The cache builds are published to.
    pub cache_name: String,
    /// Live logs of running steps.
    pub logs: Arc<dyn LogStore>,
    /// Wakes an in-process coordinator; `None` when it runs elsewhere.
    pub signals: Option<Arc<Signals>>,
    /// The live state behind `GET /api/v1/status`.
    pub status: Arc<dyn status::StatusSource>,
}

/// An API failure, answered as `{"error": {"code", "message"}}` with its status.
#[derive(Debug)]
pub struct ApiError(pub CoordinatorError);

impl From<CoordinatorError> for ApiError {
    fn from(e: CoordinatorError) -> ApiError {
        ApiError(e)
    }
}

impl From<kiln_cache::CacheError> for ApiError {
    fn from(e: kiln_cache::CacheError) -> ApiError {
        ApiError(CoordinatorError::Cache(e))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self.0 {
            CoordinatorError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            CoordinatorError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            CoordinatorError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            // The cache's own client errors keep their status and code.
            CoordinatorError::Cache(e) if !e.status().is_server_error() => (e.status(), e.code()),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        let message = if status.is_server_error() {
            tracing::error!(error = %self.0, "request failed");
            "internal server error".to_owned()
        } else {
            self.0.to_string()
        };
        (
            status,
            Json(dto::ErrorBody {
                error: dto::ErrorDetail {
                    code: code.to_owned(),
                    message,
                },
            }),
        )
            .into_response()
    }
}

/// Parses a JSON request body; an empty body reads as `{}`. Errors name the field and the
/// reason (400), in the API's error format.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| {
        ApiError(CoordinatorError::BadRequest(format!(
            "invalid request body: {e}"
        )))
    })
}

/// Parses a path segment as a numeric id.
pub(crate) fn parse_id(what: &str, raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| {
        ApiError(CoordinatorError::BadRequest(format!(
            "{what} id {raw:?} is not a positive integer"
        )))
    })
}

/// Where the farm API lives.
pub const MOUNT: &str = "/api/v1";

/// The farm API, with its full paths under [`MOUNT`] (merged beside the cache's API, which is
/// mounted at `/api/v1/caches`).
pub fn router(state: FarmState) -> Router {
    let at = |path: &str| format!("{MOUNT}{path}");
    Router::new()
        .route(&at("/openapi.json"), get(openapi))
        .route(&at("/status"), get(status::get_status))
        .route(&at("/projects"), get(projects::list_projects))
        .route(
            &at("/projects/{project}"),
            axum::routing::put(projects::put_project),
        )
        .route(
            &at("/projects/{project}/jobsets/{jobset}"),
            get(projects::get_jobset).put(projects::put_jobset),
        )
        .route(
            &at("/projects/{project}/jobsets/{jobset}/evals"),
            get(evals::list_evals).post(evals::request_eval),
        )
        .route(&at("/evals/{id}"), get(evals::get_eval))
        .route(&at("/builds/{id}"), get(builds::get_build))
        .route(&at("/builds/{id}/log"), get(builds::get_log))
        .route(&at("/builds/{id}/restart"), post(builds::restart))
        .route(&at("/builds/{id}/cancel"), post(builds::cancel))
        .route(&at("/builds/{id}/bump"), post(builds::bump))
        .with_state(state)
}

/// The OpenAPI description of the farm API.
#[derive(OpenApi)]
#[openapi(
    info(title = "Kiln", description = "Kiln's build farm API (version 1)."),
    paths(
        status::get_status,
        projects::list_projects,
        projects::put_project,
        projects::get_jobset,
        projects::put_jobset,
        evals::list_evals,
        evals::request_eval,
        evals::get_eval,
        builds::get_build,
        builds::get_log,
        builds::restart,
        builds::cancel,
        builds::bump,
    ),
    components(schemas(
        status::FarmStatus,
        status::WorkerStatus,
        status::RunningStepStatus,
        dto::ApiStatus,
        dto::ApiEvalStatus,
        dto::ProjectView,
        dto::ProjectRequest,
        dto::JobsetView,
        dto::JobsetRequest,
        dto::EvalSummary,
        dto::EvalDetail,
        dto::CountsView,
        dto::BuildSummary,
        dto::BuildDetail,
        dto::StepView,
        dto::ProductView,
        dto::MetricView,
        dto::JobErrorView,
        dto::Accepted,
        dto::ErrorBody,
        dto::ErrorDetail,
    ))
)]
pub struct ApiDoc;

/// `GET /api/v1/openapi.json`.
async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        ApiDoc::openapi()
            .to_pretty_json()
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}")),
    )
        .into_response()
}
