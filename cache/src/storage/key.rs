//! Object keys, validated so that no key can name something outside its store.

use std::fmt;

use super::StoreError;

/// Longest key accepted, in bytes.
const MAX_KEY_LEN: usize = 1024;

/// An object key: `/`-separated segments of ASCII letters, digits and `+-._?=` (the characters
/// of store path names). No segment is empty, `.`, `..` or starts with `.` (the local backend
/// keeps its temporary files under such names), so a key is always a plain relative path.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobKey(String);

impl BlobKey {
    /// Validates `key`.
    pub fn new(key: impl Into<String>) -> Result<BlobKey, StoreError> {
        let key = key.into();
        let invalid = |reason| {
            Err(StoreError::InvalidKey {
                key: key.clone(),
                reason,
            })
        };
        if key.is_empty() {
            return invalid("empty key");
        }
        if key.len() > MAX_KEY_LEN {
            return invalid("longer than 1024 bytes");
        }
        for segment in key.split('/') {
            if segment.is_empty() {
                return invalid("empty segment (leading, trailing or double '/')");
            }
            if segment.starts_with('.') {
                return invalid("segment starting with '.'");
            }
            if !segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(&b))
            {
                return invalid("character outside [A-Za-z0-9+-._?=]");
            }
        }
        Ok(BlobKey(key))
    }

    /// `self/rest`, validating `rest`.
    pub fn join(&self, rest: &str) -> Result<BlobKey, StoreError> {
        BlobKey::new(format!("{}/{rest}", self.0))
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last segment.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The key with `prefix/` removed, if it lies under `prefix`.
    pub fn strip_prefix(&self, prefix: &BlobKey) -> Option<&str> {
        self.0.strip_prefix(prefix.as_str())?.strip_prefix('/')
    }
}

impl fmt::Display for BlobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for BlobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobKey({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_binary_cache_layout() {
        for key in [
            "main/nix-cache-info",
            "main/0a0mdx9ibbspn3f3w1m8fxdw9xy4kibx.narinfo",
            "main/nar/1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3.nar.zst",
            "main/log/7rjj86a15146cq1d3qy068lml7n8ykzm-hello-2.12.1.drv",
            "main/log/7rjj86a15146cq1d3qy068lml7n8ykzm-a+b?=c.drv",
        ] {
            assert_eq!(BlobKey::new(key).unwrap().as_str(), key);
        }
    }

    #[test]
    fn refuses_keys_that_could_escape_or_hide() {
        for key in [
            "", "/abs", "a//b", "a/", "..", "a/../b", "a/./b", "./a", "a/.tmp", "a\\b", "a b",
            "a\0b", "ä", "a/%2e%2e",
        ] {
            assert!(BlobKey::new(key).is_err(), "{key:?} accepted");
        }
        assert!(BlobKey::new("a".repeat(1025)).is_err());
    }

    #[test]
    fn joins_and_strips() {
        let prefix = BlobKey::new("main/nar").unwrap();
        let key = prefix.join("x.nar").unwrap();
        assert_eq!(key.as_str(), "main/nar/x.nar");
        assert_eq!(key.file_name(), "x.nar");
        assert_eq!(
            key.strip_prefix(&BlobKey::new("main").unwrap()),
            Some("nar/x.nar")
        );
        assert_eq!(key.strip_prefix(&BlobKey::new("mai").unwrap()), None);
        assert!(prefix.join("../x").is_err());
    }
}
