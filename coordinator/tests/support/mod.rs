//! A coordinator on a real database (SQLite or PostgreSQL) with scripted derivations and an in-process bus, for
//! tests of ingest, dispatch and result handling without Nix.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use kiln_bus::{Bus, Consumer, MemoryBus, QueueName, step_queue};
use kiln_config::JobsetConfig;
use kiln_coordinator::db::{evals, projects};
use kiln_coordinator::error::Result;
use kiln_coordinator::ingest::{self, DrvReader, Evaluated, IngestJob, Ingested, SourceUploader};
use kiln_coordinator::logs::FileLogs;
use kiln_coordinator::workers::StaticPool;
use kiln_coordinator::{DispatchSettings, Dispatcher};
use kiln_db::testing::{Backend, TestDb};
use kiln_db::{BuildId, CacheId, Db, EvaluationId, JobsetId};
use kiln_nix::derivation::{Derivation, DerivationOutput};
use kiln_nix::{Hash, StoreDir, StorePath};
use kiln_proto::{PROTO_VERSION, StepMessage, StepResult, StepStatus};

/// The system of scripted derivations.
pub const SYSTEM: &str = "x86_64-linux";

/// Derivations held in memory.
#[derive(Default)]
pub struct Drvs {
    files: Mutex<HashMap<StorePath, Vec<u8>>>,
}

impl DrvReader for Drvs {
    fn read(&self, drv: &StorePath) -> std::io::Result<Vec<u8>> {
        self.files
            .lock()
            .unwrap()
            .get(drv)
            .cloned()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such drv"))
    }
}

/// Records the sources it was asked to upload.
#[derive(Default)]
pub struct Uploads {
    pub paths: Mutex<Vec<StorePath>>,
}

#[async_trait]
impl SourceUploader for Uploads {
    async fn upload(&self, paths: &[StorePath]) -> Result<()> {
        self.paths.lock().unwrap().extend(paths.iter().cloned());
        Ok(())
    }
}

/// A scripted derivation: its path and its output.
#[derive(Debug, Clone)]
pub struct Drv {
    pub path: StorePath,
    pub out: StorePath,
    pub system: String,
}

/// A coordinator's database, bus and dispatcher.
pub struct Farm {
    pub dir: tempfile::TempDir,
    pub bus: MemoryBus,
    pub drvs: Arc<Drvs>,
    pub uploads: Arc<Uploads>,
    pub jobset: JobsetId,
    pub dispatcher: Dispatcher,
    pub steps: Box<dyn Consumer>,
    /// The workers the dispatcher counts on.
    pub pool: Arc<StaticPool>,
    /// Last, so that it is dropped after the dispatcher using it.
    pub db: TestDb,
}

pub fn settings() -> DispatchSettings {
    DispatchSettings {
        max_retries: 2,
        retry_backoff_secs: 0,
        unsupported_after: Duration::ZERO,
        dispatch_window: 0,
        db_poll: Duration::from_secs(5),
        max_log_bytes: 1 << 20,
        max_output_bytes: 1 << 30,
        requeue_running_at_start: true,
    }
}

impl Farm {
    /// A farm on `backend` with `slots` build slots for [`SYSTEM`].
    pub async fn new(backend: Backend, slots: u32) -> Farm {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDb::migrated(backend).await;
        let project = projects::upsert_project(&db, "p", "", true, projects::Source::Api)
            .await
            .unwrap();
        let spec = JobsetConfig {
            name: "j".into(),
            description: String::new(),
            url: "/nowhere".into(),
            branch: "main".into(),
            expression: Some("release.nix".into()),
            flake: false,
            inputs: BTreeMap::new(),
            check_interval: 0,
            enabled: true,
            shares: 100,
            keep_evaluations: 0,
        };
        let jobset = projects::upsert_jobset(&db, project, &spec, projects::Source::Api)
            .await
            .unwrap();
        let bus = MemoryBus::new();
        let steps = bus
            .consume(&[step_queue(SYSTEM, &[])], 1000, "test worker")
            .await
            .unwrap();
        let pool = Farm::pool(slots);
        let dispatcher = Farm::dispatcher_on(&db, &bus, &dir, pool.clone(), settings());
        Farm {
            dir,
            bus,
            drvs: Arc::default(),
            uploads: Arc::default(),
            jobset,
            dispatcher,
            steps,
            pool,
            db,
        }
    }

    fn pool(slots: u32) -> Arc<StaticPool> {
        let pool = StaticPool::new();
        pool.add(&[SYSTEM.to_owned()], &[], slots);
        Arc::new(pool)
    }

    fn dispatcher_on(
        db: &Db,
        bus: &MemoryBus,
        dir: &tempfile::TempDir,
        pool: Arc<StaticPool>,
        settings: DispatchSettings,
    ) -> Dispatcher {
        Dispatcher::new(
            db.clone(),
            Arc::new(bus.clone()),
            pool,
            Arc::new(FileLogs::new(dir.path().join("logs")).unwrap()),
            settings,
        )
    }

    /// Replaces the dispatcher by a new one on the same database, as after a restart.
    pub async fn restart_dispatcher(&mut self, slots: u32, settings: DispatchSettings) {
        self.pool = Farm::pool(slots);
        self.dispatcher =
            Farm::dispatcher_on(&self.db, &self.bus, &self.dir, self.pool.clone(), settings);
        self.dispatcher.start().await.unwrap();
    }

