//! Collection against a real index (SQLite and PostgreSQL) and local store, through the same calls uploads make,
//! including the interleavings of a collection with a commit that the lock must order.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kiln_config::{Retention, TimeSpan};
use kiln_db::testing::{Backend, TestDb};
use kiln_db::{Db, Timestamp};
use kiln_nix::narinfo::NarInfo;
use kiln_nix::{Hash, StoreDir, StorePath};

use super::*;
use crate::caches::CacheRecord;
use crate::error::CacheError;
use crate::index::{self, Compression, NarFacts, NarRecord};
use crate::ingest;
use crate::service::{CacheService, Settings};
use crate::storage::{ByteStream, LocalStore};

struct Fixture {
    blobs: PathBuf,
    service: CacheService,
    cache: CacheRecord,
    /// Last, so that it is dropped after the service using it.
    _db: TestDb,
}

fn path(name: &str) -> StorePath {
    StoreDir::default().make_store_path("source", &Hash::sha256(name), name)
}

fn body(bytes: &[u8]) -> ByteStream {
    let bytes = bytes::Bytes::copy_from_slice(bytes);
    Box::pin(futures_util::stream::once(async move { Ok(bytes) }))
}

const NOW: Option<TimeSpan> = Some(TimeSpan(Duration::ZERO));

fn keep_all() -> Policy {
    Policy {
        retention: Retention::default(),
        grace: Duration::ZERO,
    }
}

/// Everything not pinned or referenced expires; nothing is spared by age.
fn expire_all() -> Policy {
    Policy {
        retention: Retention {
            max_age: NOW,
            max_idle: None,
        },
        grace: Duration::ZERO,
    }
}

impl Fixture {
    async fn new(backend: Backend) -> Fixture {
        let db = TestDb::migrated(backend).await;
        let blobs = db.dir().join("blobs");
        let store = LocalStore::open(&blobs).await.unwrap();
        let settings = Settings {
            max_nar_size: 1 << 20,
            max_log_size: 1 << 20,
            zstd_level: 3,
            default_priority: 30,
            key_name_prefix: "test".to_owned(),
            public_url: None,
            // Collections that delete paths wait this long.
            narinfo_ttl: Duration::from_secs(1),
        };
        let service = CacheService::new(db.db().clone(), Arc::new(store), settings);
        let (cache, _) = service.ensure_default_cache().await.unwrap();
        Fixture {
            _db: db,
            blobs,
            service,
            cache,
        }
    }

    fn db(&self) -> &Db {
        self.service.db()
    }

    fn nar_key(content: &str) -> String {
        format!("nar/{}.nar", Hash::sha256(content).to_nix32())
    }

    /// Stores and records a NAR file (what `PUT nar/...` does).
    async fn upload_nar(&self, content: &str) -> NarRecord {
        let facts = NarFacts {
            file_key: Fixture::nar_key(content),
            compression: Compression::None,
            file_hash: Hash::sha256(content),
            file_size: content.len() as u64,
            nar_hash: Hash::sha256(content),
            nar_size: content.len() as u64,
        };
        let key = self.cache.layout().key(&facts.file_key).unwrap();
        self.service
            .store()
            .put(&key, body(content.as_bytes()))
            .await
            .unwrap();
        index::record_nar(self.db(), self.cache.id, &facts)
            .await
            .unwrap()
    }

    fn narinfo(&self, name: &str, nar: &NarRecord, refs: &[&StorePath]) -> NarInfo {
        let mut info = NarInfo::new(
            path(name),
            nar.facts.file_key.clone(),
            nar.facts.nar_hash.clone(),
            nar.facts.nar_size,
        );
        info.compression = "none".to_owned();
        info.references = refs.iter().map(|r| (*r).clone()).collect();
        info
    }

    /// Uploads and publishes the path `name` (its NAR holds its name) referring to `refs`.
    async fn publish(&self, name: &str, refs: &[&StorePath]) -> StorePath {
        let nar = self.upload_nar(name).await;
        ingest::publish(&self.service, &self.cache, self.narinfo(name, &nar, refs))
            .await
            .unwrap();
        path(name)
    }

