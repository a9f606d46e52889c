//! Projects and jobsets: declared in the config file or created through the API.

use std::collections::BTreeMap;

use kiln_config::{InputConfig, JobsetConfig, ProjectConfig, valid_name};
use kiln_db::{Db, JobsetId, ProjectId, Timestamp};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;

use super::col;
use crate::error::{CoordinatorError, Result};

/// Who owns a project or jobset row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The config file; updated at every start, not editable through the API.
    Config,
    /// The API.
    Api,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Api => "api",
        }
    }
}

/// A project row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    /// Row id.
    pub id: ProjectId,
    /// Unique name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Whether its jobsets are polled.
    pub enabled: bool,
    /// `config` or `api`.
    pub source: String,
}

/// What a jobset evaluates.
#[derive(Debug, Clone, PartialEq)]
pub enum JobsetKind {
    /// A file of the checkout, with extra inputs.
    Legacy {
        /// Path relative to the repository root.
        expression: String,
        /// Extra arguments.
        inputs: BTreeMap<String, InputConfig>,
    },
    /// The checkout is a flake.
    Flake,
}

/// A jobset row.
#[derive(Debug, Clone, PartialEq)]
pub struct Jobset {
    /// Row id.
    pub id: JobsetId,
    /// Its project.
    pub project_id: ProjectId,
    /// The project's name.
    pub project: String,
    /// Name, unique in the project.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Git URL.
    pub url: String,
    /// Branch followed.
    pub branch: String,
    /// What is evaluated.
    pub kind: JobsetKind,
    /// Seconds between polls (0: only on request).
    pub check_interval: u64,
    /// Whether it is polled and evaluated (and its project is enabled).
    pub enabled: bool,
    /// Fair-share weight.
    pub shares: u32,
    /// Evaluations kept (0: all).
    pub keep_evaluations: u32,
    /// `config` or `api`.
    pub source: String,
    /// When it was last polled.
    pub last_checked_at: Option<Timestamp>,
    /// Why the last poll failed.
    pub check_error: Option<String>,
}

impl Jobset {
    /// The jobset as a config entry (for hashing inputs and for the API).
    pub fn inputs(&self) -> BTreeMap<String, InputConfig> {
        match &self.kind {
            JobsetKind::Legacy { inputs, .. } => inputs.clone(),
            JobsetKind::Flake => BTreeMap::new(),
        }
    }
}

const JOBSET_COLUMNS: &str = "j.id, j.project_id, p.name AS project, j.name, j.description, j.url, \
    j.branch, j.kind, j.expression, j.inputs, j.check_interval, \
    CASE WHEN j.enabled = 1 AND p.enabled = 1 THEN 1 ELSE 0 END AS enabled, j.shares, \
    j.keep_evaluations, j.source, j.last_checked_at, j.check_error";

fn jobset_from_row(row: &AnyRow) -> Result<Jobset> {
    let kind: String = col(row, "kind")?;
    let kind = match kind.as_str() {
        "legacy" => JobsetKind::Legacy {
            expression: col::<Option<String>>(row, "expression")?.unwrap_or_default(),
            inputs: serde_json::from_str(&col::<String>(row, "inputs")?)
                .map_err(|e| CoordinatorError::Corrupt(format!("jobset inputs: {e}")))?,
        },
        "flake" => JobsetKind::Flake,
        other => return Err(CoordinatorError::Corrupt(format!("jobset kind {other:?}"))),
    };
    Ok(Jobset {
        id: JobsetId(col(row, "id")?),
        project_id: ProjectId(col(row, "project_id")?),
        project: col(row, "project")?,
        name: col(row, "name")?,
        description: col(row, "description")?,
        url: col(row, "url")?,
        branch: col(row, "branch")?,
        kind,
        check_interval: col::<i64>(row, "check_interval")?.max(0) as u64,
        enabled: col::<i64>(row, "enabled")? == 1,
        shares: col::<i64>(row, "shares")?.clamp(1, i64::from(u32::MAX)) as u32,
        keep_evaluations: col::<i64>(row, "keep_evaluations")?.clamp(0, i64::from(u32::MAX)) as u32,
        source: col(row, "source")?,
        last_checked_at: col::<Option<i64>>(row, "last_checked_at")?.map(Timestamp),
        check_error: col(row, "check_error")?,
    })
}

fn project_from_row(row: &AnyRow) -> Result<Project> {
    Ok(Project {
        id: ProjectId(col(row, "id")?),
        name: col(row, "name")?,
        description: col(row, "description")?,
        enabled: col::<i64>(row, "enabled")? == 1,
        source: col(row, "source")?,
    })
}

