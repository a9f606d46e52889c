//! What an upload announces and what the cache reports back.

use kiln_nix::hash::{Hash, HashAlgo};
use kiln_nix::narinfo::ContentAddress;
use kiln_nix::{StoreDir, StorePath};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::wire::{
    HEADER_CA, HEADER_DERIVER, HEADER_NAR_HASH, HEADER_NAR_SIZE, HEADER_REFERENCES,
    HEADER_STORE_PATH, UploadView,
};

/// The narinfo facts an upload carries besides the NAR itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRequest {
    /// The path uploaded.
    pub store_path: StorePath,
    /// Its references (it may name itself); each other one must be in the cache already.
    pub references: Vec<StorePath>,
    /// The derivation that built it, if known.
    pub deriver: Option<StorePath>,
    /// Its content address, for content-addressed paths.
    pub ca: Option<ContentAddress>,
    /// The NAR hash the caller expects; the server refuses a NAR that hashes otherwise.
    pub nar_hash: Option<Hash>,
    /// The NAR size the caller expects, in bytes; checked like `nar_hash`.
    pub nar_size: Option<u64>,
}

impl UploadRequest {
    /// An upload of `store_path` with no references and nothing else known.
    pub fn new(store_path: StorePath) -> UploadRequest {
        UploadRequest {
            store_path,
            references: Vec::new(),
            deriver: None,
            ca: None,
            nar_hash: None,
            nar_size: None,
        }
    }

    pub(super) fn headers(&self) -> Result<HeaderMap, String> {
        let dir = StoreDir::default();
        let mut headers = HeaderMap::new();
        let mut put = |name: &'static str, value: String| -> Result<(), String> {
            let value = HeaderValue::try_from(value.as_str())
                .map_err(|_| format!("{name} {value:?} cannot be sent as a header"))?;
            headers.insert(HeaderName::from_static(name), value);
            Ok(())
        };
        put(HEADER_STORE_PATH, dir.display(&self.store_path))?;
        if !self.references.is_empty() {
            let refs: Vec<String> = self.references.iter().map(|r| r.to_string()).collect();
            put(HEADER_REFERENCES, refs.join(" "))?;
        }
        if let Some(deriver) = &self.deriver {
            put(HEADER_DERIVER, deriver.to_string())?;
        }
        if let Some(ca) = &self.ca {
            put(HEADER_CA, ca.to_string())?;
        }
        if let Some(hash) = &self.nar_hash {
            put(HEADER_NAR_HASH, hash.to_typed_nix32())?;
        }
        if let Some(size) = self.nar_size {
            put(HEADER_NAR_SIZE, size.to_string())?;
        }
        Ok(headers)
    }
}

/// What the cache reported after an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadOutcome {
    /// The path.
    pub store_path: StorePath,
    /// Whether the cache served the path already, so nothing was stored.
    pub already_present: bool,
    /// The NAR's hash as the server measured it (or recorded it earlier).
    pub nar_hash: Hash,
    /// The NAR's size in bytes.
    pub nar_size: u64,
    /// Where the NAR file is, relative to the cache URL.
    pub url: String,
    /// Size of the stored (compressed) NAR file in bytes.
    pub file_size: u64,
}

impl UploadOutcome {
    pub(super) fn from_view(view: UploadView) -> Result<UploadOutcome, String> {
        Ok(UploadOutcome {
            store_path: StorePath::parse(&view.store_path)
                .map_err(|e| format!("store_path: {e}"))?,
            already_present: view.already_present,
            nar_hash: Hash::parse_as(HashAlgo::Sha256, &view.nar_hash)
                .map_err(|e| format!("nar_hash: {e}"))?,
            nar_size: view.nar_size,
            url: view.url,
            file_size: view.file_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_headers_carry_the_narinfo_facts() {
        let path = StorePath::parse("/nix/store/0a0mdx9ibbspn3f3w1m8fxdw9xy4kibx-hello").unwrap();
        let dep = StorePath::parse("/nix/store/1a0mdx9ibbspn3f3w1m8fxdw9xy4kibx-dep").unwrap();
        let mut request = UploadRequest::new(path.clone());
        request.references = vec![dep.clone(), path.clone()];
        request.nar_size = Some(120);
        request.nar_hash = Some(Hash::sha256(b"x"));
        let headers = request.headers().unwrap();
        assert_eq!(
            headers[HEADER_STORE_PATH],
            "/nix/store/0a0mdx9ibbspn3f3w1m8fxdw9xy4kibx-hello"
        );
        assert_eq!(headers[HEADER_REFERENCES], format!("{dep} {path}").as_str());
        assert_eq!(headers[HEADER_NAR_SIZE], "120");
        assert_eq!(
            headers[HEADER_NAR_HASH],
            Hash::sha256(b"x").to_typed_nix32().as_str()
        );
        assert!(!headers.contains_key(HEADER_DERIVER));
        assert!(!headers.contains_key(HEADER_CA));
    }
}
