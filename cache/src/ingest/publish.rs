//! Making an uploaded path visible: checking its narinfo against the verified NAR and the index,
//! signing it with the cache's key and committing it; and storing build logs.

use bytes::Bytes;
use kiln_nix::narinfo::NarInfo;
use kiln_nix::{StoreDir, StorePath};

use crate::caches::CacheRecord;
use crate::error::CacheError;
use crate::index::{self, Committed, Compression};
use crate::service::CacheService;
use crate::storage::ByteStream;

/// Most client signatures kept on a narinfo besides the cache's own.
const MAX_CLIENT_SIGS: usize = 16;

fn mismatch(
    field: &str,
    narinfo: impl std::fmt::Display,
    stored: impl std::fmt::Display,
    url: &str,
) -> CacheError {
    CacheError::Unprocessable(format!(
        "{field} {narinfo} does not match the uploaded NAR file {url}, which has {stored}"
    ))
}

/// Verifies `narinfo` against what `cache` holds and publishes it.
///
/// The NAR at its `URL` must have been uploaded and verified (`nars` row) and still be stored
/// with that size; `Compression`, `FileHash`, `FileSize`, `NarHash` and `NarSize` must equal what
/// the cache measured; every reference must be served by the cache already (or be the path
/// itself). Client signatures are kept (up to 16; the cache cannot judge keys it does not know,
/// and clients only honour keys they trust), any signature under the cache's own key name is
/// replaced by the cache's signature. The index row is the commit point; the narinfo object is
/// written after it for the static layout.
pub async fn publish(
    service: &CacheService,
    cache: &CacheRecord,
    mut narinfo: NarInfo,
) -> Result<Committed, CacheError> {
    let db = service.db();
    if narinfo.store_dir != StoreDir::default() {
        return Err(CacheError::BadRequest(format!(
            "StorePath must be in /nix/store, not {}",
            narinfo.store_dir
        )));
    }
    let url = narinfo.url.clone();
    let compression = Compression::parse(&narinfo.compression)?;
    let nar = index::find_nar(db, cache.id, &url).await?.ok_or_else(|| {
        CacheError::Unprocessable(format!(
            "URL {url}: no such NAR file has been uploaded to cache {:?}",
            cache.name
        ))
    })?;
    let facts = &nar.facts;
    if compression != facts.compression {
        return Err(mismatch(
            "Compression",
            compression.as_str(),
            facts.compression.as_str(),
            &url,
        ));
    }
    if let Some(hash) = &narinfo.file_hash
        && hash != &facts.file_hash
    {
        return Err(mismatch("FileHash", hash, &facts.file_hash, &url));
    }
    if let Some(size) = narinfo.file_size
        && size != facts.file_size
    {
        return Err(mismatch("FileSize", size, facts.file_size, &url));
    }
    if narinfo.nar_hash != facts.nar_hash {
        return Err(mismatch(
            "NarHash",
            &narinfo.nar_hash,
            &facts.nar_hash,
            &url,
        ));
    }
    if narinfo.nar_size != facts.nar_size {
        return Err(mismatch("NarSize", narinfo.nar_size, facts.nar_size, &url));
    }
    let layout = cache.layout();
    match service.store().head(&layout.key(&url)?).await? {
        Some(meta) if meta.size == facts.file_size => {}
        _ => {
            return Err(CacheError::Unprocessable(format!(
                "URL {url}: the NAR file is no longer stored; upload it again"
            )));
        }
    }
    check_references(
        service,
        cache,
        &narinfo.store_path,
        narinfo.references.iter(),
    )
    .await?;

    narinfo.file_hash = Some(facts.file_hash.clone());
    narinfo.file_size = Some(facts.file_size);
    narinfo.system = None;
    let own = cache.signing_key.name().to_owned();
    let mut foreign: Vec<_> = narinfo
        .sigs
        .iter()
        .filter(|s| s.name() != own)
        .cloned()
        .collect();
    foreign.truncate(MAX_CLIENT_SIGS);
    narinfo.sigs = foreign.into_iter().collect();
    narinfo
        .sign(&cache.signing_key)
        .map_err(|e| CacheError::BadRequest(format!("cannot sign the narinfo: {e}")))?;

    let committed = index::commit_path(db, cache.id, nar.id, &narinfo).await?;
    if let Committed::Inserted(_) = committed {
        // Anything this process still holds for the path predates this row.
        service
            .narinfos()
            .forget(&cache.name, &narinfo.store_path.hash_part());
        let key = layout.narinfo(&narinfo.store_path.hash_part())?;
        let text = Bytes::from(narinfo.to_string());
        let body: ByteStream = Box::pin(futures_util::stream::once(async move { Ok(text) }));
        // The index already serves the path; a failure here only leaves the static copy behind.
        if let Err(err) = service.store().put(&key, body).await {
            tracing::error!(cache = %cache.name, key = %key, error = %err, "could not write the narinfo object");
        }
        tracing::info!(cache = %cache.name, path = %narinfo.store_path, nar_size = narinfo.nar_size, "published");
    }
    Ok(committed)
}

/// Fails with the list of `references` (other than `path` itself) that `cache` does not serve.
pub async fn check_references<'a>(
    service: &CacheService,
    cache: &CacheRecord,
    path: &StorePath,
    references: impl Iterator<Item = &'a StorePath>,
) -> Result<(), CacheError> {
    let others: Vec<&StorePath> = references.filter(|r| *r != path).collect();
    if others.is_empty() {
        return Ok(());
    }
    let hashes: Vec<String> = others.iter().map(|r| r.hash_part()).collect();
    let missing = index::missing_paths(service.db(), cache.id, &hashes).await?;
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = others
        .iter()
        .filter(|r| missing.contains(&r.hash_part()))
        .map(|r| StoreDir::default().display(r))
        .collect();
    Err(index::missing_references(path, &names))
}

/// Stores the build log of `drv` (a `.drv` base name), replacing any earlier one.
pub async fn publish_log(
    service: &CacheService,
    cache: &CacheRecord,
    drv: &str,
    body: ByteStream,
) -> Result<(), CacheError> {
    let path = StorePath::from_base_name(drv).map_err(|e| {
        CacheError::BadRequest(format!("log/{drv}: not a store path base name: {e}"))
    })?;
    if !path.is_derivation() {
        return Err(CacheError::BadRequest(format!(
            "log/{drv}: logs are stored under a .drv base name"
        )));
    }
    let key = cache.layout().key(&format!("log/{path}"))?;
    let limit = service.settings().max_log_size;
    let limited = limit_body(body, limit, format!("the log of {drv}"));
    match service.store().put(&key, limited).await {
        Ok(_) => Ok(()),
        Err(crate::storage::StoreError::Body { source, .. }) => {
            Err(match source.downcast::<CacheError>() {
                Ok(err) => err,
                Err(source) => {
                    CacheError::BadRequest(format!("the upload was interrupted: {source}"))
                }
            })
        }
        Err(err) => Err(err.into()),
    }
}

/// Fails the stream with `TooLarge` once more than `limit` bytes went through.
fn limit_body(body: ByteStream, limit: u64, what: String) -> ByteStream {
    use futures_util::StreamExt;
    let mut seen = 0u64;
    Box::pin(body.map(move |chunk| {
        let chunk = chunk?;
        seen += chunk.len() as u64;
        if seen > limit {
            return Err(std::io::Error::other(CacheError::TooLarge {
                what: what.clone(),
                limit,
            }));
        }
        Ok(chunk)
    }))
}
