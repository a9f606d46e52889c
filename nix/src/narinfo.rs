//! narinfo files: what a binary cache says about one store path, and its signatures.
//!
//! The format is Nix 2.8's (`src/libstore/nar-info.cc`): `Key: value` lines, each ending in `\n`,
//! printed in the order StorePath, URL, Compression, FileHash, FileSize, NarHash, NarSize,
//! References (always present, even empty), Deriver, System, Sig (one per signature, sorted), CA.
//! Printing a narinfo Nix wrote gives back the same bytes.
//!
//! What Kiln accepts, compared with Nix 2.8:
//! - Unknown keys are ignored and dropped, as Nix does (it reads only the keys it knows), so a newer
//!   cache's extra fields do not break clients. Their key must still look like a key (letters,
//!   digits, `-`, `_`).
//! - A missing or empty `Compression` means `bzip2`, `Deriver: unknown-deriver` means no deriver, an
//!   empty `CA` means none, hashes may be in any of Nix's encodings and repeated references or
//!   signatures collapse into one, runs of spaces between references are one separator — all as
//!   Nix does. Re-printing normalises these.
//! - `System` is read and printed (after Deriver) because Nix 2.8 does; current Nix dropped it.
//! - Stricter than Nix: every line must be `Key: value` with exactly that separator, known keys
//!   (except `Sig`) may appear once, `Sig` values must be well-formed signatures, text values must
//!   not contain whitespace or control characters, input is capped at [`MAX_NARINFO_LEN`]. Nix
//!   would read some of these differently or fail later.
//! - `FileHash` and `FileSize` are optional as in Nix's parser; when absent they are not printed
//!   (Nix cannot print such a narinfo at all).

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::hash::{Hash, HashAlgo, HashError};
use crate::signing::{PublicKey, SecretKey, Signature, SigningError};
use crate::store_path::{StoreDir, StorePath, StorePathError};

/// Largest narinfo Kiln parses, in bytes. Real ones are under a kilobyte, or tens of kilobytes for
/// paths with thousands of references.
pub const MAX_NARINFO_LEN: usize = 1 << 20;

/// One narinfo file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    /// The store directory `store_path` lives in. Not a line of its own: it is the prefix of the
    /// `StorePath:` line and of the paths in the fingerprint.
    pub store_dir: StoreDir,
    /// `StorePath`: the path this narinfo describes.
    pub store_path: StorePath,
    /// `URL`: where the (possibly compressed) NAR is, relative to the cache root.
    pub url: String,
    /// `Compression` of the file at `url`: `none`, `xz`, `zstd`, `bzip2`, ...
    pub compression: String,
    /// `FileHash`: hash of the file at `url` as stored (after compression).
    pub file_hash: Option<Hash>,
    /// `FileSize`: size of the file at `url`, in bytes.
    pub file_size: Option<u64>,
    /// `NarHash`: hash of the uncompressed NAR; SHA-256 for anything Nix can sign.
    pub nar_hash: Hash,
    /// `NarSize`: size of the uncompressed NAR in bytes; never 0.
    pub nar_size: u64,
    /// `References`: store paths this one refers to (possibly itself), in Nix's order.
    pub references: BTreeSet<StorePath>,
    /// `Deriver`: the `.drv` that built the path, if known.
    pub deriver: Option<StorePath>,
    /// `System`: a platform label some old caches wrote; Nix 2.8 keeps it, nothing uses it.
    pub system: Option<String>,
    /// `Sig`: signatures over [`NarInfo::fingerprint`], sorted as Nix prints them.
    pub sigs: BTreeSet<Signature>,
    /// `CA`: the content address, for content-addressed paths.
    pub ca: Option<ContentAddress>,
}

