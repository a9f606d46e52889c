//! An HTTP client for a Kiln binary cache: what workers and `kiln cache push` use to find what a
//! cache lacks and to push NARs through the streaming upload API.
//!
//! Bodies are streamed both ways: a NAR is never held whole in memory, whether it comes from a
//! caller's stream, an `AsyncRead`, or is packed from a store path on disk while it is sent.
//! Every error keeps what the server said (`{"error": {"code", "message"}}`) and names the
//! request that failed.

mod body;
mod error;
mod upload;

use std::io;
use std::path::Path;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use kiln_nix::StoreDir;
use kiln_nix::StorePath;
use kiln_nix::cache_info::{CacheInfo, MAX_CACHE_INFO_LEN};
use kiln_nix::nar::DumpError;
use kiln_nix::narinfo::{MAX_NARINFO_LEN, NarInfo};
use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};

pub use body::{Body, pack_nar};
pub use error::ClientError;
pub use upload::{UploadOutcome, UploadRequest};

use crate::http::{API_MOUNT, NIX_MOUNT};
use crate::layout::validate_cache_name;
use crate::wire::{CacheView, UploadView};
use body::is_closed_pipe;
use error::{error_from, read_limited};

/// Requests [`CacheClient::missing`] keeps in flight unless told otherwise.
pub const DEFAULT_CONCURRENCY: usize = 16;

/// Largest error or JSON answer the client reads, in bytes.
const MAX_ANSWER_LEN: usize = 1 << 20;

/// A client of one cache on one Kiln server. Cheap to clone; clones share connections.
#[derive(Debug, Clone)]
pub struct CacheClient {
    http: reqwest::Client,
    /// The server's URL without a trailing slash, e.g. `http://127.0.0.1:8080`.
    base: String,
    cache: String,
    token: Option<String>,
    concurrency: usize,
}

impl CacheClient {
    /// A client of the cache `cache_name` on the Kiln server at `base_url` (e.g.
    /// `http://127.0.0.1:8080`; a path prefix is kept), sending `token` (if any) as a Bearer
    /// token with every request.
    pub fn new(
        base_url: &str,
        cache_name: &str,
        token: Option<String>,
    ) -> Result<CacheClient, ClientError> {
        let invalid = |reason: &str| ClientError::InvalidUrl {
            url: base_url.to_owned(),
            reason: reason.to_owned(),
        };
        let url = reqwest::Url::parse(base_url).map_err(|e| invalid(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid("only http:// and https:// are supported"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid("it must not have a query or a fragment"));
        }
        validate_cache_name(cache_name)
            .map_err(|_| ClientError::InvalidCacheName(cache_name.to_owned()))?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(ClientError::Setup)?;
        Ok(CacheClient {
            http,
            base: url.as_str().trim_end_matches('/').to_owned(),
            cache: cache_name.to_owned(),
            token,
            concurrency: DEFAULT_CONCURRENCY,
        })
    }

    /// The same client, keeping at most `n` (at least 1) narinfo requests in flight in
    /// [`CacheClient::missing`].
    pub fn with_concurrency(mut self, n: usize) -> CacheClient {
        self.concurrency = n.max(1);
        self
    }

    /// The cache's name.
    pub fn cache_name(&self) -> &str {
        &self.cache
    }

    /// The cache's substituter URL, `<base>/cache/<name>`.
    pub fn substituter_url(&self) -> String {
        format!("{}{NIX_MOUNT}/{}", self.base, self.cache)
    }

    fn api_url(&self, tail: &str) -> String {
        format!("{}{API_MOUNT}/{}{tail}", self.base, self.cache)
    }

    fn request(&self, method: Method, url: &str) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, url);
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    /// Sends `builder`; non-success answers become errors carrying what the server said.
    async fn send(
        &self,
        builder: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<reqwest::Response, ClientError> {
        let response = builder
            .send()
            .await
            .map_err(|source| ClientError::Transport {
                request: what.to_owned(),
                source,
            })?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(error_from(response, what).await)
        }
    }

