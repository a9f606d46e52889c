//! Store paths: parsing, validation, and the hashes Nix uses to name them.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::base32;
use crate::hash::{Hash, HashAlgo};

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
        if !base.is_char_boundary(HASH_CHARS) {
            return Err(StorePathError::BadHash(base.to_owned()));
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
    /// Orders by base name, without building it: nixbase32 writes the digest, read as a
    /// little-endian number, most significant digit first, in an alphabet in ASCII order, and every
    /// hash part has the same length, so comparing hash parts is comparing the digests' bytes from
    /// the last one down; ties are broken by the names.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.digest
            .iter()
            .rev()
            .cmp(other.digest.iter().rev())
            .then_with(|| self.name.cmp(&other.name))
    }
}

/// How the contents of a content-addressed path are hashed: the file's bytes (`Flat`) or its NAR
/// serialisation (`Recursive`, written `r:` before the algorithm in `.drv` files).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileIngestionMethod {
    /// The hash covers the bytes of a single regular file.
    Flat,
    /// The hash covers the NAR serialisation of a file tree.
    Recursive,
}

impl FileIngestionMethod {
    /// `""` or `"r:"`, the prefix Nix writes before the hash algorithm (`r:sha256`).
    pub const fn prefix(self) -> &'static str {
        match self {
            FileIngestionMethod::Flat => "",
            FileIngestionMethod::Recursive => "r:",
        }
    }
}

/// The store path name of output `output` of a derivation named `drv_name`: the derivation's name
/// for `out`, `<drv_name>-<output>` for any other output.
pub fn output_path_name(drv_name: &str, output: &str) -> String {
    if output == "out" {
        drv_name.to_owned()
    } else {
        format!("{drv_name}-{output}")
    }
}

/// Path computations for content-addressed and derivation paths, as Nix 2.8 does them. Each
/// checks the resulting name the way Nix's `StorePath` constructor does.
impl StoreDir {
    /// The `type` part of a store path fingerprint: `kind` followed by `:<absolute path>` for each
    /// reference in store path order, then `:self` if the path refers to itself.
    pub fn make_type(
        &self,
        kind: &str,
        references: &BTreeSet<StorePath>,
        self_ref: bool,
    ) -> String {
        let mut out = kind.to_owned();
        for reference in references {
            out.push(':');
            out.push_str(&self.display(reference));
        }
        if self_ref {
            out.push_str(":self");
        }
        out
    }

    /// The path of a text file added to the store with `references` (what `builtins.toFile` and
    /// `.drv` files get): type `text:<refs>`, inner hash the SHA-256 of the contents.
    pub fn compute_text_path(
        &self,
        name: &str,
        contents: &[u8],
        references: &BTreeSet<StorePath>,
    ) -> Result<StorePath, StorePathError> {
        validate_name(name, name)?;
        let path_type = self.make_type("text", references, false);
        Ok(self.make_store_path(&path_type, &Hash::sha256(contents), name))
    }

    /// The path of a file tree added by NAR hash (`nix-store --add`, `builtins.path`, sources in
    /// `.drv` inputs): type `source:<refs>[:self]`, inner hash the SHA-256 NAR hash.
    pub fn make_source_path(
        &self,
        name: &str,
        nar_hash: &Hash,
        references: &BTreeSet<StorePath>,
        self_ref: bool,
    ) -> Result<StorePath, StorePathError> {
        validate_name(name, name)?;
        let path_type = self.make_type("source", references, self_ref);
        Ok(self.make_store_path(&path_type, nar_hash, name))
    }

    /// The output path of a fixed-output derivation (or of a content-addressed path without
    /// references). A recursive SHA-256 is a source path; every other combination commits to
    /// `fixed:out:<r:?><algo>:<base16>:` under the type `output:out`.
    pub fn make_fixed_output_path(
        &self,
        method: FileIngestionMethod,
        hash: &Hash,
        name: &str,
    ) -> Result<StorePath, StorePathError> {
        if method == FileIngestionMethod::Recursive && hash.algo() == HashAlgo::Sha256 {
            return self.make_source_path(name, hash, &BTreeSet::new(), false);
        }
        validate_name(name, name)?;
        let inner = format!("fixed:out:{}{}:", method.prefix(), hash.to_typed_base16());
        Ok(self.make_store_path("output:out", &Hash::sha256(inner), name))
    }

