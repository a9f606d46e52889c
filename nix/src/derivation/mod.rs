//! Derivations: the `.drv` files Nix writes, in ATerm and JSON form, and the paths they name.
//!
//! A [`Derivation`] is parsed from and printed to the exact bytes Nix 2.8 writes
//! ([`Derivation::parse`], [`Derivation::to_aterm`]): for every input the parser accepts,
//! printing gives back the same bytes. The parser is strict where Nix's is lenient, because a
//! `.drv` that Nix did not write is suspect: lists must be sorted and free of duplicates as Nix's
//! `std::map`s make them, only the five escapes Nix produces are accepted, store paths and output
//! descriptions are validated, the output kinds must form a combination Nix allows, and nothing
//! may follow the final `)`.
//!
//! # Strings are bytes
//! Nix's strings may hold any bytes (`builtins.readFile` of a binary file ends up in `env`
//! unchanged), so the free-form fields (`system`, `builder`, `args`, `env`) are `Vec<u8>`, kept
//! exactly: parsing, printing and hashing never lose or replace a byte. Store paths, output names
//! and hash descriptions are validated ASCII and are `String`s. [`show_derivation_json`] writes
//! non-UTF-8 bytes through unchanged, as `nix show-derivation` does (its output is then not valid
//! UTF-8); [`Derivation::to_json_value`], which builds a `serde_json::Value`, refuses such a
//! derivation with an error naming the field instead of altering it.
//!
//! # Fields Nix writes without escaping
//! Nix escapes `builder`, `args` and `env`, but writes output names, paths, hash descriptions and
//! `system` between quotes verbatim. A `system` holding `"` or `\` therefore comes out of Nix as a
//! file that does not read back as what was written (Nix itself then reports wrong output paths).
//! The parser refuses a backslash or a quote inside these fields rather than guess.
//!
//! # Fixed-output paths
//! Nix 2.8 does not keep the path of a fixed output it reads: it recomputes it from the hash and
//! the derivation's name whenever it prints or shows the derivation. Kiln keeps the path the file
//! states, so printing is byte-identical for every accepted file; for any file Nix wrote the two
//! agree, and [`DrvHasher::check`] reports a file where they do not.
//!
//! Paths: [`Derivation::drv_path`] computes the `.drv` path from the contents; [`DrvHasher`]
//! computes `hashDerivationModulo` with a memoizing resolver for input derivations, the output
//! paths Nix derives from it, and checks a derivation's outputs and environment against them.

mod aterm;
mod hash_modulo;
mod json;

use std::collections::{BTreeMap, BTreeSet};

use thiserror::Error;

use crate::hash::{Hash, HashAlgo};
use crate::store_path::{FileIngestionMethod, StoreDir, StorePath, StorePathError};

pub use aterm::{ParseError, ParseErrorKind};
pub use hash_modulo::{
    DerivationResolver, DrvHash, DrvHasher, HashModuloError, ResolveError, hash_derivation_modulo,
};
pub use json::{NotUtf8Error, show_derivation_json};

/// The extension of derivation files' store path names.
pub const DRV_EXTENSION: &str = ".drv";

