//! The `nix-instantiate` invocations of one evaluation: arguments, environment, memory cap.

use std::ffi::OsString;
use std::hash::{BuildHasher, Hasher};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;

use serde_json::{Map, Value, json};

use super::walk::MAX_DEPTH;
use super::{EvalError, EvalInput, EvalRequest, JobsetSource};

/// The program every evaluation runs.
pub(crate) const NIX_INSTANTIATE: &str = "nix-instantiate";

/// The walker expression (see the file for its protocol).
const WALKER: &str = include_str!("walker.nix");

/// The largest `--argstr` value a batch may use: Linux refuses single arguments over 128 KiB.
pub(crate) const MAX_REQUEST_BYTES: usize = 100 * 1024;

/// Everything needed to start evaluator processes for one evaluation.
#[derive(Debug, Clone)]
pub(crate) struct Command {
    /// Arguments shared by every walker process (mode, store, search path, options).
    walker_args: Vec<OsString>,
    /// Arguments for plain (unrestricted) helper processes: store and the caller's options.
    plain_args: Vec<OsString>,
    /// The part of the walker request that does not change between batches.
    request: Map<String, Value>,
    /// The prefix of the walker's trace lines, unique to this evaluation.
    pub(crate) marker: String,
    /// The address-space limit per process, in bytes (0: none).
    pub(crate) max_memory: u64,
    /// The root of the chroot store, if any.
    pub(crate) store: Option<PathBuf>,
    /// The `nix-instantiate` to run.
    pub(crate) program: PathBuf,
}

impl Command {
    /// Checks `req` and builds the command lines for it.
    pub(crate) fn prepare(req: &EvalRequest) -> Result<Command, EvalError> {
        let checkout = std::fs::canonicalize(&req.checkout).map_err(|source| EvalError::Io {
            action: "opening the checkout",
            path: req.checkout.clone(),
            source,
        })?;
        let checkout_str = utf8(&checkout, "the checkout path")?;
        let marker = format!("@kiln-{:016x}:", nonce());

        let mut common: Vec<OsString> = vec!["--eval".into(), "--read-write-mode".into()];
        if let Some(store) = &req.nix.store {
            common.push("--store".into());
            common.push(store.into());
        }
        let mut walker_args = common.clone();
        let mut request = Map::new();
        request.insert("marker".into(), marker.clone().into());

        match &req.source {
            JobsetSource::Legacy { expression, inputs } => {
                let relative = checked_relative(expression)?;
                let file = checkout.join(relative);
                request.insert("source".into(), "legacy".into());
                request.insert(
                    "expression".into(),
                    utf8(&file, "the expression path")?.into(),
                );
                // Restricted evaluation, as Hydra does: only the checkout and the path inputs
                // may be read, and `<name>` finds path inputs.
                walker_args.extend(option("restrict-eval", "true"));
                walker_args.push("-I".into());
                walker_args.push(format!("kiln-jobset={checkout_str}").into());
                let mut encoded = Map::new();
                for (name, input) in inputs {
                    let (value, search_path) = encode_input(name, input)?;
                    if let Some(dir) = search_path
                        && !name.contains('=')
                    {
                        walker_args.push("-I".into());
                        walker_args.push(format!("{name}={dir}").into());
                    }
                    encoded.insert(name.clone(), value);
                }
                request.insert("inputs".into(), Value::Object(encoded));
            }
            JobsetSource::Flake { rev } => {
                let lock = match rev {
                    Some(rev) => {
                        if rev.len() != 40 || !rev.bytes().all(|b| b.is_ascii_hexdigit()) {
                            return Err(EvalError::InvalidRequest(format!(
                                "flake revision {rev:?} is not 40 hexadecimal digits"
                            )));
                        }
                        format!("rev={}", rev.to_ascii_lowercase())
                    }
                    None => {
                        let (hash, _) = kiln_nix::nar::hash_path(&checkout).map_err(|e| {
                            EvalError::InvalidRequest(format!(
                                "cannot hash the flake checkout {checkout_str}: {e}"
                            ))
                        })?;
                        format!("narHash={}", percent_encode(&hash.to_sri()))
                    }
                };
                let flake_ref = format!("path:{}?{lock}", percent_encode(checkout_str));
                request.insert("source".into(), "flake".into());
                request.insert("flakeRef".into(), flake_ref.into());
                walker_args.push("--extra-experimental-features".into());
                walker_args.push("nix-command flakes".into());
                walker_args.extend(option("pure-eval", "true"));
            }
        }

        let mut plain_args = common;
        for (name, value) in &req.nix.options {
            walker_args.extend(option(name, value));
            plain_args.extend(option(name, value));
        }
        walker_args.push("-E".into());
        walker_args.push(WALKER.into());

        let base_size = Value::Object(request.clone()).to_string().len();
        if base_size > MAX_REQUEST_BYTES / 2 {
            return Err(EvalError::InvalidRequest(format!(
                "the jobset's inputs take {base_size} bytes; at most {} are supported",
                MAX_REQUEST_BYTES / 2
            )));
        }

        Ok(Command {
            walker_args,
            plain_args,
            request,
            marker,
            max_memory: req.max_memory,
            store: req.nix.store.clone(),
            program: match &req.nix.bin_dir {
                Some(dir) => dir.join(NIX_INSTANTIATE),
                None => PathBuf::from(NIX_INSTANTIATE),
            },
        })
    }

