//! Kiln's wire types between the coordinator and its workers: what one build step is
//! ([`StepMessage`]) and what became of it ([`StepResult`]).
//!
//! These are the bytes that travel on the bus (in process for `kiln up`, RabbitMQ in the
//! distributed mode), serialized as JSON. Every message carries a `version`; a reader refuses a
//! version it does not know with [`ProtoError::Version`] instead of guessing. Fields may be added
//! in a compatible way without a new version (readers ignore fields they do not know, and new
//! fields carry serde defaults); any change of meaning needs a new version. This crate holds types and their encoding only: no I/O, no policy.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The wire version this crate writes and the only one it reads.
pub const PROTO_VERSION: u32 = 1;

/// Why a message could not be decoded.
#[derive(Debug, Error)]
pub enum ProtoError {
    /// The bytes are not a message of the expected shape.
    #[error("malformed {what}: {source}")]
    Malformed {
        /// Which message type was expected.
        what: &'static str,
        /// The JSON error, with line and column.
        source: serde_json::Error,
    },
    /// A version this build of Kiln does not speak.
    #[error("{what} has wire version {found}; this Kiln speaks version {PROTO_VERSION}")]
    Version {
        /// Which message type was decoded.
        what: &'static str,
        /// The version the message carries.
        found: u32,
    },
}

/// One build step sent to a worker: everything needed to build the derivation without access
/// to the coordinator's store or database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepMessage {
    /// Wire version, [`PROTO_VERSION`].
    pub version: u32,
    /// The step (a row of `steps`), echoed in the result.
    pub step_id: i64,
    /// Attempt number, from 1. A redelivered message repeats the same attempt.
    pub attempt: u32,
    /// Full store path of the `.drv` (`/nix/store/...-name.drv`).
    pub drv_path: String,
    /// The `.drv` file's ATerm text, so a worker needs no `.drv` closure.
    pub drv: String,
    /// Full store paths the build needs: outputs of input derivations and input sources. All
    /// are in the cache when the message is sent.
    pub input_paths: Vec<String>,
    /// Output name → the store path it must produce.
    pub outputs: BTreeMap<String, String>,
    /// The derivation's `system` (`x86_64-linux`).
    pub system: String,
    /// `requiredSystemFeatures`, sorted.
    pub required_features: Vec<String>,
    /// Wall-clock limit of the build, in seconds (`meta.timeout`).
    pub timeout_secs: u64,
    /// Limit on the time without log output, in seconds (`meta.maxSilent`).
    pub max_silent_secs: u64,
    /// Largest build log kept, in bytes; a longer log ends the build as `LogLimitExceeded`.
    pub max_log_bytes: u64,
    /// Largest total NAR size of the outputs, in bytes; more ends it as `OutputLimitExceeded`.
    pub max_output_bytes: u64,
}

/// What a worker reports about one attempt of one step. The coordinator applies it once per
/// (`step_id`, `attempt`), whatever the redeliveries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepResult {
    /// Wire version, [`PROTO_VERSION`].
    pub version: u32,
    /// The step, as in the [`StepMessage`].
    pub step_id: i64,
    /// The attempt, as in the [`StepMessage`].
    pub attempt: u32,
    /// Name of the worker that ran it.
    pub worker: String,
    /// How the attempt ended.
    pub status: StepStatus,
    /// A human-readable cause: `builder exited with status 1`, or what went wrong for
    /// `Transient`.
    #[serde(default)]
    pub message: Option<String>,
    /// When the build started, UTC milliseconds since the Unix epoch.
    pub started_at_ms: i64,
    /// When it ended, UTC milliseconds since the Unix epoch.
    pub finished_at_ms: i64,
    /// Output name → what was uploaded to the cache. Empty unless outputs were produced.
    #[serde(default)]
    pub outputs: BTreeMap<String, OutputInfo>,
    /// Lines of `nix-support/hydra-build-products` of the outputs.
    #[serde(default)]
    pub products: Vec<BuildProduct>,
    /// Lines of `nix-support/hydra-metrics` of the outputs.
    #[serde(default)]
    pub metrics: Vec<BuildMetric>,
}

