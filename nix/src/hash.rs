//! Hashes in Nix's textual forms: `algo:nix32`, base16, base64 and SRI (`algo-base64`).

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::Digest;
use thiserror::Error;

use crate::base32;

/// A hash algorithm Nix knows by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HashAlgo {
    Md5,
    Sha1,
    Sha256,
    Sha512,
}

impl HashAlgo {
    /// Digest size in bytes.
    pub const fn size(self) -> usize {
        match self {
            HashAlgo::Md5 => 16,
            HashAlgo::Sha1 => 20,
            HashAlgo::Sha256 => 32,
            HashAlgo::Sha512 => 64,
        }
    }

    /// The name Nix uses (`sha256`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            HashAlgo::Md5 => "md5",
            HashAlgo::Sha1 => "sha1",
            HashAlgo::Sha256 => "sha256",
            HashAlgo::Sha512 => "sha512",
        }
    }
}

impl fmt::Display for HashAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for HashAlgo {
    type Err = HashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "md5" => Ok(HashAlgo::Md5),
            "sha1" => Ok(HashAlgo::Sha1),
            "sha256" => Ok(HashAlgo::Sha256),
            "sha512" => Ok(HashAlgo::Sha512),
            other => Err(HashError::UnknownAlgo(other.to_owned())),
        }
    }
}

/// Why a hash string could not be parsed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HashError {
    #[error("unknown hash algorithm {0:?}")]
    UnknownAlgo(String),
    #[error("hash {0:?} names no algorithm (expected `algo:digest` or `algo-base64`)")]
    MissingAlgo(String),
    #[error(
        "{algo} hash has length {len}, which is not the length of its base16, nixbase32 or base64 form"
    )]
    BadLength { algo: HashAlgo, len: usize },
    #[error("invalid base16 digest: {0}")]
    Base16(String),
    #[error("invalid nixbase32 digest: {0}")]
    Base32(#[from] base32::Base32Error),
    #[error("invalid base64 digest: {0}")]
    Base64(String),
    #[error("expected a {expected} hash, got {actual}")]
    WrongAlgo {
        expected: HashAlgo,
        actual: HashAlgo,
    },
}

/// A digest together with the algorithm that produced it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash {
    algo: HashAlgo,
    bytes: Vec<u8>,
}

impl Hash {
    /// Wraps raw digest bytes; `None` if their length does not match the algorithm.
    pub fn new(algo: HashAlgo, bytes: &[u8]) -> Option<Hash> {
        (bytes.len() == algo.size()).then(|| Hash {
            algo,
            bytes: bytes.to_vec(),
        })
    }

    /// The SHA-256 of `data`.
    pub fn sha256(data: impl AsRef<[u8]>) -> Hash {
        Hash {
            algo: HashAlgo::Sha256,
            bytes: sha2::Sha256::digest(data.as_ref()).to_vec(),
        }
    }

    /// Wraps a finished SHA-256 digest.
    pub fn from_sha256(digest: [u8; 32]) -> Hash {
        Hash {
            algo: HashAlgo::Sha256,
            bytes: digest.to_vec(),
        }
    }

