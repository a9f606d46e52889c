//! The migration runner: migrations are compiled into the binary, one SQL file per version and
//! dialect, and applied with sqlx's migrator (which records them in `_sqlx_migrations`).

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;

use sqlx::AnyPool;
use sqlx::error::BoxDynError;
use sqlx::migrate::{MigrateError, Migration, MigrationSource, MigrationType, Migrator};

use crate::Dialect;

/// One schema version: its description and its SQL for each dialect.
struct Version {
    version: i64,
    description: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
}

/// Every migration, oldest first. Append only: applied migrations are checksummed.
const VERSIONS: &[Version] = &[
    Version {
        version: 1,
        description: "binary cache index",
        sqlite: include_str!("../../migrations/sqlite/0001_cache.sql"),
        postgres: include_str!("../../migrations/postgres/0001_cache.sql"),
    },
    Version {
        version: 2,
        description: "binary cache garbage collection",
        sqlite: include_str!("../../migrations/sqlite/0002_gc.sql"),
        postgres: include_str!("../../migrations/postgres/0002_gc.sql"),
    },
    Version {
        version: 3,
        description: "build farm",
        sqlite: include_str!("../../migrations/sqlite/0003_farm.sql"),
        postgres: include_str!("../../migrations/postgres/0003_farm.sql"),
    },
];

/// The embedded migrations of one dialect, as a sqlx migration source.
#[derive(Debug)]
struct Embedded(Dialect);

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(
        self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send + 's>> {
        let migrations = VERSIONS
            .iter()
            .map(|v| {
                let sql = match self.0 {
                    Dialect::Sqlite => v.sqlite,
                    Dialect::Postgres => v.postgres,
                };
                Migration::new(
                    v.version,
                    Cow::Borrowed(v.description),
                    MigrationType::Simple,
                    Cow::Borrowed(sql),
                    false,
                )
            })
            .collect();
        Box::pin(std::future::ready(Ok(migrations)))
    }
}

/// Applies the pending migrations of `dialect`.
pub(crate) async fn run(pool: &AnyPool, dialect: Dialect) -> Result<(), MigrateError> {
    let migrator = Migrator::new(Embedded(dialect)).await?;
    migrator.run(pool).await
}