/// How one attempt of a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StepStatus {
    /// Built; every output is in the cache.
    Succeeded,
    /// The builder failed.
    Failed,
    /// The builder succeeded but an output holds `nix-support/failed` (Hydra status 6); the
    /// outputs are in the cache.
    FailedWithOutput,
    /// `timeout` or `maxSilent` was exceeded.
    TimedOut,
    /// The log grew beyond `max_log_bytes`.
    LogLimitExceeded,
    /// The outputs grew beyond `max_output_bytes`.
    OutputLimitExceeded,
    /// Trouble of the worker or the cache, not of the derivation (substitution or upload
    /// failed, the worker is shutting down): the coordinator retries.
    Transient,
    /// The build was cancelled on the coordinator's request.
    Cancelled,
}

impl StepStatus {
    /// Every status, in declaration order.
    pub const ALL: [StepStatus; 8] = [
        StepStatus::Succeeded,
        StepStatus::Failed,
        StepStatus::FailedWithOutput,
        StepStatus::TimedOut,
        StepStatus::LogLimitExceeded,
        StepStatus::OutputLimitExceeded,
        StepStatus::Transient,
        StepStatus::Cancelled,
    ];

    /// The status name used in the database and the API (`failed-with-output`).
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::FailedWithOutput => "failed-with-output",
            StepStatus::TimedOut => "timed-out",
            StepStatus::LogLimitExceeded => "log-limit-exceeded",
            StepStatus::OutputLimitExceeded => "output-limit-exceeded",
            StepStatus::Transient => "transient",
            StepStatus::Cancelled => "cancelled",
        }
    }

    /// Whether the step's outputs were built and uploaded (its dependents may use them).
    pub fn has_outputs(self) -> bool {
        matches!(self, StepStatus::Succeeded | StepStatus::FailedWithOutput)
    }
}

impl fmt::Display for StepStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One output as uploaded to the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputInfo {
    /// Full store path.
    pub path: String,
    /// `sha256:<nix32>` of its NAR.
    pub nar_hash: String,
    /// Size of its NAR in bytes.
    pub nar_size: u64,
}

/// One line of `nix-support/hydra-build-products`: `type subtype path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildProduct {
    /// Product type (`file`, `doc`, `report`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// Product subtype (`source-dist`, `readme`, ...).
    pub subtype: String,
    /// Full path of the product inside an output.
    pub path: String,
    /// Base name of `path`.
    pub name: String,
    /// Size in bytes, when `path` is a regular file.
    #[serde(default)]
    pub file_size: Option<u64>,
    /// SHA-256 of the file's contents, lowercase hex, when `path` is a regular file.
    #[serde(default)]
    pub sha256: Option<String>,
}

/// One line of `nix-support/hydra-metrics`: `name value [unit]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildMetric {
    /// Metric name.
    pub name: String,
    /// Its value.
    pub value: f64,
    /// Its unit (`s`, `KiB`, ...), if given.
    #[serde(default)]
    pub unit: Option<String>,
}

/// Reads the `version` field alone, so a message of another version is refused by version, not
/// by a field it may have renamed.
#[derive(Deserialize)]
struct Versioned {
    version: u32,
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &'static str) -> Result<T, ProtoError> {
    let Versioned { version } =
        serde_json::from_slice(bytes).map_err(|source| ProtoError::Malformed { what, source })?;
    if version != PROTO_VERSION {
        return Err(ProtoError::Version {
            what,
            found: version,
        });
    }
    serde_json::from_slice(bytes).map_err(|source| ProtoError::Malformed { what, source })
}

impl StepMessage {
    /// The message's JSON encoding.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a StepMessage always serializes")
    }

    /// Decodes a message, refusing other versions and malformed JSON.
    pub fn decode(bytes: &[u8]) -> Result<StepMessage, ProtoError> {
        decode(bytes, "step message")
    }
}

