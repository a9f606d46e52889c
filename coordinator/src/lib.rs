//! Kiln's coordinator: watches git repositories, evaluates jobsets into derivation graphs, schedules
//! every step once and records the results.
//!
//! It owns the farm's state in the database (the source of truth) and the unfinished part of the
//! step graph in memory, rebuilt from the database after a restart. It talks to workers only
//! through the bus ([`kiln_bus::Bus`]) and to the cache through its index and upload API. It must
//! never build anything itself nor hold the cache's signing key.
//!
//! [`git`] keeps bare mirrors of jobset repositories and checks commits out; [`eval`] evaluates a
//! checked-out jobset with real Nix, in several memory-capped processes, into jobs (derivations
//! written to a Nix store) and per-job errors; [`backends`] plugs both into the coordinator.
//!
//! The flow of one commit: [`evaluation::poll_once`] notices it and queues an evaluation;
//! [`evaluation::run_evaluator`] checks it out, has Nix evaluate it and hands the jobs to
//! [`ingest`], which writes builds and steps; the [`dispatch::Dispatcher`] loads them into the
//! [`graph`], publishes runnable steps in the [`scheduler`]'s order and applies the results the
//! workers send back.

pub mod backends;
pub mod db;
pub mod dispatch;
pub mod error;
pub mod eval;
pub mod evaluation;
pub mod git;
pub mod graph;
pub mod ingest;
pub mod logs;
pub mod model;
pub mod scheduler;
pub mod sources;
pub mod workers;

use std::sync::Arc;

use kiln_bus::Bus;
use kiln_db::Db;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use dispatch::{DispatchSettings, Dispatcher, Event, Signals};
pub use error::CoordinatorError;
pub use evaluation::{EvalContext, EvalOutput, EvalSource, Evaluator, InputValue, Repositories};
pub use model::{EvalStatus, Status};

/// The coordinator's parts, ready to run.
pub struct Coordinator {
    /// Evaluation settings and backends.
    pub eval: EvalContext,
    /// The dispatcher.
    pub dispatcher: Dispatcher,
    /// Its event channel's receiving end.
    pub events: mpsc::UnboundedReceiver<Event>,
    /// Wake-ups from the API.
    pub signals: Arc<Signals>,
}

/// Everything [`Coordinator::new`] needs besides the evaluation backends.
pub struct Parts {
    /// The database.
    pub db: Db,
    /// The bus to the workers.
    pub bus: Arc<dyn Bus>,
    /// The workers.
    pub pool: Arc<dyn workers::WorkerPool>,
    /// Live logs.
    pub logs: Arc<dyn logs::LogStore>,
    /// Dispatch settings.
    pub settings: DispatchSettings,
}

impl Coordinator {
    /// Assembles a coordinator; `eval` is built by the caller with [`Coordinator::event_sender`]'s
    /// channel, see [`Coordinator::new`].
    pub fn new(
        parts: Parts,
        make_eval: impl FnOnce(mpsc::UnboundedSender<Event>) -> EvalContext,
    ) -> Coordinator {
        let (events_tx, events) = mpsc::unbounded_channel();
        Coordinator {
            eval: make_eval(events_tx),
            dispatcher: Dispatcher::new(
                parts.db,
                parts.bus,
                parts.pool,
                parts.logs,
                parts.settings,
            ),
            events,
            signals: Arc::new(Signals::default()),
        }
    }

    /// The wake-ups the API uses (shared with the running coordinator).
    pub fn signals(&self) -> Arc<Signals> {
        self.signals.clone()
    }

    /// Polls, evaluates and dispatches until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), CoordinatorError> {
        let eval = Arc::new(self.eval);
        let db = eval.db.clone();
        let repos = eval.repos.clone();
        let (poller, evaluator, dispatcher) = tokio::join!(
            evaluation::run_poller(db, repos, self.signals.clone(), shutdown.clone()),
            evaluation::run_evaluator(eval, self.signals.clone(), shutdown.clone()),
            self.dispatcher
                .run(self.events, self.signals.clone(), shutdown.clone()),
        );
        let () = poller;
        // Either failing stops the whole coordinator: nothing runs half-way.
        let stopped = evaluator.and(dispatcher);
        if stopped.is_err() {
            shutdown.cancel();
        }
        stopped
    }
}
