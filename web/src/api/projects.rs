//! `/api/v1/projects`: projects and jobsets, listed and created.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use kiln_config::{InputConfig, JobsetConfig};
use kiln_coordinator::CoordinatorError;
use kiln_coordinator::db::projects::{self, Jobset, JobsetKind, Source};

use super::dto::{JobsetRequest, JobsetView, ProjectRequest, ProjectView, time};
use super::{ApiError, FarmState};

pub(crate) fn jobset_view(jobset: &Jobset) -> JobsetView {
    let (expression, flake) = match &jobset.kind {
        JobsetKind::Legacy { expression, .. } => (Some(expression.clone()), false),
        JobsetKind::Flake => (None, true),
    };
    JobsetView {
        project: jobset.project.clone(),
        name: jobset.name.clone(),
        description: jobset.description.clone(),
        url: jobset.url.clone(),
        branch: jobset.branch.clone(),
        expression,
        flake,
        inputs: serde_json::to_value(jobset.inputs()).unwrap_or_default(),
        check_interval: jobset.check_interval,
        enabled: jobset.enabled,
        shares: jobset.shares,
        keep_evaluations: jobset.keep_evaluations,
        source: jobset.source.clone(),
        last_checked_at: time(jobset.last_checked_at),
        check_error: jobset.check_error.clone(),
    }
}

/// `GET /api/v1/projects`: every project with its jobsets' names.
#[utoipa::path(get, path = "/api/v1/projects", responses(
    (status = 200, description = "Every project, by name", body = [ProjectView])
))]
#[tracing::instrument(skip_all)]
pub async fn list_projects(
    State(state): State<FarmState>,
) -> Result<Json<Vec<ProjectView>>, ApiError> {
    let mut views = Vec::new();
    for project in projects::list_projects(&state.db).await? {
        let jobsets = projects::list_jobsets(&state.db, project.id)
            .await?
            .into_iter()
            .map(|j| j.name)
            .collect();
        views.push(ProjectView {
            name: project.name,
            description: project.description,
            enabled: project.enabled,
            source: project.source,
            jobsets,
        });
    }
    Ok(Json(views))
}

/// `PUT /api/v1/projects/{project}`: creates or updates a project (not one declared in the
/// config file).
#[utoipa::path(put, path = "/api/v1/projects/{project}",
    params(("project" = String, Path, description = "Project name")),
    request_body = ProjectRequest,
    responses(
        (status = 200, description = "The project", body = ProjectView),
        (status = 400, description = "Invalid name or body", body = super::dto::ErrorBody),
        (status = 409, description = "Declared in the config file", body = super::dto::ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(project = %name))]
pub async fn put_project(
    State(state): State<FarmState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<ProjectView>, ApiError> {
    let body: ProjectRequest = super::json_body(&body)?;
    let id = projects::upsert_project(
        &state.db,
        &name,
        &body.description,
        body.enabled.unwrap_or(true),
        Source::Api,
    )
    .await?;
    let jobsets = projects::list_jobsets(&state.db, id)
        .await?
        .into_iter()
        .map(|j| j.name)
        .collect();
    Ok(Json(ProjectView {
        name,
        description: body.description,
        enabled: body.enabled.unwrap_or(true),
        source: "api".to_owned(),
        jobsets,
    }))
}

/// `GET /api/v1/projects/{project}/jobsets/{jobset}`.
#[utoipa::path(get, path = "/api/v1/projects/{project}/jobsets/{jobset}",
    params(
        ("project" = String, Path, description = "Project name"),
        ("jobset" = String, Path, description = "Jobset name"),
    ),
    responses(
        (status = 200, description = "The jobset", body = JobsetView),
        (status = 404, description = "No such jobset", body = super::dto::ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(project = %project, jobset = %jobset))]
pub async fn get_jobset(
    State(state): State<FarmState>,
    Path((project, jobset)): Path<(String, String)>,
) -> Result<Json<JobsetView>, ApiError> {
    let jobset = projects::get_jobset(&state.db, &project, &jobset).await?;
    Ok(Json(jobset_view(&jobset)))
}

/// `PUT /api/v1/projects/{project}/jobsets/{jobset}`: creates or updates a jobset (and its
/// project if needed). Refused (409) for jobsets declared in the config file.
#[utoipa::path(put, path = "/api/v1/projects/{project}/jobsets/{jobset}",
    params(
        ("project" = String, Path, description = "Project name"),
        ("jobset" = String, Path, description = "Jobset name"),
    ),
    request_body = JobsetRequest,
    responses(
        (status = 201, description = "The jobset", body = JobsetView),
        (status = 400, description = "Invalid jobset", body = super::dto::ErrorBody),
        (status = 409, description = "Declared in the config file", body = super::dto::ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(project = %project, jobset = %name))]
pub async fn put_jobset(
    State(state): State<FarmState>,
    Path((project, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<(StatusCode, Json<JobsetView>), ApiError> {
    let body: JobsetRequest = super::json_body(&body)?;
    let inputs: BTreeMap<String, InputConfig> = match body.inputs {
        serde_json::Value::Null => BTreeMap::new(),
        value => serde_json::from_value(value)
            .map_err(|e| ApiError(CoordinatorError::BadRequest(format!("inputs: {e}"))))?,
    };
    let spec = JobsetConfig {
        name: name.clone(),
        description: body.description,
        url: body.url,
        branch: body.branch.unwrap_or_else(|| "main".to_owned()),
        expression: body.expression,
        flake: body.flake,
        inputs,
        check_interval: body.check_interval.unwrap_or(60),
        enabled: body.enabled.unwrap_or(true),
        shares: body.shares.unwrap_or(100),
        keep_evaluations: body.keep_evaluations.unwrap_or(10),
    };
    spec.validate("jobset")
        .map_err(|m| ApiError(CoordinatorError::BadRequest(m)))?;
    let project_id = match projects::get_project(&state.db, &project).await {
        Ok(p) => p.id,
        Err(CoordinatorError::NotFound(_)) => {
            projects::upsert_project(&state.db, &project, "", true, Source::Api).await?
        }
        Err(e) => return Err(e.into()),
    };
    projects::upsert_jobset(&state.db, project_id, &spec, Source::Api).await?;
    let jobset = projects::get_jobset(&state.db, &project, &name).await?;
    Ok((StatusCode::CREATED, Json(jobset_view(&jobset))))
}
