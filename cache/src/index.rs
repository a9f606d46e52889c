//! The cache's index in the database: verified NAR files and the store paths each cache serves.
//!
//! A `paths` row is the commit point of an upload: it is inserted only after its NAR is stored
//! and verified, in a transaction that also checks that every reference is served, so a visible
//! path always has its NAR and its references.

use std::collections::BTreeSet;

use kiln_db::{CacheId, Db, NarId, PathId, Timestamp};
use kiln_nix::hash::{Hash, HashAlgo};
use kiln_nix::narinfo::NarInfo;
use kiln_nix::{StoreDir, StorePath};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::caches::CacheRecord;
use crate::error::CacheError;
use crate::gc;

/// How a stored NAR file is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Stored as the NAR itself.
    None,
    /// zstd frames.
    Zstd,
    /// xz streams (what `nix copy` sends unless told otherwise).
    Xz,
    /// One bzip2 stream.
    Bzip2,
}

impl Compression {
    /// The narinfo `Compression` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
            Compression::Bzip2 => "bzip2",
        }
    }

    /// Reads a narinfo `Compression` value; the message explains what the cache accepts.
    pub fn parse(s: &str) -> Result<Compression, CacheError> {
        match s {
            "none" => Ok(Compression::None),
            "zstd" => Ok(Compression::Zstd),
            "xz" => Ok(Compression::Xz),
            "bzip2" => Ok(Compression::Bzip2),
            other => Err(CacheError::Unsupported(format!(
                "compression {other:?} is not accepted; this cache takes zstd, xz, bzip2 or none \
                 (e.g. `nix copy --to '<cache url>?compression=zstd'`)"
            ))),
        }
    }

    /// The compression of a NAR file named `<hash>.nar<extension>`, from the extension Nix
    /// gives it (`""`, `".zst"`, `".xz"`, `".bz2"`).
    pub fn from_extension(ext: &str) -> Result<Compression, CacheError> {
        match ext {
            "" => Ok(Compression::None),
            ".zst" => Ok(Compression::Zstd),
            ".xz" => Ok(Compression::Xz),
            ".bz2" => Ok(Compression::Bzip2),
            other => Err(CacheError::Unsupported(format!(
                "NAR files ending in .nar{other} are not accepted; this cache takes .nar, \
                 .nar.zst, .nar.xz and .nar.bz2 (e.g. `nix copy --to '<cache url>?compression=zstd'`)"
            ))),
        }
    }

    /// The file-name extension Nix uses: `.nar`, `.nar.zst`, `.nar.xz` or `.nar.bz2`.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::None => ".nar",
            Compression::Zstd => ".nar.zst",
            Compression::Xz => ".nar.xz",
            Compression::Bzip2 => ".nar.bz2",
        }
    }
}

/// What the cache established about a NAR file while receiving it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarFacts {
    /// Key relative to the cache root, e.g. `nar/<filehash>.nar.zst`; the narinfo `URL`.
    pub file_key: String,
    /// Compression of the stored file.
    pub compression: Compression,
    /// SHA-256 of the stored file.
    pub file_hash: Hash,
    /// Size of the stored file in bytes.
    pub file_size: u64,
    /// SHA-256 of the uncompressed NAR.
    pub nar_hash: Hash,
    /// Size of the uncompressed NAR in bytes.
    pub nar_size: u64,
}

/// A stored NAR file, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarRecord {
    /// Row id.
    pub id: NarId,
    /// What was verified.
    pub facts: NarFacts,
}

/// One served store path with its NAR.
#[derive(Debug, Clone)]
pub struct PathRecord {
    /// Row id.
    pub id: PathId,
    /// The narinfo as served (signatures included).
    pub narinfo: NarInfo,
    /// When it became visible.
    pub created_at: Timestamp,
}

fn db_err(context: &'static str) -> impl FnOnce(sqlx::Error) -> CacheError {
    CacheError::db(context)
}

fn corrupt(what: &str, detail: impl std::fmt::Display) -> CacheError {
    CacheError::Internal(format!("corrupt index row ({what}): {detail}"))
}

