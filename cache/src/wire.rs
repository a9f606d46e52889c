//! The cache API's wire types (version 1, under `/api/v1/caches`): what the server sends and
//! what [`crate::client`] reads, defined once so the two cannot drift.

use serde::{Deserialize, Serialize};

/// Header naming the uploaded path (full path in `/nix/store`); required.
pub const HEADER_STORE_PATH: &str = "x-kiln-store-path";
/// Header listing the path's references, space separated (base names or full paths).
pub const HEADER_REFERENCES: &str = "x-kiln-references";
/// Header naming the path's deriver (base name or full path).
pub const HEADER_DERIVER: &str = "x-kiln-deriver";
/// Header giving the path's content address, as in a narinfo `CA` line.
pub const HEADER_CA: &str = "x-kiln-ca";
/// Header giving the NAR hash the client expects (`sha256:...`), checked end to end.
pub const HEADER_NAR_HASH: &str = "x-kiln-nar-hash";
/// Header giving the NAR size the client expects, in bytes.
pub const HEADER_NAR_SIZE: &str = "x-kiln-nar-size";

/// What `GET /api/v1/caches/{name}/access` returns: what the request's credentials may do on
/// the cache (a worker checks its token with it before taking any step).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessView {
    /// Cache name.
    pub cache: String,
    /// Whether the credentials may read (always true for a public cache).
    pub read: bool,
    /// Whether they may push.
    pub push: bool,
    /// Whether they may administer it.
    pub admin: bool,
}

/// What `GET /api/v1/caches/{name}` returns (and each item of `GET /api/v1/caches`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheView {
    /// Cache name.
    pub name: String,
    /// Whether reading needs no token.
    pub public: bool,
    /// `Priority` in `nix-cache-info`.
    pub priority: u32,
    /// The key clients add to `trusted-public-keys`, `name:base64`.
    pub public_key: String,
    /// The substituter URL.
    pub url: String,
    /// Lines to add to `nix.conf` to use the cache.
    pub nix_conf: String,
}

/// What a successful `POST /api/v1/caches/{name}/upload` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadView {
    /// The full store path.
    pub store_path: String,
    /// Whether the cache already served the path (nothing was uploaded).
    pub already_present: bool,
    /// `sha256:<nix32>` of the NAR.
    pub nar_hash: String,
    /// Size of the NAR in bytes.
    pub nar_size: u64,
    /// Where the compressed NAR is, relative to the cache URL.
    pub url: String,
    /// Size of the compressed NAR in bytes.
    pub file_size: u64,
}

/// The body of every error answer: `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// One error, as the server states it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// A stable machine-readable code (`unauthenticated`, `unprocessable`, ...).
    pub code: String,
    /// What is wrong, for people.
    pub message: String,
}