    /// `GET /api/v1/caches/<name>`: the cache's public key, substituter URL and `nix.conf`
    /// lines.
    pub async fn cache_info(&self) -> Result<CacheView, ClientError> {
        let url = self.api_url("");
        let what = format!("GET {url}");
        let response = self.send(self.request(Method::GET, &url), &what).await?;
        let body = read_limited(response, MAX_ANSWER_LEN, &what).await?;
        serde_json::from_slice(&body).map_err(|e| ClientError::BadAnswer {
            request: what,
            reason: e.to_string(),
        })
    }

    /// `GET <cache>/nix-cache-info`, as Nix reads it.
    pub async fn nix_cache_info(&self) -> Result<CacheInfo, ClientError> {
        let url = format!("{}/nix-cache-info", self.substituter_url());
        let what = format!("GET {url}");
        let response = self.send(self.request(Method::GET, &url), &what).await?;
        let body = read_limited(response, MAX_CACHE_INFO_LEN, &what).await?;
        let text = String::from_utf8(body.to_vec()).map_err(|_| ClientError::BadAnswer {
            request: what.clone(),
            reason: "nix-cache-info is not UTF-8".to_owned(),
        })?;
        CacheInfo::parse(&text).map_err(|e| ClientError::BadAnswer {
            request: what,
            reason: e.to_string(),
        })
    }

    fn narinfo_url(&self, path: &StorePath) -> String {
        format!("{}/{}.narinfo", self.substituter_url(), path.hash_part())
    }

