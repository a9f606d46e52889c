//! An HTTP client for a Kiln binary cache: what workers and `kiln cache push` use to find what a
//! cache lacks and to push NARs through the streaming upload API.
//!
//! Bodies are streamed both ways: a NAR is never held whole in memory, whether it comes from a
//! caller's stream, an `AsyncRead`, or is packed from a store path on disk while it is sent.
//! Every error keeps what the server said (`{"error": {"code", "message"}}`) and names the
//! request that failed.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use kiln_nix::cache_info::{CacheInfo, MAX_CACHE_INFO_LEN};
use kiln_nix::hash::{Hash, HashAlgo};
use kiln_nix::nar::DumpError;
use kiln_nix::narinfo::{ContentAddress, MAX_NARINFO_LEN, NarInfo};
use kiln_nix::{StoreDir, StorePath};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use thiserror::Error;
use tokio::io::AsyncRead;
use tokio::sync::mpsc;

use crate::http::{API_MOUNT, NIX_MOUNT};
use crate::layout::validate_cache_name;
use crate::storage::ByteStream;
use crate::wire::{
    CacheView, ErrorBody, HEADER_CA, HEADER_DERIVER, HEADER_NAR_HASH, HEADER_NAR_SIZE,
    HEADER_REFERENCES, HEADER_STORE_PATH, UploadView,
};

/// Requests [`CacheClient::missing`] keeps in flight unless told otherwise.
pub const DEFAULT_CONCURRENCY: usize = 16;

/// Largest error or JSON answer the client reads, in bytes.
const MAX_ANSWER_LEN: usize = 1 << 20;

/// Size of the pieces a NAR packed from disk is sent in.
const PACK_CHUNK: usize = 256 * 1024;

/// Pieces of a packed NAR buffered between the packing thread and the connection.
const PACK_IN_FLIGHT: usize = 8;

/// Why a cache request failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The base URL given to [`CacheClient::new`] is not an `http(s)://` URL.
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

/// A request body: bytes in memory or a stream of them, never collected.
pub struct Body(reqwest::Body);

impl Body {
    /// A body read from `stream` as it is sent. An error from the stream aborts the request,
    /// and the server discards what it received.
    pub fn from_stream<S>(stream: S) -> Body
    where
        S: Stream<Item = io::Result<Bytes>> + Send + 'static,
    {
        Body(reqwest::Body::wrap_stream(stream))
    }

    /// A body read from `reader` as it is sent.
    pub fn from_reader<R>(reader: R) -> Body
    where
        R: AsyncRead + Send + 'static,
    {
        Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
            reader, PACK_CHUNK,
        ))
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Body {
        Body(reqwest::Body::from(bytes))
    }
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Body {
        Body(reqwest::Body::from(bytes))
    }
}

impl From<String> for Body {
    fn from(text: String) -> Body {
        Body(reqwest::Body::from(text))
    }
}

impl From<&'static [u8]> for Body {
    fn from(bytes: &'static [u8]) -> Body {
        Body(reqwest::Body::from(bytes))
    }
}

/// The narinfo facts an upload carries besides the NAR itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRequest {
    /// The path uploaded.
    pub store_path: StorePath,
    /// Its references (it may name itself); each other one must be in the cache already.
    pub references: Vec<StorePath>,
    /// The derivation that built it, if known.
    pub deriver: Option<StorePath>,
    /// Its content address, for content-addressed paths.
    pub ca: Option<ContentAddress>,
    /// The NAR hash the caller expects; the server refuses a NAR that hashes otherwise.
    pub nar_hash: Option<Hash>,
    /// The NAR size the caller expects, in bytes; checked like `nar_hash`.
    pub nar_size: Option<u64>,
}

impl UploadRequest {
    /// An upload of `store_path` with no references and nothing else known.
    pub fn new(store_path: StorePath) -> UploadRequest {
        UploadRequest {
            store_path,
            references: Vec::new(),
            deriver: None,
            ca: None,
            nar_hash: None,
            nar_size: None,
        }
    }

    fn headers(&self) -> Result<HeaderMap, String> {
        let dir = StoreDir::default();
        let mut headers = HeaderMap::new();
        let mut put = |name: &'static str, value: String| -> Result<(), String> {
            let value = HeaderValue::try_from(value.as_str())
                .map_err(|_| format!("{name} {value:?} cannot be sent as a header"))?;
            headers.insert(HeaderName::from_static(name), value);
            Ok(())
        };
        put(HEADER_STORE_PATH, dir.display(&self.store_path))?;
        if !self.references.is_empty() {
            let refs: Vec<String> = self.references.iter().map(|r| r.to_string()).collect();
            put(HEADER_REFERENCES, refs.join(" "))?;
        }
        if let Some(deriver) = &self.deriver {
            put(HEADER_DERIVER, deriver.to_string())?;
        }
        if let Some(ca) = &self.ca {
            put(HEADER_CA, ca.to_string())?;
        }
        if let Some(hash) = &self.nar_hash {
            put(HEADER_NAR_HASH, hash.to_typed_nix32())?;
        }
        if let Some(size) = self.nar_size {
            put(HEADER_NAR_SIZE, size.to_string())?;
        }
        Ok(headers)
    }
}