fn nar_from_row(row: &AnyRow, prefix: &str) -> Result<NarRecord, CacheError> {
    let col = |c: &str| format!("{prefix}{c}");
    let text = |c: &str| {
        row.try_get::<String, _>(col(c).as_str())
            .map_err(db_err("reading a NAR row"))
    };
    let int = |c: &str| {
        row.try_get::<i64, _>(col(c).as_str())
            .map_err(db_err("reading a NAR row"))
    };
    let hash = |c: &str| -> Result<Hash, CacheError> {
        Hash::parse_as(HashAlgo::Sha256, &text(c)?).map_err(|e| corrupt("nar hash", e))
    };
    let size = |c: &str| -> Result<u64, CacheError> {
        u64::try_from(int(c)?).map_err(|e| corrupt("nar size", e))
    };
    Ok(NarRecord {
        id: NarId(int("id")?),
        facts: NarFacts {
            file_key: text("file_key")?,
            compression: Compression::parse(&text("compression")?)?,
            file_hash: hash("file_hash")?,
            file_size: size("file_size")?,
            nar_hash: hash("nar_hash")?,
            nar_size: size("nar_size")?,
        },
    })
}

const NAR_COLUMNS: &str = "id, file_key, compression, file_hash, file_size, nar_hash, nar_size";

/// Records a verified NAR file; returns its row (the existing one if the same key was recorded
/// before: keys name the file's hash, so the content is the same). `Conflict` while garbage
/// collection is deleting the file under that key: the object may vanish, upload it again.
pub async fn record_nar(
    db: &Db,
    cache: CacheId,
    facts: &NarFacts,
) -> Result<NarRecord, CacheError> {
    let mut tx = db.pool().begin().await.map_err(db_err("recording a NAR"))?;
    gc::lock::shared(&mut tx, db.dialect(), cache).await?;
    let row = sqlx::query(&format!(
        "INSERT INTO nars (cache_id, file_key, compression, file_hash, file_size, nar_hash, nar_size, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (cache_id, file_key) DO UPDATE SET file_key = excluded.file_key \
         RETURNING {NAR_COLUMNS}"
    ))
    .bind(cache.get())
    .bind(&facts.file_key)
    .bind(facts.compression.as_str())
    .bind(facts.file_hash.to_typed_nix32())
    .bind(facts.file_size as i64)
    .bind(facts.nar_hash.to_typed_nix32())
    .bind(facts.nar_size as i64)
    .bind(Timestamp::now().millis())
    .fetch_one(&mut *tx)
    .await
    .map_err(db_err("recording a NAR"))?;
    // Garbage collection claims a key (in this table) only while no `nars` row holds it, under
    // the exclusive lock; so a claim seen here predates this row and its deletion may still run.
    let deleting: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM nar_deletions WHERE cache_id = $1 AND file_key = $2",
    )
    .bind(cache.get())
    .bind(&facts.file_key)
    .fetch_one(&mut *tx)
    .await
    .map_err(db_err("recording a NAR"))?;
    if deleting > 0 {
        tx.rollback().await.map_err(db_err("recording a NAR"))?;
        return Err(CacheError::Conflict(format!(
            "{} is being deleted by garbage collection right now; upload it again in a moment",
            facts.file_key
        )));
    }
    let record = nar_from_row(&row, "")?;
    tx.commit().await.map_err(db_err("recording a NAR"))?;
    Ok(record)
}

/// The recorded NAR under `file_key` (relative to the cache root).
pub async fn find_nar(
    db: &Db,
    cache: CacheId,
    file_key: &str,
) -> Result<Option<NarRecord>, CacheError> {
    let row = sqlx::query(&format!(
        "SELECT {NAR_COLUMNS} FROM nars WHERE cache_id = $1 AND file_key = $2"
    ))
    .bind(cache.get())
    .bind(file_key)
    .fetch_optional(db.pool())
    .await
    .map_err(db_err("looking up a NAR"))?;
    row.as_ref().map(|r| nar_from_row(r, "")).transpose()
}

