//! A cache and workers for the worker tests: `kiln up --workers 0`, a "coordinator" store that
//! instantiates derivations and pushes their sources, step messages made from real `.drv`
//! files, and executors on fresh stores of their own.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use kiln_nix::derivation::Derivation;
use kiln_nix::{StoreDir, StorePath};
use kiln_proto::{PROTO_VERSION, StepMessage, StepResult, StepStatus};
use kiln_worker::{CancellationToken, Executor, LogSink, UploadSettings, WorkerConfig};

use crate::harness::{Kiln, NixStore, write_netrc};

/// A running cache, a coordinator store and a runtime to drive executors with.
pub struct Farm {
    pub kiln: Kiln,
    pub dir: tempfile::TempDir,
    pub coord: NixStore,
    pub token: String,
    pub netrc: PathBuf,
    pub rt: tokio::runtime::Runtime,
}

/// A log sink that keeps every line.
#[derive(Default)]
pub struct Lines(pub Mutex<Vec<(i64, String)>>);

impl LogSink for Lines {
    fn line(&self, step_id: i64, line: &[u8]) {
        self.0
            .lock()
            .unwrap()
            .push((step_id, String::from_utf8_lossy(line).into_owned()));
    }
}

impl Lines {
    /// The lines received, in order.
    pub fn texts(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, l)| l.clone())
            .collect()
    }
}

impl Farm {
    /// Starts `kiln up --workers 0` and creates a push token for cache `main`.
    pub fn start() -> Farm {
        let kiln = Kiln::start();
        let dir = tempfile::tempdir().unwrap();
        let coord = NixStore::new(dir.path(), "coord");
        let token = kiln.token("main", "push");
        let netrc = write_netrc(dir.path(), "netrc", &token);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        Farm {
            kiln,
            dir,
            coord,
            token,
            netrc,
            rt,
        }
    }

    /// The configuration of a worker named `name` with a fresh store of its own.
    pub fn config(&self, name: &str) -> WorkerConfig {
        WorkerConfig::new(
            name,
            self.dir.path().join(format!("worker-{name}")),
            self.kiln.substituter.clone(),
            self.kiln.public_key.clone(),
            UploadSettings {
                base_url: self.kiln.base.clone(),
                cache: "main".to_owned(),
                token: Some(self.token.clone()),
            },
        )
    }

    /// Starts an executor with [`Farm::config`].
    pub fn executor(&self, name: &str) -> Executor {
        self.start_executor(self.config(name))
    }

    /// Starts an executor with `config`.
    pub fn start_executor(&self, config: WorkerConfig) -> Executor {
        self.rt
            .block_on(Executor::start(config))
            .expect("executor starts")
    }

