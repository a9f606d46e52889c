//! `/api/v1/.../evals` and `/api/v1/evals/{id}`: evaluations, and evaluating now.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use kiln_coordinator::db::{builds, evals, projects};
use kiln_db::EvaluationId;
use serde::Deserialize;

use super::dto::{Accepted, BuildSummary, CountsView, EvalDetail, EvalSummary, JobErrorView, time};
use super::{ApiError, FarmState, parse_id};

/// `?limit=&before=` of evaluation lists.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct Page {
    /// Most evaluations returned (1-1000). Default 50.
    pub limit: Option<i64>,
    /// Only evaluations with a smaller id (the last id of the previous page).
    pub before: Option<i64>,
}

async fn counts(state: &FarmState, evaluation: &evals::Evaluation) -> Result<CountsView, ApiError> {
    let c = evals::counts(&state.db, evaluation.id).await?;
    Ok(CountsView {
        total: c.total,
        queued: c.queued,
        running: c.running,
        succeeded: c.succeeded,
        failed: c.failed,
        cached: c.cached,
        errors: evaluation.error_count,
    })
}

/// `GET /api/v1/projects/{project}/jobsets/{jobset}/evals`: newest first.
#[utoipa::path(get, path = "/api/v1/projects/{project}/jobsets/{jobset}/evals",
    params(
        ("project" = String, Path, description = "Project name"),
        ("jobset" = String, Path, description = "Jobset name"),
        Page,
    ),
    responses(
        (status = 200, description = "Evaluations, newest first", body = [EvalSummary]),
        (status = 404, description = "No such jobset", body = super::dto::ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(project = %project, jobset = %jobset))]
pub async fn list_evals(
    State(state): State<FarmState>,
    Path((project, jobset)): Path<(String, String)>,
    Query(page): Query<Page>,
) -> Result<Json<Vec<EvalSummary>>, ApiError> {
    let jobset = projects::get_jobset(&state.db, &project, &jobset).await?;
    let limit = page.limit.unwrap_or(50).clamp(1, 1000);
    let mut out = Vec::new();
    for e in evals::list(&state.db, jobset.id, limit, page.before.map(EvaluationId)).await? {
        out.push(EvalSummary {
            id: e.id.get(),
            commit: e.commit.clone(),
            status: e.status.into(),
            error: e.error.clone(),
            requested_by: e.requested_by.clone(),
            queued_at: time(Some(e.queued_at)),
            started_at: time(e.started_at),
            finished_at: time(e.finished_at),
            checkout_ms: e.checkout_ms,
            eval_ms: e.eval_ms,
            ingest_ms: e.ingest_ms,
            counts: counts(&state, &e).await?,
        });
    }
    Ok(Json(out))
}

/// `POST /api/v1/projects/{project}/jobsets/{jobset}/evals`: evaluate the branch head now.
/// 202 with the queued evaluation; asking again while it is queued returns the same one.
#[utoipa::path(post, path = "/api/v1/projects/{project}/jobsets/{jobset}/evals",
    params(
        ("project" = String, Path, description = "Project name"),
        ("jobset" = String, Path, description = "Jobset name"),
    ),
    responses(
        (status = 202, description = "The evaluation is queued", body = Accepted),
        (status = 404, description = "No such jobset", body = super::dto::ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(project = %project, jobset = %jobset))]
pub async fn request_eval(
    State(state): State<FarmState>,
    Path((project, jobset)): Path<(String, String)>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let jobset = projects::get_jobset(&state.db, &project, &jobset).await?;
    let (id, created) = evals::enqueue_request(&state.db, jobset.id).await?;
    if let Some(signals) = &state.signals {
        signals.evaluations.notify_one();
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            id: id.get(),
            url: format!("/api/v1/evals/{id}"),
            created,
        }),
    ))
}

/// `GET /api/v1/evals/{id}`: the evaluation, its builds and its job errors.
#[utoipa::path(get, path = "/api/v1/evals/{id}",
    params(("id" = i64, Path, description = "Evaluation id")),
    responses(
        (status = 200, description = "The evaluation", body = EvalDetail),
        (status = 404, description = "No such evaluation", body = super::dto::ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(evaluation = %id))]
pub async fn get_eval(
    State(state): State<FarmState>,
    Path(id): Path<String>,
) -> Result<Json<EvalDetail>, ApiError> {
    let id = EvaluationId(parse_id("evaluation", &id)?);
    let e = evals::get(&state.db, id).await?;
    let jobset = projects::jobset_by_id(&state.db, e.jobset_id).await?;
    let builds = builds::of_evaluation(&state.db, id)
        .await?
        .into_iter()
        .map(|b| BuildSummary {
            id: b.id.get(),
            job: b.job,
            drv_path: b.drv_path,
            system: b.system,
            status: b.status.into(),
            cached: b.cached,
            outputs: b.outputs,
        })
        .collect();
    let errors = evals::job_errors(&state.db, id)
        .await?
        .into_iter()
        .map(|(job, message)| JobErrorView { job, message })
        .collect();
    Ok(Json(EvalDetail {
        id: e.id.get(),
        project: jobset.project,
        jobset: jobset.name,
        commit: e.commit.clone(),
        status: e.status.into(),
        error: e.error.clone(),
        queued_at: time(Some(e.queued_at)),
        finished_at: time(e.finished_at),
        counts: counts(&state, &e).await?,
        builds,
        errors,
    }))
}