/// The columns [`path_from_row`] reads, from `paths p JOIN nars n`.
const PATH_COLUMNS: &str = "p.id, p.store_path, p.refs, p.deriver, p.ca, p.sigs, p.created_at, \
     n.id AS n_id, n.file_key AS n_file_key, n.compression AS n_compression, \
     n.file_hash AS n_file_hash, n.file_size AS n_file_size, \
     n.nar_hash AS n_nar_hash, n.nar_size AS n_nar_size";

/// The path whose hash part is `hash_part`, with its NAR, as its narinfo.
pub async fn find_path(
    db: &Db,
    cache: CacheId,
    hash_part: &str,
) -> Result<Option<PathRecord>, CacheError> {
    let row = sqlx::query(&format!(
        "SELECT {PATH_COLUMNS} FROM paths p JOIN nars n ON n.id = p.nar_id \
         WHERE p.cache_id = $1 AND p.hash_part = $2"
    ))
    .bind(cache.get())
    .bind(hash_part)
    .fetch_optional(db.pool())
    .await
    .map_err(db_err("looking up a path"))?;
    row.as_ref().map(path_from_row).transpose()
}

/// The cache named `cache_name` and, if it serves it, the path whose hash part is `hash_part`:
/// what a narinfo GET needs, in one query on a held connection ([`Db::reader`]): round trips to
/// the database, not the lookup itself, dominated the cost of serving a narinfo. `None` if there
/// is no such cache.
pub async fn find_cache_and_path(
    db: &Db,
    cache_name: &str,
    hash_part: &str,
) -> Result<Option<(CacheRecord, Option<PathRecord>)>, CacheError> {
    let sql = format!(
        "SELECT c.id AS c_id, c.name AS c_name, c.is_public AS c_is_public, \
                c.priority AS c_priority, c.signing_key AS c_signing_key, \
                c.created_at AS c_created_at, {PATH_COLUMNS} \
         FROM caches c \
         LEFT JOIN paths p ON p.cache_id = c.id AND p.hash_part = $2 \
         LEFT JOIN nars n ON n.id = p.nar_id \
         WHERE c.name = $1"
    );
    let query = sqlx::query(&sql).bind(cache_name).bind(hash_part);
    let row = match db.reader().await {
        Some(mut conn) => query.fetch_optional(&mut *conn).await,
        None => query.fetch_optional(db.pool()).await,
    }
    .map_err(db_err("looking up a cache and a path"))?;
    let Some(row) = row else { return Ok(None) };
    let cache = CacheRecord::from_prefixed_row(&row, "c_")?;
    let path_id: Option<i64> = row.try_get("id").map_err(db_err("reading a path row"))?;
    let path = match path_id {
        Some(_) => Some(path_from_row(&row)?),
        None => None,
    };
    Ok(Some((cache, path)))
}

/// The path in a row of [`PATH_COLUMNS`].
fn path_from_row(row: &AnyRow) -> Result<PathRecord, CacheError> {
    let text = |c: &str| {
        row.try_get::<String, _>(c)
            .map_err(db_err("reading a path row"))
    };
    let opt_text = |c: &str| {
        row.try_get::<Option<String>, _>(c)
            .map_err(db_err("reading a path row"))
    };
    let nar = nar_from_row(row, "n_")?;
    let store_path =
        StorePath::parse(&text("store_path")?).map_err(|e| corrupt("store path", e))?;
    let mut narinfo = NarInfo::new(
        store_path,
        nar.facts.file_key.clone(),
        nar.facts.nar_hash.clone(),
        nar.facts.nar_size,
    );
    narinfo.compression = nar.facts.compression.as_str().to_owned();
    narinfo.file_hash = Some(nar.facts.file_hash.clone());
    narinfo.file_size = Some(nar.facts.file_size);
    narinfo.references = text("refs")?
        .split_whitespace()
        .map(StorePath::from_base_name)
        .collect::<Result<BTreeSet<_>, _>>()
        .map_err(|e| corrupt("references", e))?;
    narinfo.deriver = opt_text("deriver")?
        .map(|d| StorePath::from_base_name(&d))
        .transpose()
        .map_err(|e| corrupt("deriver", e))?;
    narinfo.ca = opt_text("ca")?
        .map(|ca| ca.parse())
        .transpose()
        .map_err(|e| corrupt("ca", e))?;
    narinfo.sigs = text("sigs")?
        .lines()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|e| corrupt("signatures", e))?;
    Ok(PathRecord {
        id: PathId(row.try_get("id").map_err(db_err("reading a path row"))?),
        created_at: Timestamp(
            row.try_get("created_at")
                .map_err(db_err("reading a path row"))?,
        ),
        narinfo,
    })
}