/// Why a narinfo was refused. Line numbers count from 1.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum NarInfoError {
    /// The input is larger than [`MAX_NARINFO_LEN`].
    #[error("narinfo is {len} bytes, more than the {MAX_NARINFO_LEN} allowed")]
    TooLarge {
        /// Size of the input in bytes.
        len: usize,
    },
    /// A line is not UTF-8.
    #[error("narinfo line {line} is not valid UTF-8")]
    NotUtf8 {
        /// The line.
        line: usize,
    },
    /// The last line is not terminated by `\n` (Nix refuses this too).
    #[error("narinfo line {line} does not end with a newline")]
    NoFinalNewline {
        /// The line.
        line: usize,
    },
    /// A line is empty.
    #[error("narinfo line {line} is empty")]
    EmptyLine {
        /// The line.
        line: usize,
    },
    /// A line is not `Key: value`.
    #[error("narinfo line {line} is not of the form `Key: value`: {text:?}")]
    NotKeyValue {
        /// The line.
        line: usize,
        /// The start of the line.
        text: String,
    },
    /// A key has characters no narinfo key has.
    #[error("narinfo line {line}: {key:?} is not a valid key")]
    BadKey {
        /// The line.
        line: usize,
        /// The start of the key.
        key: String,
    },
    /// A field that may appear once appears again.
    #[error("narinfo line {line}: duplicate {key} (already on line {first})")]
    Duplicate {
        /// The line of the repetition.
        line: usize,
        /// The repeated key.
        key: &'static str,
        /// The line it first appeared on.
        first: usize,
    },
    /// A field's value is invalid.
    #[error("narinfo line {line}: invalid {key}: {reason}")]
    Field {
        /// The line.
        line: usize,
        /// The field.
        key: &'static str,
        /// What is wrong with the value.
        reason: FieldError,
    },
    /// A required field is absent.
    #[error("narinfo has no {0} line")]
    Missing(&'static str),
}

/// What is wrong with one field's value.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FieldError {
    /// An invalid store path.
    #[error(transparent)]
    StorePath(#[from] StorePathError),
    /// An invalid hash.
    #[error(transparent)]
    Hash(#[from] HashError),
    /// Not a decimal number that fits in 64 bits.
    #[error("{0:?} is not a decimal number below 2^64")]
    Number(String),
    /// `NarSize: 0`, which Nix refuses.
    #[error("the size must not be 0")]
    Zero,
    /// An empty value where one is required.
    #[error("the value is empty")]
    Empty,
    /// Text with whitespace or control characters.
    #[error("{0:?} contains whitespace or control characters")]
    BadText(String),
    /// An invalid content address.
    #[error(transparent)]
    ContentAddress(#[from] ContentAddressError),
    /// An invalid signature.
    #[error(transparent)]
    Signature(#[from] SigningError),
}

/// Why a fingerprint cannot be computed, hence nothing signed or verified.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FingerprintError {
    /// Signatures cover a SHA-256 NAR hash only.
    #[error("cannot fingerprint {path}: its NAR hash is {algo}, not sha256")]
    NarHashNotSha256 {
        /// The store path (base name).
        path: String,
        /// The algorithm found.
        algo: HashAlgo,
    },
    /// Nix refuses to fingerprint a path of unknown (zero) size.
    #[error("cannot fingerprint {path}: its NAR size is 0")]
    NarSizeZero {
        /// The store path (base name).
        path: String,
    },
}

/// Why a narinfo's signatures do not make it trusted.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum VerifyError {
    /// The fingerprint could not be computed.
    #[error(transparent)]
    Fingerprint(#[from] FingerprintError),
    /// There is no `Sig:` line.
    #[error("{path} has no signatures")]
    Unsigned {
        /// The store path (base name).
        path: String,
    },
    /// No signature is by a trusted key name.
    #[error("{path} is signed only by untrusted keys: {}", names.join(", "))]
    Untrusted {
        /// The store path (base name).
        path: String,
        /// Names of the keys that signed it.
        names: Vec<String>,
    },
    /// Signatures by trusted key names exist but none verifies.
    #[error(
        "{path}: the signature by trusted key {} does not match (narinfo altered, or signed for other contents)",
        names.join(", ")
    )]
    BadSignature {
        /// The store path (base name).
        path: String,
        /// Names of the trusted keys whose signatures failed.
        names: Vec<String>,
    },
}