    /// Pretends `path` was uploaded and last read `days` ago.
    async fn age(&self, path: &StorePath, days: i64) {
        let at = Timestamp::now().millis() - days * 86_400_000;
        sqlx::query("UPDATE paths SET created_at = $1, last_accessed_at = $1 WHERE hash_part = $2")
            .bind(at)
            .bind(path.hash_part())
            .execute(self.db().pool())
            .await
            .unwrap();
    }

    /// Moves every row's times two hours back, so that a collection's "now" is strictly later
    /// than anything published so far, whatever the clock's resolution.
    async fn age_everything(&self) {
        let two_hours = 2 * 3_600_000i64;
        for sql in [
            "UPDATE paths SET created_at = created_at - $1, last_accessed_at = last_accessed_at - $1",
            "UPDATE nars SET created_at = created_at - $1",
        ] {
            sqlx::query(sql)
                .bind(two_hours)
                .execute(self.db().pool())
                .await
                .unwrap();
        }
    }

    async fn served(&self, path: &StorePath) -> bool {
        index::find_path(self.db(), self.cache.id, &path.hash_part())
            .await
            .unwrap()
            .is_some()
    }

    fn object(&self, relative: &str) -> PathBuf {
        self.blobs.join("main").join(relative)
    }

    async fn gc(&self, policy: &Policy) -> GcReport {
        collect(&self.service, &self.cache, policy, false)
            .await
            .unwrap()
    }

    /// Asserts that `path`, its narinfo object and its NAR file are gone.
    async fn assert_gone(&self, name: &str) {
        let p = path(name);
        assert!(!self.served(&p).await, "{name} is still served");
        assert!(
            !self.object(&format!("{}.narinfo", p.hash_part())).exists(),
            "{name} still has its narinfo object"
        );
        assert!(
            !self.object(&Fixture::nar_key(name)).exists(),
            "{name} still has its NAR file"
        );
    }

    /// Asserts that `path` is served with its narinfo object and its NAR file.
    async fn assert_whole(&self, name: &str) {
        let p = path(name);
        assert!(self.served(&p).await, "{name} is not served");
        assert!(self.object(&format!("{}.narinfo", p.hash_part())).is_file());
        assert!(self.object(&Fixture::nar_key(name)).is_file());
    }
}

async fn without_retention_nothing_served_is_deleted(backend: Backend) {
    let f = Fixture::new(backend).await;
    let dep = f.publish("dep", &[]).await;
    f.publish("top", &[&dep]).await;
    f.age(&dep, 1000).await;
    let report = f.gc(&keep_all()).await;
    assert_eq!((report.paths_total, report.paths_kept), (2, 2));
    assert_eq!(report.paths_deleted, 0);
    assert_eq!(report.nars_deleted, Tally::default());
    f.assert_whole("dep").await;
    f.assert_whole("top").await;
}

async fn expired_paths_go_but_closures_of_kept_paths_stay_whole(backend: Backend) {
    let f = Fixture::new(backend).await;
    // old-leaf <- old-mid <- young-top; old-alone and old-top -> old-leaf too.
    let leaf = f.publish("old-leaf", &[]).await;
    let mid = f.publish("old-mid", &[&leaf]).await;
    let young = f.publish("young-top", &[&mid]).await;
    let alone = f.publish("old-alone", &[]).await;
    let old_top = f.publish("old-top", &[&leaf]).await;
    f.age_everything().await;
    for p in [&leaf, &mid, &alone, &old_top] {
        f.age(p, 40).await;
    }
    f.age(&young, 1).await;
    let policy = Policy {
        retention: Retention {
            max_age: Some(TimeSpan::parse("30d").unwrap()),
            max_idle: None,
        },
        grace: Duration::ZERO,
    };
    let report = f.gc(&policy).await;
    assert_eq!(report.paths_total, 5);
    assert_eq!(report.roots_unexpired, 1);
    assert_eq!(report.paths_kept, 3);
    assert_eq!(report.paths_deleted, 2);
    assert_eq!(report.narinfos_deleted, 2);
    assert_eq!(
        report.nars_deleted,
        Tally {
            count: 2,
            bytes: ("old-alone".len() + "old-top".len()) as u64
        }
    );
    f.assert_whole("young-top").await;
    f.assert_whole("old-mid").await;
    f.assert_whole("old-leaf").await;
    f.assert_gone("old-alone").await;
    f.assert_gone("old-top").await;
    // The reference rows of deleted paths go with them.
    let refs: i64 = sqlx::query_scalar("SELECT count(*) FROM path_refs")
        .fetch_one(f.db().pool())
        .await
        .unwrap();
    assert_eq!(refs, 2, "young-top -> old-mid -> old-leaf");
}

