//! The cache's error type: every way a request can fail, with its HTTP status and a message that
//! names what is wrong. Internal causes are logged and collapsed to a generic 500 for clients.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use thiserror::Error;

use crate::storage::StoreError;

/// Why a cache operation failed.
#[derive(Debug, Error)]
pub enum CacheError {
    /// No credentials where the cache requires them.
    #[error(
        "authentication required: send a token as the password (HTTP Basic, e.g. through a netrc file)"
    )]
    Unauthenticated,
    /// The credentials name no valid token.
    #[error("the token is not valid")]
    InvalidToken,
    /// A valid token that does not grant what the request needs.
    #[error("the token does not grant {needed} on cache {cache:?}")]
    Forbidden { cache: String, needed: &'static str },
    /// Nothing under this name.
    #[error("{0} not found")]
    NotFound(String),
    /// Malformed input; the message names the field and the reason.
    #[error("{0}")]
    BadRequest(String),
    /// Well-formed input that contradicts what the cache holds (hash mismatches, missing
    /// references, NAR not uploaded).
    #[error("{0}")]
    Unprocessable(String),
    /// The thing already exists, differently.
    #[error("{0}")]
    Conflict(String),
    /// A body larger than the configured limit.
    #[error("{what} exceeds the limit of {limit} bytes")]
    TooLarge { what: String, limit: u64 },
    /// A compression or encoding the cache does not accept.
    #[error("{0}")]
    Unsupported(String),
    /// A byte range outside the object.
    #[error("range not satisfiable: the object has {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    /// The database failed.
    #[error("database error while {context}: {source}")]
    Db {
        context: String,
        source: sqlx::Error,
    },
    /// The blob store failed.
    #[error("storage error: {0}")]
    Store(#[from] StoreError),
    /// Anything else that is the server's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl CacheError {
    /// Wraps a database error with what was being done.
    pub fn db(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> CacheError {
        move |source| CacheError::Db {
            context: context.into(),
            source,
        }
    }

    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            CacheError::Unauthenticated | CacheError::InvalidToken => StatusCode::UNAUTHORIZED,
            CacheError::Forbidden { .. } => StatusCode::FORBIDDEN,
            CacheError::NotFound(_) => StatusCode::NOT_FOUND,
            CacheError::BadRequest(_) => StatusCode::BAD_REQUEST,
            CacheError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            CacheError::Conflict(_) => StatusCode::CONFLICT,
            CacheError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            CacheError::Unsupported(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            CacheError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            CacheError::Store(StoreError::Body { .. }) => StatusCode::BAD_REQUEST,
            CacheError::Db { .. } | CacheError::Store(_) | CacheError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            CacheError::Unauthenticated => "unauthenticated",
            CacheError::InvalidToken => "invalid_token",
            CacheError::Forbidden { .. } => "forbidden",
            CacheError::NotFound(_) => "not_found",
            CacheError::BadRequest(_) => "bad_request",
            CacheError::Unprocessable(_) => "unprocessable",
            CacheError::Conflict(_) => "conflict",
            CacheError::TooLarge { .. } => "too_large",
            CacheError::Unsupported(_) => "unsupported",
            CacheError::RangeNotSatisfiable { .. } => "range_not_satisfiable",
            CacheError::Store(StoreError::Body { .. }) => "body_error",
            CacheError::Db { .. } | CacheError::Store(_) | CacheError::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for CacheError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
            "internal server error".to_owned()
        } else {
            tracing::debug!(error = %self, status = status.as_u16(), "request refused");
            self.to_string()
        };
        let mut response = (
            status,
            Json(json!({"error": {"code": self.code(), "message": message}})),
        )
            .into_response();
        match self {
            CacheError::Unauthenticated | CacheError::InvalidToken => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"kiln\""),
                );
            }
            CacheError::RangeNotSatisfiable { size } => {
                if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    response.headers_mut().insert(header::CONTENT_RANGE, value);
                }
            }
            _ => {}
        }
        response
    }
}