    /// The request of a batch: the fixed part plus `paths`, whether they run alone, and how
    /// many paths the process may take on in all (see `takes` in the walker).
    pub(crate) fn batch_request(
        &self,
        paths: &[Vec<String>],
        alone: bool,
        budget: usize,
    ) -> String {
        let mut request = self.request.clone();
        request.insert("alone".into(), alone.into());
        request.insert("budget".into(), budget.into());
        request.insert("maxDepth".into(), MAX_DEPTH.into());
        request.insert("paths".into(), json!(paths));
        Value::Object(request).to_string()
    }

    /// The size a batch request has without any path.
    pub(crate) fn base_request_size(&self) -> usize {
        self.batch_request(&[], false, usize::MAX).len()
    }

    /// A walker process for `request` (from [`Command::batch_request`]).
    pub(crate) fn walker(&self, request: &str) -> tokio::process::Command {
        let mut command = self.base();
        command.args(&self.walker_args);
        command.arg("--argstr").arg("kilnRequest").arg(request);
        command
    }

    /// An unrestricted process evaluating `expression`, a function of `kilnRequest`, with
    /// `--strict --json` so its result can be read from stdout.
    pub(crate) fn plain(&self, expression: &str, request: &str) -> tokio::process::Command {
        let mut command = self.base();
        command.args(&self.plain_args);
        command.args(["--strict", "--json", "-E", expression]);
        command.arg("--argstr").arg("kilnRequest").arg(request);
        command
    }

    fn base(&self) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.program);
        // Hydra evaluates without NIX_PATH, so `<nixpkgs>` can only mean an input.
        command
            .env_remove("NIX_PATH")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if self.max_memory > 0 {
            let limit = self.max_memory;
            // SAFETY: the closure runs in the forked child before exec and only makes the
            // setrlimit system call, which is async-signal-safe; it allocates nothing.
            unsafe {
                command.pre_exec(move || {
                    let rlimit = rustix::process::Rlimit {
                        current: Some(limit),
                        maximum: Some(limit),
                    };
                    rustix::process::setrlimit(rustix::process::Resource::As, rlimit)
                        .map_err(std::io::Error::from)
                });
            }
        }
        command
    }
}

fn option(name: &str, value: &str) -> [OsString; 3] {
    ["--option".into(), name.into(), value.into()]
}

fn utf8<'a>(path: &'a Path, what: &str) -> Result<&'a str, EvalError> {
    path.to_str().ok_or_else(|| {
        EvalError::InvalidRequest(format!(
            "{what} {} is not valid UTF-8",
            path.as_os_str().as_bytes().escape_ascii()
        ))
    })
}

/// `expression` as a path that stays inside the checkout.
fn checked_relative(expression: &str) -> Result<&Path, EvalError> {
    let path = Path::new(expression);
    let inside = !expression.is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if inside {
        Ok(path)
    } else {
        Err(EvalError::InvalidRequest(format!(
            "expression {expression:?} must be a relative path inside the checkout"
        )))
    }
}

/// The JSON the walker turns into the input's value, and the directory to put on the search
/// path for it, if it is one.
fn encode_input(name: &str, input: &EvalInput) -> Result<(Value, Option<String>), EvalError> {
    let absolute = |path: &Path| -> Result<String, EvalError> {
        let path = std::path::absolute(path).map_err(|source| EvalError::Io {
            action: "resolving the input path",
            path: path.to_owned(),
            source,
        })?;
        Ok(utf8(&path, &format!("input {name:?}"))?.to_owned())
    };
    Ok(match input {
        EvalInput::String(s) => (json!({ "type": "string", "value": s }), None),
        EvalInput::Bool(b) => (json!({ "type": "bool", "value": b }), None),
        EvalInput::Checkout(path) => {
            let path = absolute(path)?;
            (json!({ "type": "path", "path": path }), Some(path))
        }
        EvalInput::Git { path, rev } => {
            if rev.len() != 40 || !rev.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(EvalError::InvalidRequest(format!(
                    "input {name:?}: revision {rev:?} is not 40 hexadecimal digits"
                )));
            }
            let path = absolute(path)?;
            let value = json!({
                "type": "git", "path": path, "rev": rev, "shortRev": &rev[..7],
            });
            (value, Some(path))
        }
    })
}

/// Percent-encodes everything but unreserved characters and `/`, for flake URLs.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A value unlikely to appear in a jobset's own trace output.
fn nonce() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions_must_stay_inside_the_checkout() {
        assert!(checked_relative("release.nix").is_ok());
        assert!(checked_relative("./ci/release.nix").is_ok());
        for bad in ["", "/etc/release.nix", "../release.nix", "ci/../../x.nix"] {
            assert!(checked_relative(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn flake_paths_are_percent_encoded() {
        assert_eq!(percent_encode("/tmp/a b?c"), "/tmp/a%20b%3Fc");
        assert_eq!(percent_encode("sha256-ab+/="), "sha256-ab%2B/%3D");
    }
}