/// Creates the project `name` or updates its description and `enabled`; refuses to take over
/// a project of the other source.
pub async fn upsert_project(
    db: &Db,
    name: &str,
    description: &str,
    enabled: bool,
    source: Source,
) -> Result<ProjectId> {
    if !valid_name(name) {
        return Err(CoordinatorError::BadRequest(format!(
            "project name {name:?} must be 1-100 characters of letters, digits, '.', '_', '-'"
        )));
    }
    let row = sqlx::query(
        "INSERT INTO projects (name, description, enabled, source, created_at) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (name) DO UPDATE SET description = excluded.description, enabled = excluded.enabled \
         WHERE projects.source = excluded.source \
         RETURNING id",
    )
    .bind(name)
    .bind(description)
    .bind(i64::from(enabled))
    .bind(source.as_str())
    .bind(Timestamp::now().millis())
    .fetch_optional(db.pool())
    .await
    .map_err(CoordinatorError::db("saving a project"))?;
    match row {
        Some(row) => Ok(ProjectId(col(&row, "id")?)),
        None => Err(CoordinatorError::Conflict(format!(
            "project {name:?} is managed by the {} and cannot be changed here",
            match source {
                Source::Config => "API",
                Source::Api => "config file",
            }
        ))),
    }
}

/// Creates or updates jobset `spec.name` of `project`; refuses to take over a jobset of the
/// other source. `spec` must be valid ([`JobsetConfig::validate`]).
pub async fn upsert_jobset(
    db: &Db,
    project: ProjectId,
    spec: &JobsetConfig,
    source: Source,
) -> Result<JobsetId> {
    spec.validate("jobset")
        .map_err(CoordinatorError::BadRequest)?;
    let (kind, expression) = match (&spec.expression, spec.flake) {
        (Some(expr), false) => ("legacy", Some(expr.clone())),
        _ => ("flake", None),
    };
    let inputs = serde_json::to_string(&spec.inputs)
        .map_err(|e| CoordinatorError::Internal(format!("serializing inputs: {e}")))?;
    let row = sqlx::query(
        "INSERT INTO jobsets (project_id, name, description, url, branch, kind, expression, inputs, \
             check_interval, enabled, shares, keep_evaluations, source, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
         ON CONFLICT (project_id, name) DO UPDATE SET description = excluded.description, \
             url = excluded.url, branch = excluded.branch, kind = excluded.kind, \
             expression = excluded.expression, inputs = excluded.inputs, \
             check_interval = excluded.check_interval, enabled = excluded.enabled, \
             shares = excluded.shares, keep_evaluations = excluded.keep_evaluations \
         WHERE jobsets.source = excluded.source \
         RETURNING id",
    )
    .bind(project.get())
    .bind(&spec.name)
    .bind(&spec.description)
    .bind(&spec.url)
    .bind(&spec.branch)
    .bind(kind)
    .bind(expression)
    .bind(inputs)
    .bind(i64::try_from(spec.check_interval).unwrap_or(i64::MAX))
    .bind(i64::from(spec.enabled))
    .bind(i64::from(spec.shares))
    .bind(i64::from(spec.keep_evaluations))
    .bind(source.as_str())
    .bind(Timestamp::now().millis())
    .fetch_optional(db.pool())
    .await
    .map_err(CoordinatorError::db("saving a jobset"))?;
    match row {
        Some(row) => Ok(JobsetId(col(&row, "id")?)),
        None => Err(CoordinatorError::Conflict(format!(
            "jobset {:?} is declared in the config file and cannot be changed through the API",
            spec.name
        ))),
    }
}

/// Writes the projects and jobsets of the config file. Declared rows that the file no longer
/// lists are disabled, not deleted (their history stays).
pub async fn sync_declared(db: &Db, projects: &[ProjectConfig]) -> Result<()> {
    let mut declared = Vec::new();
    for project in projects {
        let id = upsert_project(
            db,
            &project.name,
            &project.description,
            project.enabled,
            Source::Config,
        )
        .await?;
        for jobset in &project.jobset {
            declared.push(upsert_jobset(db, id, jobset, Source::Config).await?);
        }
    }
    let rows = sqlx::query("SELECT id FROM jobsets WHERE source = 'config' AND enabled = 1")
        .fetch_all(db.pool())
        .await
        .map_err(CoordinatorError::db("listing declared jobsets"))?;
    for row in rows {
        let id = JobsetId(col(&row, "id")?);
        if !declared.contains(&id) {
            sqlx::query("UPDATE jobsets SET enabled = 0 WHERE id = $1")
                .bind(id.get())
                .execute(db.pool())
                .await
                .map_err(CoordinatorError::db(
                    "disabling a jobset no longer declared",
                ))?;
            tracing::info!(jobset = %id, "jobset no longer in the config file: disabled");
        }
    }
    Ok(())
}