impl StepResult {
    /// The result's JSON encoding. Non-finite metric values are written as `null` by JSON and
    /// would not decode, so workers must drop them (the metrics parser does).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a StepResult always serializes")
    }

    /// Decodes a result, refusing other versions and malformed JSON.
    pub fn decode(bytes: &[u8]) -> Result<StepResult, ProtoError> {
        decode(bytes, "step result")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> StepMessage {
        StepMessage {
            version: PROTO_VERSION,
            step_id: 7,
            attempt: 2,
            drv_path: "/nix/store/0000000000000000000000000000000a-x.drv".into(),
            drv: "Derive([],[],[],\"x86_64-linux\",\"/bin/sh\",[],[])".into(),
            input_paths: vec!["/nix/store/0000000000000000000000000000000b-src".into()],
            outputs: BTreeMap::from([(
                "out".into(),
                "/nix/store/0000000000000000000000000000000c-x".into(),
            )]),
            system: "x86_64-linux".into(),
            required_features: vec!["kvm".into()],
            timeout_secs: 36000,
            max_silent_secs: 7200,
            max_log_bytes: 64 << 20,
            max_output_bytes: 8 << 30,
        }
    }

    fn result() -> StepResult {
        StepResult {
            version: PROTO_VERSION,
            step_id: 7,
            attempt: 2,
            worker: "w1".into(),
            status: StepStatus::FailedWithOutput,
            message: Some("nix-support/failed".into()),
            started_at_ms: 1,
            finished_at_ms: 2,
            outputs: BTreeMap::from([(
                "out".into(),
                OutputInfo {
                    path: "/nix/store/0000000000000000000000000000000c-x".into(),
                    nar_hash: "sha256:0000000000000000000000000000000000000000000000000000".into(),
                    nar_size: 120,
                },
            )]),
            products: vec![BuildProduct {
                kind: "file".into(),
                subtype: "binary-dist".into(),
                path: "/nix/store/0000000000000000000000000000000c-x/a b".into(),
                name: "a b".into(),
                file_size: Some(3),
                sha256: Some("ab".repeat(32)),
            }],
            metrics: vec![BuildMetric {
                name: "time".into(),
                value: 1.5,
                unit: Some("s".into()),
            }],
        }
    }

    #[test]
    fn messages_and_results_survive_a_round_trip() {
        assert_eq!(StepMessage::decode(&message().encode()).unwrap(), message());
        assert_eq!(StepResult::decode(&result().encode()).unwrap(), result());
    }

    #[test]
    fn statuses_have_the_api_names() {
        let json = serde_json::to_string(&StepStatus::FailedWithOutput).unwrap();
        assert_eq!(json, "\"FailedWithOutput\"");
        let names: Vec<_> = StepStatus::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "succeeded",
                "failed",
                "failed-with-output",
                "timed-out",
                "log-limit-exceeded",
                "output-limit-exceeded",
                "transient",
                "cancelled"
            ]
        );
        assert!(StepStatus::FailedWithOutput.has_outputs());
        assert!(!StepStatus::TimedOut.has_outputs());
    }

    #[test]
    fn another_version_is_refused_by_its_number() {
        let mut value = serde_json::to_value(message()).unwrap();
        value["version"] = 2.into();
        value["renamed_field"] = 1.into();
        let err = StepMessage::decode(&serde_json::to_vec(&value).unwrap()).unwrap_err();
        assert!(matches!(err, ProtoError::Version { found: 2, .. }), "{err}");
        assert!(err.to_string().contains("version 2"), "{err}");
    }

    #[test]
    fn malformed_messages_name_what_is_wrong() {
        let err = StepResult::decode(b"{\"version\": 1, \"step_id\": \"x\"}").unwrap_err();
        assert!(err.to_string().contains("step result"), "{err}");
        assert!(StepMessage::decode(b"not json").is_err());
        let mut value = serde_json::to_value(result()).unwrap();
        value["status"] = "Exploded".into();
        let err = StepResult::decode(&serde_json::to_vec(&value).unwrap()).unwrap_err();
        assert!(err.to_string().contains("Exploded"), "{err}");
    }
}
