//! `hashDerivationModulo` and the output paths Nix derives from it.
//!
//! An input-addressed output path commits to the derivation's ATerm with every input derivation
//! replaced by *its* hash modulo, computed the same way, down to fixed-output derivations, whose
//! hash stands for their (known) output only, so changing how a fixed output is fetched does not
//! change anything that depends on it. The graph of inputs is walked with an explicit stack, not
//! recursion, and each input derivation is resolved and hashed once per [`DrvHasher`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use thiserror::Error;

use super::{DRV_EXTENSION, Derivation, DerivationKind, DerivationOutput, KindError, aterm};
use crate::hash::Hash;
use crate::store_path::{StoreDir, StorePath, StorePathError, output_path_name};

/// The error a resolver reports when it cannot produce an input derivation.
pub type ResolveError = Box<dyn std::error::Error + Send + Sync>;

/// Produces the derivation stored at a `.drv` path (read from a store, a cache, a map...).
pub trait DerivationResolver {
    /// The derivation at `drv_path`.
    fn resolve(&mut self, drv_path: &StorePath) -> Result<Derivation, ResolveError>;
}

impl<F> DerivationResolver for F
where
    F: FnMut(&StorePath) -> Result<Derivation, ResolveError>,
{
    fn resolve(&mut self, drv_path: &StorePath) -> Result<Derivation, ResolveError> {
        self(drv_path)
    }
}

/// The result of `hashDerivationModulo` for one derivation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrvHash {
    /// For each output, the SHA-256 that stands for it: the same hash of the rewritten ATerm for
    /// every output of an ordinary derivation, a hash of `fixed:out:...` for a fixed output.
    pub outputs: BTreeMap<String, Hash>,
    /// Whether a floating content-addressed derivation is among the inputs (or is this one), so
    /// that output paths are not yet known.
    pub deferred: bool,
}

/// Why output paths could not be computed or do not match.
#[derive(Debug, Error)]
pub enum HashModuloError {
    /// The resolver failed for an input derivation.
    #[error("cannot read input derivation {path}: {source}")]
    Resolve {
        /// The input derivation's path.
        path: String,
        /// The resolver's error.
        source: ResolveError,
    },
    /// A derivation's outputs form no kind Nix accepts.
    #[error("derivation {drv}: {source}")]
    Kind {
        /// The derivation (path, or name when it has no path yet).
        drv: String,
        /// What is wrong with its outputs.
        source: KindError,
    },
    /// A derivation uses an output its input derivation does not have.
    #[error("derivation {drv} uses output {output:?} of {input}, which has no such output")]
    MissingOutput {
        /// The derivation using the output.
        drv: String,
        /// The input derivation's path.
        input: String,
        /// The output name it asks for.
        output: String,
    },
    /// The input derivations refer back to a derivation being hashed.
    #[error("input derivations form a cycle through {0}")]
    Cycle(String),
    /// A computed output path would be invalid (its name is too long, for instance).
    #[error("derivation {drv}: output {output:?} has no valid path: {source}")]
    BadOutputPath {
        /// The derivation.
        drv: String,
        /// The output.
        output: String,
        /// Why the path is invalid.
        source: StorePathError,
    },
    /// A derivation names the `.drv` path of a file other than itself.
    #[error("{path} is not a .drv path")]
    NotDrvPath {
        /// The path.
        path: String,
    },
    /// An output path differs from the one Nix computes.
    #[error("derivation {drv} has incorrect output {output:?}: {actual}, should be {expected}")]
    WrongOutputPath {
        /// The derivation.
        drv: String,
        /// The output.
        output: String,
        /// The path the derivation states.
        actual: String,
        /// The path Nix computes.
        expected: String,
    },
    /// The environment variable named after an output does not hold its path.
    #[error(
        "derivation {drv} has incorrect environment variable {output:?}: {actual:?}, should be {expected}"
    )]
    WrongEnv {
        /// The derivation.
        drv: String,
        /// The output (and variable) name.
        output: String,
        /// The variable's value (lossily decoded), or `<unset>`.
        actual: String,
        /// The output path it must hold.
        expected: String,
    },
    /// The `.drv` path does not match the derivation's contents.
    #[error("derivation {actual} does not match its contents, which give the path {expected}")]
    WrongDrvPath {
        /// The path the derivation was found at.
        actual: String,
        /// The path its contents give.
        expected: String,
    },
}

/// Computes `hashDerivationModulo`, output paths and `.drv` paths, memoizing the hashes of
/// input derivations by path.
pub struct DrvHasher<R> {
    store_dir: StoreDir,
    resolver: R,
    memo: HashMap<StorePath, DrvHash>,
}

