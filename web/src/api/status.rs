//! `GET /api/v1/status`: who leads the coordinators and what each worker is building.
//!
//! The answer comes from a [`StatusSource`]: the process itself in `kiln up`, Redis (worker
//! heartbeats and the leader lease) in the distributed mode. When that source is unreachable the
//! endpoint still answers, with `live: false` and whatever it could not read left empty: live
//! views degrade, nothing else does.

use std::sync::Arc;

use async_trait::async_trait;
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::FarmState;

/// The farm's live state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FarmStatus {
    /// Name of the coordinator that currently leads (dispatches and evaluates); `null` if none
    /// does or it cannot be known.
    pub coordinator_leader: Option<String>,
    /// Workers that reported recently, by name.
    pub workers: Vec<WorkerStatus>,
    /// False when the live state could not be read (Redis down): the other fields are then
    /// empty or stale.
    pub live: bool,
}

/// One worker as it last reported itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkerStatus {
    /// The worker's name.
    pub name: String,
    /// Systems it builds for.
    pub systems: Vec<String>,
    /// System features it supports.
    pub features: Vec<String>,
    /// Builds it runs at once.
    pub slots: u32,
    /// The steps it is building.
    pub running: Vec<RunningStepStatus>,
    /// When it last reported, UTC milliseconds since the Unix epoch.
    pub last_seen_ms: i64,
}

/// A step a worker is building.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunningStepStatus {
    /// The step's id.
    pub step_id: i64,
    /// Its attempt.
    pub attempt: u32,
    /// The derivation being built.
    pub drv_path: String,
    /// When the worker started it, UTC milliseconds since the Unix epoch.
    pub started_at_ms: i64,
}

/// Where [`FarmStatus`] comes from.
#[async_trait]
pub trait StatusSource: Send + Sync {
    /// The current state; never fails (an unreachable source answers `live: false`).
    async fn status(&self) -> FarmStatus;
}

/// A fixed answer, for processes that have no live state of their own.
#[derive(Debug, Clone, Default)]
pub struct NoStatus;

#[async_trait]
impl StatusSource for NoStatus {
    async fn status(&self) -> FarmStatus {
        FarmStatus::default()
    }
}

/// `GET /api/v1/status`: the leading coordinator and the workers with their running steps.
#[utoipa::path(get, path = "/api/v1/status",
    responses((status = 200, description = "Live state of the farm", body = FarmStatus)))]
pub async fn get_status(State(state): State<FarmState>) -> Json<FarmStatus> {
    Json(status_of(&state.status).await)
}

async fn status_of(source: &Arc<dyn StatusSource>) -> FarmStatus {
    let mut status = source.status().await;
    status.workers.sort_by(|a, b| a.name.cmp(&b.name));
    status
}
