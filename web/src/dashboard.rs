//! The minimal server-rendered dashboard: projects → jobsets → evaluations → builds → log.
//! It reads what the JSON API reads and renders HTML with maud; no JavaScript.

use axum::Router;
use axum::extract::{Path, State};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use kiln_coordinator::Status;
use kiln_coordinator::db::{builds, evals, projects};
use kiln_db::{BuildId, EvaluationId, Timestamp};
use maud::{DOCTYPE, Markup, html};

use crate::api::{ApiError, FarmState, parse_id};

/// The dashboard's routes, at the site root.
pub fn router(state: FarmState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/projects/{project}/jobsets/{jobset}", get(jobset_page))
        .route("/evals/{id}", get(eval_page))
        .route("/builds/{id}", get(build_page))
        .with_state(state)
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;max-width:70em}\
table{border-collapse:collapse}td,th{padding:.2em .8em;text-align:left;border-bottom:1px solid #ddd}\
.succeeded{color:#070}.queued,.running{color:#555}.failed,.dependency-failed,.timed-out,\
.aborted,.failed-with-output,.unsupported,.log-limit-exceeded,.output-limit-exceeded{color:#b00}\
pre{background:#f6f6f6;padding:1em;overflow-x:auto}code{font-size:90%}";

fn page(title: &str, body: Markup) -> Response {
    Html(
        html! {
            (DOCTYPE)
            html {
                head {
                    meta charset="utf-8";
                    title { (title) " — Kiln" }
                    style { (STYLE) }
                }
                body {
                    p { a href="/" { "Kiln" } }
                    h1 { (title) }
                    (body)
                }
            }
        }
        .into_string(),
    )
    .into_response()
}

fn when(t: Option<Timestamp>) -> String {
    t.map(|t| t.to_string()).unwrap_or_default()
}

fn status(s: Status) -> Markup {
    html! { span class=(s.as_str()) { (s.as_str()) } }
}

async fn index(State(state): State<FarmState>) -> Result<Response, ApiError> {
    let mut rows = Vec::new();
    for project in projects::list_projects(&state.db).await? {
        let jobsets = projects::list_jobsets(&state.db, project.id).await?;
        rows.push((project, jobsets));
    }
    let farm = state.status.status().await;
    Ok(page(
        "Projects",
        html! {
            h2 { "Workers" }
            @if !farm.live {
                p { "Live state unavailable (Redis cannot be reached); builds go on." }
            }
            p {
                "Leading coordinator: "
                (farm.coordinator_leader.as_deref().unwrap_or("none"))
            }
            table {
                tr { th { "worker" } th { "systems" } th { "features" } th { "slots" } th { "building" } }
                @for w in &farm.workers {
                    tr {
                        td { (w.name) }
                        td { (w.systems.join(" ")) }
                        td { (w.features.join(" ")) }
                        td { (w.slots) }
                        td {
                            @for r in &w.running {
                                code { (r.drv_path.rsplit('/').next().unwrap_or(&r.drv_path)) } " "
                            }
                        }
                    }
                }
            }
            h2 { "Projects" }
            @if rows.is_empty() {
                p { "No projects yet: declare them in the config file or create them with "
                    code { "PUT /api/v1/projects/{p}/jobsets/{j}" } "." }
            }
            @for (project, jobsets) in &rows {
                h2 { (project.name) }
                @if !project.description.is_empty() { p { (project.description) } }
                table {
                    tr { th { "jobset" } th { "branch" } th { "repository" } th { "last checked" } th { "problem" } }
                    @for j in jobsets {
                        tr {
                            td { a href=(format!("/projects/{}/jobsets/{}", project.name, j.name)) { (j.name) } }
                            td { (j.branch) }
                            td { code { (j.url) } }
                            td { (when(j.last_checked_at)) }
                            td { (j.check_error.clone().unwrap_or_default()) }
                        }
                    }
                }
            }
        },
    ))
}

async fn jobset_page(
    State(state): State<FarmState>,
    Path((project, jobset)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let jobset = projects::get_jobset(&state.db, &project, &jobset).await?;
    let list = evals::list(&state.db, jobset.id, 100, None).await?;
    let mut rows = Vec::new();
    for e in list {
        let counts = evals::counts(&state.db, e.id).await?;
        rows.push((e, counts));
    }
    Ok(page(
        &format!("{}/{}", jobset.project, jobset.name),
        html! {
            p { code { (jobset.url) } " branch " code { (jobset.branch) } }
            table {
                tr { th { "evaluation" } th { "commit" } th { "status" } th { "builds" } th { "succeeded" } th { "failed" } th { "queued" } th { "job errors" } th { "finished" } }
                @for (e, c) in &rows {
                    tr {
                        td { a href=(format!("/evals/{}", e.id)) { (e.id) } }
                        td { code { (e.commit.as_deref().map(|c| &c[..c.len().min(12)]).unwrap_or("")) } }
                        td class=(e.status.as_str()) { (e.status.as_str()) }
                        td { (c.total) }
                        td { (c.succeeded) }
                        td { (c.failed) }
                        td { (c.queued + c.running) }
                        td { (e.error_count) }
                        td { (when(e.finished_at)) }
                    }
                    @if let Some(err) = &e.error {
                        tr { td colspan="9" { pre { (err) } } }
                    }
                }
            }
        },
    ))
}

async fn eval_page(
    State(state): State<FarmState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = EvaluationId(parse_id("evaluation", &id)?);
    let e = evals::get(&state.db, id).await?;
    let jobset = projects::jobset_by_id(&state.db, e.jobset_id).await?;
    let list = builds::of_evaluation(&state.db, id).await?;
    let errors = evals::job_errors(&state.db, id).await?;
    Ok(page(
        &format!("Evaluation {id}"),
        html! {
            p {
                a href=(format!("/projects/{}/jobsets/{}", jobset.project, jobset.name)) { (jobset.project) "/" (jobset.name) }
                " at " code { (e.commit.clone().unwrap_or_default()) } ": "
                span class=(e.status.as_str()) { (e.status.as_str()) }
            }
            @if let Some(err) = &e.error { pre { (err) } }
            table {
                tr { th { "build" } th { "job" } th { "status" } th { "system" } th { "outputs" } }
                @for b in &list {
                    tr {
                        td { a href=(format!("/builds/{}", b.id)) { (b.id) } }
                        td { (b.job) }
                        td { (status(b.status)) @if b.cached { " (cached)" } }
                        td { (b.system) }
                        td { @for (name, path) in &b.outputs { code { (name) ": " (path) } br; } }
                    }
                }
            }
            @if !errors.is_empty() {
                h2 { "Job errors" }
                @for (job, message) in &errors {
                    h3 { (job) }
                    pre { (message) }
                }
            }
        },
    ))
}

async fn build_page(
    State(state): State<FarmState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = BuildId(parse_id("build", &id)?);
    let b = builds::get(&state.db, id).await?;
    let steps = builds::steps(&state.db, id).await?;
    let own = match b.top_step_id {
        Some(s) => Some(s),
        None => builds::step_of_drv(&state.db, &b.drv_path).await?,
    };
    let products = match own {
        Some(s) => builds::products(&state.db, s).await?,
        None => Vec::new(),
    };
    let metrics = match own {
        Some(s) => builds::metrics(&state.db, s).await?,
        None => Vec::new(),
    };
    Ok(page(
        &format!("Build {id}: {}", b.job),
        html! {
            p {
                (status(b.status)) @if b.cached { " (outputs were in the cache)" }
                " — " a href=(format!("/evals/{}", b.evaluation_id)) { "evaluation " (b.evaluation_id) }
                " — " a href=(format!("/api/v1/builds/{id}/log")) { "log" }
            }
            p { code { (b.drv_path) } }
            @if let Some(description) = b.meta.get("description").and_then(|d| d.as_str()) { p { (description) } }
            h2 { "Outputs" }
            ul { @for (name, path) in &b.outputs { li { code { (name) ": " (path) } } } }
            @if !products.is_empty() {
                h2 { "Products" }
                table {
                    tr { th { "type" } th { "subtype" } th { "path" } th { "size" } }
                    @for p in &products {
                        tr { td { (p.kind) } td { (p.subtype) } td { code { (p.path) } } td { (p.file_size.map(|s| s.to_string()).unwrap_or_default()) } }
                    }
                }
            }
            @if !metrics.is_empty() {
                h2 { "Metrics" }
                table { @for (name, value, unit) in &metrics { tr { td { (name) } td { (value) " " (unit.clone().unwrap_or_default()) } } } }
            }
            h2 { "Steps" }
            table {
                tr { th { "derivation" } th { "status" } th { "worker" } th { "attempt" } th { "started" } th { "finished" } th { "message" } }
                @for s in &steps {
                    tr {
                        td { code { (s.drv_path) } }
                        td { (status(s.status)) }
                        td { (s.worker.clone().unwrap_or_default()) }
                        td { (s.attempt) }
                        td { (when(s.started_at)) }
                        td { (when(s.finished_at)) }
                        td { (s.message.clone().unwrap_or_default()) }
                    }
                }
            }
        },
    ))
}
