//! Fresh, isolated databases for tests, on SQLite and on PostgreSQL.
//!
//! Every test that touches the database runs on both backends: write it as
//! `async fn name(backend: Backend)` and list it in [`both_backends!`](crate::both_backends),
//! which makes the tests `name::sqlite` and `name::postgres`. SQLite gets a file in a temporary
//! directory; PostgreSQL gets a new schema with a random name in the database named by
//! `KILN_TEST_POSTGRES_URL`, dropped when the [`TestDb`] is. Without that variable the PostgreSQL
//! tests fail, so that a green run always means both backends passed.

use std::ops::Deref;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::Db;

/// The variable naming the PostgreSQL database tests may create and drop schemas in.
pub const POSTGRES_URL_ENV: &str = "KILN_TEST_POSTGRES_URL";

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database of its own for one test, with a temporary directory for the test's other files.
/// Dropping it drops the database (PostgreSQL: the schema and every connection to it).
pub struct TestDb {
    db: Db,
    /// The PostgreSQL schema and the URL to drop it through; `None` on SQLite.
    schema: Option<(String, String)>,
    dir: tempfile::TempDir,
}

impl TestDb {
    /// An empty database on `backend`.
    pub async fn new(backend: Backend) -> TestDb {
        let dir = tempfile::tempdir().expect("temporary directory");
        match backend {
            Backend::Sqlite => {
                let url = format!("sqlite://{}", dir.path().join("kiln.sqlite").display());
                let db = Db::connect(&url).await.expect("open the SQLite database");
                TestDb {
                    db,
                    schema: None,
                    dir,
                }
            }
            Backend::Postgres => {
                let admin_url = postgres_url();
                let schema = unique_schema_name();
                let admin = Db::connect(&admin_url)
                    .await
                    .unwrap_or_else(|e| panic!("cannot reach {POSTGRES_URL_ENV}: {e}"));
                sqlx::query(&format!("CREATE SCHEMA {schema}"))
                    .execute(admin.pool())
                    .await
                    .unwrap_or_else(|e| panic!("cannot create schema {schema}: {e}"));
                admin.close().await;
                // Every connection of the test's pool works in its schema, and carries the
                // schema's name so that the cleanup can end the ones the test left open.
                let url = with_params(
                    &admin_url,
                    &format!("application_name={schema}&options=-c%20search_path%3D{schema}"),
                );
                let db = Db::connect(&url)
                    .await
                    .unwrap_or_else(|e| panic!("cannot open schema {schema}: {e}"));
                TestDb {
                    db,
                    schema: Some((schema, admin_url)),
                    dir,
                }
            }
        }
    }

    /// A database on `backend` with every migration applied.
    pub async fn migrated(backend: Backend) -> TestDb {
        let db = TestDb::new(backend).await;
        db.migrate().await.expect("apply the migrations");
        db
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// A temporary directory for the test's other files, removed with the database.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Deref for TestDb {
    type Target = Db;

    fn deref(&self) -> &Db {
        &self.db
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((schema, admin_url)) = self.schema.take() else {
            return;
        };
        // Drop runs inside the test's runtime, which must not be blocked on; a thread with a
        // runtime of its own does the cleanup, and the test waits for it.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime
                .block_on(async {
                    let admin = Db::connect(&admin_url).await?;
                    // Connections the test still holds (a pool in a spawned task) would keep the
                    // schema's tables locked.
                    sqlx::query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE application_name = $1 AND pid <> pg_backend_pid()",
                    )
                    .bind(&schema)
                    .execute(admin.pool())
                    .await?;
                    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                        .execute(admin.pool())
                        .await?;
                    admin.close().await;
                    Ok::<_, crate::DbError>(())
                })
                .map_err(|e| format!("could not drop test schema {schema}: {e}"))
        });
        if let Ok(Err(message)) = cleanup.join() {
            // A leftover schema is harmless to other tests; the test's outcome is what matters.
            eprintln!("{message}");
        }
    }
}

