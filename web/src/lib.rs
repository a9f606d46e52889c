//! Kiln's web tier: dashboard, JSON API, the binary cache's HTTP endpoints, webhooks and metrics.
//!
//! It is stateless (many replicas may run) and must never schedule or build: it reads the
//! database, and writes only requests for the coordinator (evaluate now, restart, cancel, bump).
//! It mounts the binary cache (Nix's protocol under `/cache/<name>/`, the cache API under
//! `/api/v1/caches/`), the farm API under `/api/v1/` ([`api`]) and the dashboard at `/`
//! ([`dashboard`]).

pub mod api;
pub mod dashboard;

use axum::Router;
use kiln_cache::CacheService;
use kiln_cache::http::{API_MOUNT, NIX_MOUNT, api_router, nix_router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use api::{FarmState, status};

/// The whole HTTP application.
pub fn router(cache: CacheService, farm: FarmState) -> Router {
    Router::new()
        .nest(NIX_MOUNT, nix_router(cache.clone()))
        .nest(API_MOUNT, api_router(cache))
        .merge(api::router(farm.clone()))
        .merge(dashboard::router(farm))
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "serving HTTP");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    tracing::info!(%addr, "HTTP server stopped");
    Ok(())
}
