//! The cache as a service: its database, blob store and settings, shared by the HTTP handlers
//! and the admin commands.

use std::sync::Arc;
use std::time::Duration;

use kiln_config::{Config, StorageConfig};
use kiln_db::Db;

use crate::access::AccessLog;
use crate::caches::{self, CacheRecord, DEFAULT_CACHE, NewCache};
use crate::error::CacheError;
use crate::index;
use crate::narinfos::{self, NarinfoCache, ServedNarinfo};
use crate::storage::{BlobStore, LocalStore, S3Options, S3Store};
use crate::tokens::{self, Permission};

/// The cache's settings, taken from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Largest NAR accepted, as received and uncompressed, in bytes.
    pub max_nar_size: u64,
    /// Largest build log accepted, in bytes.
    pub max_log_size: u64,
    /// zstd level for NARs the cache compresses itself.
    pub zstd_level: i32,
    /// `Priority` of caches created without one.
    pub default_priority: u32,
    /// First part of generated key names.
    pub key_name_prefix: String,
    /// Base URL clients reach the server at, without trailing `/`; `None` to use the request's
    /// `Host` header.
    pub public_url: Option<String>,
    /// How long a narinfo read from the index is served from memory ([`crate::narinfos`]), and
    /// how long a collection that deleted paths waits before it deletes their objects, so that
    /// no process still serves them from memory. Zero disables the memory.
    pub narinfo_ttl: Duration,
}

impl Settings {
    /// The settings `config` describes.
    pub fn from_config(config: &Config) -> Settings {
        Settings {
            max_nar_size: config.cache.max_nar_size.bytes(),
            max_log_size: config.cache.max_log_size.bytes(),
            zstd_level: config.cache.zstd_level,
            default_priority: config.cache.default_priority,
            key_name_prefix: config
                .cache
                .key_name_prefix
                .clone()
                .unwrap_or_else(caches::host_name),
            public_url: config
                .public_url
                .as_ref()
                .map(|u| u.trim_end_matches('/').to_owned()),
            narinfo_ttl: config.cache.narinfo_ttl.0,
        }
    }
}

/// Opens the blob store the configuration names.
pub async fn open_store(config: &Config) -> Result<Arc<dyn BlobStore>, CacheError> {
    match &config.cache.storage {
        StorageConfig::Local { .. } => {
            let dir = config
                .local_storage_dir()
                .expect("local storage has a directory");
            let store = LocalStore::open(&dir).await.map_err(|e| {
                CacheError::Internal(format!(
                    "cannot create the storage directory {}: {e}",
                    dir.display()
                ))
            })?;
            Ok(Arc::new(store))
        }
        StorageConfig::S3 {
            bucket,
            region,
            endpoint,
            prefix,
            access_key_id,
            secret_access_key_file,
            allow_http,
        } => {
            let store = S3Store::new(S3Options {
                bucket: bucket.clone(),
                region: region.clone(),
                endpoint: endpoint.clone(),
                prefix: prefix.clone(),
                access_key_id: access_key_id.clone(),
                secret_access_key_file: secret_access_key_file.clone(),
                allow_http: *allow_http,
            })
            .map_err(|e| CacheError::Internal(e.to_string()))?;
            Ok(Arc::new(store))
        }
    }
}

struct Inner {
    db: Db,
    store: Arc<dyn BlobStore>,
    settings: Settings,
    access: AccessLog,
    narinfos: NarinfoCache,
}

/// Everything a cache operation needs. Cheap to clone; this is the HTTP router's state.
#[derive(Clone)]
pub struct CacheService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CacheService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheService")
            .field("store", &self.inner.store)
            .field("settings", &self.inner.settings)
            .finish()
    }
}

impl CacheService {
    /// A service over an opened (and migrated) database and store.
    pub fn new(db: Db, store: Arc<dyn BlobStore>, settings: Settings) -> CacheService {
        let narinfos = NarinfoCache::new(settings.narinfo_ttl, narinfos::DEFAULT_MAX_BYTES);
        CacheService {
            inner: Arc::new(Inner {
                db,
                store,
                settings,
                access: AccessLog::default(),
                narinfos,
            }),
        }
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    /// The blob store.
    pub fn store(&self) -> &dyn BlobStore {
        self.inner.store.as_ref()
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// Reads of paths not yet written to the index; `kiln up` runs its flusher.
    pub fn access_log(&self) -> &AccessLog {
        &self.inner.access
    }

    /// Narinfos recently served by this process (see [`crate::narinfos`]).
    pub fn narinfos(&self) -> &NarinfoCache {
        &self.inner.narinfos
    }

    /// What a narinfo GET of `hash_part` in the cache named `cache_name` serves: from memory if
    /// it was read from the index moments ago, else from the index. `None` if there is no such
    /// cache; the narinfo is `None` if the cache does not serve the path. The caller still has
    /// to authorize the request against the returned cache.
    pub async fn find_narinfo(
        &self,
        cache_name: &str,
        hash_part: &str,
    ) -> Result<Option<(Arc<CacheRecord>, Option<ServedNarinfo>)>, CacheError> {
        if let Some(served) = self.narinfos().get(cache_name, hash_part) {
            return Ok(Some((served.cache.clone(), Some(served))));
        }
        let ticket = self.narinfos().ticket();
        let Some((cache, path)) =
            index::find_cache_and_path(self.db(), cache_name, hash_part).await?
        else {
            return Ok(None);
        };
        let cache = Arc::new(cache);
        let Some(path) = path else {
            return Ok(Some((cache, None)));
        };
        let served = ServedNarinfo {
            cache: cache.clone(),
            path: path.id,
            text: path.narinfo.to_string().into(),
        };
        self.narinfos()
            .insert(ticket, cache_name, hash_part, served.clone());
        Ok(Some((cache, Some(served))))
    }

    /// Creates the default cache (`main`, public) unless it exists; returns it and whether it
    /// was created now.
    pub async fn ensure_default_cache(&self) -> Result<(CacheRecord, bool), CacheError> {
        let new = NewCache {
            name: DEFAULT_CACHE.to_owned(),
            public: true,
            priority: self.settings().default_priority,
        };
        caches::ensure(
            self.db(),
            self.store(),
            &new,
            &self.settings().key_name_prefix,
        )
        .await
    }

    /// Creates a cache; `priority` defaults to the configured one.
    pub async fn create_cache(
        &self,
        name: &str,
        public: bool,
        priority: Option<u32>,
    ) -> Result<CacheRecord, CacheError> {
        let new = NewCache {
            name: name.to_owned(),
            public,
            priority: priority.unwrap_or(self.settings().default_priority),
        };
        caches::create(
            self.db(),
            self.store(),
            &new,
            &self.settings().key_name_prefix,
        )
        .await
    }

    /// Checks that `token` (if any) grants `needed` on `cache`. Reading a public cache needs no
    /// token. No token → `Unauthenticated` (401); an unknown or revoked token → `InvalidToken`
    /// (401); a valid token without the permission → `Forbidden` (403).
    pub async fn authorize(
        &self,
        cache: &CacheRecord,
        token: Option<&str>,
        needed: Permission,
    ) -> Result<(), CacheError> {
        if needed == Permission::Read && cache.public {
            return Ok(());
        }
        let token = token.ok_or(CacheError::Unauthenticated)?;
        match tokens::permission_on(self.db(), token, cache.id).await? {
            Some(held) if held.includes(needed) => Ok(()),
            _ => Err(CacheError::Forbidden {
                cache: cache.name.clone(),
                needed: needed.as_str(),
            }),
        }
    }
}
