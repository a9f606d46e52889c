//! Checking a step message before anything runs: the `.drv` must parse, hash to its path and
//! promise the outputs the message names; the worker must serve its system and features.
//!
//! A message that fails here is answered without touching Nix, so a malformed `.drv` can never
//! reach (and crash) the serve process.

use std::collections::{BTreeMap, BTreeSet};

use kiln_nix::derivation::{Derivation, DerivationKind};
use kiln_nix::{StoreDir, StorePath};
use kiln_proto::StepMessage;

use crate::serve::{BasicDerivation, BuildLimits};

/// A step that can be built.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The derivation to build, with its input derivations' outputs as input sources.
    pub basic: BasicDerivation,
    /// Output name → output path, as the `.drv` states them.
    pub outputs: BTreeMap<String, StorePath>,
    /// Full paths that must be valid before the build: the message's inputs and the `.drv`'s
    /// own sources.
    pub inputs: Vec<String>,
    /// Limits passed to Nix.
    pub limits: BuildLimits,
    /// The derivation's platform.
    pub system: String,
    /// Features the build requires: the message's and the `.drv`'s `requiredSystemFeatures`.
    pub required_features: BTreeSet<String>,
}

/// Why a message cannot be built. The text is the step's failure message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanError(pub String);

impl PlanError {
    fn new(msg: impl Into<String>) -> PlanError {
        PlanError(msg.into())
    }
}

/// Checks `step` and turns it into a [`Plan`].
pub fn plan(step: &StepMessage) -> Result<Plan, PlanError> {
    let store_dir = StoreDir::default();
    let drv_path = store_dir
        .parse_path(&step.drv_path)
        .map_err(|e| PlanError::new(format!("drv_path {:?}: {e}", step.drv_path)))?;
    if !drv_path.is_derivation() {
        return Err(PlanError::new(format!(
            "drv_path {} does not name a .drv file",
            step.drv_path
        )));
    }
    let drv =
        Derivation::parse_drv_file(&store_dir, &drv_path, step.drv.as_bytes()).map_err(|e| {
            PlanError::new(format!(
                "the .drv text of {} is malformed: {e}",
                step.drv_path
            ))
        })?;
    let hashed = drv
        .drv_path(&store_dir)
        .map_err(|e| PlanError::new(format!("the .drv text of {}: {e}", step.drv_path)))?;
    if hashed != drv_path {
        return Err(PlanError::new(format!(
            "the .drv text does not belong to {}: it hashes to {}",
            step.drv_path,
            store_dir.display(&hashed)
        )));
    }
    match drv.kind() {
        Ok(DerivationKind::InputAddressed | DerivationKind::Fixed) => {}
        Ok(DerivationKind::Floating | DerivationKind::Deferred) => {
            return Err(PlanError::new(format!(
                "{} has content-addressed (floating or deferred) outputs, which Kiln does not build yet",
                step.drv_path
            )));
        }
        Err(e) => return Err(PlanError::new(format!("{}: {e}", step.drv_path))),
    }
    let outputs: BTreeMap<String, StorePath> = drv
        .outputs
        .iter()
        .filter_map(|(name, out)| out.path().map(|p| (name.clone(), p.clone())))
        .collect();
    let stated: BTreeMap<&str, String> = outputs
        .iter()
        .map(|(name, path)| (name.as_str(), store_dir.display(path)))
        .collect();
    let sent: BTreeMap<&str, String> = step
        .outputs
        .iter()
        .map(|(name, path)| (name.as_str(), path.clone()))
        .collect();
    if stated != sent {
        return Err(PlanError::new(format!(
            "the message's outputs {sent:?} differ from those of {}: {stated:?}",
            step.drv_path
        )));
    }
    let system = drv
        .system_str()
        .ok_or_else(|| PlanError::new(format!("the system of {} is not UTF-8", step.drv_path)))?
        .to_owned();
    if system != step.system {
        return Err(PlanError::new(format!(
            "the message says system {:?} but {} is for {system:?}",
            step.system, step.drv_path
        )));
    }

    let mut input_paths = BTreeSet::new();
    for input in &step.input_paths {
        let path = store_dir
            .parse_path(input)
            .map_err(|e| PlanError::new(format!("input path {input:?}: {e}")))?;
        input_paths.insert(path);
    }
    input_paths.extend(drv.input_srcs.iter().cloned());
    let inputs = input_paths.iter().map(|p| store_dir.display(p)).collect();

    let mut required_features: BTreeSet<String> = step.required_features.iter().cloned().collect();
    if let Some(features) = drv.env_str("requiredSystemFeatures") {
        required_features.extend(features.split_whitespace().map(str::to_owned));
    }

    Ok(Plan {
        basic: BasicDerivation::new(drv_path, drv, input_paths),
        outputs,
        inputs,
        limits: BuildLimits {
            max_silent_secs: step.max_silent_secs,
            timeout_secs: step.timeout_secs,
            max_log_bytes: step.max_log_bytes,
        },
        system,
        required_features,
    })
}

#[cfg(test)]
mod tests;