impl NarInfo {
    /// A narinfo in `/nix/store` with no file hash, references, deriver, signatures or content
    /// address, and `Compression: none`.
    pub fn new(store_path: StorePath, url: String, nar_hash: Hash, nar_size: u64) -> NarInfo {
        NarInfo {
            store_dir: StoreDir::default(),
            store_path,
            url,
            compression: "none".to_owned(),
            file_hash: None,
            file_size: None,
            nar_hash,
            nar_size,
            references: BTreeSet::new(),
            deriver: None,
            system: None,
            sigs: BTreeSet::new(),
            ca: None,
        }
    }

    /// Parses a narinfo for a path in `/nix/store`.
    pub fn parse(text: &str) -> Result<NarInfo, NarInfoError> {
        NarInfo::parse_in(&StoreDir::default(), text)
    }

    /// Parses a narinfo from raw bytes (as received over HTTP), in `/nix/store`.
    pub fn parse_bytes(bytes: &[u8]) -> Result<NarInfo, NarInfoError> {
        if bytes.len() > MAX_NARINFO_LEN {
            return Err(NarInfoError::TooLarge { len: bytes.len() });
        }
        let text = std::str::from_utf8(bytes).map_err(|e| {
            let line = bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1;
            NarInfoError::NotUtf8 { line }
        })?;
        NarInfo::parse(text)
    }

    /// Parses a narinfo whose `StorePath` must lie in `store_dir`.
    pub fn parse_in(store_dir: &StoreDir, text: &str) -> Result<NarInfo, NarInfoError> {
        if text.len() > MAX_NARINFO_LEN {
            return Err(NarInfoError::TooLarge { len: text.len() });
        }
        let mut b = Builder::default();
        let mut rest = text;
        let mut line = 0;
        while !rest.is_empty() {
            line += 1;
            let (content, after) = rest
                .split_once('\n')
                .ok_or(NarInfoError::NoFinalNewline { line })?;
            rest = after;
            b.line(store_dir, line, content)?;
        }
        b.finish(store_dir)
    }

    /// What Nix signs: `1;<store path>;<sha256:nix32 NAR hash>;<NAR size>;<references>`, the
    /// references as full paths, sorted, joined by `,`. URL, compression and file hash are not
    /// covered: a cache may recompress without re-signing.
    pub fn fingerprint(&self) -> Result<String, FingerprintError> {
        let path = self.store_path.to_string();
        if self.nar_hash.algo() != HashAlgo::Sha256 {
            return Err(FingerprintError::NarHashNotSha256 {
                path,
                algo: self.nar_hash.algo(),
            });
        }
        if self.nar_size == 0 {
            return Err(FingerprintError::NarSizeZero { path });
        }
        let refs: Vec<String> = self
            .references
            .iter()
            .map(|r| self.store_dir.display(r))
            .collect();
        Ok(format!(
            "1;{};{};{};{}",
            self.store_dir.display(&self.store_path),
            self.nar_hash.to_typed_nix32(),
            self.nar_size,
            refs.join(",")
        ))
    }

    /// Signs the narinfo with `key`, replacing any signature carrying the same key name.
    pub fn sign(&mut self, key: &SecretKey) -> Result<(), FingerprintError> {
        let signature = key.sign(self.fingerprint()?.as_bytes());
        self.sigs.retain(|s| s.name() != key.name());
        self.sigs.insert(signature);
        Ok(())
    }

    /// The signatures that verify under one of `trusted` (matched by key name).
    pub fn valid_signatures(
        &self,
        trusted: &[PublicKey],
    ) -> Result<Vec<&Signature>, FingerprintError> {
        let fingerprint = self.fingerprint()?;
        Ok(self
            .sigs
            .iter()
            .filter(|sig| {
                trusted
                    .iter()
                    .any(|key| key.verify(fingerprint.as_bytes(), sig))
            })
            .collect())
    }