/// Which of `hash_parts` this cache does not serve.
pub async fn missing_paths(
    db: &Db,
    cache: CacheId,
    hash_parts: &[String],
) -> Result<Vec<String>, CacheError> {
    let mut present = BTreeSet::new();
    for chunk in hash_parts.chunks(500) {
        let placeholders: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "SELECT hash_part FROM paths WHERE cache_id = $1 AND hash_part IN ({})",
            placeholders.join(", ")
        );
        let mut query = sqlx::query_scalar::<_, String>(&sql).bind(cache.get());
        for hash in chunk {
            query = query.bind(hash);
        }
        present.extend(
            query
                .fetch_all(db.pool())
                .await
                .map_err(db_err("checking paths"))?,
        );
    }
    Ok(hash_parts
        .iter()
        .filter(|h| !present.contains(*h))
        .cloned()
        .collect())
}

/// What committing a narinfo did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// The path is now served.
    Inserted(PathId),
    /// The same path with the same NAR hash was already served; nothing changed.
    AlreadyPresent(PathId),
}

/// Makes `narinfo` (already verified against `nar` and signed) visible, atomically with the
/// checks that its NAR row still exists and that all its references are served, under the
/// cache's garbage-collection lock (module `gc::lock`). `Unprocessable` naming the missing
/// references or the deleted NAR if not; `Conflict` if the path is served with a different NAR
/// hash.
pub async fn commit_path(
    db: &Db,
    cache: CacheId,
    nar: NarId,
    narinfo: &NarInfo,
) -> Result<Committed, CacheError> {
    let store_dir = StoreDir::default();
    let hash_part = narinfo.store_path.hash_part();
    let refs: Vec<String> = narinfo.references.iter().map(|r| r.to_string()).collect();
    let sigs: Vec<String> = narinfo.sigs.iter().map(|s| s.to_string()).collect();
    let now = Timestamp::now().millis();

    let mut tx = db
        .pool()
        .begin()
        .await
        .map_err(db_err("committing a path"))?;
    gc::lock::shared(&mut tx, db.dialect(), cache).await?;
    // The first statement writes, so SQLite takes its write lock now rather than failing to
    // upgrade a read lock later. It inserts nothing if garbage collection deleted the NAR row
    // since `publish` looked it up.
    let inserted: Option<i64> = sqlx::query_scalar(
        "INSERT INTO paths (cache_id, hash_part, store_path, nar_id, refs, deriver, ca, sigs, created_at, last_accessed_at) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $9 \
         WHERE EXISTS (SELECT 1 FROM nars WHERE id = $4 AND cache_id = $1) \
         ON CONFLICT (cache_id, hash_part) DO NOTHING RETURNING id",
    )
    .bind(cache.get())
    .bind(&hash_part)
    .bind(store_dir.display(&narinfo.store_path))
    .bind(nar.get())
    .bind(refs.join(" "))
    .bind(narinfo.deriver.as_ref().map(|d| d.to_string()))
    .bind(narinfo.ca.as_ref().map(|ca| ca.to_string()))
    .bind(sigs.join("\n"))
    .bind(now)
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_err("committing a path"))?;

    let Some(path_id) = inserted else {
        let existing: Option<(i64, String)> = sqlx::query_as(
            "SELECT p.id, n.nar_hash FROM paths p JOIN nars n ON n.id = p.nar_id \
             WHERE p.cache_id = $1 AND p.hash_part = $2",
        )
        .bind(cache.get())
        .bind(&hash_part)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err("reading an existing path"))?;
        tx.rollback().await.map_err(db_err("committing a path"))?;
        let Some((id, nar_hash)) = existing else {
            return Err(CacheError::Unprocessable(format!(
                "URL {}: the NAR file was deleted by garbage collection before this narinfo \
                 arrived; upload it again",
                narinfo.url
            )));
        };
        if nar_hash == narinfo.nar_hash.to_typed_nix32() {
            return Ok(Committed::AlreadyPresent(PathId(id)));
        }
        return Err(CacheError::Conflict(format!(
            "{} is already in this cache with NarHash {nar_hash}, not {}",
            store_dir.display(&narinfo.store_path),
            narinfo.nar_hash.to_typed_nix32()
        )));
    };

    for reference in &narinfo.references {
        sqlx::query("INSERT INTO path_refs (path_id, ref_hash) VALUES ($1, $2)")
            .bind(path_id)
            .bind(reference.hash_part())
            .execute(&mut *tx)
            .await
            .map_err(db_err("recording references"))?;
    }
    // A path referring to itself finds its own row, inserted above.
    let missing: Vec<String> = sqlx::query_scalar(
        "SELECT r.ref_hash FROM path_refs r \
         LEFT JOIN paths p ON p.cache_id = $1 AND p.hash_part = r.ref_hash \
         WHERE r.path_id = $2 AND p.id IS NULL ORDER BY r.ref_hash",
    )
    .bind(cache.get())
    .bind(path_id)
    .fetch_all(&mut *tx)
    .await
    .map_err(db_err("checking references"))?;
    if !missing.is_empty() {
        tx.rollback().await.map_err(db_err("committing a path"))?;
        let names: Vec<String> = narinfo
            .references
            .iter()
            .filter(|r| missing.contains(&r.hash_part()))
            .map(|r| store_dir.display(r))
            .collect();
        return Err(missing_references(&narinfo.store_path, &names));
    }
    tx.commit().await.map_err(db_err("committing a path"))?;
    Ok(Committed::Inserted(PathId(path_id)))
}