/// What the cache reported after an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadOutcome {
    /// The path.
    pub store_path: StorePath,
    /// Whether the cache served the path already, so nothing was stored.
    pub already_present: bool,
    /// The NAR's hash as the server measured it (or recorded it earlier).
    pub nar_hash: Hash,
    /// The NAR's size in bytes.
    pub nar_size: u64,
    /// Where the NAR file is, relative to the cache URL.
    pub url: String,
    /// Size of the stored (compressed) NAR file in bytes.
    pub file_size: u64,
}

impl UploadOutcome {
    fn from_view(view: UploadView) -> Result<UploadOutcome, String> {
        Ok(UploadOutcome {
            store_path: StorePath::parse(&view.store_path)
                .map_err(|e| format!("store_path: {e}"))?,
            already_present: view.already_present,
            nar_hash: Hash::parse_as(HashAlgo::Sha256, &view.nar_hash)
                .map_err(|e| format!("nar_hash: {e}"))?,
            nar_size: view.nar_size,
            url: view.url,
            file_size: view.file_size,
        })
    }
}

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
        let (nar, packer) = pack_nar(location.to_owned());
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

/// Whether packing stopped only because the connection stopped reading (the request's own
/// error then says why).
fn is_closed_pipe(err: &DumpError) -> bool {
    matches!(err, DumpError::Write(e) if e.kind() == io::ErrorKind::BrokenPipe)
}

/// Sends what it is given down a channel in pieces of [`PACK_CHUNK`] bytes.
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send_buffered(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(PACK_CHUNK));
        self.tx
            .blocking_send(Ok(Bytes::from(chunk)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped reading"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = PACK_CHUNK - self.buf.len();
        let taken = data.len().min(room);
        self.buf.extend_from_slice(&data[..taken]);
        if self.buf.len() >= PACK_CHUNK {
            self.send_buffered()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buffered()
    }
}

/// A stream of the NAR of the file tree at `location`, packed on a blocking thread as the
/// body is read, and the packing task (its NAR size, or why it failed). A packing error is also
/// sent down the stream, so an upload is aborted rather than completed with a truncated NAR.
pub fn pack_nar(
    location: PathBuf,
) -> (ByteStream, tokio::task::JoinHandle<Result<u64, DumpError>>) {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(PACK_IN_FLIGHT);
    let packer = tokio::task::spawn_blocking(move || {
        let abort = tx.clone();
        let writer = ChannelWriter {
            tx,
            buf: Vec::with_capacity(PACK_CHUNK),
        };
        let result = kiln_nix::nar::dump_path(&location, writer);
        if let Err(err) = &result {
            let _ = abort.blocking_send(Err(io::Error::other(err.to_string())));
        }
        result
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (Box::pin(stream), packer)
}

/// Reads a whole answer of at most `limit` bytes.
async fn read_limited(
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
async fn error_from(response: reqwest::Response, what: &str) -> ClientError {
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

    #[test]
    fn upload_headers_carry_the_narinfo_facts() {
        let path = StorePath::parse("/nix/store/0a0mdx9ibbspn3f3w1m8fxdw9xy4kibx-hello").unwrap();
        let dep = StorePath::parse("/nix/store/1a0mdx9ibbspn3f3w1m8fxdw9xy4kibx-dep").unwrap();
        let mut request = UploadRequest::new(path.clone());
        request.references = vec![dep.clone(), path.clone()];
        request.nar_size = Some(120);
        request.nar_hash = Some(Hash::sha256(b"x"));
        let headers = request.headers().unwrap();
        assert_eq!(
            headers[HEADER_STORE_PATH],
            "/nix/store/0a0mdx9ibbspn3f3w1m8fxdw9xy4kibx-hello"
        );
        assert_eq!(headers[HEADER_REFERENCES], format!("{dep} {path}").as_str());
        assert_eq!(headers[HEADER_NAR_SIZE], "120");
        assert_eq!(
            headers[HEADER_NAR_HASH],
            Hash::sha256(b"x").to_typed_nix32().as_str()
        );
        assert!(!headers.contains_key(HEADER_DERIVER));
        assert!(!headers.contains_key(HEADER_CA));
    }

    #[tokio::test]
    async fn packed_nar_is_the_nar_of_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("t");
        std::fs::create_dir(&tree).unwrap();
        std::fs::write(tree.join("big"), vec![5u8; 3 * PACK_CHUNK + 17]).unwrap();
        std::fs::write(tree.join("small"), b"hi").unwrap();
        let (mut stream, packer) = pack_nar(tree.clone());
        let mut nar = Vec::new();
        while let Some(chunk) = stream.next().await {
            nar.extend_from_slice(&chunk.unwrap());
        }
        let size = packer.await.unwrap().unwrap();
        let mut expected = Vec::new();
        kiln_nix::nar::dump_path(&tree, &mut expected).unwrap();
        assert_eq!(size, expected.len() as u64);
        assert!(nar == expected, "the streamed NAR differs from dump_path's");
    }

    #[tokio::test]
    async fn packing_a_missing_tree_fails_the_body() {
        let dir = tempfile::tempdir().unwrap();
        let (mut stream, packer) = pack_nar(dir.path().join("absent"));
        let mut failed = false;
        while let Some(chunk) = stream.next().await {
            failed |= chunk.is_err();
        }
        assert!(failed, "the body must end in an error, not look complete");
        assert!(packer.await.unwrap().is_err());
    }
}
