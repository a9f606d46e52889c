//! From the walker's records to [`EvaluatedJob`]s: reading each `.drv` and Hydra's `meta`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_nix::derivation::Derivation;
use kiln_nix::{StoreDir, StorePath};
use serde::Deserialize;
use serde_json::Value;

use super::aggregate::AggregateSpec;
use super::{EvalError, EvaluatedJob, JobMeta};

/// What the walker reports for one attribute path.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub(crate) enum Record {
    /// A derivation.
    Job(Box<RawJob>),
    /// An attribute set that is not a derivation, with its attribute names.
    Attrs {
        /// The names, sorted.
        names: Vec<String>,
    },
    /// Anything else.
    Skip {
        /// Nix's `builtins.typeOf` of the value.
        #[serde(rename = "type")]
        type_of: String,
    },
}

/// A derivation as the walker saw it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RawJob {
    /// The `.drv` path.
    pub(crate) drv_path: String,
    /// The `meta` fields Hydra reads, sanitized to JSON.
    pub(crate) meta: RawMeta,
    /// Present for aggregates.
    pub(crate) aggregate: Option<RawAggregate>,
}

/// `meta` fields, as JSON values of any type.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct RawMeta {
    pub(crate) description: Value,
    pub(crate) license: Value,
    pub(crate) homepage: Value,
    pub(crate) maintainers: Value,
    pub(crate) scheduling_priority: Value,
    pub(crate) timeout: Value,
    pub(crate) max_silent: Value,
}

/// An aggregate's constituents, as written in the jobset.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RawAggregate {
    /// `.drv` paths of constituents given as derivations.
    pub(crate) drvs: Vec<String>,
    /// Constituents given as job names (or globs).
    pub(crate) names: Vec<String>,
    /// Whether `names` are globs (`_hydraGlobConstituents`).
    pub(crate) glob: bool,
}

/// Where the store's files are: `<root>/nix/store` for a chroot store, `/nix/store` otherwise.
pub(crate) fn real_store_dir(store_root: Option<&Path>) -> PathBuf {
    match store_root {
        Some(root) => root.join("nix/store"),
        None => PathBuf::from("/nix/store"),
    }
}