/// The error for references that are not in the cache.
pub fn missing_references(path: &StorePath, missing: &[String]) -> CacheError {
    CacheError::Unprocessable(format!(
        "{} refers to paths this cache does not have (push them first): {}",
        StoreDir::default().display(path),
        missing.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caches::{self, NewCache};
    use crate::storage::LocalStore;
    use kiln_db::testing::{Backend, TestDb};

    async fn setup(backend: Backend) -> (TestDb, CacheId) {
        let db = TestDb::migrated(backend).await;
        let store = LocalStore::open(db.dir().join("blobs")).await.unwrap();
        let new = NewCache {
            name: "main".to_owned(),
            public: true,
            priority: 30,
        };
        let (cache, _) = caches::ensure(&db, &store, &new, "test").await.unwrap();
        (db, cache.id)
    }

    fn path(name: &str) -> StorePath {
        StoreDir::default().make_store_path("source", &Hash::sha256(name), name)
    }

    async fn nar(db: &Db, cache: CacheId, content: &str) -> NarRecord {
        let facts = NarFacts {
            file_key: format!("nar/{}.nar", Hash::sha256(content).to_nix32()),
            compression: Compression::None,
            file_hash: Hash::sha256(content),
            file_size: content.len() as u64,
            nar_hash: Hash::sha256(content),
            nar_size: content.len() as u64,
        };
        record_nar(db, cache, &facts).await.unwrap()
    }

    fn info(path: &StorePath, nar: &NarRecord, refs: &[&StorePath]) -> NarInfo {
        let mut info = NarInfo::new(
            path.clone(),
            nar.facts.file_key.clone(),
            nar.facts.nar_hash.clone(),
            nar.facts.nar_size,
        );
        info.references = refs.iter().map(|r| (*r).clone()).collect();
        info
    }

    async fn commit_refuses_missing_references_inside_its_transaction(backend: Backend) {
        let (db, cache) = setup(backend).await;
        let nar = nar(&db, cache, "top").await;
        let (top, dep) = (path("top"), path("dep"));
        let err = commit_path(&db, cache, nar.id, &info(&top, &nar, &[&dep, &top]))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, CacheError::Unprocessable(m) if m.contains(&dep.to_string())),
            "{err}"
        );
        assert!(
            find_path(&db, cache, &top.hash_part())
                .await
                .unwrap()
                .is_none()
        );
        let refs: i64 = sqlx::query_scalar("SELECT count(*) FROM path_refs")
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!(refs, 0, "a refused commit left references behind");
    }

    async fn commit_is_idempotent_and_refuses_a_different_nar_for_the_same_path(backend: Backend) {
        let (db, cache) = setup(backend).await;
        let first = nar(&db, cache, "one").await;
        let p = path("p");
        let Committed::Inserted(id) = commit_path(&db, cache, first.id, &info(&p, &first, &[&p]))
            .await
            .unwrap()
        else {
            panic!("first commit did not insert");
        };
        assert_eq!(
            commit_path(&db, cache, first.id, &info(&p, &first, &[&p]))
                .await
                .unwrap(),
            Committed::AlreadyPresent(id)
        );
        let second = nar(&db, cache, "two").await;
        let err = commit_path(&db, cache, second.id, &info(&p, &second, &[]))
            .await
            .unwrap_err();
        assert!(matches!(err, CacheError::Conflict(_)), "{err}");
        let served = find_path(&db, cache, &p.hash_part())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(served.narinfo.nar_hash, first.facts.nar_hash);
        assert_eq!(served.narinfo.references.len(), 1);
    }

    async fn concurrent_commits_of_one_path_insert_it_once(backend: Backend) {
        let (db, cache) = setup(backend).await;
        let nar = nar(&db, cache, "shared").await;
        let p = path("shared");
        let commits = (0..8).map(|_| {
            let (db, info) = (db.db().clone(), info(&p, &nar, &[]));
            tokio::spawn(async move { commit_path(&db, cache, nar.id, &info).await })
        });
        let mut inserted = 0;
        for commit in commits {
            if let Committed::Inserted(_) = commit.await.unwrap().unwrap() {
                inserted += 1;
            }
        }
        assert_eq!(inserted, 1);
        assert_eq!(
            missing_paths(&db, cache, &[p.hash_part(), path("other").hash_part()])
                .await
                .unwrap(),
            vec![path("other").hash_part()]
        );
    }

    async fn one_query_finds_the_cache_and_the_path_it_serves(backend: Backend) {
        let (db, cache) = setup(backend).await;
        let nar = nar(&db, cache, "served").await;
        let (served, absent) = (path("served"), path("absent"));
        let mut narinfo = info(&served, &nar, &[&served]);
        narinfo.deriver = Some(path("served.drv"));
        commit_path(&db, cache, nar.id, &narinfo).await.unwrap();

        assert!(
            find_cache_and_path(&db, "other", &served.hash_part())
                .await
                .unwrap()
                .is_none(),
            "an unknown cache is not found, whatever the path"
        );
        let (record, none) = find_cache_and_path(&db, "main", &absent.hash_part())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((record.id, record.name.as_str()), (cache, "main"));
        assert!(none.is_none());
        let (record, found) = find_cache_and_path(&db, "main", &served.hash_part())
            .await
            .unwrap()
            .unwrap();
        assert!(record.public);
        let found = found.unwrap();
        let alone = find_path(&db, cache, &served.hash_part())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.id, alone.id);
        assert_eq!(found.narinfo.to_string(), alone.narinfo.to_string());
        assert_eq!(found.narinfo.deriver, narinfo.deriver);
        assert_eq!(found.narinfo.references, narinfo.references);
    }

    async fn recording_a_nar_twice_keeps_one_row(backend: Backend) {
        let (db, cache) = setup(backend).await;
        let a = nar(&db, cache, "same").await;
        let b = nar(&db, cache, "same").await;
        assert_eq!(a, b);
        assert_eq!(
            find_nar(&db, cache, &a.facts.file_key).await.unwrap(),
            Some(a)
        );
    }

    kiln_db::both_backends!(
        commit_refuses_missing_references_inside_its_transaction,
        commit_is_idempotent_and_refuses_a_different_nar_for_the_same_path,
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        concurrent_commits_of_one_path_insert_it_once,
        one_query_finds_the_cache_and_the_path_it_serves,
        recording_a_nar_twice_keeps_one_row,
    );
}