    /// Succeeds if at least one signature verifies under a trusted key, which is what Nix requires
    /// to substitute an input-addressed path; the error says why not.
    pub fn verify(&self, trusted: &[PublicKey]) -> Result<(), VerifyError> {
        let path = self.store_path.to_string();
        if self.sigs.is_empty() {
            self.fingerprint()?;
            return Err(VerifyError::Unsigned { path });
        }
        if !self.valid_signatures(trusted)?.is_empty() {
            return Ok(());
        }
        let (by_trusted, untrusted): (Vec<&Signature>, Vec<&Signature>) = self
            .sigs
            .iter()
            .partition(|sig| trusted.iter().any(|k| k.name() == sig.name()));
        let names = |sigs: Vec<&Signature>| {
            let mut names: Vec<String> = sigs.iter().map(|s| s.name().to_owned()).collect();
            names.dedup();
            names
        };
        if by_trusted.is_empty() {
            Err(VerifyError::Untrusted {
                path,
                names: names(untrusted),
            })
        } else {
            Err(VerifyError::BadSignature {
                path,
                names: names(by_trusted),
            })
        }
    }

    /// Checks what the parser would check, so that printing gives a narinfo Kiln and Nix read back
    /// unchanged: non-empty URL and compression, no whitespace or control characters in text
    /// fields, a non-zero NAR size.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_text(&self.url)?;
        check_text(&self.compression)?;
        if let Some(system) = &self.system {
            check_text(system)?;
        }
        if self.nar_size == 0 {
            return Err(FieldError::Zero);
        }
        Ok(())
    }
}

impl FromStr for NarInfo {
    type Err = NarInfoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NarInfo::parse(s)
    }
}

/// Prints the narinfo exactly as Nix 2.8 does.
impl fmt::Display for NarInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "StorePath: {}", self.store_dir.display(&self.store_path))?;
        writeln!(f, "URL: {}", self.url)?;
        writeln!(f, "Compression: {}", self.compression)?;
        if let Some(hash) = &self.file_hash {
            writeln!(f, "FileHash: {}", hash.to_typed_nix32())?;
        }
        if let Some(size) = self.file_size {
            writeln!(f, "FileSize: {size}")?;
        }
        writeln!(f, "NarHash: {}", self.nar_hash.to_typed_nix32())?;
        writeln!(f, "NarSize: {}", self.nar_size)?;
        f.write_str("References: ")?;
        for (i, r) in self.references.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{r}")?;
        }
        f.write_str("\n")?;
        if let Some(deriver) = &self.deriver {
            writeln!(f, "Deriver: {deriver}")?;
        }
        if let Some(system) = &self.system {
            writeln!(f, "System: {system}")?;
        }
        for sig in &self.sigs {
            writeln!(f, "Sig: {sig}")?;
        }
        if let Some(ca) = &self.ca {
            writeln!(f, "CA: {ca}")?;
        }
        Ok(())
    }
}

/// The known keys, in printing order; their index is their slot in [`Builder::seen`].
const KEYS: [&str; 12] = [
    "StorePath",
    "URL",
    "Compression",
    "FileHash",
    "FileSize",
    "NarHash",
    "NarSize",
    "References",
    "Deriver",
    "System",
    "Sig",
    "CA",
];

/// Fields collected while parsing, before the required ones are checked.
#[derive(Default)]
struct Builder {
    seen: [usize; KEYS.len()],
    store_path: Option<StorePath>,
    url: Option<String>,
    compression: Option<String>,
    file_hash: Option<Hash>,
    file_size: Option<u64>,
    nar_hash: Option<Hash>,
    nar_size: Option<u64>,
    references: BTreeSet<StorePath>,
    deriver: Option<StorePath>,
    system: Option<String>,
    sigs: BTreeSet<Signature>,
    ca: Option<ContentAddress>,
}

