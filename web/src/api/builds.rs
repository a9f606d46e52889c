//! `/api/v1/builds/{id}`: a build with its steps, products and metrics; its log; and the
//! requests restart, cancel and bump (idempotent: a pending identical request is not repeated,
//! and each does nothing where it does not apply).

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use kiln_coordinator::CoordinatorError;
use kiln_coordinator::db::builds::{self, Command};
use kiln_db::{BuildId, StepId};

use super::dto::{Accepted, BuildDetail, MetricView, ProductView, StepView, time};
use super::{ApiError, FarmState, parse_id};

/// `GET /api/v1/builds/{id}`.
#[utoipa::path(get, path = "/api/v1/builds/{id}",
    params(("id" = i64, Path, description = "Build id")),
    responses(
        (status = 200, description = "The build", body = BuildDetail),
        (status = 404, description = "No such build", body = super::dto::ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(build = %id))]
pub async fn get_build(
    State(state): State<FarmState>,
    Path(id): Path<String>,
) -> Result<Json<BuildDetail>, ApiError> {
    let id = BuildId(parse_id("build", &id)?);
    let build = builds::get(&state.db, id).await?;
    let steps = builds::steps(&state.db, id)
        .await?
        .into_iter()
        .map(|s| StepView {
            drv_path: s.drv_path,
            status: s.status.into(),
            worker: s.worker,
            attempt: s.attempt,
            message: s.message,
            dispatched_at: time(s.dispatched_at),
            started_at: time(s.started_at),
            finished_at: time(s.finished_at),
        })
        .collect();
    // Products and metrics come from the step that built the derivation, also when this
    // build found its outputs in the cache.
    let own_step = match build.top_step_id {
        Some(step) => Some(step),
        None => builds::step_of_drv(&state.db, &build.drv_path).await?,
    };
    let (products, metrics) = match own_step {
        Some(step) => (
            builds::products(&state.db, step)
                .await?
                .into_iter()
                .map(|p| ProductView {
                    kind: p.kind,
                    subtype: p.subtype,
                    path: p.path,
                    name: p.name,
                    file_size: p.file_size,
                    sha256: p.sha256,
                })
                .collect(),
            builds::metrics(&state.db, step)
                .await?
                .into_iter()
                .map(|(name, value, unit)| MetricView { name, value, unit })
                .collect(),
        ),
        None => (Vec::new(), Vec::new()),
    };
    let duration_ms = match (build.started_at, build.finished_at) {
        (Some(s), Some(f)) => Some(f.millis() - s.millis()),
        _ => None,
    };
    Ok(Json(BuildDetail {
        id: build.id.get(),
        evaluation: build.evaluation_id.get(),
        job: build.job,
        drv_path: build.drv_path,
        system: build.system,
        status: build.status.into(),
        cached: build.cached,
        priority: build.priority,
        global_priority: build.global_priority,
        created_at: time(Some(build.created_at)),
        started_at: time(build.started_at),
        finished_at: time(build.finished_at),
        duration_ms,
        timeout: build.timeout_secs,
        max_silent: build.max_silent_secs,
        outputs: build.outputs,
        meta: build.meta,
        constituents: build.constituents,
        steps,
        products,
        metrics,
    }))
}

/// The step whose log a build shows: its own, or, before that one started, the dependency
/// that ran last.
async fn log_step(state: &FarmState, id: BuildId) -> Result<Option<(StepId, String)>, ApiError> {
    let build = builds::get(&state.db, id).await?;
    let steps = builds::steps(&state.db, id).await?;
    let own = build
        .top_step_id
        .or(builds::step_of_drv(&state.db, &build.drv_path).await?);
    if let Some(own) = own
        && let Some(step) = steps.iter().find(|s| s.id == own && s.attempt > 0)
    {
        return Ok(Some((step.id, step.drv_path.clone())));
    }
    if let Some(own) = own
        && steps.is_empty()
    {
        // A cached build: the log of the step that built it earlier.
        return Ok(Some((own, build.drv_path)));
    }
    Ok(steps
        .iter()
        .filter(|s| s.dispatched_at.is_some())
        .max_by_key(|s| s.dispatched_at)
        .map(|s| (s.id, s.drv_path.clone())))
}