/// A derivation being hashed, with the inputs still to visit.
struct Frame {
    path: StorePath,
    drv: Derivation,
    pending: Vec<StorePath>,
}

impl<R: DerivationResolver> DrvHasher<R> {
    /// A hasher for store `store_dir` reading input derivations through `resolver`.
    pub fn new(store_dir: StoreDir, resolver: R) -> Self {
        DrvHasher {
            store_dir,
            resolver,
            memo: HashMap::new(),
        }
    }

    /// The store directory paths are computed in.
    pub fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }

    /// Nix's `hashDerivationModulo(drv, mask_outputs)`: `mask_outputs` blanks the output paths
    /// and the variables named after them, as Nix does when computing the paths in the first
    /// place; hashes of input derivations are always unmasked.
    pub fn hash_modulo(
        &mut self,
        drv: &Derivation,
        mask_outputs: bool,
    ) -> Result<DrvHash, HashModuloError> {
        for input in drv.input_drvs.keys() {
            self.hash_of_path(input)?;
        }
        self.hash_known(drv, &drv.name, mask_outputs)
    }

    /// The (unmasked) hash modulo of the derivation at `drv_path`, resolving it and its inputs as
    /// needed. The derivation's name is taken from the path, as Nix does.
    pub fn hash_of_path(&mut self, drv_path: &StorePath) -> Result<&DrvHash, HashModuloError> {
        if !self.memo.contains_key(drv_path) {
            self.hash_closure(drv_path)?;
        }
        Ok(&self.memo[drv_path])
    }

    fn load(&mut self, path: &StorePath) -> Result<Frame, HashModuloError> {
        let name =
            path.name()
                .strip_suffix(DRV_EXTENSION)
                .ok_or_else(|| HashModuloError::NotDrvPath {
                    path: self.store_dir.display(path),
                })?;
        let mut drv = self
            .resolver
            .resolve(path)
            .map_err(|source| HashModuloError::Resolve {
                path: self.store_dir.display(path),
                source,
            })?;
        drv.name = name.to_owned();
        let pending = drv.input_drvs.keys().rev().cloned().collect();
        Ok(Frame {
            path: path.clone(),
            drv,
            pending,
        })
    }

    fn hash_closure(&mut self, root: &StorePath) -> Result<(), HashModuloError> {
        let mut stack = vec![self.load(root)?];
        let mut on_stack = HashSet::from([root.clone()]);
        while let Some(frame) = stack.last_mut() {
            if let Some(input) = frame.pending.pop() {
                if self.memo.contains_key(&input) {
                    continue;
                }
                if on_stack.contains(&input) {
                    return Err(HashModuloError::Cycle(self.store_dir.display(&input)));
                }
                let next = self.load(&input)?;
                on_stack.insert(input);
                stack.push(next);
            } else {
                let frame = stack.pop().expect("stack is not empty");
                let label = self.store_dir.display(&frame.path);
                let hash = self.hash_known(&frame.drv, &label, false)?;
                on_stack.remove(&frame.path);
                self.memo.insert(frame.path, hash);
            }
        }
        Ok(())
    }

    /// The hash of `drv`, whose input derivations are all memoized.
    fn hash_known(
        &self,
        drv: &Derivation,
        label: &str,
        mask_outputs: bool,
    ) -> Result<DrvHash, HashModuloError> {
        let kind = drv.kind().map_err(|source| HashModuloError::Kind {
            drv: label.to_owned(),
            source,
        })?;
        if kind == DerivationKind::Fixed {
            let mut outputs = BTreeMap::new();
            for (name, output) in &drv.outputs {
                let DerivationOutput::Fixed { hash, .. } = output else {
                    unreachable!("kind is Fixed")
                };
                let path = hash
                    .output_path(&self.store_dir, &output_path_name(&drv.name, name))
                    .map_err(|source| bad_path(label, name, source))?;
                let fingerprint = format!(
                    "fixed:out:{}:{}:{}",
                    hash.method_algo(),
                    hash.hash.to_base16(),
                    self.store_dir.display(&path)
                );
                outputs.insert(name.clone(), Hash::sha256(fingerprint));
            }
            return Ok(DrvHash {
                outputs,
                deferred: false,
            });
        }

        let mut deferred = kind == DerivationKind::Floating;
        let mut inputs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (path, names) in &drv.input_drvs {
            let input = &self.memo[path];
            deferred |= input.deferred;
            for name in names {
                let hash =
                    input
                        .outputs
                        .get(name)
                        .ok_or_else(|| HashModuloError::MissingOutput {
                            drv: label.to_owned(),
                            input: self.store_dir.display(path),
                            output: name.clone(),
                        })?;
                inputs
                    .entry(hash.to_base16())
                    .or_default()
                    .insert(name.clone());
            }
        }
        let mut text = Vec::with_capacity(4096);
        aterm::print(&mut text, drv, &self.store_dir, mask_outputs, Some(&inputs));
        let hash = Hash::sha256(&text);
        let outputs = drv
            .outputs
            .keys()
            .map(|name| (name.clone(), hash.clone()))
            .collect();
        Ok(DrvHash { outputs, deferred })
    }

    /// The output paths Nix gives `drv`: computed from the hash for a fixed output, from
    /// `hashDerivationModulo` with masked outputs for input-addressed ones, `None` for floating
    /// and deferred outputs, whose paths are not known before building.
    pub fn output_paths(
        &mut self,
        drv: &Derivation,
    ) -> Result<BTreeMap<String, Option<StorePath>>, HashModuloError> {
        let label = drv.name.clone();
        let kind = drv.kind().map_err(|source| HashModuloError::Kind {
            drv: label.clone(),
            source,
        })?;
        let masked = match kind {
            DerivationKind::InputAddressed => Some(self.hash_modulo(drv, true)?),
            _ => None,
        };
        let mut paths = BTreeMap::new();
        for (name, output) in &drv.outputs {
            let path = match output {
                DerivationOutput::Fixed { hash, .. } => Some(
                    hash.output_path(&self.store_dir, &output_path_name(&drv.name, name))
                        .map_err(|source| bad_path(&label, name, source))?,
                ),
                DerivationOutput::InputAddressed(_) => {
                    let hash = &masked
                        .as_ref()
                        .expect("computed for input-addressed")
                        .outputs[name];
                    Some(
                        self.store_dir
                            .make_output_path(name, hash, &drv.name)
                            .map_err(|source| bad_path(&label, name, source))?,
                    )
                }
                DerivationOutput::Floating { .. } | DerivationOutput::Deferred => None,
            };
            paths.insert(name.clone(), path);
        }
        Ok(paths)
    }

    /// Checks what Nix checks when it registers a `.drv` file (`checkDerivationOutputs`), plus
    /// the `.drv` path itself: `drv_path` must be the path of the contents, every stated output
    /// path must be the computed one, and the variable named after each output must hold it.
    pub fn check(&mut self, drv_path: &StorePath, drv: &Derivation) -> Result<(), HashModuloError> {
        let label = self.store_dir.display(drv_path);
        let expected = drv
            .drv_path(&self.store_dir)
            .map_err(|source| bad_path(&label, "drv", source))?;
        if &expected != drv_path {
            return Err(HashModuloError::WrongDrvPath {
                actual: label,
                expected: self.store_dir.display(&expected),
            });
        }
        let paths = self.output_paths(drv)?;
        for (name, output) in &drv.outputs {
            let Some(expected) = &paths[name] else {
                continue;
            };
            let expected = self.store_dir.display(expected);
            if let Some(actual) = output.path().map(|p| self.store_dir.display(p))
                && actual != expected
            {
                return Err(HashModuloError::WrongOutputPath {
                    drv: label,
                    output: name.clone(),
                    actual,
                    expected,
                });
            }
            let env = drv.env_var(name);
            if env != Some(expected.as_bytes()) {
                return Err(HashModuloError::WrongEnv {
                    drv: label,
                    output: name.clone(),
                    actual: env.map_or("<unset>".to_owned(), |v| {
                        String::from_utf8_lossy(v).into_owned()
                    }),
                    expected,
                });
            }
        }
        Ok(())
    }
}

fn bad_path(drv: &str, output: &str, source: StorePathError) -> HashModuloError {
    HashModuloError::BadOutputPath {
        drv: drv.to_owned(),
        output: output.to_owned(),
        source,
    }
}

/// `hashDerivationModulo` of `drv`, reading input derivations through `resolver` (use a
/// [`DrvHasher`] to share the memo between derivations).
pub fn hash_derivation_modulo(
    store_dir: &StoreDir,
    drv: &Derivation,
    resolver: impl DerivationResolver,
    mask_outputs: bool,
) -> Result<DrvHash, HashModuloError> {
    DrvHasher::new(store_dir.clone(), resolver).hash_modulo(drv, mask_outputs)
}