impl Builder {
    fn line(
        &mut self,
        store_dir: &StoreDir,
        line: usize,
        content: &str,
    ) -> Result<(), NarInfoError> {
        if content.is_empty() {
            return Err(NarInfoError::EmptyLine { line });
        }
        let (key, value) = content
            .split_once(':')
            .and_then(|(key, rest)| Some((key, rest.strip_prefix(' ')?)))
            .ok_or_else(|| NarInfoError::NotKeyValue {
                line,
                text: excerpt(content),
            })?;
        if key.is_empty()
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(NarInfoError::BadKey {
                line,
                key: excerpt(key),
            });
        }
        let Some(slot) = KEYS.iter().position(|k| *k == key) else {
            return Ok(()); // Unknown keys are ignored, as by Nix.
        };
        let key = KEYS[slot];
        if key != "Sig" {
            if self.seen[slot] != 0 {
                return Err(NarInfoError::Duplicate {
                    line,
                    key,
                    first: self.seen[slot],
                });
            }
            self.seen[slot] = line;
        }
        self.field(store_dir, key, value)
            .map_err(|reason| NarInfoError::Field { line, key, reason })
    }

    fn field(&mut self, store_dir: &StoreDir, key: &str, value: &str) -> Result<(), FieldError> {
        match key {
            "StorePath" => self.store_path = Some(store_dir.parse_path(value)?),
            "URL" => {
                check_text(value)?;
                self.url = Some(value.to_owned());
            }
            "Compression" => {
                if !value.is_empty() {
                    check_text(value)?;
                    self.compression = Some(value.to_owned());
                }
            }
            "FileHash" => self.file_hash = Some(Hash::parse_typed(value)?),
            "FileSize" => self.file_size = Some(parse_number(value)?),
            "NarHash" => self.nar_hash = Some(Hash::parse_typed(value)?),
            "NarSize" => match parse_number(value)? {
                0 => return Err(FieldError::Zero),
                n => self.nar_size = Some(n),
            },
            "References" => {
                for r in value.split(' ').filter(|r| !r.is_empty()) {
                    self.references.insert(StorePath::from_base_name(r)?);
                }
            }
            "Deriver" => {
                if value != "unknown-deriver" {
                    self.deriver = Some(StorePath::from_base_name(value)?);
                }
            }
            "System" => {
                check_text(value)?;
                self.system = Some(value.to_owned());
            }
            "Sig" => {
                self.sigs.insert(value.parse()?);
            }
            "CA" => {
                if !value.is_empty() {
                    self.ca = Some(value.parse()?);
                }
            }
            _ => unreachable!("only keys from KEYS reach here"),
        }
        Ok(())
    }

    fn finish(self, store_dir: &StoreDir) -> Result<NarInfo, NarInfoError> {
        Ok(NarInfo {
            store_dir: store_dir.clone(),
            store_path: self.store_path.ok_or(NarInfoError::Missing("StorePath"))?,
            nar_hash: self.nar_hash.ok_or(NarInfoError::Missing("NarHash"))?,
            url: self.url.ok_or(NarInfoError::Missing("URL"))?,
            nar_size: self.nar_size.ok_or(NarInfoError::Missing("NarSize"))?,
            compression: self.compression.unwrap_or_else(|| "bzip2".to_owned()),
            file_hash: self.file_hash,
            file_size: self.file_size,
            references: self.references,
            deriver: self.deriver,
            system: self.system,
            sigs: self.sigs,
            ca: self.ca,
        })
    }
}

fn check_text(value: &str) -> Result<(), FieldError> {
    if value.is_empty() {
        return Err(FieldError::Empty);
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(FieldError::BadText(excerpt(value)));
    }
    Ok(())
}

fn parse_number(value: &str) -> Result<u64, FieldError> {
    let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    digits
        .then(|| value.parse().ok())
        .flatten()
        .ok_or_else(|| FieldError::Number(excerpt(value)))
}