    pub fn algo(&self) -> HashAlgo {
        self.algo
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Lower-case hexadecimal digest, without the algorithm.
    pub fn to_base16(&self) -> String {
        hex::encode(&self.bytes)
    }

    /// nixbase32 digest, without the algorithm.
    pub fn to_nix32(&self) -> String {
        base32::encode(&self.bytes)
    }

    /// Padded standard base64 digest, without the algorithm.
    pub fn to_base64(&self) -> String {
        BASE64.encode(&self.bytes)
    }

    /// Subresource-integrity form: `sha256-<base64>`.
    pub fn to_sri(&self) -> String {
        format!("{}-{}", self.algo, self.to_base64())
    }

    /// `algo:nix32`, the form Nix prints in narinfos and `nix hash path`.
    pub fn to_typed_nix32(&self) -> String {
        format!("{}:{}", self.algo, self.to_nix32())
    }

    /// `algo:base16`, the form used inside store path fingerprints.
    pub fn to_typed_base16(&self) -> String {
        format!("{}:{}", self.algo, self.to_base16())
    }

    /// Parses `algo:digest` or SRI `algo-base64`, the digest in base16, nixbase32 or base64.
    pub fn parse_typed(s: &str) -> Result<Hash, HashError> {
        if let Some((algo, digest)) = s.split_once(':') {
            return Hash::parse_digest(algo.parse()?, digest);
        }
        if let Some((algo, digest)) = s.split_once('-') {
            let algo: HashAlgo = algo.parse()?;
            return Hash::parse_base64(algo, digest);
        }
        Err(HashError::MissingAlgo(s.to_owned()))
    }

    /// Parses a hash that must be of `algo`, with or without an `algo:` / `algo-` prefix.
    pub fn parse_as(algo: HashAlgo, s: &str) -> Result<Hash, HashError> {
        let prefixed = s.contains(':') || s.starts_with(&format!("{algo}-"));
        let hash = if prefixed {
            Hash::parse_typed(s)?
        } else {
            Hash::parse_digest(algo, s)?
        };
        if hash.algo != algo {
            return Err(HashError::WrongAlgo {
                expected: algo,
                actual: hash.algo,
            });
        }
        Ok(hash)
    }

    /// Parses a bare digest of a known algorithm, choosing the encoding by its length.
    pub fn parse_digest(algo: HashAlgo, digest: &str) -> Result<Hash, HashError> {
        let size = algo.size();
        let bytes = if digest.len() == size * 2 {
            hex::decode(digest).map_err(|e| HashError::Base16(e.to_string()))?
        } else if digest.len() == base32::encoded_len(size) {
            base32::decode(digest, size)?
        } else if digest.len() == size.div_ceil(3) * 4 {
            return Hash::parse_base64(algo, digest);
        } else {
            return Err(HashError::BadLength {
                algo,
                len: digest.len(),
            });
        };
        Ok(Hash { algo, bytes })
    }

    fn parse_base64(algo: HashAlgo, digest: &str) -> Result<Hash, HashError> {
        let bytes = BASE64
            .decode(digest)
            .map_err(|e| HashError::Base64(e.to_string()))?;
        if bytes.len() != algo.size() {
            return Err(HashError::BadLength {
                algo,
                len: digest.len(),
            });
        }
        Ok(Hash { algo, bytes })
    }
}

/// `algo:nix32`.
impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algo, self.to_nix32())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Hash {
    type Err = HashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Hash::parse_typed(s)
    }
}

/// A SHA-256 hasher that also counts the bytes it has seen: what NAR and file hashes need.
#[derive(Default, Clone)]
pub struct Sha256Counter {
    hasher: sha2::Sha256,
    len: u64,
}

impl Sha256Counter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.len += data.len() as u64;
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digest and the number of bytes hashed.
    pub fn finish(self) -> (Hash, u64) {
        (Hash::from_sha256(self.hasher.finalize().into()), self.len)
    }
}

impl std::io::Write for Sha256Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const EMPTY_NIX32: &str = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
    const EMPTY_B64: &str = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";

    #[test]
    fn prints_all_forms() {
        let h = Hash::sha256(b"");
        assert_eq!(h.to_base16(), EMPTY_HEX);
        assert_eq!(h.to_string(), format!("sha256:{EMPTY_NIX32}"));
        assert_eq!(h.to_sri(), format!("sha256-{EMPTY_B64}"));
    }

    #[test]
    fn parses_all_forms() {
        let h = Hash::sha256(b"");
        for s in [
            format!("sha256:{EMPTY_HEX}"),
            format!("sha256:{EMPTY_NIX32}"),
            format!("sha256:{EMPTY_B64}"),
            format!("sha256-{EMPTY_B64}"),
        ] {
            assert_eq!(s.parse::<Hash>().unwrap(), h, "{s}");
        }
        assert_eq!(Hash::parse_as(HashAlgo::Sha256, EMPTY_NIX32).unwrap(), h);
    }

    #[test]
    fn refuses_bad_hashes() {
        assert!(matches!(
            "sha257:abc".parse::<Hash>(),
            Err(HashError::UnknownAlgo(_))
        ));
        assert!(matches!(
            "abc".parse::<Hash>(),
            Err(HashError::MissingAlgo(_))
        ));
        assert!(matches!(
            "sha256:abc".parse::<Hash>(),
            Err(HashError::BadLength { .. })
        ));
        assert!(matches!(
            Hash::parse_as(HashAlgo::Sha1, &format!("sha256:{EMPTY_HEX}")),
            Err(HashError::WrongAlgo { .. })
        ));
    }
}