/// Every project, by name.
pub async fn list_projects(db: &Db) -> Result<Vec<Project>> {
    sqlx::query("SELECT id, name, description, enabled, source FROM projects ORDER BY name")
        .fetch_all(db.pool())
        .await
        .map_err(CoordinatorError::db("listing projects"))?
        .iter()
        .map(project_from_row)
        .collect()
}

/// The project `name`.
pub async fn get_project(db: &Db, name: &str) -> Result<Project> {
    let row =
        sqlx::query("SELECT id, name, description, enabled, source FROM projects WHERE name = $1")
            .bind(name)
            .fetch_optional(db.pool())
            .await
            .map_err(CoordinatorError::db("looking up a project"))?
            .ok_or_else(|| CoordinatorError::NotFound(format!("project {name:?}")))?;
    project_from_row(&row)
}

/// The jobsets of `project`, by name.
pub async fn list_jobsets(db: &Db, project: ProjectId) -> Result<Vec<Jobset>> {
    sqlx::query(&format!(
        "SELECT {JOBSET_COLUMNS} FROM jobsets j JOIN projects p ON p.id = j.project_id \
         WHERE j.project_id = $1 ORDER BY j.name"
    ))
    .bind(project.get())
    .fetch_all(db.pool())
    .await
    .map_err(CoordinatorError::db("listing jobsets"))?
    .iter()
    .map(jobset_from_row)
    .collect()
}

/// Jobset `jobset` of project `project`.
pub async fn get_jobset(db: &Db, project: &str, jobset: &str) -> Result<Jobset> {
    let row = sqlx::query(&format!(
        "SELECT {JOBSET_COLUMNS} FROM jobsets j JOIN projects p ON p.id = j.project_id \
         WHERE p.name = $1 AND j.name = $2"
    ))
    .bind(project)
    .bind(jobset)
    .fetch_optional(db.pool())
    .await
    .map_err(CoordinatorError::db("looking up a jobset"))?
    .ok_or_else(|| CoordinatorError::NotFound(format!("jobset {project}/{jobset}")))?;
    jobset_from_row(&row)
}

/// The jobset with row id `id`.
pub async fn jobset_by_id(db: &Db, id: JobsetId) -> Result<Jobset> {
    let row = sqlx::query(&format!(
        "SELECT {JOBSET_COLUMNS} FROM jobsets j JOIN projects p ON p.id = j.project_id WHERE j.id = $1"
    ))
    .bind(id.get())
    .fetch_optional(db.pool())
    .await
    .map_err(CoordinatorError::db("looking up a jobset"))?
    .ok_or_else(|| CoordinatorError::NotFound(format!("jobset {id}")))?;
    jobset_from_row(&row)
}

/// Enabled jobsets with polling whose interval has passed at `now`.
pub async fn due_for_poll(db: &Db, now: Timestamp) -> Result<Vec<Jobset>> {
    let rows = sqlx::query(&format!(
        "SELECT {JOBSET_COLUMNS} FROM jobsets j JOIN projects p ON p.id = j.project_id \
         WHERE j.enabled = 1 AND p.enabled = 1 AND j.check_interval > 0 \
           AND (j.last_checked_at IS NULL OR j.last_checked_at + j.check_interval * 1000 <= $1) \
         ORDER BY j.last_checked_at, j.id"
    ))
    .bind(now.millis())
    .fetch_all(db.pool())
    .await
    .map_err(CoordinatorError::db("finding jobsets to poll"))?;
    rows.iter().map(jobset_from_row).collect()
}

/// Records a poll of `jobset` at `at`, and why it failed if it did.
pub async fn mark_checked(
    db: &Db,
    jobset: JobsetId,
    at: Timestamp,
    error: Option<&str>,
) -> Result<()> {
    sqlx::query("UPDATE jobsets SET last_checked_at = $2, check_error = $3 WHERE id = $1")
        .bind(jobset.get())
        .bind(at.millis())
        .bind(error)
        .execute(db.pool())
        .await
        .map_err(CoordinatorError::db("recording a poll"))?;
    Ok(())
}

/// Shares of every jobset, for fair-share scheduling.
pub async fn all_shares(db: &Db) -> Result<Vec<(JobsetId, u32)>> {
    sqlx::query("SELECT id, shares FROM jobsets")
        .fetch_all(db.pool())
        .await
        .map_err(CoordinatorError::db("reading jobset shares"))?
        .iter()
        .map(|row| {
            Ok((
                JobsetId(col(row, "id")?),
                col::<i64>(row, "shares")?.clamp(1, i64::from(u32::MAX)) as u32,
            ))
        })
        .collect()
}
