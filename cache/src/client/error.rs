//! Why a cache request failed, and reading the server's answers.

use bytes::Bytes;
use futures_util::TryStreamExt;
use kiln_nix::nar::DumpError;
use std::path::PathBuf;
use thiserror::Error;

use super::MAX_ANSWER_LEN;
use crate::wire::ErrorBody;

/// Why a cache request failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The base URL given to [`CacheClient::new`](super::CacheClient::new) is not an `http(s)://` URL.
    #[error("invalid cache server URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The cache name cannot name a cache.
    #[error(
        "invalid cache name {0:?}: use letters, digits, '-' or '_', starting with a letter or digit"
    )]
    InvalidCacheName(String),
    /// A log upload named something that is not a derivation.
    #[error("build logs are stored under a derivation (.drv), not under {0}")]
    NotADerivation(String),
    /// The HTTP client could not be set up.
    #[error("cannot set up the HTTP client")]
    Setup(#[source] reqwest::Error),
    /// The server answered with an error it explained.
    #[error("{request}: the cache answered {status} ({code}): {message}")]
    Server {
        /// The request, e.g. `POST http://host/api/v1/caches/main/upload`.
        request: String,
        /// HTTP status.
        status: u16,
        /// The server's machine-readable code (`unauthenticated`, `unprocessable`, ...).
        code: String,
        /// The server's message.
        message: String,
    },
    /// The server answered with an unexpected status and no explanation Kiln can read.
    #[error("{request}: unexpected answer {status}: {excerpt}")]
    UnexpectedStatus {
        /// The request.
        request: String,
        /// HTTP status.
        status: u16,
        /// The beginning of the answer's body.
        excerpt: String,
    },
    /// The request could not be sent or its answer not received.
    #[error("{request}: the request failed")]
    Transport {
        /// The request.
        request: String,
        /// What failed (connection refused, reset, interrupted body...).
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with success but with a body Kiln cannot use.
    #[error("{request}: unusable answer: {reason}")]
    BadAnswer {
        /// The request.
        request: String,
        /// What is wrong with the answer.
        reason: String,
    },
    /// Packing the NAR of a path from disk failed (the upload was aborted).
    #[error("cannot pack the NAR of {}", path.display())]
    Pack {
        /// Where the path was read from.
        path: PathBuf,
        /// Why packing failed.
        #[source]
        source: DumpError,
    },
}

impl ClientError {
    /// The HTTP status the server answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Server { status, .. } | ClientError::UnexpectedStatus { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }

    /// The server's error code (`unauthenticated`, `invalid_token`, `forbidden`, ...), if it
    /// sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Server { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether the server refused the credentials (401) or their permissions (403).
    pub fn is_auth(&self) -> bool {
        matches!(self.status(), Some(401 | 403))
    }
}

/// Reads a whole answer of at most `limit` bytes.
pub(super) async fn read_limited(
    response: reqwest::Response,
    limit: usize,
    what: &str,
) -> Result<Bytes, ClientError> {
    let mut stream = response.bytes_stream();
    let mut body = Vec::new();
    while let Some(chunk) = stream
        .try_next()
        .await
        .map_err(|source| ClientError::Transport {
            request: what.to_owned(),
            source,
        })?
    {
        if body.len() + chunk.len() > limit {
            return Err(ClientError::BadAnswer {
                request: what.to_owned(),
                reason: format!("the answer is larger than {limit} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}

/// The error a non-success answer stands for, with the server's explanation if it gave one.
pub(super) async fn error_from(response: reqwest::Response, what: &str) -> ClientError {
    let status = response.status().as_u16();
    let body = match read_limited(response, MAX_ANSWER_LEN, what).await {
        Ok(body) => body,
        Err(_) => Bytes::new(),
    };
    match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(ErrorBody { error }) => ClientError::Server {
            request: what.to_owned(),
            status,
            code: error.code,
            message: error.message,
        },
        Err(_) => {
            let text = String::from_utf8_lossy(&body);
            let mut excerpt: String = text.chars().take(200).collect();
            if excerpt.len() < text.len() {
                excerpt.push('…');
            }
            ClientError::UnexpectedStatus {
                request: what.to_owned(),
                status,
                excerpt,
            }
        }
    }
}
