//! The S3 backend, through the `object_store` crate: any S3-compatible server.
//!
//! Puts go through `object_store`'s buffered writer (a single PUT for small objects, a multipart
//! upload for large ones); an upload only becomes visible when it completes, and a failed body
//! aborts the multipart upload. A rename is a server-side copy then a delete.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};
use tokio::io::AsyncWriteExt;

use super::{Blob, BlobKey, BlobMeta, BlobStore, ByteRange, ByteStream, Reaped, StoreError};

/// How to reach the bucket.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// Bucket name.
    pub bucket: String,
    /// Region, e.g. `us-east-1`.
    pub region: String,
    /// Endpoint of an S3-compatible server; `None` for AWS itself.
    pub endpoint: Option<String>,
    /// Key prefix inside the bucket (without leading or trailing `/`).
    pub prefix: Option<String>,
    /// Access key id; `None` to take `AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<String>,
    /// File holding the secret access key; `None` to take `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key_file: Option<PathBuf>,
    /// Allow `http://` endpoints.
    pub allow_http: bool,
}

/// Objects in an S3-compatible bucket.
#[derive(Debug, Clone)]
pub struct S3Store {
    store: Arc<dyn ObjectStore>,
    prefix: Option<String>,
}

impl S3Store {
    /// Connects lazily: no request is made until the first operation.
    pub fn new(options: S3Options) -> io::Result<S3Store> {
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&options.bucket)
            .with_region(&options.region)
            .with_allow_http(options.allow_http);
        if let Some(endpoint) = &options.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(id) = &options.access_key_id {
            builder = builder.with_access_key_id(id);
        }
        if let Some(file) = &options.secret_access_key_file {
            let secret = std::fs::read_to_string(file).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot read S3 secret key file {}: {e}", file.display()),
                )
            })?;
            builder = builder.with_secret_access_key(secret.trim());
        }
        let store = builder
            .build()
            .map_err(|e| io::Error::other(format!("invalid S3 configuration: {e}")))?;
        let prefix = options
            .prefix
            .map(|p| p.trim_matches('/').to_owned())
            .filter(|p| !p.is_empty());
        Ok(S3Store {
            store: Arc::new(store),
            prefix,
        })
    }

    fn path_of(&self, key: &BlobKey) -> ObjectPath {
        match &self.prefix {
            Some(prefix) => ObjectPath::from(format!("{prefix}/{key}")),
            None => ObjectPath::from(key.as_str()),
        }
    }

    fn key_of(&self, path: &ObjectPath) -> Option<BlobKey> {
        let raw = path.as_ref();
        let relative = match &self.prefix {
            Some(prefix) => raw.strip_prefix(prefix.as_str())?.strip_prefix('/')?,
            None => raw,
        };
        BlobKey::new(relative).ok()
    }
}

fn backend(key: &BlobKey) -> impl FnOnce(object_store::Error) -> StoreError + '_ {
    move |source| StoreError::Backend {
        key: key.clone(),
        source: Box::new(source),
    }
}

fn is_not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

#[async_trait]
impl BlobStore for S3Store {
    async fn put(&self, key: &BlobKey, mut body: ByteStream) -> Result<u64, StoreError> {
        let mut writer = BufWriter::new(self.store.clone(), self.path_of(key));
        let mut size = 0u64;
        let result: Result<(), StoreError> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|source| StoreError::Body {
                    key: key.clone(),
                    source,
                })?;
                size += chunk.len() as u64;
                writer.put(chunk).await.map_err(backend(key))?;
            }
            writer.shutdown().await.map_err(|source| StoreError::Io {
                key: key.clone(),
                source,
            })
        }
        .await;
        if let Err(err) = result {
            if let Err(abort) = writer.abort().await {
                tracing::warn!(key = %key, error = %abort, "could not abort multipart upload");
            }
            return Err(err);
        }
        Ok(size)
    }

    async fn get(
        &self,
        key: &BlobKey,
        range: Option<ByteRange>,
    ) -> Result<Option<Blob>, StoreError> {
        let path = self.path_of(key);
        let mut options = GetOptions::default();
        if let Some(range) = range {
            // Resolve against the real size so that unsatisfiable ranges get the same error as
            // with the local backend, whatever the server says.
            let Some(meta) = self.head(key).await? else {
                return Ok(None);
            };
            let resolved =
                range
                    .resolve(meta.size)
                    .ok_or_else(|| StoreError::RangeNotSatisfiable {
                        key: key.clone(),
                        size: meta.size,
                    })?;
            options.range = Some(GetRange::Bounded(resolved));
        }
        let result = match self.store.get_opts(&path, options).await {
            Ok(result) => result,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(backend(key)(e)),
        };
        let size = result.meta.size;
        let range = result.range.clone();
        let body = result.into_stream().map_err(io::Error::other);
        Ok(Some(Blob {
            size,
            range,
            body: Box::pin(body),
        }))
    }

    async fn head(&self, key: &BlobKey) -> Result<Option<BlobMeta>, StoreError> {
        match self.store.head(&self.path_of(key)).await {
            Ok(meta) => Ok(Some(BlobMeta {
                key: key.clone(),
                size: meta.size,
                modified: Some(meta.last_modified.into()),
            })),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(backend(key)(e)),
        }
    }

    async fn delete(&self, key: &BlobKey) -> Result<bool, StoreError> {
        // S3 deletes are idempotent and do not say whether the object existed.
        let existed = self.head(key).await?.is_some();
        match self.store.delete(&self.path_of(key)).await {
            Ok(()) => Ok(existed),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(backend(key)(e)),
        }
    }

    async fn rename(&self, from: &BlobKey, to: &BlobKey) -> Result<(), StoreError> {
        match self
            .store
            .rename(&self.path_of(from), &self.path_of(to))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Err(StoreError::NotFound(from.clone())),
            Err(e) => Err(backend(to)(e)),
        }
    }

    fn list(&self, prefix: &BlobKey) -> BoxStream<'static, Result<BlobMeta, StoreError>> {
        let this = self.clone();
        let prefix = prefix.clone();
        let listing = self.store.list(Some(&self.path_of(&prefix)));
        listing
            .filter_map(move |item| {
                let result = match item {
                    Ok(meta) => this.key_of(&meta.location).map(|key| {
                        Ok(BlobMeta {
                            key,
                            size: meta.size,
                            modified: Some(meta.last_modified.into()),
                        })
                    }),
                    Err(e) => Some(Err(StoreError::Backend {
                        key: prefix.clone(),
                        source: Box::new(e),
                    })),
                };
                std::future::ready(result)
            })
            .boxed()
    }

    /// Nothing to do: an interrupted upload here is an incomplete multipart upload, which is
    /// not an object and which `object_store` cannot list. Buckets should carry a lifecycle rule
    /// (`AbortIncompleteMultipartUpload`) to free their parts.
    async fn reap_leftovers(
        &self,
        _prefix: &BlobKey,
        _older_than: SystemTime,
        _dry_run: bool,
    ) -> Result<Reaped, StoreError> {
        Ok(Reaped::default())
    }
}
