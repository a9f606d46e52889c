//! Named caches: their settings and signing keys, created on demand and read per request.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use kiln_db::{CacheId, Db, Timestamp};
use kiln_nix::cache_info::CacheInfo;
use kiln_nix::signing::{PublicKey, SecretKey};
use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::error::CacheError;
use crate::layout::{CacheLayout, validate_cache_name};
use crate::storage::BlobStore;

/// The cache every installation starts with: public, created on first start.
pub const DEFAULT_CACHE: &str = "main";

/// One cache as stored in `caches`.
#[derive(Debug, Clone)]
pub struct CacheRecord {
    /// Row id.
    pub id: CacheId,
    /// URL segment and storage folder.
    pub name: String,
    /// Whether anyone may read without a token.
    pub public: bool,
    /// `Priority` in `nix-cache-info`; lower is preferred by Nix.
    pub priority: u32,
    /// The key narinfos are signed with.
    pub signing_key: SecretKey,
    /// When it was created.
    pub created_at: Timestamp,
}

impl CacheRecord {
    /// The public half of the signing key, as clients put it in `trusted-public-keys`.
    pub fn public_key(&self) -> PublicKey {
        self.signing_key.public()
    }

    /// The `nix-cache-info` this cache serves.
    pub fn cache_info(&self) -> CacheInfo {
        CacheInfo::new(i32::try_from(self.priority).unwrap_or(i32::MAX))
    }

    /// Where its objects live.
    pub fn layout(&self) -> CacheLayout {
        CacheLayout::new(&self.name).expect("stored cache names are valid")
    }

    fn from_row(row: &AnyRow) -> Result<CacheRecord, CacheError> {
        CacheRecord::from_prefixed_row(row, "")
    }

    /// The cache in `row`, whose columns are named `<prefix><column>` (for joins).
    pub(crate) fn from_prefixed_row(row: &AnyRow, prefix: &str) -> Result<CacheRecord, CacheError> {
        let col = |c: &str| format!("{prefix}{c}");
        let name: String = row
            .try_get(col("name").as_str())
            .map_err(CacheError::db("reading a cache"))?;
        let key: String = row
            .try_get(col("signing_key").as_str())
            .map_err(CacheError::db("reading a cache"))?;
        let signing_key = parse_signing_key(&key).map_err(|e| {
            CacheError::Internal(format!(
                "stored signing key of cache {name:?} is invalid: {e}"
            ))
        })?;
        let get_i64 = |c: &str| {
            row.try_get::<i64, _>(col(c).as_str())
                .map_err(CacheError::db("reading a cache"))
        };
        Ok(CacheRecord {
            id: CacheId(get_i64("id")?),
            public: get_i64("is_public")? != 0,
            priority: u32::try_from(get_i64("priority")?).unwrap_or(u32::MAX),
            created_at: Timestamp(get_i64("created_at")?),
            signing_key,
            name,
        })
    }
}

/// Most parsed keys [`parse_signing_key`] keeps; past that it starts over.
const PARSED_KEYS_MAX: usize = 256;

/// Signing keys already parsed, by the SHA-256 of their stored text (so the map does not hold the
/// secret text itself). Every request loads its cache's row, and parsing a key derives its
/// public half, an elliptic-curve multiplication that would otherwise dominate a narinfo GET.
static PARSED_KEYS: LazyLock<Mutex<HashMap<[u8; 32], SecretKey>>> = LazyLock::new(Mutex::default);

/// The key `text` holds, parsed once per distinct text.
fn parse_signing_key(text: &str) -> Result<SecretKey, kiln_nix::signing::SigningError> {
    let digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
    if let Some(key) = PARSED_KEYS.lock().expect("parsed keys lock").get(&digest) {
        return Ok(key.clone());
    }
    let key = text.parse::<SecretKey>()?;
    let mut parsed = PARSED_KEYS.lock().expect("parsed keys lock");
    if parsed.len() >= PARSED_KEYS_MAX {
        parsed.clear();
    }
    parsed.insert(digest, key.clone());
    Ok(key)
}

const COLUMNS: &str = "id, name, is_public, priority, signing_key, created_at";

/// How new caches are set up.
#[derive(Debug, Clone)]
pub struct NewCache {
    /// Name (validated).
    pub name: String,
    /// Readable without a token.
    pub public: bool,
    /// `Priority` to advertise.
    pub priority: u32,
}

