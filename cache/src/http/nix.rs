//! Nix's binary cache protocol: what `nix copy --to`, substitution and `nix store copy-log`
//! speak. Everything is per cache; private caches need a read token for every request.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header::{
    ACCEPT_RANGES, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE,
};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;
use kiln_nix::hash::{Hash, HashAlgo};
use kiln_nix::narinfo::{MAX_NARINFO_LEN, NarInfo};
use kiln_nix::store_path::HASH_CHARS;

use super::auth::token_from_headers;
use super::range::parse_range;
use crate::caches::{self, CacheRecord};
use crate::error::CacheError;
use crate::index::{self, Committed, Compression, NarFacts};
use crate::ingest::{self, NarFileVerifier};
use crate::service::CacheService;
use crate::storage::{ByteStream, StoreError};
use crate::tokens::Permission;

const NARINFO_TYPE: &str = "text/x-nix-narinfo";
const NAR_TYPE: &str = "application/x-nix-nar";

/// Loads the cache named in the URL and checks the request's token for `needed`.
async fn authorized(
    service: &CacheService,
    name: &str,
    headers: &HeaderMap,
    needed: Permission,
) -> Result<CacheRecord, CacheError> {
    let cache = caches::get(service.db(), name).await?;
    let token = token_from_headers(headers)?;
    service.authorize(&cache, token.as_deref(), needed).await?;
    Ok(cache)
}

fn body_stream(body: Body) -> ByteStream {
    Box::pin(body.into_data_stream().map_err(std::io::Error::other))
}

/// Refuses bodies the client says are encoded: the cache stores exactly what it verifies.
fn refuse_content_encoding(headers: &HeaderMap) -> Result<(), CacheError> {
    match headers
        .get(CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?"))
    {
        None | Some("identity") => Ok(()),
        Some(other) => Err(CacheError::Unsupported(format!(
            "Content-Encoding {other:?} is not accepted; upload the bytes themselves"
        ))),
    }
}

/// Refuses a declared Content-Length above `limit` before reading anything.
fn check_content_length(headers: &HeaderMap, limit: u64, what: &str) -> Result<(), CacheError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(len) if len > limit => Err(CacheError::TooLarge {
            what: what.to_owned(),
            limit,
        }),
        _ => Ok(()),
    }
}

/// What every PUT checks before it reads its body: the request's token may push to the cache
/// named in the URL, the body is not encoded, and the length it declares (if any) is at most
/// `limit` bytes, `what` naming the body in the refusal.
async fn accept_upload(
    service: &CacheService,
    name: &str,
    headers: &HeaderMap,
    limit: u64,
    what: &str,
) -> Result<CacheRecord, CacheError> {
    let cache = authorized(service, name, headers, Permission::Push).await?;
    refuse_content_encoding(headers)?;
    check_content_length(headers, limit, what)?;
    Ok(cache)
}

/// The hash part of `<hash>.narinfo`, checked to be a nixbase32 store path hash.
fn narinfo_hash(file: &str) -> Option<&str> {
    let hash = file.strip_suffix(".narinfo")?;
    (hash.len() == HASH_CHARS && hash.bytes().all(kiln_nix::base32::is_base32_char)).then_some(hash)
}