/// A derivation as it is stored in a `.drv` file, plus its name (which the file does not hold:
/// it comes from the `.drv` path, `<hash>-<name>.drv`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derivation {
    /// The derivation's name, without `.drv`; it names the output paths.
    pub name: String,
    /// The outputs by name, sorted bytewise as Nix keeps them.
    pub outputs: BTreeMap<String, DerivationOutput>,
    /// Input derivations and, for each, the names of the outputs used.
    pub input_drvs: BTreeMap<StorePath, BTreeSet<String>>,
    /// Input store paths that are not derivation outputs (sources).
    pub input_srcs: BTreeSet<StorePath>,
    /// The platform the builder must run on (`x86_64-linux`, ...); Nix calls it `system`.
    pub system: Vec<u8>,
    /// The program that builds the outputs.
    pub builder: Vec<u8>,
    /// The builder's arguments, in order.
    pub args: Vec<Vec<u8>>,
    /// The builder's environment, sorted bytewise. With `__structuredAttrs`, it holds `__json`
    /// and one variable per output only.
    pub env: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// One output of a derivation, in the four forms Nix 2.8 knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DerivationOutput {
    /// An ordinary output whose path is derived from the derivation (`hashDerivationModulo`).
    InputAddressed(StorePath),
    /// The output of a fixed-output derivation: its contents must have `hash`; `path` is what the
    /// file says (for files Nix wrote, the path computed from the hash and the name).
    Fixed {
        /// The output path written in the `.drv`.
        path: StorePath,
        /// The expected hash of the contents.
        hash: FixedOutputHash,
    },
    /// A floating content-addressed output (experimental `ca-derivations`): the path is known
    /// only after the build.
    Floating {
        /// How the contents will be hashed.
        method: FileIngestionMethod,
        /// The hash algorithm that will name the output.
        algo: HashAlgo,
    },
    /// An input-addressed output whose path cannot be computed yet because an input is floating
    /// content-addressed (written with an empty path).
    Deferred,
}

impl DerivationOutput {
    /// The output path, when the derivation states one.
    pub fn path(&self) -> Option<&StorePath> {
        match self {
            DerivationOutput::InputAddressed(path) | DerivationOutput::Fixed { path, .. } => {
                Some(path)
            }
            DerivationOutput::Floating { .. } | DerivationOutput::Deferred => None,
        }
    }

    /// The `hashAlgo` field: `r:sha256`, `sha1`, or empty for input-addressed outputs.
    pub fn hash_algo_field(&self) -> String {
        match self {
            DerivationOutput::Fixed { hash, .. } => hash.method_algo(),
            DerivationOutput::Floating { method, algo } => format!("{}{algo}", method.prefix()),
            DerivationOutput::InputAddressed(_) | DerivationOutput::Deferred => String::new(),
        }
    }
}

/// The hash a fixed-output derivation promises, and how the contents are hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedOutputHash {
    /// Flat file or NAR serialisation.
    pub method: FileIngestionMethod,
    /// The expected digest.
    pub hash: Hash,
}

impl FixedOutputHash {
    /// `r:sha256`, `sha1`, ...: the method prefix and the algorithm, as written in `.drv` files.
    pub fn method_algo(&self) -> String {
        format!("{}{}", self.method.prefix(), self.hash.algo())
    }

    /// The output path this hash gives an output named `name` (Nix's `makeFixedOutputPath`).
    pub fn output_path(
        &self,
        store_dir: &StoreDir,
        name: &str,
    ) -> Result<StorePath, StorePathError> {
        store_dir.make_fixed_output_path(self.method, &self.hash, name)
    }
}

/// What kind of derivation the outputs make (Nix's `DerivationType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DerivationKind {
    /// Every output is input-addressed.
    InputAddressed,
    /// A single fixed-output `out`.
    Fixed,
    /// Every output is floating content-addressed, with one hash algorithm.
    Floating,
    /// Every output is deferred input-addressed.
    Deferred,
}

/// Why a derivation's outputs do not form a combination Nix accepts.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum KindError {
    /// The derivation has no outputs at all.
    #[error("derivation has no outputs")]
    NoOutputs,
    /// Outputs of different kinds (e.g. fixed and input-addressed) are mixed.
    #[error("derivation mixes output kinds (input-addressed, fixed, floating, deferred)")]
    Mixed,
    /// A fixed-output derivation has more than one output, or its output is not `out`.
    #[error("a fixed-output derivation must have exactly one output, named \"out\"")]
    FixedNotSingleOut,
    /// Floating outputs use different hash algorithms.
    #[error("all floating content-addressed outputs must use the same hash algorithm")]
    FloatingAlgosDiffer,
}

impl Derivation {
    /// Parses the contents of a `.drv` file in store `store_dir`; `name` is the derivation's
    /// name (the `.drv` path's name without `.drv`). See [`ParseError`] for what is refused.
    pub fn parse(store_dir: &StoreDir, name: &str, input: &[u8]) -> Result<Derivation, ParseError> {
        aterm::parse(store_dir, name, input)
    }