/// The name of the signing key generated for `cache`: `<prefix>-<cache>-1`.
pub fn key_name(prefix: &str, cache: &str) -> String {
    format!("{prefix}-{cache}-1")
}

/// This machine's host name, for key names; `kiln` if it cannot be read.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| {
            s.trim()
                .replace(|c: char| c == ':' || c.is_whitespace(), "-")
        })
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "kiln".to_owned())
}

/// The cache named `name`, if any.
pub async fn find(db: &Db, name: &str) -> Result<Option<CacheRecord>, CacheError> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM caches WHERE name = $1"))
        .bind(name)
        .fetch_optional(db.pool())
        .await
        .map_err(CacheError::db("looking up a cache"))?;
    row.as_ref().map(CacheRecord::from_row).transpose()
}

/// The cache named `name`, or `NotFound`.
pub async fn get(db: &Db, name: &str) -> Result<CacheRecord, CacheError> {
    find(db, name)
        .await?
        .ok_or_else(|| CacheError::NotFound(format!("cache {name:?}")))
}

/// Every cache, by name.
pub async fn list(db: &Db) -> Result<Vec<CacheRecord>, CacheError> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM caches ORDER BY name"))
        .fetch_all(db.pool())
        .await
        .map_err(CacheError::db("listing caches"))?;
    rows.iter().map(CacheRecord::from_row).collect()
}

/// Creates a cache with a fresh signing key and writes its `nix-cache-info` object. `Conflict`
/// if the name is taken.
pub async fn create(
    db: &Db,
    store: &dyn BlobStore,
    new: &NewCache,
    key_name_prefix: &str,
) -> Result<CacheRecord, CacheError> {
    match insert(db, new, key_name_prefix).await? {
        Some(record) => {
            write_cache_info(store, &record).await?;
            Ok(record)
        }
        None => Err(CacheError::Conflict(format!(
            "cache {:?} already exists",
            new.name
        ))),
    }
}

/// The cache `new.name`, created (as `create` would) if it does not exist yet. Safe to run
/// concurrently: exactly one caller creates it, every caller gets the same record.
pub async fn ensure(
    db: &Db,
    store: &dyn BlobStore,
    new: &NewCache,
    key_name_prefix: &str,
) -> Result<(CacheRecord, bool), CacheError> {
    if let Some(record) = insert(db, new, key_name_prefix).await? {
        write_cache_info(store, &record).await?;
        return Ok((record, true));
    }
    Ok((get(db, &new.name).await?, false))
}

async fn insert(
    db: &Db,
    new: &NewCache,
    key_name_prefix: &str,
) -> Result<Option<CacheRecord>, CacheError> {
    validate_cache_name(&new.name)?;
    let key = SecretKey::generate(&key_name(key_name_prefix, &new.name))
        .map_err(|e| CacheError::BadRequest(format!("cannot generate a signing key: {e}")))?;
    let row = sqlx::query(&format!(
        "INSERT INTO caches (name, is_public, priority, signing_key, created_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (name) DO NOTHING RETURNING {COLUMNS}"
    ))
    .bind(&new.name)
    .bind(i64::from(new.public))
    .bind(i64::from(new.priority))
    .bind(key.to_secret_string())
    .bind(Timestamp::now().millis())
    .fetch_optional(db.pool())
    .await
    .map_err(CacheError::db("creating a cache"))?;
    row.as_ref().map(CacheRecord::from_row).transpose()
}

/// Writes `<cache>/nix-cache-info`, so that the stored objects form a complete static cache.
async fn write_cache_info(store: &dyn BlobStore, record: &CacheRecord) -> Result<(), CacheError> {
    let text = record.cache_info().to_string();
    let body = futures_util::stream::once(async move { Ok(bytes::Bytes::from(text)) });
    store
        .put(&record.layout().cache_info(), Box::pin(body))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reparsed_signing_keys_are_the_stored_keys_and_bad_text_stays_an_error() {
        let first = SecretKey::generate("test-a-1").unwrap();
        let second = SecretKey::generate("test-b-1").unwrap();
        for _ in 0..2 {
            for key in [&first, &second] {
                let text = key.to_secret_string();
                let parsed = parse_signing_key(&text).unwrap();
                assert_eq!(parsed.to_secret_string(), text);
                assert_eq!(parsed.public(), key.public());
            }
        }
        let mut broken = first.to_secret_string();
        broken.truncate(broken.len() - 4);
        assert!(parse_signing_key(&broken).is_err());
    }
}