/// The start of `s`, short enough to quote in an error message.
pub(crate) fn excerpt(s: &str) -> String {
    const MAX: usize = 80;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A content address as on a narinfo `CA:` line: `text:sha256:…` or `fixed:[r:]algo:…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentAddress {
    /// A text file added with its references (`builtins.toFile`, `.drv` files); always SHA-256.
    Text {
        /// Hash of the file's contents.
        hash: Hash,
    },
    /// A fixed-output path.
    Fixed {
        /// Whether the hash is over the NAR (`r:`, recursive) or over a flat file's contents.
        recursive: bool,
        /// The hash.
        hash: Hash,
    },
}

/// Why a content address could not be parsed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ContentAddressError {
    /// Neither `text:` nor `fixed:`.
    #[error("content address {0:?} does not start with `text:` or `fixed:`")]
    UnknownMethod(String),
    /// No `algo:` before the digest.
    #[error("content address {0:?} has no `algo:` before its digest")]
    MissingAlgo(String),
    /// `text:` with another algorithm than SHA-256.
    #[error("text content address uses {0}, but must use sha256")]
    TextNotSha256(HashAlgo),
    /// A bad algorithm or digest.
    #[error("content address {text:?}: {reason}")]
    Hash {
        /// The content address (truncated).
        text: String,
        /// What is wrong with its hash.
        reason: HashError,
    },
}

impl FromStr for ContentAddress {
    type Err = ContentAddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hash = |rest: &str| -> Result<Hash, ContentAddressError> {
            let (algo, digest) = rest
                .split_once(':')
                .ok_or_else(|| ContentAddressError::MissingAlgo(excerpt(s)))?;
            let algo: HashAlgo = algo.parse().map_err(|reason| ContentAddressError::Hash {
                text: excerpt(s),
                reason,
            })?;
            Hash::parse_digest(algo, digest).map_err(|reason| ContentAddressError::Hash {
                text: excerpt(s),
                reason,
            })
        };
        if let Some(rest) = s.strip_prefix("text:") {
            let hash = hash(rest)?;
            if hash.algo() != HashAlgo::Sha256 {
                return Err(ContentAddressError::TextNotSha256(hash.algo()));
            }
            Ok(ContentAddress::Text { hash })
        } else if let Some(rest) = s.strip_prefix("fixed:") {
            match rest.strip_prefix("r:") {
                Some(rest) => Ok(ContentAddress::Fixed {
                    recursive: true,
                    hash: hash(rest)?,
                }),
                None => Ok(ContentAddress::Fixed {
                    recursive: false,
                    hash: hash(rest)?,
                }),
            }
        } else {
            Err(ContentAddressError::UnknownMethod(excerpt(s)))
        }
    }
}

/// `text:sha256:<nix32>` or `fixed:[r:]<algo>:<nix32>`, as Nix renders it.
impl fmt::Display for ContentAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContentAddress::Text { hash } => write!(f, "text:{}", hash.to_typed_nix32()),
            ContentAddress::Fixed { recursive, hash } => {
                let method = if *recursive { "r:" } else { "" };
                write!(f, "fixed:{method}{}", hash.to_typed_nix32())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Written by `nix copy --to file://...?compression=none&secret-key=...` (Nix 2.8); the key is
    // the one in `signing::tests`.
    const NIX_WRITTEN: &str = "\
StorePath: /nix/store/fkd12vh91adjnvqiw3c97vgsrz5hspiy-kiln-mid
URL: nar/1x06iw82wwa917fy6kfwhaimyms165szfwp3pnk7c10cr4w50m8l.nar
Compression: none
FileHash: sha256:1x06iw82wwa917fy6kfwhaimyms165szfwp3pnk7c10cr4w50m8l
FileSize: 392
NarHash: sha256:1x06iw82wwa917fy6kfwhaimyms165szfwp3pnk7c10cr4w50m8l
NarSize: 392
References: 4kdg03x64484xxbscaq6mf2x93vbazal-kiln-leaf fkd12vh91adjnvqiw3c97vgsrz5hspiy-kiln-mid
Deriver: vby5nn0nqf2np9lwiq6wwnf4rcy6b9xl-kiln-mid.drv
Sig: nixkey-1:T0lUKGUqu0AiX7e5XFsMjliHQ6/0eKRRurby1BduOP2oA8ICit2RU++KqrWzuHuTBtsIQ0GKDGEz69sLWNKPDg==
";
    const NIX_PUBLIC: &str = "nixkey-1:XgxeVM7L/BwUjdfEW3bvRqmgwEn7e/9NvYBOoFs3MnE=";

    #[test]
    fn nix_written_narinfo_reprints_byte_for_byte() {
        let info = NarInfo::parse(NIX_WRITTEN).unwrap();
        assert_eq!(info.nar_size, 392);
        assert_eq!(info.references.len(), 2);
        assert_eq!(info.deriver.as_ref().unwrap().name(), "kiln-mid.drv");
        assert_eq!(info.to_string(), NIX_WRITTEN);
    }

    #[test]
    fn fingerprint_uses_full_sorted_reference_paths() {
        let info = NarInfo::parse(NIX_WRITTEN).unwrap();
        assert_eq!(
            info.fingerprint().unwrap(),
            "1;/nix/store/fkd12vh91adjnvqiw3c97vgsrz5hspiy-kiln-mid;\
             sha256:1x06iw82wwa917fy6kfwhaimyms165szfwp3pnk7c10cr4w50m8l;392;\
             /nix/store/4kdg03x64484xxbscaq6mf2x93vbazal-kiln-leaf,\
             /nix/store/fkd12vh91adjnvqiw3c97vgsrz5hspiy-kiln-mid"
        );
    }

    #[test]
    fn nix_signature_verifies_and_tampering_breaks_it() {
        let key: PublicKey = NIX_PUBLIC.parse().unwrap();
        let info = NarInfo::parse(NIX_WRITTEN).unwrap();
        info.verify(std::slice::from_ref(&key)).unwrap();

        let mut tampered = info.clone();
        tampered.nar_size += 1;
        assert!(matches!(
            tampered.verify(std::slice::from_ref(&key)),
            Err(VerifyError::BadSignature { names, .. }) if names == ["nixkey-1"]
        ));
        let mut tampered = info.clone();
        tampered.references.pop_first();
        assert!(tampered.verify(std::slice::from_ref(&key)).is_err());

        // URL and compression are outside the signature.
        let mut recompressed = info.clone();
        recompressed.url = "nar/other.nar.xz".into();
        recompressed.compression = "xz".into();
        recompressed.verify(std::slice::from_ref(&key)).unwrap();
    }

    #[test]
    fn verify_explains_missing_and_untrusted_signatures() {
        let key: PublicKey = NIX_PUBLIC.parse().unwrap();
        let mut info = NarInfo::parse(NIX_WRITTEN).unwrap();
        let other = SecretKey::generate("other-1").unwrap();
        assert!(matches!(
            info.verify(&[other.public()]),
            Err(VerifyError::Untrusted { names, .. }) if names == ["nixkey-1"]
        ));
        info.sigs.clear();
        assert!(matches!(
            info.verify(&[key]),
            Err(VerifyError::Unsigned { .. })
        ));
    }

    #[test]
    fn sign_replaces_the_signature_of_the_same_key_name() {
        let mut info = NarInfo::parse(NIX_WRITTEN).unwrap();
        let a = SecretKey::generate("kiln-1").unwrap();
        info.sign(&a).unwrap();
        assert_eq!(info.sigs.len(), 2);
        let b = SecretKey::generate("kiln-1").unwrap();
        info.sign(&b).unwrap();
        assert_eq!(info.sigs.len(), 2);
        assert!(info.verify(&[b.public()]).is_ok());
        assert!(info.verify(&[a.public()]).is_err());
        let reparsed = NarInfo::parse(&info.to_string()).unwrap();
        assert_eq!(reparsed, info);
    }

    #[test]
    fn fingerprint_requires_a_sha256_nar_hash() {
        let mut info = NarInfo::parse(NIX_WRITTEN).unwrap();
        info.nar_hash = Hash::new(HashAlgo::Sha1, &[0; 20]).unwrap();
        assert!(matches!(
            info.fingerprint(),
            Err(FingerprintError::NarHashNotSha256 {
                algo: HashAlgo::Sha1,
                ..
            })
        ));
        let key = SecretKey::generate("k").unwrap();
        assert!(info.sign(&key).is_err());
    }

    #[test]
    fn nix_defaults_and_normalisations_are_kept() {
        let text = NIX_WRITTEN
            .replace("Compression: none\n", "")
            .replace(
                "Deriver: vby5nn0nqf2np9lwiq6wwnf4rcy6b9xl-kiln-mid.drv",
                "Deriver: unknown-deriver",
            )
            .replace(
                "NarHash: sha256:1x06iw82wwa917fy6kfwhaimyms165szfwp3pnk7c10cr4w50m8l",
                "NarHash: sha256-FFVQOMkMBHamveNy93UxQVdfo4LcTePdCUlxLhCPBvQ=",
            )
            + "X-Future-Field: anything at all\nCA: \n";
        let info = NarInfo::parse(&text).unwrap();
        assert_eq!(info.compression, "bzip2");
        assert_eq!(info.deriver, None);
        assert_eq!(info.ca, None);
        assert_eq!(info.nar_hash, NarInfo::parse(NIX_WRITTEN).unwrap().nar_hash);
        assert!(!info.to_string().contains("X-Future-Field"));
    }

    #[test]
    fn system_and_ca_print_where_nix_puts_them() {
        let text = NIX_WRITTEN.to_owned()
            + "CA: fixed:r:sha256:1x06iw82wwa917fy6kfwhaimyms165szfwp3pnk7c10cr4w50m8l\n";
        let text = text.replace("Sig: ", "System: x86_64-linux\nSig: ");
        let info = NarInfo::parse(&text).unwrap();
        assert_eq!(info.system.as_deref(), Some("x86_64-linux"));
        assert!(matches!(
            info.ca,
            Some(ContentAddress::Fixed {
                recursive: true,
                ..
            })
        ));
        assert_eq!(info.to_string(), text);
    }

    #[test]
    fn content_addresses_parse_and_print_as_nix_renders_them() {
        let nix32 = "1x06iw82wwa917fy6kfwhaimyms165szfwp3pnk7c10cr4w50m8l";
        for s in [
            format!("text:sha256:{nix32}"),
            format!("fixed:sha256:{nix32}"),
            format!("fixed:r:sha256:{nix32}"),
        ] {
            assert_eq!(s.parse::<ContentAddress>().unwrap().to_string(), s);
        }
        let base16 = Hash::parse_typed(&format!("sha256:{nix32}"))
            .unwrap()
            .to_base16();
        let ca: ContentAddress = format!("fixed:r:sha256:{base16}").parse().unwrap();
        assert_eq!(ca.to_string(), format!("fixed:r:sha256:{nix32}"));
        assert!(matches!(
            format!("text:sha1:{}", "0".repeat(32)).parse::<ContentAddress>(),
            Err(ContentAddressError::TextNotSha256(HashAlgo::Sha1))
        ));
        assert!(matches!(
            "nar:sha256:x".parse::<ContentAddress>(),
            Err(ContentAddressError::UnknownMethod(_))
        ));
    }

    #[test]
    fn new_narinfos_round_trip_through_text() {
        let path = StorePath::from_base_name("4kdg03x64484xxbscaq6mf2x93vbazal-kiln-leaf").unwrap();
        let hash = Hash::sha256(b"nar");
        let mut info = NarInfo::new(path.clone(), "nar/x.nar".into(), hash.clone(), 8);
        info.file_hash = Some(hash);
        info.file_size = Some(8);
        info.references.insert(path);
        info.validate().unwrap();
        assert!(info.to_string().contains("Compression: none\n"));
        assert_eq!(NarInfo::parse(&info.to_string()).unwrap(), info);
    }

    #[test]
    fn validate_catches_what_printing_cannot_express() {
        let path = StorePath::from_base_name("4kdg03x64484xxbscaq6mf2x93vbazal-kiln-leaf").unwrap();
        let mut info = NarInfo::new(path, "nar/x.nar\nSig: forged".into(), Hash::sha256(b""), 8);
        assert!(matches!(info.validate(), Err(FieldError::BadText(_))));
        info.url = "nar/x.nar".into();
        info.nar_size = 0;
        assert_eq!(info.validate(), Err(FieldError::Zero));
    }
}
