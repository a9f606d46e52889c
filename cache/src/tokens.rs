//! Tokens: secrets that grant `read`, `push` or `admin` on named caches.
//!
//! A token is shown once, when created; only its SHA-256 is stored, so a database leak does not
//! leak usable tokens. Clients present a token as the password of HTTP Basic authentication (the
//! user name is ignored: that is what a netrc file gives `nix`) or as a Bearer token.

use std::fmt;
use std::str::FromStr;

use kiln_db::{CacheId, Db, Timestamp, TokenId};
use sha2::{Digest, Sha256};

use crate::error::CacheError;

/// What a token may do on a cache. Each permission includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    /// Substitute from a private cache.
    Read,
    /// Upload paths and logs.
    Push,
    /// Manage the cache.
    Admin,
}

impl Permission {
    /// The name stored and accepted on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Push => "push",
            Permission::Admin => "admin",
        }
    }

    /// Whether holding `self` allows what `needed` allows.
    pub fn includes(self, needed: Permission) -> bool {
        self >= needed
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Permission {
    type Err = CacheError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Permission::Read),
            "push" => Ok(Permission::Push),
            "admin" => Ok(Permission::Admin),
            other => Err(CacheError::BadRequest(format!(
                "unknown permission {other:?}: expected read, push or admin"
            ))),
        }
    }
}

/// Every token starts with this, so that leaked tokens are easy to recognise and scan for.
pub const TOKEN_PREFIX: &str = "kiln_";

/// A token just created: the only moment its secret is known.
#[derive(Debug)]
pub struct NewToken {
    /// Its row.
    pub id: TokenId,
    /// The secret to hand to the client.
    pub secret: String,
}

/// The stored form of a token: lower-case hex SHA-256 of the whole token string.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn generate_secret() -> Result<String, CacheError> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| CacheError::Internal(format!("no randomness for a token: {e}")))?;
    Ok(format!("{TOKEN_PREFIX}{}", hex::encode(bytes)))
}

/// Creates a token granting `scopes` and returns its secret.
pub async fn create_token(
    db: &Db,
    description: &str,
    scopes: &[(CacheId, Permission)],
) -> Result<NewToken, CacheError> {
    let secret = generate_secret()?;
    let mut tx = db
        .pool()
        .begin()
        .await
        .map_err(CacheError::db("creating a token"))?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO tokens (token_hash, description, created_at) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(hash_token(&secret))
    .bind(description)
    .bind(Timestamp::now().millis())
    .fetch_one(&mut *tx)
    .await
    .map_err(CacheError::db("creating a token"))?;
    for (cache, permission) in scopes {
        sqlx::query(
            "INSERT INTO token_scopes (token_id, cache_id, permission) VALUES ($1, $2, $3)",
        )
        .bind(id)
        .bind(cache.get())
        .bind(permission.as_str())
        .execute(&mut *tx)
        .await
        .map_err(CacheError::db("granting a token's scope"))?;
    }
    tx.commit()
        .await
        .map_err(CacheError::db("creating a token"))?;
    Ok(NewToken {
        id: TokenId(id),
        secret,
    })
}

/// Revokes the tokens whose description is exactly `description`, then creates a new one with
/// `scopes`: for a process's own internal token (e.g. `kiln up`'s workers pushing to its
/// cache), which is made anew at every start and never leaves the process.
pub async fn replace_internal(
    db: &Db,
    description: &str,
    scopes: &[(CacheId, Permission)],
) -> Result<NewToken, CacheError> {
    sqlx::query("UPDATE tokens SET revoked_at = $2 WHERE description = $1 AND revoked_at IS NULL")
        .bind(description)
        .bind(Timestamp::now().millis())
        .execute(db.pool())
        .await
        .map_err(CacheError::db("revoking an internal token"))?;
    create_token(db, description, scopes).await
}

/// What `token` may do on `cache`: `Err(InvalidToken)` if the token is unknown or revoked,
/// `Ok(None)` if it grants nothing there.
pub async fn permission_on(
    db: &Db,
    token: &str,
    cache: CacheId,
) -> Result<Option<Permission>, CacheError> {
    let row: Option<(i64, Option<String>)> = sqlx::query_as(
        "SELECT t.id, s.permission FROM tokens t \
         LEFT JOIN token_scopes s ON s.token_id = t.id AND s.cache_id = $2 \
         WHERE t.token_hash = $1 AND t.revoked_at IS NULL",
    )
    .bind(hash_token(token))
    .bind(cache.get())
    .fetch_optional(db.pool())
    .await
    .map_err(CacheError::db("checking a token"))?;
    match row {
        None => Err(CacheError::InvalidToken),
        Some((_, None)) => Ok(None),
        Some((_, Some(permission))) => permission.parse().map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caches::{self, NewCache};
    use crate::storage::LocalStore;
    use kiln_db::testing::{Backend, TestDb};

    async fn cache(db: &TestDb, name: &str) -> CacheId {
        let store = LocalStore::open(db.dir().join("blobs")).await.unwrap();
        let new = NewCache {
            name: name.to_owned(),
            public: false,
            priority: 30,
        };
        caches::ensure(db, &store, &new, "test").await.unwrap().0.id
    }

    async fn a_token_grants_its_scopes_and_nothing_else(backend: Backend) {
        let db = TestDb::migrated(backend).await;
        let (main, other) = (cache(&db, "main").await, cache(&db, "other").await);
        let token = create_token(&db, "ci", &[(main, Permission::Push)])
            .await
            .unwrap();
        assert_eq!(
            permission_on(&db, &token.secret, main).await.unwrap(),
            Some(Permission::Push)
        );
        assert_eq!(
            permission_on(&db, &token.secret, other).await.unwrap(),
            None
        );
        assert!(matches!(
            permission_on(&db, "kiln_unknown", main).await,
            Err(CacheError::InvalidToken)
        ));
    }

    async fn replacing_an_internal_token_revokes_the_old_one(backend: Backend) {
        let db = TestDb::migrated(backend).await;
        let main = cache(&db, "main").await;
        let scopes = [(main, Permission::Push)];
        let old = replace_internal(&db, "workers", &scopes).await.unwrap();
        let kept = create_token(&db, "someone else", &scopes).await.unwrap();
        let new = replace_internal(&db, "workers", &scopes).await.unwrap();
        assert!(matches!(
            permission_on(&db, &old.secret, main).await,
            Err(CacheError::InvalidToken)
        ));
        for token in [&new, &kept] {
            assert_eq!(
                permission_on(&db, &token.secret, main).await.unwrap(),
                Some(Permission::Push)
            );
        }
    }

    kiln_db::both_backends!(
        a_token_grants_its_scopes_and_nothing_else,
        replacing_an_internal_token_revokes_the_old_one,
    );

    #[test]
    fn permissions_include_the_weaker_ones() {
        assert!(Permission::Admin.includes(Permission::Push));
        assert!(Permission::Push.includes(Permission::Read));
        assert!(!Permission::Read.includes(Permission::Push));
        assert!(!Permission::Push.includes(Permission::Admin));
        assert_eq!("push".parse::<Permission>().unwrap(), Permission::Push);
        assert!(
            "write"
                .parse::<Permission>()
                .unwrap_err()
                .to_string()
                .contains("write")
        );
    }

    #[test]
    fn secrets_are_prefixed_random_and_stored_hashed() {
        let a = generate_secret().unwrap();
        let b = generate_secret().unwrap();
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 64);
        assert_ne!(a, b);
        assert_eq!(hash_token("kiln_x"), hex::encode(Sha256::digest(b"kiln_x")));
        assert_ne!(hash_token(&a), a);
    }
}