async fn max_idle_keeps_what_is_read(backend: Backend) {
    let f = Fixture::new(backend).await;
    let read = f.publish("read", &[]).await;
    let unread = f.publish("unread", &[]).await;
    f.age_everything().await;
    f.age(&read, 50).await;
    f.age(&unread, 50).await;
    let found = index::find_path(f.db(), f.cache.id, &read.hash_part())
        .await
        .unwrap()
        .unwrap();
    f.service.access_log().touch(found.id);
    f.service.access_log().flush(f.db()).await.unwrap();
    let policy = Policy {
        retention: Retention {
            max_age: None,
            max_idle: Some(TimeSpan::parse("7d").unwrap()),
        },
        grace: Duration::ZERO,
    };
    f.gc(&policy).await;
    f.assert_whole("read").await;
    f.assert_gone("unread").await;
}

async fn pinned_paths_keep_their_closures_until_unpinned(backend: Backend) {
    let f = Fixture::new(backend).await;
    let leaf = f.publish("pin-leaf", &[]).await;
    let top = f.publish("pin-top", &[&leaf]).await;
    f.publish("unpinned", &[]).await;
    f.age_everything().await;
    let pinned = pins::pin(f.db(), f.cache.id, std::slice::from_ref(&top), false)
        .await
        .unwrap();
    assert_eq!(
        pinned,
        vec![pins::Pinned {
            store_path: top.clone(),
            new: true
        }]
    );

    let report = f.gc(&expire_all()).await;
    assert_eq!(report.roots_pinned, 1);
    assert_eq!(report.roots_unexpired, 0);
    assert_eq!(report.paths_kept, 2);
    f.assert_whole("pin-top").await;
    f.assert_whole("pin-leaf").await;
    f.assert_gone("unpinned").await;

    pins::unpin(f.db(), f.cache.id, std::slice::from_ref(&top))
        .await
        .unwrap();
    assert!(pins::list(f.db(), f.cache.id).await.unwrap().is_empty());
    f.gc(&expire_all()).await;
    f.assert_gone("pin-top").await;
    f.assert_gone("pin-leaf").await;
}

async fn keep_closure_pins_every_path_of_the_closure_by_itself(backend: Backend) {
    let f = Fixture::new(backend).await;
    let leaf = f.publish("kc-leaf", &[]).await;
    let mid = f.publish("kc-mid", &[&leaf]).await;
    let top = f.publish("kc-top", &[&mid, &leaf]).await;
    f.age_everything().await;
    pins::pin(f.db(), f.cache.id, std::slice::from_ref(&mid), false)
        .await
        .unwrap();
    let pinned = pins::pin(f.db(), f.cache.id, std::slice::from_ref(&top), true)
        .await
        .unwrap();
    let mut outcome: Vec<(String, bool)> = pinned
        .iter()
        .map(|p| (p.store_path.name().to_owned(), p.new))
        .collect();
    outcome.sort();
    assert_eq!(
        outcome,
        vec![
            ("kc-leaf".to_owned(), true),
            ("kc-mid".to_owned(), false),
            ("kc-top".to_owned(), true)
        ]
    );
    // Unpinning the top leaves the rest pinned.
    pins::unpin(f.db(), f.cache.id, std::slice::from_ref(&top))
        .await
        .unwrap();
    f.gc(&expire_all()).await;
    f.assert_gone("kc-top").await;
    f.assert_whole("kc-mid").await;
    f.assert_whole("kc-leaf").await;
}

