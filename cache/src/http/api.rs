//! Kiln's JSON API for caches.
//!
//! `POST /api/v1/caches/{name}/upload` is the streaming upload for Kiln's own clients (workers,
//! `kiln cache push`): the body is the raw, uncompressed NAR; the metadata travels in headers:
//!
//! | header | required | value |
//! |---|---|---|
//! | `X-Kiln-Store-Path` | yes | the full store path |
//! | `X-Kiln-References` | no | space-separated references (base names or full paths); absent = none |
//! | `X-Kiln-Deriver` | no | the deriver's base name or full path |
//! | `X-Kiln-CA` | no | the content address, as in a narinfo `CA` |
//! | `X-Kiln-Nar-Hash` | no | the NAR hash the client expects (`sha256:...`); a mismatch is refused |
//! | `X-Kiln-Nar-Size` | no | the NAR size the client expects |
//!
//! The server validates and hashes the NAR, compresses it with zstd, stores it under
//! `nar/<filehash>.nar.zst`, signs and publishes the narinfo. Answers: 201 with the narinfo's
//! facts as JSON; 200 with `"already_present": true` if the cache already serves the path (the
//! body is then not read); 4xx with `{"error": {"code", "message"}}` otherwise, nothing visible.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header::HOST;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;
use kiln_nix::hash::{Hash, HashAlgo};
use kiln_nix::narinfo::{ContentAddress, NarInfo};
use kiln_nix::{StoreDir, StorePath};

use super::NIX_MOUNT;
use super::auth::token_from_headers;
use crate::caches::{self, CacheRecord};
use crate::error::CacheError;
use crate::index::{self, Committed, Compression, NarFacts};
use crate::ingest;
use crate::service::CacheService;
use crate::tokens::Permission;
use crate::wire::{
    AccessView, CacheView, HEADER_CA, HEADER_DERIVER, HEADER_NAR_HASH, HEADER_NAR_SIZE,
    HEADER_REFERENCES, HEADER_STORE_PATH, UploadView,
};

fn base_url(service: &CacheService, headers: &HeaderMap) -> String {
    match &service.settings().public_url {
        Some(url) => url.clone(),
        None => {
            let host = headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost");
            format!("http://{host}")
        }
    }
}

fn view(cache: &CacheRecord, base: &str) -> CacheView {
    let url = format!("{base}{NIX_MOUNT}/{}", cache.name);
    let public_key = cache.public_key().to_string();
    let mut nix_conf =
        format!("extra-substituters = {url}\nextra-trusted-public-keys = {public_key}\n");
    if !cache.public {
        nix_conf.push_str("# private cache: give a read token as the password in a netrc file\nnetrc-file = /etc/nix/netrc\n");
    }
    CacheView {
        name: cache.name.clone(),
        public: cache.public,
        priority: cache.priority,
        public_key,
        url,
        nix_conf,
    }
}