    /// A derivation named `name` that needs `deps` (their `out`).
    pub fn drv(&self, name: &str, deps: &[&Drv]) -> Drv {
        self.drv_for(name, deps, SYSTEM, &[])
    }

    /// A derivation for `system` requiring `features`.
    pub fn drv_for(&self, name: &str, deps: &[&Drv], system: &str, features: &[&str]) -> Drv {
        let dir = StoreDir::default();
        let out = dir.make_store_path("output:out", &Hash::sha256(name.as_bytes()), name);
        let mut env = BTreeMap::new();
        env.insert(b"out".to_vec(), dir.display(&out).into_bytes());
        if !features.is_empty() {
            env.insert(
                b"requiredSystemFeatures".to_vec(),
                features.join(" ").into_bytes(),
            );
        }
        let mut input_drvs = BTreeMap::new();
        for dep in deps {
            input_drvs.insert(dep.path.clone(), BTreeSet::from(["out".to_owned()]));
        }
        let drv = Derivation {
            name: name.to_owned(),
            outputs: BTreeMap::from([(
                "out".to_owned(),
                DerivationOutput::InputAddressed(out.clone()),
            )]),
            input_drvs,
            input_srcs: BTreeSet::new(),
            system: system.as_bytes().to_vec(),
            builder: b"/bin/sh".to_vec(),
            args: vec![],
            env,
        };
        let path = drv.drv_path(&dir).unwrap();
        self.drvs
            .files
            .lock()
            .unwrap()
            .insert(path.clone(), drv.to_aterm(&dir));
        Drv {
            path,
            out,
            system: system.to_owned(),
        }
    }

    /// Evaluates `jobs` (name → derivation) as a new evaluation, and loads its builds.
    pub async fn evaluate(&mut self, jobs: &[(&str, &Drv)]) -> (EvaluationId, Ingested) {
        let (evaluation, _) = evals::enqueue_request(&self.db, self.jobset).await.unwrap();
        let claimed = evals::claim_next(&self.db).await.unwrap().unwrap();
        assert_eq!(claimed.id, evaluation);
        let jobs: Vec<IngestJob> = jobs
            .iter()
            .map(|(name, drv)| IngestJob {
                name: name.to_string(),
                drv_path: drv.path.clone(),
                outputs: BTreeMap::from([("out".to_owned(), drv.out.clone())]),
                system: drv.system.clone(),
                meta: serde_json::json!({}),
                priority: 100,
                timeout_secs: 60,
                max_silent_secs: 60,
                constituents: None,
            })
            .collect();
        let ingested = ingest::ingest(
            &self.db,
            CacheId(1),
            self.drvs.as_ref(),
            self.uploads.as_ref(),
            Evaluated {
                evaluation,
                jobset: self.jobset,
                jobs: &jobs,
                errors: &[],
                timings: Default::default(),
            },
        )
        .await
        .unwrap();
        self.dispatcher
            .load(Some(&ingested.queued_builds))
            .await
            .unwrap();
        (evaluation, ingested)
    }

    /// Dispatches, then takes every step message published so far.
    pub async fn dispatch(&mut self) -> Vec<StepMessage> {
        self.dispatcher.dispatch().await.unwrap();
        let mut messages = Vec::new();
        loop {
            let next = tokio::select! {
                biased;
                d = self.steps.next() => d,
                () = std::future::ready(()) => None,
            };
            let Some(delivery) = next else { break };
            messages.push(StepMessage::decode(&delivery.body).unwrap());
            delivery.ack().await.unwrap();
        }
        messages
    }

    /// The drv path of message `m`, by derivation name.
    pub fn names(messages: &[StepMessage]) -> Vec<String> {
        let mut names: Vec<String> = messages
            .iter()
            .map(|m| {
                let base = m.drv_path.rsplit('/').next().unwrap();
                base[33..base.len() - 4].to_owned()
            })
            .collect();
        names.sort();
        names
    }

    /// A build's status.
    pub async fn build_status(&self, id: BuildId) -> String {
        sqlx::query_scalar("SELECT status FROM builds WHERE id = $1")
            .bind(id.get())
            .fetch_one(self.db.pool())
            .await
            .unwrap()
    }

    /// A step's (status, attempt), by derivation.
    pub async fn step_state(&self, drv: &Drv) -> (String, i64) {
        sqlx::query_as("SELECT status, attempt FROM steps WHERE drv_path = $1")
            .bind(StoreDir::default().display(&drv.path))
            .fetch_one(self.db.pool())
            .await
            .unwrap()
    }

    /// The results queue, read as the dispatcher would, without applying.
    pub fn results_queue() -> QueueName {
        QueueName::results()
    }
}

/// The result of `message` with `status`.
pub fn result(message: &StepMessage, status: StepStatus) -> StepResult {
    StepResult {
        version: PROTO_VERSION,
        step_id: message.step_id,
        attempt: message.attempt,
        worker: "w1".into(),
        status,
        message: None,
        started_at_ms: 1_000,
        finished_at_ms: 3_000,
        outputs: BTreeMap::new(),
        products: vec![],
        metrics: vec![],
    }
}