async fn pinning_refuses_paths_not_served_and_pins_nothing(backend: Backend) {
    let f = Fixture::new(backend).await;
    let here = f.publish("here", &[]).await;
    let absent = path("absent");
    let err = pins::pin(f.db(), f.cache.id, &[here.clone(), absent.clone()], false)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CacheError::NotFound(m) if m.contains(&absent.to_absolute())),
        "{err}"
    );
    assert!(pins::list(f.db(), f.cache.id).await.unwrap().is_empty());
    let err = pins::unpin(f.db(), f.cache.id, &[here]).await.unwrap_err();
    assert!(matches!(err, CacheError::NotFound(_)), "{err}");
}

async fn unused_nars_and_orphans_wait_for_the_grace_period(backend: Backend) {
    let f = Fixture::new(backend).await;
    // An upload whose narinfo never came, and an object no row knows (a crash).
    f.upload_nar("abandoned").await;
    let orphan = f.object("nar/0000000000000000000000000000000000000000000000000000.nar");
    std::fs::write(&orphan, b"orphan").unwrap();
    let staged = f.object("tmp/0123abcd");
    std::fs::create_dir_all(staged.parent().unwrap()).unwrap();
    std::fs::write(&staged, b"staged").unwrap();
    let temp = f.object("nar/.x.nar.zst.0123.tmp");
    std::fs::write(&temp, b"temp").unwrap();
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    for file in [&orphan, &staged, &temp] {
        std::fs::File::options()
            .write(true)
            .open(file)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
    }
    sqlx::query("UPDATE nars SET created_at = $1")
        .bind(Timestamp::now().millis() - 3_600_000)
        .execute(f.db().pool())
        .await
        .unwrap();

    let patient = Policy {
        retention: Retention::default(),
        grace: Duration::from_secs(2 * 3600),
    };
    let report = f.gc(&patient).await;
    assert_eq!(report.nars_spared, 1);
    assert_eq!(report.nars_deleted, Tally::default());
    assert_eq!(report.staging_deleted, Tally::default());
    assert_eq!(report.temp_files_deleted, Tally::default());
    for file in [&orphan, &staged, &temp] {
        assert!(
            file.exists(),
            "{} reaped within the grace period",
            file.display()
        );
    }
    assert!(f.object(&Fixture::nar_key("abandoned")).exists());

    let report = f
        .gc(&Policy {
            grace: Duration::from_secs(1800),
            ..patient
        })
        .await;
    assert_eq!(report.nars_spared, 0);
    assert_eq!(
        report.nars_deleted,
        Tally {
            count: 2,
            bytes: ("abandoned".len() + "orphan".len()) as u64
        }
    );
    assert_eq!(report.orphans, Tally { count: 1, bytes: 6 });
    assert_eq!(report.staging_deleted, Tally { count: 1, bytes: 6 });
    assert_eq!(report.temp_files_deleted, Tally { count: 1, bytes: 4 });
    for file in [&orphan, &staged, &temp] {
        assert!(!file.exists(), "{} not reaped", file.display());
    }
    assert!(!f.object(&Fixture::nar_key("abandoned")).exists());
    assert!(
        index::find_nar(f.db(), f.cache.id, &Fixture::nar_key("abandoned"))
            .await
            .unwrap()
            .is_none()
    );
    // The cache's own files stay.
    assert!(f.object("nix-cache-info").is_file());
}

async fn dry_run_reports_and_deletes_nothing(backend: Backend) {
    let f = Fixture::new(backend).await;
    f.publish("dry", &[]).await;
    f.upload_nar("dry-abandoned").await;
    f.age_everything().await;
    let report = collect(&f.service, &f.cache, &expire_all(), true)
        .await
        .unwrap();
    assert!(report.dry_run);
    assert_eq!(report.paths_deleted, 1);
    assert_eq!(report.narinfos_deleted, 1);
    assert_eq!(report.nars_deleted.count, 2);
    f.assert_whole("dry").await;
    assert!(f.object(&Fixture::nar_key("dry-abandoned")).exists());
    let claims: i64 = sqlx::query_scalar("SELECT count(*) FROM nar_deletions")
        .fetch_one(f.db().pool())
        .await
        .unwrap();
    assert_eq!(claims, 0);
    assert!(report.to_string().contains("would delete 1"), "{report}");
}