    /// The path of output `output` of an input-addressed derivation named `drv_name`, whose
    /// `hashDerivationModulo` is `drv_hash`: type `output:<output>`.
    pub fn make_output_path(
        &self,
        output: &str,
        drv_hash: &Hash,
        drv_name: &str,
    ) -> Result<StorePath, StorePathError> {
        let name = output_path_name(drv_name, output);
        validate_name(&name, &name)?;
        Ok(self.make_store_path(&format!("output:{output}"), drv_hash, &name))
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

    // Expected paths below were produced by Nix 2.8 on this machine (`nix-instantiate`,
    // `nix-store --add`) for the inputs named in each case.

    const HELLO_NAR_SHA256: &str = "sha256:0sg9f58l1jj88w6pdrfdpj5x9b1zrwszk84j81zvby36q9whhhqa";

    fn fixed(method: FileIngestionMethod, algo: &str, name: &str) -> String {
        let digest = match algo {
            "md5" => "5d41402abc4b2a76b9719d911017c592",
            "sha1" => "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d",
            "sha256" => "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
            _ => unreachable!(),
        };
        let hash = Hash::parse_digest(algo.parse().unwrap(), digest).unwrap();
        StoreDir::default()
            .make_fixed_output_path(method, &hash, name)
            .unwrap()
            .to_string()
    }

    #[test]
    fn fixed_output_paths_match_nix_for_flat_and_recursive_hashes() {
        use FileIngestionMethod::{Flat, Recursive};
        assert_eq!(
            fixed(Flat, "sha256", "fod"),
            "9q0mqp4y1k819ysjzsfjah1ld74x19w2-fod"
        );
        // Recursive SHA-256 is the `source` special case.
        assert_eq!(
            fixed(Recursive, "sha256", "fodr"),
            "vfrhc97sk0aa774c0bcr75ln5pc3yjd1-fodr"
        );
        assert_eq!(
            fixed(Flat, "sha1", "f-sha1-flat"),
            "sqwp7712vc5wcxncv1a4y01fg3fk6c07-f-sha1-flat"
        );
        assert_eq!(
            fixed(Recursive, "sha1", "f-sha1-recursive"),
            "pvawz6rhcxg1wn08fhgqlrpyiaf1p30v-f-sha1-recursive"
        );
        assert_eq!(
            fixed(Recursive, "md5", "f-md5-recursive"),
            "n2d2g6i58bhm79739nvd9kz06lnl9658-f-md5-recursive"
        );
    }

    #[test]
    fn source_path_matches_nix_store_add() {
        let nar_hash: Hash = HELLO_NAR_SHA256.parse().unwrap();
        let path = StoreDir::default()
            .make_source_path("hello.txt", &nar_hash, &BTreeSet::new(), false)
            .unwrap();
        assert_eq!(
            path.to_string(),
            "xfp2hphvk98rkk9ywlqpp587rjdcgnc2-hello.txt"
        );
    }

    #[test]
    fn text_path_commits_to_sorted_references() {
        let hello =
            StorePath::from_base_name("xfp2hphvk98rkk9ywlqpp587rjdcgnc2-hello.txt").unwrap();
        let contents = format!("see {}", hello.to_absolute());
        let refs = BTreeSet::from([hello]);
        let path = StoreDir::default()
            .compute_text_path("t.txt", contents.as_bytes(), &refs)
            .unwrap();
        assert_eq!(path.to_string(), "njxh46qnhj35vw3yjrra2rbdf8g6yi03-t.txt");
        let without_refs = StoreDir::default()
            .compute_text_path("t.txt", contents.as_bytes(), &BTreeSet::new())
            .unwrap();
        assert_ne!(without_refs, path);
    }

    #[test]
    fn make_type_lists_full_paths_then_self() {
        let a = StorePath::from_base_name("xfp2hphvk98rkk9ywlqpp587rjdcgnc2-hello.txt").unwrap();
        let b = StorePath::from_base_name("9q0mqp4y1k819ysjzsfjah1ld74x19w2-fod").unwrap();
        let refs = BTreeSet::from([a, b]);
        assert_eq!(
            StoreDir::new("/s").make_type("source", &refs, true),
            "source:/s/9q0mqp4y1k819ysjzsfjah1ld74x19w2-fod:/s/xfp2hphvk98rkk9ywlqpp587rjdcgnc2-hello.txt:self"
        );
    }

    #[test]
    fn output_paths_name_non_default_outputs_after_the_derivation() {
        assert_eq!(output_path_name("multi", "out"), "multi");
        assert_eq!(output_path_name("multi", "dev"), "multi-dev");
        let hash = Hash::sha256(b"x");
        let long = "a".repeat(MAX_NAME_LEN - 2);
        assert!(
            StoreDir::default()
                .make_output_path("out", &hash, &long)
                .is_ok()
        );
        assert!(matches!(
            StoreDir::default().make_output_path("dev", &hash, &long),
            Err(StorePathError::NameTooLong(_))
        ));
    }

    #[test]
    fn multibyte_character_at_the_hash_boundary_is_refused_not_a_panic() {
        let base = format!("{}\u{e9}-x", "a".repeat(HASH_CHARS - 1));
        assert!(matches!(
            StorePath::from_base_name(&base),
            Err(StorePathError::BadHash(_))
        ));
    }

    #[test]
    fn ordering_is_the_order_of_base_names() {
        // Digests that differ in every byte position and bit, and names that break ties.
        let mut paths = Vec::new();
        for i in 0..HASH_BYTES {
            for bit in [0u8, 1, 0x10, 0x80, 0xff] {
                let mut digest = [0x5au8; HASH_BYTES];
                digest[i] = bit;
                for name in ["a", "a-b", "b"] {
                    paths.push(StorePath {
                        digest,
                        name: name.to_owned(),
                    });
                }
            }
        }
        let mut by_ord = paths.clone();
        by_ord.sort();
        let mut by_string = paths;
        by_string.sort_by_key(|p| p.to_string());
        assert_eq!(by_ord, by_string);
    }
}