/// `GET /api/v1/builds/{id}/log`: the build log as plain text; while the step runs, the lines
/// received so far.
#[utoipa::path(get, path = "/api/v1/builds/{id}/log",
    params(("id" = i64, Path, description = "Build id")),
    responses(
        (status = 200, description = "The log (text/plain)", body = String, content_type = "text/plain"),
        (status = 404, description = "No such build, or no log yet", body = super::dto::ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(build = %id))]
pub async fn get_log(
    State(state): State<FarmState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = BuildId(parse_id("build", &id)?);
    let Some((step, drv_path)) = log_step(&state, id).await? else {
        return Err(ApiError(CoordinatorError::NotFound(format!(
            "a log of build {id}"
        ))));
    };
    let text = |body: Body| {
        Response::builder()
            .status(StatusCode::OK)
            .header(CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(body)
            .map_err(|e| ApiError(CoordinatorError::Internal(e.to_string())))
    };
    // The whole log, once uploaded to the cache, is authoritative.
    if builds::log_key(&state.db, step).await?.is_some() {
        let cache = kiln_cache::caches::get(state.cache.db(), &state.cache_name).await?;
        let base = drv_path.rsplit('/').next().unwrap_or_default();
        let key = cache.layout().key(&format!("log/{base}"))?;
        let stored = state.cache.store().get(&key, None).await;
        if let Some(blob) = stored.map_err(kiln_cache::CacheError::from)? {
            return text(Body::from_stream(blob.body));
        }
    }
    let live = state.logs.read(step).await.map_err(|e| {
        ApiError(CoordinatorError::Internal(format!(
            "reading a live log: {e}"
        )))
    })?;
    match live {
        Some(bytes) => text(Body::from(bytes)),
        None => Err(ApiError(CoordinatorError::NotFound(format!(
            "a log of build {id}"
        )))),
    }
}

async fn request(state: FarmState, id: String, command: Command) -> Result<Response, ApiError> {
    let id = BuildId(parse_id("build", &id)?);
    builds::request(&state.db, id, command).await?;
    if let Some(signals) = &state.signals {
        signals.commands.notify_one();
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            id: id.get(),
            url: format!("/api/v1/builds/{id}"),
            created: true,
        }),
    )
        .into_response())
}

/// `POST /api/v1/builds/{id}/restart`: build a finished, unsuccessful build again (with the
/// failed steps it needs). Does nothing for unfinished or succeeded builds.
#[utoipa::path(post, path = "/api/v1/builds/{id}/restart",
    params(("id" = i64, Path, description = "Build id")),
    responses(
        (status = 202, description = "Requested", body = Accepted),
        (status = 404, description = "No such build", body = super::dto::ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(build = %id))]
pub async fn restart(
    State(state): State<FarmState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    request(state, id, Command::Restart).await
}

/// `POST /api/v1/builds/{id}/cancel`: stop an unfinished build; steps no other build needs are
/// stopped. Does nothing for finished builds.
#[utoipa::path(post, path = "/api/v1/builds/{id}/cancel",
    params(("id" = i64, Path, description = "Build id")),
    responses(
        (status = 202, description = "Requested", body = Accepted),
        (status = 404, description = "No such build", body = super::dto::ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(build = %id))]
pub async fn cancel(
    State(state): State<FarmState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    request(state, id, Command::Cancel).await
}

/// `POST /api/v1/builds/{id}/bump`: schedule the build's steps before all others. Bumping the
/// most recently bumped build again changes nothing.
#[utoipa::path(post, path = "/api/v1/builds/{id}/bump",
    params(("id" = i64, Path, description = "Build id")),
    responses(
        (status = 202, description = "Requested", body = Accepted),
        (status = 404, description = "No such build", body = super::dto::ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(build = %id))]
pub async fn bump(
    State(state): State<FarmState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    request(state, id, Command::Bump).await
}