async fn a_narinfo_whose_nar_was_collected_meanwhile_is_refused(backend: Backend) {
    let f = Fixture::new(backend).await;
    let nar = f.upload_nar("late").await;
    f.age_everything().await;
    // The collection runs between the NAR upload and the narinfo.
    let report = f.gc(&keep_all()).await;
    assert_eq!(report.nars_deleted.count, 1);
    let err = ingest::publish(&f.service, &f.cache, f.narinfo("late", &nar, &[]))
        .await
        .unwrap_err();
    assert!(matches!(err, CacheError::Unprocessable(_)), "{err}");
    assert!(!f.served(&path("late")).await);

    // Found before the collection, committed after: the commit itself refuses.
    let nar = f.upload_nar("later").await;
    f.age_everything().await;
    f.gc(&keep_all()).await;
    let err = index::commit_path(f.db(), f.cache.id, nar.id, &f.narinfo("later", &nar, &[]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CacheError::Unprocessable(m) if m.contains("garbage collection")),
        "{err}"
    );
    assert!(!f.served(&path("later")).await);

    // Uploading it again works.
    f.publish("later", &[]).await;
    f.assert_whole("later").await;
}

async fn a_commit_referring_to_a_collected_path_is_refused(backend: Backend) {
    let f = Fixture::new(backend).await;
    let dep = f.publish("gone-dep", &[]).await;
    f.age_everything().await;
    let nar = f.upload_nar("referrer").await;
    // The client saw gone-dep served, then a collection deleted it, then the referrer commits.
    f.gc(&Policy {
        grace: Duration::from_secs(3600),
        ..expire_all()
    })
    .await;
    f.assert_gone("gone-dep").await;
    let err = index::commit_path(
        f.db(),
        f.cache.id,
        nar.id,
        &f.narinfo("referrer", &nar, &[&dep]),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, CacheError::Unprocessable(m) if m.contains(&dep.to_absolute())),
        "{err}"
    );
    assert!(!f.served(&path("referrer")).await);
}

async fn a_nar_claimed_for_deletion_cannot_be_recorded_until_it_is_deleted(backend: Backend) {
    let f = Fixture::new(backend).await;
    let key = Fixture::nar_key("claimed");
    // A collection claimed the key and has not deleted the object yet.
    sqlx::query(
        "INSERT INTO nar_deletions (cache_id, file_key, file_size, created_at) VALUES ($1, $2, 7, 0)",
    )
    .bind(f.cache.id.get())
    .bind(&key)
    .execute(f.db().pool())
    .await
    .unwrap();
    let facts = NarFacts {
        file_key: key.clone(),
        compression: Compression::None,
        file_hash: Hash::sha256("claimed"),
        file_size: 7,
        nar_hash: Hash::sha256("claimed"),
        nar_size: 7,
    };
    let object = f.cache.layout().key(&key).unwrap();
    f.service
        .store()
        .put(&object, body(b"claimed"))
        .await
        .unwrap();
    let err = index::record_nar(f.db(), f.cache.id, &facts)
        .await
        .unwrap_err();
    assert!(matches!(err, CacheError::Conflict(_)), "{err}");
    assert!(
        index::find_nar(f.db(), f.cache.id, &key)
            .await
            .unwrap()
            .is_none()
    );

    // The collection finishes: the object it claimed is deleted, even though it was written
    // again meanwhile; then the upload can start over and is kept.
    assert_eq!(f.gc(&keep_all()).await.nars_deleted.count, 1);
    assert!(!f.object(&key).exists());
    f.publish("claimed", &[]).await;
    f.gc(&keep_all()).await;
    f.assert_whole("claimed").await;
}

async fn a_narinfo_object_of_a_path_published_again_is_written_back(backend: Backend) {
    let f = Fixture::new(backend).await;
    let p = f.publish("again", &[]).await;
    // As if a collection decided to delete the path's narinfo object, and the path was
    // published again before the object was deleted.
    assert!(!sweep_delete_narinfo(&f, &p).await);
    f.assert_whole("again").await;
    let text = std::fs::read_to_string(f.object(&format!("{}.narinfo", p.hash_part()))).unwrap();
    assert!(text.contains("Sig: test-main-1:"), "{text}");
}

async fn sweep_delete_narinfo(f: &Fixture, p: &StorePath) -> bool {
    super::sweep::delete_narinfo(&f.service, &f.cache, &p.hash_part())
        .await
        .unwrap()
}