/// `GET|HEAD /{cache}/nix-cache-info` and `/{cache}/<hash>.narinfo`.
#[tracing::instrument(skip_all, fields(cache = %name, file = %file))]
pub async fn get_file(
    State(service): State<CacheService>,
    Path((name, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, CacheError> {
    let Some(hash) = narinfo_hash(&file) else {
        let cache = authorized(&service, &name, &headers, Permission::Read).await?;
        if file == "nix-cache-info" {
            return Ok((
                [(CONTENT_TYPE, "text/x-nix-cache-info")],
                cache.cache_info().to_string(),
            )
                .into_response());
        }
        return Err(CacheError::NotFound(format!("{file} in cache {name:?}")));
    };
    // The hot path of every substitution: from memory, or the cache and the path in one query.
    let (cache, served) = service
        .find_narinfo(&name, hash)
        .await?
        .ok_or_else(|| CacheError::NotFound(format!("cache {name:?}")))?;
    let token = token_from_headers(&headers)?;
    service
        .authorize(&cache, token.as_deref(), Permission::Read)
        .await?;
    match served {
        Some(served) => {
            service.access_log().touch(served.path);
            Ok(([(CONTENT_TYPE, NARINFO_TYPE)], served.text).into_response())
        }
        None => Err(CacheError::NotFound(format!("{file} in cache {name:?}"))),
    }
}

/// `PUT /{cache}/<hash>.narinfo`: the last step of `nix copy --to`.
#[tracing::instrument(skip_all, fields(cache = %name, file = %file))]
pub async fn put_file(
    State(service): State<CacheService>,
    Path((name, file)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, CacheError> {
    let cache = accept_upload(
        &service,
        &name,
        &headers,
        MAX_NARINFO_LEN as u64,
        "the narinfo",
    )
    .await?;
    let Some(hash) = narinfo_hash(&file) else {
        return Err(CacheError::BadRequest(format!(
            "cannot upload {file:?}: only <hash>.narinfo files, nar/ and log/ are accepted (nix-cache-info is the cache's own)"
        )));
    };
    let bytes = axum::body::to_bytes(body, MAX_NARINFO_LEN)
        .await
        .map_err(|e| CacheError::BadRequest(format!("cannot read the narinfo body: {e}")))?;
    let narinfo = NarInfo::parse_bytes(&bytes)
        .map_err(|e| CacheError::BadRequest(format!("invalid narinfo: {e}")))?;
    if narinfo.store_path.hash_part() != hash {
        return Err(CacheError::BadRequest(format!(
            "{file} describes {}, whose hash part is not {hash}",
            narinfo.store_path
        )));
    }
    match ingest::publish(&service, &cache, narinfo).await? {
        Committed::Inserted(_) => Ok(StatusCode::CREATED.into_response()),
        Committed::AlreadyPresent(_) => Ok(StatusCode::OK.into_response()),
    }
}

/// The compression and promised file hash in a NAR file name,
/// `<nix32 sha256>.nar[.zst|.xz|.bz2]`.
fn parse_nar_name(file: &str) -> Result<(Compression, Hash), CacheError> {
    let Some((stem, ext)) = file.split_once(".nar") else {
        return Err(CacheError::BadRequest(format!(
            "NAR file name {file:?} is not <sha256 of the file in nixbase32>.nar[.zst|.xz|.bz2]"
        )));
    };
    let compression = Compression::from_extension(ext)?;
    let hash = Hash::parse_digest(HashAlgo::Sha256, stem)
        .ok()
        .filter(|_| stem.len() == 52)
        .ok_or_else(|| {
            CacheError::BadRequest(format!(
                "NAR file name {file:?} does not start with a nixbase32 SHA-256"
            ))
        })?;
    Ok((compression, hash))
}

/// `GET|HEAD /{cache}/nar/{file}`, with single byte ranges.
#[tracing::instrument(skip_all, fields(cache = %name, file = %file))]
pub async fn get_nar(
    State(service): State<CacheService>,
    Path((name, file)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, CacheError> {
    let cache = authorized(&service, &name, &headers, Permission::Read).await?;
    let file_key = format!("nar/{file}");
    let missing = || CacheError::NotFound(format!("{file_key} in cache {name:?}"));
    // Only NARs that passed verification exist for clients, whatever else storage holds.
    let nar = index::find_nar(service.db(), cache.id, &file_key)
        .await?
        .ok_or_else(missing)?;
    if method == Method::HEAD {
        return Ok((
            [
                (CONTENT_TYPE, NAR_TYPE.to_owned()),
                (CONTENT_LENGTH, nar.facts.file_size.to_string()),
                (ACCEPT_RANGES, "bytes".to_owned()),
            ],
            Body::empty(),
        )
            .into_response());
    }
    let range = headers
        .get(RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_range);
    let key = cache.layout().key(&file_key)?;
    let blob = match service.store().get(&key, range).await {
        Ok(Some(blob)) => blob,
        Ok(None) => return Err(missing()),
        Err(StoreError::RangeNotSatisfiable { size, .. }) => {
            return Err(CacheError::RangeNotSatisfiable { size });
        }
        Err(e) => return Err(e.into()),
    };
    let length = blob.range.end - blob.range.start;
    let mut response = Response::builder()
        .header(CONTENT_TYPE, NAR_TYPE)
        .header(CONTENT_LENGTH, length)
        .header(ACCEPT_RANGES, "bytes");
    if range.is_some() {
        response = response.status(StatusCode::PARTIAL_CONTENT).header(
            CONTENT_RANGE,
            format!(
                "bytes {}-{}/{}",
                blob.range.start,
                blob.range.end - 1,
                blob.size
            ),
        );
    }
    response
        .body(Body::from_stream(blob.body))
        .map_err(|e| CacheError::Internal(e.to_string()))
}

/// `PUT /{cache}/nar/{file}`: stores a NAR file after checking it whole.
#[tracing::instrument(skip_all, fields(cache = %name, file = %file))]
pub async fn put_nar(
    State(service): State<CacheService>,
    Path((name, file)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, CacheError> {
    let limit = service.settings().max_nar_size;
    let cache = accept_upload(&service, &name, &headers, limit, "the NAR file").await?;
    let (compression, promised) = parse_nar_name(&file)?;
    let file_key = format!("nar/{file}");
    let key = cache.layout().key(&file_key)?;
    // Recorded and still stored: nothing to do. (Recorded but gone — garbage collection deleted
    // an object written while it was claimed — is repaired by storing it again.)
    if let Some(nar) = index::find_nar(service.db(), cache.id, &file_key).await?
        && service
            .store()
            .head(&key)
            .await?
            .is_some_and(|meta| meta.size == nar.facts.file_size)
    {
        // Read the body to its end anyway: answering with bytes of it still unread would leave
        // them on a kept-alive connection, where they would be taken for the client's next
        // request (as when concurrent pushers send the same NAR). Its length is bounded above.
        super::api::drain(body, limit).await;
        return Ok(StatusCode::OK.into_response());
    }
    let verifier = NarFileVerifier::new(compression, limit, Some(promised))?;
    let verified =
        ingest::receive_nar_file(service.store(), &key, body_stream(body), limit, verifier).await?;
    let facts = NarFacts {
        file_key,
        compression,
        file_hash: verified.file_hash,
        file_size: verified.file_size,
        nar_hash: verified.nar_hash,
        nar_size: verified.nar_size,
    };
    index::record_nar(service.db(), cache.id, &facts).await?;
    tracing::debug!(cache = %cache.name, file = %file, size = facts.file_size, "NAR file stored");
    Ok(StatusCode::CREATED.into_response())
}

/// `GET|HEAD /{cache}/log/{drv}`.
#[tracing::instrument(skip_all, fields(cache = %name, drv = %drv))]
pub async fn get_log(
    State(service): State<CacheService>,
    Path((name, drv)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, CacheError> {
    let cache = authorized(&service, &name, &headers, Permission::Read).await?;
    let missing = || CacheError::NotFound(format!("log/{drv} in cache {name:?}"));
    let key = cache
        .layout()
        .key(&format!("log/{drv}"))
        .map_err(|_| missing())?;
    if method == Method::HEAD {
        let meta = service.store().head(&key).await?.ok_or_else(missing)?;
        return Ok((
            [
                (CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
                (CONTENT_LENGTH, meta.size.to_string()),
            ],
            Body::empty(),
        )
            .into_response());
    }
    let blob = service.store().get(&key, None).await?.ok_or_else(missing)?;
    Response::builder()
        .header(CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(CONTENT_LENGTH, blob.size)
        .body(Body::from_stream(blob.body))
        .map_err(|e| CacheError::Internal(e.to_string()))
}

/// `PUT /{cache}/log/{drv}`: what `nix store copy-log --to` sends.
#[tracing::instrument(skip_all, fields(cache = %name, drv = %drv))]
pub async fn put_log(
    State(service): State<CacheService>,
    Path((name, drv)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, CacheError> {
    let limit = service.settings().max_log_size;
    let what = format!("the log of {drv}");
    let cache = accept_upload(&service, &name, &headers, limit, &what).await?;
    ingest::publish_log(&service, &cache, &drv, body_stream(body)).await?;
    Ok(StatusCode::CREATED.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nar_names_carry_compression_and_file_hash() {
        let hash = "1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3";
        let (compression, promised) = parse_nar_name(&format!("{hash}.nar.zst")).unwrap();
        assert_eq!(compression, Compression::Zstd);
        assert_eq!(promised.to_nix32(), hash);
        assert_eq!(
            parse_nar_name(&format!("{hash}.nar")).unwrap().0,
            Compression::None
        );
        assert_eq!(
            parse_nar_name(&format!("{hash}.nar.xz")).unwrap().0,
            Compression::Xz
        );
        assert_eq!(
            parse_nar_name(&format!("{hash}.nar.bz2")).unwrap().0,
            Compression::Bzip2
        );
        assert!(matches!(
            parse_nar_name(&format!("{hash}.nar.br")),
            Err(CacheError::Unsupported(_))
        ));
        assert!(matches!(
            parse_nar_name("abc.nar.zst"),
            Err(CacheError::BadRequest(_))
        ));
        assert!(matches!(
            parse_nar_name(&format!("{hash}.tar")),
            Err(CacheError::BadRequest(_))
        ));
    }

    #[test]
    fn narinfo_names_are_store_path_hashes() {
        assert_eq!(
            narinfo_hash("0a0mdx9ibbspn3f3w1m8fxdw9xy4kibx.narinfo"),
            Some("0a0mdx9ibbspn3f3w1m8fxdw9xy4kibx")
        );
        assert_eq!(
            narinfo_hash("0a0mdx9ibbspn3f3w1m8fxdw9xy4kibe.narinfo"),
            None
        );
        assert_eq!(narinfo_hash("short.narinfo"), None);
        assert_eq!(narinfo_hash("nix-cache-info"), None);
    }
}
