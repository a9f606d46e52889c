//! Where a cache's objects live in the blob store: each cache is a static Nix binary cache under
//! a folder named after it.

use crate::error::CacheError;
use crate::storage::BlobKey;

/// Longest cache name.
pub const MAX_CACHE_NAME_LEN: usize = 64;

/// Checks a cache name: 1 to 64 ASCII letters, digits, `-` or `_`, starting with a letter or
/// digit. Names are URL path segments and blob-store folders, so nothing else is allowed.
pub fn validate_cache_name(name: &str) -> Result<(), CacheError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_CACHE_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(CacheError::BadRequest(format!(
            "invalid cache name {name:?}: use 1 to {MAX_CACHE_NAME_LEN} letters, digits, '-' or '_', starting with a letter or digit"
        )))
    }
}

/// The keys of one cache's objects.
#[derive(Debug, Clone)]
pub struct CacheLayout {
    root: BlobKey,
}

impl CacheLayout {
    /// The layout of the cache `name` (which must be a valid cache name).
    pub fn new(name: &str) -> Result<CacheLayout, CacheError> {
        validate_cache_name(name)?;
        let root = BlobKey::new(name).map_err(|e| CacheError::BadRequest(e.to_string()))?;
        Ok(CacheLayout { root })
    }

    /// The cache's folder.
    pub fn root(&self) -> &BlobKey {
        &self.root
    }

    /// `<cache>/nix-cache-info`.
    pub fn cache_info(&self) -> BlobKey {
        self.root
            .join("nix-cache-info")
            .expect("constant key is valid")
    }

    /// `<cache>/<hash>.narinfo`.
    pub fn narinfo(&self, hash_part: &str) -> Result<BlobKey, CacheError> {
        self.key(&format!("{hash_part}.narinfo"))
    }

    /// `<cache>/<relative>`, for a path relative to the cache root such as a narinfo `URL`
    /// (`nar/<filehash>.nar.zst`) or `log/<drv>`.
    pub fn key(&self, relative: &str) -> Result<BlobKey, CacheError> {
        self.root
            .join(relative)
            .map_err(|e| CacheError::BadRequest(e.to_string()))
    }

    /// A fresh key under `<cache>/tmp/` for staging an upload whose final key is not known yet.
    /// `tmp/` is not part of the Nix layout; nothing there is ever served.
    pub fn staging(&self) -> Result<BlobKey, CacheError> {
        let mut random = [0u8; 16];
        getrandom::getrandom(&mut random)
            .map_err(|e| CacheError::Internal(format!("no randomness: {e}")))?;
        self.key(&format!("tmp/{}", hex::encode(random)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_names_are_plain_segments() {
        for ok in ["main", "team-a", "x_1", "A9"] {
            assert!(validate_cache_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-x",
            "_x",
            "a/b",
            "..",
            "a.b",
            "a b",
            "é",
            &"a".repeat(65),
        ] {
            assert!(validate_cache_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keys_follow_the_binary_cache_layout() {
        let layout = CacheLayout::new("main").unwrap();
        assert_eq!(layout.cache_info().as_str(), "main/nix-cache-info");
        assert_eq!(layout.narinfo("abc").unwrap().as_str(), "main/abc.narinfo");
        assert_eq!(
            layout.key("nar/x.nar.zst").unwrap().as_str(),
            "main/nar/x.nar.zst"
        );
        assert!(layout.key("../other/x").is_err());
        assert!(layout.staging().unwrap().as_str().starts_with("main/tmp/"));
    }
}