    /// The narinfo the cache serves for `path`, or `None` if it does not serve it.
    pub async fn narinfo(&self, path: &StorePath) -> Result<Option<NarInfo>, ClientError> {
        let url = self.narinfo_url(path);
        let what = format!("GET {url}");
        let response = self
            .request(Method::GET, &url)
            .send()
            .await
            .map_err(|source| ClientError::Transport {
                request: what.clone(),
                source,
            })?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(error_from(response, &what).await);
        }
        let body = read_limited(response, MAX_NARINFO_LEN, &what).await?;
        let narinfo = NarInfo::parse_bytes(&body).map_err(|e| ClientError::BadAnswer {
            request: what.clone(),
            reason: e.to_string(),
        })?;
        if &narinfo.store_path != path {
            return Err(ClientError::BadAnswer {
                request: what,
                reason: format!("the narinfo describes {}", narinfo.store_path),
            });
        }
        Ok(Some(narinfo))
    }

    /// Whether the cache serves `path` (a `HEAD` of its narinfo).
    pub async fn has(&self, path: &StorePath) -> Result<bool, ClientError> {
        let url = self.narinfo_url(path);
        let what = format!("HEAD {url}");
        let response = self
            .request(Method::HEAD, &url)
            .send()
            .await
            .map_err(|source| ClientError::Transport {
                request: what.clone(),
                source,
            })?;
        match response.status() {
            status if status.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(error_from(response, &what).await),
        }
    }

    /// The paths of `paths` the cache does not serve, in the order given. Asks for several
    /// narinfos at once (see [`CacheClient::with_concurrency`]); fails on the first error.
    pub async fn missing(&self, paths: &[StorePath]) -> Result<Vec<StorePath>, ClientError> {
        let answers: Vec<Result<bool, ClientError>> =
            futures_util::stream::iter(paths.iter().map(|p| self.has(p)))
                .buffered(self.concurrency)
                .collect()
                .await;
        let mut missing = Vec::new();
        for (path, present) in paths.iter().zip(answers) {
            if !present? {
                missing.push(path.clone());
            }
        }
        Ok(missing)
    }

    /// Uploads the raw NAR of `request.store_path` through `POST /api/v1/caches/<name>/upload`;
    /// the server hashes, checks, compresses, stores and publishes it. `body` is sent as it is
    /// read. If the cache serves the path already, the outcome says so.
    pub async fn upload_nar(
        &self,
        request: &UploadRequest,
        body: Body,
    ) -> Result<UploadOutcome, ClientError> {
        let url = self.api_url("/upload");
        let what = format!(
            "POST {url} of {}",
            StoreDir::default().display(&request.store_path)
        );
        let headers = request.headers().map_err(|reason| ClientError::BadAnswer {
            request: what.clone(),
            reason,
        })?;
        let builder = self
            .request(Method::POST, &url)
            .headers(headers)
            .header(CONTENT_TYPE, "application/x-nix-nar")
            .body(body.0);
        let response = self.send(builder, &what).await?;
        let bytes = read_limited(response, MAX_ANSWER_LEN, &what).await?;
        let view: UploadView =
            serde_json::from_slice(&bytes).map_err(|e| ClientError::BadAnswer {
                request: what.clone(),
                reason: e.to_string(),
            })?;
        UploadOutcome::from_view(view).map_err(|reason| ClientError::BadAnswer {
            request: what,
            reason,
        })
    }

    /// Uploads the path whose files are at `location` (its logical path is
    /// `request.store_path`; in a chroot store the two differ): its NAR is packed from disk on
    /// a blocking thread while it is sent, never held whole in memory. If packing fails the
    /// upload is aborted and the packing error is returned.
    pub async fn upload_path(
        &self,
        request: &UploadRequest,
        location: &Path,
    ) -> Result<UploadOutcome, ClientError> {
        self.upload_path_with_progress(request, location, |_| {})
            .await
    }

    /// Like [`CacheClient::upload_path`], calling `progress` with the size of each piece of
    /// the NAR as it is handed to the connection (for progress bars).
    pub async fn upload_path_with_progress(
        &self,
        request: &UploadRequest,
        location: &Path,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<UploadOutcome, ClientError> {
        let (nar, packer) = pack_nar(location.to_owned());
        let nar = nar.inspect_ok(move |chunk| progress(chunk.len() as u64));
        let sent = self.upload_nar(request, Body::from_stream(nar)).await;
        // The packer ends once its output is closed, which the request has done by now.
        let packed = packer.await.unwrap_or_else(|e| {
            Err(DumpError::Write(io::Error::other(format!(
                "the packing thread failed: {e}"
            ))))
        });
        match (sent, packed) {
            (Ok(outcome), _) if outcome.already_present => Ok(outcome),
            (_, Err(source)) if !is_closed_pipe(&source) => Err(ClientError::Pack {
                path: location.to_owned(),
                source,
            }),
            (sent, _) => sent,
        }
    }

    /// Stores the build log of `drv` (a derivation) under `log/<drv>`, replacing any earlier one.
    pub async fn upload_log(&self, drv: &StorePath, body: Body) -> Result<(), ClientError> {
        if !drv.is_derivation() {
            return Err(ClientError::NotADerivation(drv.to_string()));
        }
        let url = format!("{}/log/{drv}", self.substituter_url());
        let what = format!("PUT {url}");
        let builder = self
            .request(Method::PUT, &url)
            .header(CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(body.0);
        self.send(builder, &what).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_must_be_http_without_query() {
        let ok = CacheClient::new("http://127.0.0.1:8080/", "main", None).unwrap();
        assert_eq!(ok.substituter_url(), "http://127.0.0.1:8080/cache/main");
        let prefixed = CacheClient::new("https://example.org/kiln/", "ci", None).unwrap();
        assert_eq!(
            prefixed.api_url("/upload"),
            "https://example.org/kiln/api/v1/caches/ci/upload"
        );
        for bad in [
            "127.0.0.1:8080",
            "ftp://host",
            "http://host/?a=b",
            "not a url",
        ] {
            assert!(
                matches!(
                    CacheClient::new(bad, "main", None),
                    Err(ClientError::InvalidUrl { .. })
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            CacheClient::new("http://host", "../main", None),
            Err(ClientError::InvalidCacheName(_))
        ));
    }
}