/// Reads the `.drv` at `path` from the store.
pub(crate) fn read_drv(store_root: Option<&Path>, path: &StorePath) -> Result<Derivation, String> {
    let file = real_store_dir(store_root).join(path.to_string());
    let bytes = std::fs::read(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    Derivation::parse_drv_file(&StoreDir::default(), path, &bytes)
        .map_err(|e| format!("cannot parse {}: {e}", StoreDir::default().display(path)))
}

/// Turns walked jobs into [`EvaluatedJob`]s by reading their derivations; returns the jobs, the
/// aggregates to resolve, and jobs whose derivation could not be read (as errors).
pub(crate) fn finish(
    store_root: Option<&Path>,
    raw: BTreeMap<String, RawJob>,
) -> (
    BTreeMap<String, EvaluatedJob>,
    Vec<AggregateSpec>,
    BTreeMap<String, String>,
) {
    let store_dir = StoreDir::default();
    let mut jobs = BTreeMap::new();
    let mut aggregates = Vec::new();
    let mut errors = BTreeMap::new();
    for (name, raw) in raw {
        match finish_one(store_root, &store_dir, &name, raw) {
            Ok((job, aggregate)) => {
                jobs.insert(name, job);
                aggregates.extend(aggregate);
            }
            Err(message) => {
                errors.insert(name, message);
            }
        }
    }
    (jobs, aggregates, errors)
}

fn finish_one(
    store_root: Option<&Path>,
    store_dir: &StoreDir,
    name: &str,
    raw: RawJob,
) -> Result<(EvaluatedJob, Option<AggregateSpec>), String> {
    let drv_path = store_dir.parse_path(&raw.drv_path).map_err(|e| {
        format!(
            "the evaluator gave a bad derivation path {:?}: {e}",
            raw.drv_path
        )
    })?;
    let drv = read_drv(store_root, &drv_path)?;
    let aggregate = match raw.aggregate {
        Some(aggregate) => {
            let mut drvs = Vec::new();
            for path in &aggregate.drvs {
                drvs.push(store_dir.parse_path(path).map_err(|e| {
                    format!("the evaluator gave a bad constituent path {path:?}: {e}")
                })?);
            }
            Some(AggregateSpec {
                name: name.to_owned(),
                drvs,
                names: aggregate.names,
                glob: aggregate.glob,
            })
        }
        None => None,
    };
    let job = EvaluatedJob {
        name: name.to_owned(),
        outputs: drv
            .outputs
            .iter()
            .filter_map(|(name, output)| output.path().map(|p| (name.clone(), p.clone())))
            .collect(),
        system: String::from_utf8_lossy(&drv.system).into_owned(),
        meta: meta(raw.meta),
        required_system_features: required_system_features(&drv),
        constituents: aggregate.as_ref().map(|_| Vec::new()),
        drv_path,
    };
    Ok((job, aggregate))
}

/// `requiredSystemFeatures`: a list in structured attributes, a space-separated variable
/// otherwise.
pub(crate) fn required_system_features(drv: &Derivation) -> Vec<String> {
    if let Some(Ok(attrs)) = drv.structured_attrs() {
        return match attrs.get("requiredSystemFeatures") {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
    }
    drv.env_var("requiredSystemFeatures")
        .map(|v| {
            String::from_utf8_lossy(v)
                .split_ascii_whitespace()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Hydra's reading of `meta`: integers may be given as strings; anything else gets the default.
fn meta(raw: RawMeta) -> JobMeta {
    let defaults = JobMeta::default();
    JobMeta {
        description: raw.description.as_str().map(str::to_owned),
        license: raw.license,
        homepage: raw.homepage,
        maintainers: raw.maintainers,
        scheduling_priority: integer(&raw.scheduling_priority)
            .unwrap_or(defaults.scheduling_priority),
        timeout: integer(&raw.timeout)
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or(defaults.timeout),
        max_silent: integer(&raw.max_silent)
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or(defaults.max_silent),
    }
}

fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

impl JobMeta {
    /// The licenses as Hydra shows them: each string, or each license set's `shortName`,
    /// joined with `", "`.
    pub fn license_names(&self) -> String {
        hydra_strings(&self.license, "shortName")
    }

    /// The maintainers as Hydra shows them: each string, or each maintainer set's `email`,
    /// joined with `", "`.
    pub fn maintainer_emails(&self) -> String {
        hydra_strings(&self.maintainers, "email")
    }
}

fn hydra_strings(value: &Value, field: &str) -> String {
    fn collect<'a>(value: &'a Value, field: &str, out: &mut Vec<&'a str>) {
        match value {
            Value::String(s) => out.push(s),
            Value::Array(items) => items.iter().for_each(|v| collect(v, field, out)),
            Value::Object(map) => {
                if let Some(Value::String(s)) = map.get(field) {
                    out.push(s);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    collect(value, field, &mut out);
    out.join(", ")
}

/// Links `<dir>/<drv name>` to each derivation, skipping links that exist.
pub(crate) fn add_gc_roots(dir: &Path, paths: &[StorePath]) -> Result<(), EvalError> {
    let io = |action, path: &Path| {
        let path = path.to_owned();
        move |source| EvalError::Io {
            action,
            path,
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(io("creating the GC roots directory", dir))?;
    let store_dir = StoreDir::default();
    for path in paths {
        let link = dir.join(path.to_string());
        if link.symlink_metadata().is_ok() {
            continue;
        }
        std::os::unix::fs::symlink(store_dir.display(path), &link)
            .map_err(io("creating the GC root", &link))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn meta_defaults_follow_hydra() {
        let m = meta(RawMeta::default());
        assert_eq!(m.scheduling_priority, 100);
        assert_eq!(m.timeout, 36000);
        assert_eq!(m.max_silent, 7200);
        assert_eq!(m.description, None);
    }

    #[test]
    fn meta_integers_may_be_strings_and_bad_values_fall_back() {
        let m = meta(RawMeta {
            scheduling_priority: json!("250"),
            timeout: json!(-5),
            max_silent: json!(1.5),
            description: json!(["not", "a", "string"]),
            ..RawMeta::default()
        });
        assert_eq!(m.scheduling_priority, 250);
        assert_eq!(m.timeout, 36000);
        assert_eq!(m.max_silent, 7200);
        assert_eq!(m.description, None);
    }

    #[test]
    fn hydra_strings_take_short_names_and_emails() {
        let m = JobMeta {
            license: json!([{ "shortName": "mit", "spdxId": "MIT" }, "custom"]),
            maintainers: json!([{ "email": "a@example.org" }, { "name": "no email" }]),
            ..JobMeta::default()
        };
        assert_eq!(m.license_names(), "mit, custom");
        assert_eq!(m.maintainer_emails(), "a@example.org");
    }
}