/// `GET /api/v1/caches`: the public caches, and the private ones the token can read.
#[tracing::instrument(skip_all)]
pub async fn list_caches(
    State(service): State<CacheService>,
    headers: HeaderMap,
) -> Result<Json<Vec<CacheView>>, CacheError> {
    let token = token_from_headers(&headers)?;
    let base = base_url(&service, &headers);
    let mut views = Vec::new();
    for cache in caches::list(service.db()).await? {
        match service
            .authorize(&cache, token.as_deref(), Permission::Read)
            .await
        {
            Ok(()) => views.push(view(&cache, &base)),
            Err(CacheError::Unauthenticated | CacheError::Forbidden { .. }) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(Json(views))
}

/// `GET /api/v1/caches/{name}`.
#[tracing::instrument(skip_all, fields(cache = %name))]
pub async fn get_cache(
    State(service): State<CacheService>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<CacheView>, CacheError> {
    let cache = caches::get(service.db(), &name).await?;
    service
        .authorize(
            &cache,
            token_from_headers(&headers)?.as_deref(),
            Permission::Read,
        )
        .await?;
    Ok(Json(view(&cache, &base_url(&service, &headers))))
}

/// `GET /api/v1/caches/{name}/access`: what the presented token (or no token) may do on the
/// cache. An unknown or revoked token is refused (401) rather than answered with no rights.
#[tracing::instrument(skip_all, fields(cache = %name))]
pub async fn get_access(
    State(service): State<CacheService>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<AccessView>, CacheError> {
    let cache = caches::get(service.db(), &name).await?;
    let token = token_from_headers(&headers)?;
    let mut held = [false; 3];
    for (i, perm) in [Permission::Read, Permission::Push, Permission::Admin]
        .into_iter()
        .enumerate()
    {
        held[i] = match service.authorize(&cache, token.as_deref(), perm).await {
            Ok(()) => true,
            Err(CacheError::Unauthenticated | CacheError::Forbidden { .. }) => false,
            Err(err) => return Err(err),
        };
    }
    Ok(Json(AccessView {
        cache: cache.name,
        read: held[0],
        push: held[1],
        admin: held[2],
    }))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, CacheError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| CacheError::BadRequest(format!("header {name} is not ASCII")))
        })
        .transpose()
}

/// A store path given as a full path or a base name.
fn parse_path(field: &str, value: &str) -> Result<StorePath, CacheError> {
    value
        .parse::<StorePath>()
        .map_err(|e| CacheError::BadRequest(format!("{field}: {e}")))
}

/// The narinfo an upload describes, before its NAR is known.
struct UploadMeta {
    path: StorePath,
    references: Vec<StorePath>,
    deriver: Option<StorePath>,
    ca: Option<ContentAddress>,
    expected_hash: Option<Hash>,
    expected_size: Option<u64>,
}

fn read_meta(headers: &HeaderMap) -> Result<UploadMeta, CacheError> {
    let path = header(headers, HEADER_STORE_PATH)?
        .ok_or_else(|| CacheError::BadRequest("header X-Kiln-Store-Path is required".to_owned()))?;
    if !path.starts_with('/') {
        return Err(CacheError::BadRequest(
            "X-Kiln-Store-Path must be a full path in /nix/store".to_owned(),
        ));
    }
    let path = parse_path("X-Kiln-Store-Path", path)?;
    let references = header(headers, HEADER_REFERENCES)?
        .unwrap_or("")
        .split_whitespace()
        .map(|r| parse_path("X-Kiln-References", r))
        .collect::<Result<Vec<_>, _>>()?;
    let deriver = header(headers, HEADER_DERIVER)?
        .map(|d| parse_path("X-Kiln-Deriver", d))
        .transpose()?;
    let ca = header(headers, HEADER_CA)?
        .map(|ca| {
            ca.parse::<ContentAddress>()
                .map_err(|e| CacheError::BadRequest(format!("X-Kiln-CA: {e}")))
        })
        .transpose()?;
    let expected_hash = header(headers, HEADER_NAR_HASH)?
        .map(|h| {
            Hash::parse_as(HashAlgo::Sha256, h)
                .map_err(|e| CacheError::BadRequest(format!("X-Kiln-Nar-Hash: {e}")))
        })
        .transpose()?;
    let expected_size = header(headers, HEADER_NAR_SIZE)?
        .map(|s| {
            s.parse::<u64>()
                .map_err(|e| CacheError::BadRequest(format!("X-Kiln-Nar-Size {s:?}: {e}")))
        })
        .transpose()?;
    Ok(UploadMeta {
        path,
        references,
        deriver,
        ca,
        expected_hash,
        expected_size,
    })
}

/// Most of a body read and discarded before answering a request that named no valid token.
const ANONYMOUS_DRAIN: u64 = 1 << 20;

/// What the upload handler decides, once the caller may push, before reading the body.
enum Precheck {
    /// Receive the NAR.
    Receive(UploadMeta),
    /// Answer without needing the body (the path is served already).
    Answer(Response),
}

async fn precheck(
    service: &CacheService,
    cache: &CacheRecord,
    headers: &HeaderMap,
) -> Result<Precheck, CacheError> {
    let meta = read_meta(headers)?;
    if let Some(existing) = index::find_path(service.db(), cache.id, &meta.path.hash_part()).await?
    {
        let narinfo = existing.narinfo;
        return Ok(Precheck::Answer(
            (StatusCode::OK, Json(upload_view(&narinfo, true))).into_response(),
        ));
    }
    ingest::check_references(service, cache, &meta.path, meta.references.iter()).await?;
    Ok(Precheck::Receive(meta))
}

/// Reads and discards up to `limit` bytes of `body`.
///
/// An HTTP/1.1 server that answers before reading the body and then closes the connection
/// makes the client's kernel see a reset while it is still sending, and the client usually
/// reports a broken pipe instead of the answer (clients without `Expect: 100-continue`, such as
/// Kiln's own, cannot avoid it). Reading the rest first lets the answer through, and keeps the
/// unread bytes from being taken for the next request of a kept-alive connection.
pub(super) async fn drain(body: Body, limit: u64) {
    let mut stream = body.into_data_stream();
    let mut seen = 0u64;
    while seen <= limit {
        match stream.try_next().await {
            Ok(Some(chunk)) => seen += chunk.len() as u64,
            Ok(None) | Err(_) => return,
        }
    }
}

/// `POST /api/v1/caches/{name}/upload`.
///
/// Everything that can be decided from the headers is decided before the body is read; the
/// body is then drained before answering (up to `cache.max_nar_size` for a caller with a valid
/// token, 1 MiB otherwise), so that the client receives the answer.
#[tracing::instrument(skip_all, fields(cache = %name))]
pub async fn upload(
    State(service): State<CacheService>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, CacheError> {
    let limit = service.settings().max_nar_size;
    let authorized = async {
        let cache = caches::get(service.db(), &name).await?;
        service
            .authorize(
                &cache,
                token_from_headers(&headers)?.as_deref(),
                Permission::Push,
            )
            .await?;
        Ok(cache)
    }
    .await;
    let cache = match authorized {
        Ok(cache) => cache,
        Err(err) => {
            // A valid token without the permission is a known caller; anyone else gets little.
            let known = matches!(err, CacheError::Forbidden { .. });
            drain(body, if known { limit } else { ANONYMOUS_DRAIN }).await;
            return Err(err);
        }
    };
    let meta = match precheck(&service, &cache, &headers).await {
        Ok(Precheck::Receive(meta)) => meta,
        Ok(Precheck::Answer(response)) => {
            drain(body, limit).await;
            return Ok(response);
        }
        Err(err) => {
            drain(body, limit).await;
            return Err(err);
        }
    };
    let full_path = StoreDir::default().display(&meta.path);

    let layout = cache.layout();
    let staging = layout.staging()?;
    let body = Box::pin(body.into_data_stream().map_err(std::io::Error::other));
    let verified = ingest::receive_raw_nar(
        service.store(),
        &staging,
        body,
        limit,
        service.settings().zstd_level,
    )
    .await?;
    let result = async {
        if let Some(expected) = &meta.expected_hash
            && expected != &verified.nar_hash
        {
            return Err(CacheError::Unprocessable(format!(
                "X-Kiln-Nar-Hash is {expected} but the uploaded NAR hashes to {}",
                verified.nar_hash
            )));
        }
        if let Some(expected) = meta.expected_size
            && expected != verified.nar_size
        {
            return Err(CacheError::Unprocessable(format!(
                "X-Kiln-Nar-Size is {expected} but the uploaded NAR has {} bytes",
                verified.nar_size
            )));
        }
        let file_key = format!(
            "nar/{}{}",
            verified.file_hash.to_nix32(),
            Compression::Zstd.extension()
        );
        service
            .store()
            .rename(&staging, &layout.key(&file_key)?)
            .await?;
        let facts = NarFacts {
            file_key: file_key.clone(),
            compression: Compression::Zstd,
            file_hash: verified.file_hash.clone(),
            file_size: verified.file_size,
            nar_hash: verified.nar_hash.clone(),
            nar_size: verified.nar_size,
        };
        index::record_nar(service.db(), cache.id, &facts).await?;
        let mut narinfo = NarInfo::new(
            meta.path.clone(),
            file_key,
            verified.nar_hash.clone(),
            verified.nar_size,
        );
        narinfo.compression = Compression::Zstd.as_str().to_owned();
        narinfo.file_hash = Some(verified.file_hash.clone());
        narinfo.file_size = Some(verified.file_size);
        narinfo.references = meta.references.iter().cloned().collect();
        narinfo.deriver = meta.deriver.clone();
        narinfo.ca = meta.ca.clone();
        let committed = ingest::publish(&service, &cache, narinfo.clone()).await?;
        Ok((committed, narinfo))
    }
    .await;
    match result {
        Ok((committed, narinfo)) => {
            let status = match committed {
                Committed::Inserted(_) => StatusCode::CREATED,
                Committed::AlreadyPresent(_) => StatusCode::OK,
            };
            let present = matches!(committed, Committed::AlreadyPresent(_));
            Ok((status, Json(upload_view(&narinfo, present))).into_response())
        }
        Err(err) => {
            if let Err(cleanup) = service.store().delete(&staging).await {
                tracing::warn!(key = %staging, error = %cleanup, "could not remove a refused upload");
            }
            tracing::debug!(path = %full_path, error = %err, "upload refused");
            Err(err)
        }
    }
}

fn upload_view(narinfo: &NarInfo, already_present: bool) -> UploadView {
    UploadView {
        store_path: StoreDir::default().display(&narinfo.store_path),
        already_present,
        nar_hash: narinfo.nar_hash.to_typed_nix32(),
        nar_size: narinfo.nar_size,
        url: narinfo.url.clone(),
        file_size: narinfo.file_size.unwrap_or(0),
    }
}
