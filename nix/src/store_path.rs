//! Store paths: parsing, validation, and the hashes Nix uses to name them.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::base32;
use crate::hash::Hash;

/// Length of the hash part of a store path's base name, in nixbase32 characters.
pub const HASH_CHARS: usize = 32;
/// Length of the hash part in bytes.
pub const HASH_BYTES: usize = 20;
/// Longest name Nix accepts after the hash part.
pub const MAX_NAME_LEN: usize = 211;

/// Why a string is not a valid store path.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StorePathError {
    #[error("path {path:?} is not in the store {store_dir:?}")]
    NotInStore { path: String, store_dir: String },
    #[error("store path base name {0:?} is too short to hold a hash and a name")]
    TooShort(String),
    #[error("store path base name {0:?} has an invalid hash part")]
    BadHash(String),
    #[error("store path base name {0:?} has no '-' after its hash part")]
    NoDash(String),
    #[error("store path {0:?} has an empty name")]
    EmptyName(String),
    #[error("store path {0:?} has a name longer than {MAX_NAME_LEN} characters")]
    NameTooLong(String),
    #[error("store path {path:?} has the invalid character {ch:?} in its name")]
    BadNameChar { path: String, ch: char },
}

/// The directory the store lives in, `/nix/store` unless configured otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoreDir(String);

impl StoreDir {
    /// A store directory; trailing slashes are dropped.
    pub fn new(dir: impl Into<String>) -> StoreDir {
        let mut dir = dir.into();
        while dir.len() > 1 && dir.ends_with('/') {
            dir.pop();
        }
        StoreDir(dir)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses an absolute path that must lie directly in this store (no sub-path).
    pub fn parse_path(&self, path: &str) -> Result<StorePath, StorePathError> {
        let base = path
            .strip_prefix(self.0.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
            .filter(|base| !base.contains('/'))
            .ok_or_else(|| StorePathError::NotInStore {
                path: path.to_owned(),
                store_dir: self.0.clone(),
            })?;
        StorePath::from_base_name(base)
    }

    /// The absolute path of `path` in this store.
    pub fn display(&self, path: &StorePath) -> String {
        format!("{}/{}", self.0, path)
    }

    /// Computes a store path the way Nix's `makeStorePath` does: `type` is e.g. `output:out`,
    /// `text:<refs>` or `source:<refs>`, and `inner` the hash it commits to.
    pub fn make_store_path(&self, path_type: &str, inner: &Hash, name: &str) -> StorePath {
        let s = format!("{path_type}:{}:{}:{name}", inner.to_typed_base16(), self.0);
        let digest = Hash::sha256(s.as_bytes());
        StorePath {
            digest: compress_hash(digest.as_bytes()),
            name: name.to_owned(),
        }
    }
}

impl Default for StoreDir {
    fn default() -> Self {
        StoreDir("/nix/store".to_owned())
    }
}

impl fmt::Display for StoreDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Folds a digest to 20 bytes by XOR, as Nix does for store path hashes.
pub fn compress_hash(digest: &[u8]) -> [u8; HASH_BYTES] {
    let mut out = [0u8; HASH_BYTES];
    for (i, b) in digest.iter().enumerate() {
        out[i % HASH_BYTES] ^= b;
    }
    out
}

/// A store path without its store directory: a 20-byte hash and a name.
///
/// `Display` prints the base name (`<nix32 hash>-<name>`); use [`StoreDir::display`] for the full
/// path. Ordering is by base name, which is how Nix sorts references.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StorePath {
    digest: [u8; HASH_BYTES],
    name: String,
}

impl StorePath {
    /// Parses a base name such as `7h3...-hello-2.12`.
    pub fn from_base_name(base: &str) -> Result<StorePath, StorePathError> {
        if base.len() < HASH_CHARS + 2 {
            return Err(StorePathError::TooShort(base.to_owned()));
        }
        let (hash_part, rest) = base.split_at(HASH_CHARS);
        let digest = base32::decode(hash_part, HASH_BYTES)
            .map_err(|_| StorePathError::BadHash(base.to_owned()))?;
        let name = rest
            .strip_prefix('-')
            .ok_or_else(|| StorePathError::NoDash(base.to_owned()))?;
        validate_name(base, name)?;
        Ok(StorePath {
            digest: digest.try_into().expect("decoded to 20 bytes"),
            name: name.to_owned(),
        })
    }

