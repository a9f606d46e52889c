//! The cache's HTTP endpoints: Nix's binary cache protocol (mounted at `/cache`) and Kiln's JSON
//! API for caches (mounted at `/api/v1/caches`). Where they are mounted is the web tier's choice;
//! it passes the mount point of the Nix protocol so that URLs the API returns are right.

mod api;
mod auth;
mod nix;
mod range;

use axum::Router;
use axum::routing::{get, post};

use crate::service::CacheService;

pub use auth::token_from_headers;

/// Where the web tier mounts [`nix_router`].
pub const NIX_MOUNT: &str = "/cache";
/// Where the web tier mounts [`api_router`].
pub const API_MOUNT: &str = "/api/v1/caches";

/// Nix's binary cache protocol, one cache per first path segment:
/// `GET /{cache}/nix-cache-info`, `GET|HEAD|PUT /{cache}/{hash}.narinfo`,
/// `GET|HEAD|PUT /{cache}/nar/{file}`, `GET|HEAD|PUT /{cache}/log/{drv}`.
pub fn nix_router(service: CacheService) -> Router {
    Router::new()
        .route("/{cache}/{file}", get(nix::get_file).put(nix::put_file))
        .route("/{cache}/nar/{file}", get(nix::get_nar).put(nix::put_nar))
        .route("/{cache}/log/{drv}", get(nix::get_log).put(nix::put_log))
        .with_state(service)
}

/// Kiln's cache API: `GET /` (caches the caller may read), `GET /{name}` (public key, URL and
/// a `nix.conf` snippet), `POST /{name}/upload` (streaming NAR upload; see [`api`]).
pub fn api_router(service: CacheService) -> Router {
    Router::new()
        .route("/", get(api::list_caches))
        .route("/{name}", get(api::get_cache))
        .route("/{name}/upload", post(api::upload))
        .route("/{name}/access", get(api::get_access))
        .with_state(service)
}