/// The URL in `KILN_TEST_POSTGRES_URL`, or a panic saying how to get one.
pub fn postgres_url() -> String {
    match std::env::var(POSTGRES_URL_ENV) {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "this test runs on PostgreSQL: set {POSTGRES_URL_ENV} to a database it may create \
             schemas in, e.g. via scripts/services up DIR (then source DIR/env); scripts/test \
             does this"
        ),
    }
}

/// A schema name no other test, here or in another process, uses.
fn unique_schema_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "kiln_test_{}_{}_{}",
        std::process::id(),
        nanos,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// `url` with the query parameters `params` (`a=b&c=d`) added.
fn with_params(url: &str, params: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{params}")
}

/// Makes each listed `async fn name(backend: Backend)` into two tests, `name::sqlite` and
/// `name::postgres`. A name may be preceded by the test attribute to use instead of
/// `#[tokio::test]`, such as `#[tokio::test(flavor = "multi_thread")]`.
///
/// ```ignore
/// async fn tokens_are_found_by_hash(backend: Backend) { let db = TestDb::migrated(backend).await; … }
/// kiln_db::both_backends!(tokens_are_found_by_hash, #[tokio::test(flavor = "multi_thread")] races);
/// ```
#[macro_export]
macro_rules! both_backends {
    ($( $(#[$attr:meta])* $name:ident ),+ $(,)?) => {
        $( $crate::both_backends!(@one [$(#[$attr])*] $name); )+
    };
    (@one [] $name:ident) => {
        $crate::both_backends!(@one [#[::tokio::test]] $name);
    };
    (@one [$(#[$attr:meta])+] $name:ident) => {
        mod $name {
            $(#[$attr])+
            async fn sqlite() {
                super::$name($crate::testing::Backend::Sqlite).await
            }

            $(#[$attr])+
            async fn postgres() {
                super::$name($crate::testing::Backend::Postgres).await
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn migrations_apply_once_and_create_the_schema(backend: Backend) {
        let db = TestDb::new(backend).await;
        db.migrate().await.unwrap();
        // A second run applies nothing and does not fail.
        db.migrate().await.unwrap();
        let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!(applied, 3);
        let caches: i64 = sqlx::query_scalar("SELECT count(*) FROM caches")
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!(caches, 0);
    }

    async fn each_test_database_is_isolated(backend: Backend) {
        let a = TestDb::migrated(backend).await;
        let b = TestDb::migrated(backend).await;
        sqlx::query(
            "INSERT INTO caches (name, is_public, priority, signing_key, created_at) \
             VALUES ('a', 1, 30, 'k', 0)",
        )
        .execute(a.pool())
        .await
        .unwrap();
        let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM caches")
            .fetch_one(b.pool())
            .await
            .unwrap();
        assert_eq!(seen, 0);
    }

    crate::both_backends!(
        migrations_apply_once_and_create_the_schema,
        each_test_database_is_isolated,
    );

    #[tokio::test]
    async fn a_dropped_postgres_test_database_leaves_no_schema() {
        let name = {
            let db = TestDb::migrated(Backend::Postgres).await;
            let name: String = sqlx::query_scalar("SELECT current_schema()::text")
                .fetch_one(db.pool())
                .await
                .unwrap();
            assert!(name.starts_with("kiln_test_"), "{name}");
            name
        };
        let admin = Db::connect(&postgres_url()).await.unwrap();
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = $1",
        )
        .bind(&name)
        .fetch_one(admin.pool())
        .await
        .unwrap();
        assert_eq!(left, 0);
    }

    #[test]
    fn parameters_are_appended_to_any_url() {
        assert_eq!(with_params("postgres://h/db", "a=b"), "postgres://h/db?a=b");
        assert_eq!(
            with_params("postgres://h/db?sslmode=disable", "a=b"),
            "postgres://h/db?sslmode=disable&a=b"
        );
    }
}