    /// Instantiates attribute `attr` of the Nix expression `expr` in the coordinator store;
    /// returns the `.drv` path.
    pub fn instantiate(&self, expr: &str, attr: &str) -> String {
        let file = self.dir.path().join(format!("expr-{attr}.nix"));
        std::fs::write(&file, expr).unwrap();
        let out = std::process::Command::new("nix-instantiate")
            .arg("--store")
            .arg(&self.coord.root)
            .args(["--option", "substituters", "", "-A", attr])
            .arg(&file)
            .env("XDG_CACHE_HOME", self.dir.path().join("coord-xdg"))
            .output()
            .expect("run nix-instantiate");
        assert!(
            out.status.success(),
            "nix-instantiate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    fn read_drv(&self, drv_path: &str) -> (String, Derivation) {
        let text = std::fs::read_to_string(self.coord.real_path(drv_path)).unwrap();
        let path = StorePath::parse(drv_path).unwrap();
        let drv = Derivation::parse_drv_file(&StoreDir::default(), &path, text.as_bytes()).unwrap();
        (text, drv)
    }

    /// The step message for `drv_path`, as the coordinator would send it: the `.drv` text,
    /// the outputs of its input derivations and its sources as inputs, generous limits.
    pub fn message(&self, step_id: i64, drv_path: &str) -> StepMessage {
        let (text, drv) = self.read_drv(drv_path);
        let mut input_paths: Vec<String> = drv.input_srcs.iter().map(|p| p.to_absolute()).collect();
        for (input, wanted) in &drv.input_drvs {
            let (_, input_drv) = self.read_drv(&input.to_absolute());
            for name in wanted {
                input_paths.push(input_drv.outputs[name].path().unwrap().to_absolute());
            }
        }
        StepMessage {
            version: PROTO_VERSION,
            step_id,
            attempt: 1,
            drv_path: drv_path.to_owned(),
            drv: text,
            input_paths,
            outputs: drv
                .outputs
                .iter()
                .map(|(name, out)| (name.clone(), out.path().unwrap().to_absolute()))
                .collect::<BTreeMap<_, _>>(),
            system: drv.system_str().unwrap().to_owned(),
            required_features: vec![],
            timeout_secs: 600,
            max_silent_secs: 600,
            max_log_bytes: 1 << 20,
            max_output_bytes: 1 << 30,
        }
    }

    /// Pushes the input sources of `drv_path` (not the outputs of its input derivations) from
    /// the coordinator store to the cache, as the coordinator does before dispatching.
    pub fn push_sources(&self, drv_path: &str) {
        let (_, drv) = self.read_drv(drv_path);
        let srcs: Vec<String> = drv.input_srcs.iter().map(|p| p.to_absolute()).collect();
        if srcs.is_empty() {
            return;
        }
        let url = format!("{}?compression=zstd", self.kiln.substituter);
        let out = self.coord.copy_to(&url, &srcs, Some(&self.netrc));
        assert!(
            out.status.success(),
            "nix copy of the sources failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `step` on `executor`; returns the result and the live log lines.
    pub fn run(&self, executor: &Executor, step: &StepMessage) -> (StepResult, Vec<String>) {
        let lines = Lines::default();
        let result = self
            .rt
            .block_on(executor.run(step, &lines, CancellationToken::new()));
        assert_eq!(
            (result.step_id, result.attempt, result.worker.as_str()),
            (step.step_id, step.attempt, executor.config().name.as_str())
        );
        (result, lines.texts())
    }

    /// Runs `step` and asserts it succeeded.
    pub fn run_ok(&self, executor: &Executor, step: &StepMessage) -> StepResult {
        let (result, lines) = self.run(executor, step);
        assert_eq!(
            result.status,
            StepStatus::Succeeded,
            "{:?}, log: {lines:?}",
            result.message
        );
        result
    }

    /// A new, empty store that substitutes only from the cache.
    pub fn fresh_store(&self, name: &str) -> NixStore {
        NixStore::new(self.dir.path(), name)
    }

    /// Substitutes `paths` into a fresh store with `--max-jobs 0`, trusting only the cache's
    /// key; panics with Nix's message unless it works.
    pub fn assert_substitutes(&self, name: &str, paths: &[String]) -> NixStore {
        let store = self.fresh_store(name);
        let out = store.substitute(&self.kiln.substituter, &self.kiln.public_key, paths, None);
        assert!(
            out.status.success(),
            "substituting {paths:?} from the cache failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for path in paths {
            assert!(store.has(path), "{path} is not in the fresh store");
        }
        store
    }

    /// The build log the cache serves for `drv_path`.
    pub fn cached_log(&self, drv_path: &str) -> Option<String> {
        let base = drv_path.trim_start_matches("/nix/store/");
        let resp = self.kiln.request(
            "GET",
            &format!("/cache/main/log/{base}"),
            &[],
            crate::harness::Body::Empty,
        );
        (resp.status == 200).then(|| resp.text())
    }
}

/// A derivation in the expression language, sandbox-friendly: `script` runs under busybox
/// `sh`, with busybox applets reachable as `/bin/busybox <applet>`.
pub fn drv(name: &str, script: &str) -> String {
    format!(
        "derivation {{ name = \"{name}\"; system = builtins.currentSystem; builder = \"/bin/sh\"; \
         args = [ \"-c\" ''{script}'' ]; }}"
    )
}