    /// Parses the contents of the `.drv` file at `drv_path`, taking the name from the path.
    pub fn parse_drv_file(
        store_dir: &StoreDir,
        drv_path: &StorePath,
        input: &[u8],
    ) -> Result<Derivation, ParseError> {
        let name = drv_path
            .name()
            .strip_suffix(DRV_EXTENSION)
            .ok_or_else(|| ParseError {
                offset: 0,
                kind: ParseErrorKind::NotDrvPath(drv_path.to_string()),
            })?;
        aterm::parse(store_dir, name, input)
    }

    /// The ATerm text Nix writes for this derivation: the bytes of its `.drv` file.
    pub fn to_aterm(&self, store_dir: &StoreDir) -> Vec<u8> {
        let mut out = Vec::with_capacity(4096);
        aterm::print(&mut out, self, store_dir, false, None);
        out
    }

    /// The kind of derivation its outputs make, or why they make none Nix accepts.
    pub fn kind(&self) -> Result<DerivationKind, KindError> {
        let mut kind = None;
        let mut floating_algo = None;
        for output in self.outputs.values() {
            let this = match output {
                DerivationOutput::InputAddressed(_) => DerivationKind::InputAddressed,
                DerivationOutput::Fixed { .. } => DerivationKind::Fixed,
                DerivationOutput::Floating { algo, .. } => {
                    if floating_algo
                        .replace(*algo)
                        .is_some_and(|previous| previous != *algo)
                    {
                        return Err(KindError::FloatingAlgosDiffer);
                    }
                    DerivationKind::Floating
                }
                DerivationOutput::Deferred => DerivationKind::Deferred,
            };
            if kind.replace(this).is_some_and(|previous| previous != this) {
                return Err(KindError::Mixed);
            }
        }
        let kind = kind.ok_or(KindError::NoOutputs)?;
        if kind == DerivationKind::Fixed
            && (self.outputs.len() != 1 || !self.outputs.contains_key("out"))
        {
            return Err(KindError::FixedNotSingleOut);
        }
        Ok(kind)
    }

    /// Whether this is a fixed-output derivation (the only kind allowed network access).
    pub fn is_fixed_output(&self) -> bool {
        self.kind() == Ok(DerivationKind::Fixed)
    }

    /// The store paths the `.drv` file refers to: input derivations and input sources. Outputs
    /// are not references.
    pub fn references(&self) -> BTreeSet<StorePath> {
        let mut refs = self.input_srcs.clone();
        refs.extend(self.input_drvs.keys().cloned());
        refs
    }

    /// The path of this derivation's `.drv` file: a text path over [`Derivation::to_aterm`]
    /// with [`Derivation::references`], named `<name>.drv`.
    pub fn drv_path(&self, store_dir: &StoreDir) -> Result<StorePath, StorePathError> {
        let name = format!("{}{DRV_EXTENSION}", self.name);
        store_dir.compute_text_path(&name, &self.to_aterm(store_dir), &self.references())
    }

    /// The value of environment variable `key`, if set.
    pub fn env_var(&self, key: &str) -> Option<&[u8]> {
        self.env.get(key.as_bytes()).map(Vec::as_slice)
    }

    /// The value of environment variable `key`, if set and valid UTF-8.
    pub fn env_str(&self, key: &str) -> Option<&str> {
        self.env_var(key).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// `system` as text, if it is valid UTF-8 (always, for derivations Nix evaluated from a
    /// platform name).
    pub fn system_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.system).ok()
    }

    /// The structured attributes (`__structuredAttrs = true` puts them, as JSON, in the `__json`
    /// variable): `None` without them, an error if `__json` is not a JSON object.
    pub fn structured_attrs(
        &self,
    ) -> Option<Result<serde_json::Map<String, serde_json::Value>, serde_json::Error>> {
        self.env_var("__json").map(serde_json::from_slice)
    }
}

#[cfg(test)]
mod tests;
