//! Kiln's web tier: dashboard, JSON API, the binary cache's HTTP endpoints, webhooks and metrics.
//!
//! It is stateless (many replicas may run) and must never schedule or build. Today it mounts the
//! binary cache: Nix's protocol under `/cache/<name>/` and the cache API under
//! `/api/v1/caches/`.

use axum::Router;
use kiln_cache::CacheService;
use kiln_cache::http::{API_MOUNT, NIX_MOUNT, api_router, nix_router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The whole HTTP application.
pub fn router(cache: CacheService) -> Router {
    Router::new()
        .nest(NIX_MOUNT, nix_router(cache.clone()))
        .nest(API_MOUNT, api_router(cache))
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