    /// Parses an absolute path in the default store, `/nix/store`.
    pub fn parse(path: &str) -> Result<StorePath, StorePathError> {
        StoreDir::default().parse_path(path)
    }

    /// The 20-byte hash part.
    pub fn digest(&self) -> &[u8; HASH_BYTES] {
        &self.digest
    }

    /// The hash part in nixbase32, as in the base name and in `<hash>.narinfo`.
    pub fn hash_part(&self) -> String {
        base32::encode(&self.digest)
    }

    /// The name after the hash part.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this names a derivation file (`.drv`).
    pub fn is_derivation(&self) -> bool {
        self.name.ends_with(".drv")
    }

    /// The absolute path in the default store.
    pub fn to_absolute(&self) -> String {
        StoreDir::default().display(self)
    }
}

/// Checks a store path name against the characters and length Nix allows.
pub fn validate_name(path: &str, name: &str) -> Result<(), StorePathError> {
    if name.is_empty() {
        return Err(StorePathError::EmptyName(path.to_owned()));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(StorePathError::NameTooLong(path.to_owned()));
    }
    if let Some(ch) = name.chars().find(|&c| !is_name_char(c)) {
        return Err(StorePathError::BadNameChar {
            path: path.to_owned(),
            ch,
        });
    }
    Ok(())
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.' | '_' | '?' | '=')
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.hash_part(), self.name)
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePath({self})")
    }
}

impl FromStr for StorePath {
    type Err = StorePathError;

    /// Accepts an absolute path in `/nix/store` or a bare base name.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.starts_with('/') {
            StorePath::parse(s)
        } else {
            StorePath::from_base_name(s)
        }
    }
}

impl PartialOrd for StorePath {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for StorePath {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.to_string().cmp(&other.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "7rjj86a15146cq1d3qy068lml7n8ykzm-hello-2.12.1";

    #[test]
    fn parses_and_prints() {
        let p: StorePath = format!("/nix/store/{BASE}").parse().unwrap();
        assert_eq!(p.name(), "hello-2.12.1");
        assert_eq!(p.hash_part(), "7rjj86a15146cq1d3qy068lml7n8ykzm");
        assert_eq!(p.to_string(), BASE);
        assert_eq!(p.to_absolute(), format!("/nix/store/{BASE}"));
    }

    #[test]
    fn refuses_invalid_paths() {
        assert!(matches!(
            StorePath::parse("/tmp/x"),
            Err(StorePathError::NotInStore { .. })
        ));
        assert!(matches!(
            StorePath::parse(&format!("/nix/store/{BASE}/bin")),
            Err(StorePathError::NotInStore { .. })
        ));
        assert!(matches!(
            StorePath::from_base_name("abc"),
            Err(StorePathError::TooShort(_))
        ));
        assert!(matches!(
            StorePath::from_base_name("eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x"),
            Err(StorePathError::BadHash(_))
        ));
        assert!(matches!(
            StorePath::from_base_name("7rjj86a15146cq1d3qy068lml7n8ykzm_x"),
            Err(StorePathError::NoDash(_))
        ));
        assert!(matches!(
            StorePath::from_base_name("7rjj86a15146cq1d3qy068lml7n8ykzm-a/b"),
            Err(StorePathError::BadNameChar { ch: '/', .. })
        ));
        let long = format!("7rjj86a15146cq1d3qy068lml7n8ykzm-{}", "a".repeat(212));
        assert!(matches!(
            StorePath::from_base_name(&long),
            Err(StorePathError::NameTooLong(_))
        ));
    }
}