async fn stray_narinfo_objects_are_removed(backend: Backend) {
    let f = Fixture::new(backend).await;
    let stray = path("stray");
    std::fs::write(
        f.object(&format!("{}.narinfo", stray.hash_part())),
        b"StorePath: left over\n",
    )
    .unwrap();
    let report = f.gc(&keep_all()).await;
    assert_eq!(report.narinfos_deleted, 1);
    assert!(!f.object(&format!("{}.narinfo", stray.hash_part())).exists());
}

/// Whether a narinfo GET of `path` would serve it now (through the in-memory cache).
async fn get_serves(f: &Fixture, path: &StorePath) -> bool {
    let (_, served) = f
        .service
        .find_narinfo("main", &path.hash_part())
        .await
        .unwrap()
        .expect("the cache exists");
    served.is_some()
}

async fn a_collected_path_is_no_longer_served_from_memory(backend: Backend) {
    let f = Fixture::new(backend).await;
    let gone = f.publish("gone", &[]).await;
    f.age_everything().await;
    assert!(get_serves(&f, &gone).await);
    assert!(
        f.service
            .narinfos()
            .get("main", &gone.hash_part())
            .is_some(),
        "the first read keeps the narinfo in memory"
    );
    f.gc(&expire_all()).await;
    assert!(
        f.service.narinfos().is_empty(),
        "the collection forgot what was in memory"
    );
    f.assert_gone("gone").await;
    assert!(!get_serves(&f, &gone).await, "served after its deletion");
}

async fn a_dry_run_keeps_serving_from_memory(backend: Backend) {
    let f = Fixture::new(backend).await;
    let kept = f.publish("kept", &[]).await;
    f.age_everything().await;
    assert!(get_serves(&f, &kept).await);
    collect(&f.service, &f.cache, &expire_all(), true)
        .await
        .unwrap();
    assert!(get_serves(&f, &kept).await);
}

async fn an_upload_after_a_miss_is_served_at_once(backend: Backend) {
    let f = Fixture::new(backend).await;
    let later = path("later");
    assert!(!get_serves(&f, &later).await, "not uploaded yet");
    f.publish("later", &[]).await;
    assert!(
        get_serves(&f, &later).await,
        "a miss must not be remembered"
    );
}

async fn a_path_collected_and_published_again_is_served_as_published(backend: Backend) {
    let f = Fixture::new(backend).await;
    let again = f.publish("again", &[]).await;
    f.age_everything().await;
    assert!(get_serves(&f, &again).await);
    f.gc(&expire_all()).await;
    // The same store path with another NAR (a build that is not reproducible).
    let nar = f.upload_nar("again, rebuilt").await;
    ingest::publish(&f.service, &f.cache, f.narinfo("again", &nar, &[]))
        .await
        .unwrap();
    let (_, served) = f
        .service
        .find_narinfo("main", &again.hash_part())
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(served.unwrap().text.to_vec()).unwrap();
    assert!(
        text.contains(&format!("URL: {}", nar.facts.file_key)),
        "served {text}"
    );
}

kiln_db::both_backends!(
    without_retention_nothing_served_is_deleted,
    expired_paths_go_but_closures_of_kept_paths_stay_whole,
    max_idle_keeps_what_is_read,
    pinned_paths_keep_their_closures_until_unpinned,
    keep_closure_pins_every_path_of_the_closure_by_itself,
    pinning_refuses_paths_not_served_and_pins_nothing,
    unused_nars_and_orphans_wait_for_the_grace_period,
    dry_run_reports_and_deletes_nothing,
    a_narinfo_whose_nar_was_collected_meanwhile_is_refused,
    a_commit_referring_to_a_collected_path_is_refused,
    a_nar_claimed_for_deletion_cannot_be_recorded_until_it_is_deleted,
    a_narinfo_object_of_a_path_published_again_is_written_back,
    stray_narinfo_objects_are_removed,
    a_collected_path_is_no_longer_served_from_memory,
    a_dry_run_keeps_serving_from_memory,
    an_upload_after_a_miss_is_served_at_once,
    a_path_collected_and_published_again_is_served_as_published,
);
