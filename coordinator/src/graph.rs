//! The unfinished part of the step graph, in memory: which steps wait for which, which builds
//! need them, and what a step's completion or failure releases or dooms.
//!
//! It is rebuilt from the database after a restart ([`crate::load`]) and holds only steps that
//! are not final. Finished dependencies are simply absent: a step is runnable once its set of
//! unfinished dependencies is empty. The graph decides nothing about the database; callers
//! record the outcomes it reports.

use std::collections::{BTreeMap, HashMap, HashSet};

use kiln_bus::QueueName;
use kiln_db::{BuildId, JobsetId, StepId};

use crate::model::Status;

/// Where a step is in its life, as far as dispatch is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepState {
    /// Not sent to any worker (waiting for dependencies, a worker, or its retry time).
    Waiting,
    /// Sent to the bus as `attempt`; its result is awaited.
    Dispatched {
        /// The attempt whose result counts.
        attempt: u32,
    },
}

/// One unfinished step.
#[derive(Debug, Clone)]
pub struct StepNode {
    /// Its row.
    pub id: StepId,
    /// Full path of the `.drv`.
    pub drv_path: String,
    /// The derivation's name, the key of its historical duration.
    pub drv_name: String,
    /// The queue it is published on (its system and required features).
    pub queue: QueueName,
    /// Output name → store path.
    pub outputs: BTreeMap<String, String>,
    /// Dispatch state.
    pub state: StepState,
    /// The last attempt dispatched (0: never).
    pub attempt: u32,
    /// Transient failures since the last restart.
    pub transient_failures: u32,
    /// Not dispatched before this time (UTC ms), after a transient failure.
    pub retry_at: Option<i64>,
    /// When its last dependency finished (or it was loaded), UTC ms: the start of its wait for
    /// a worker.
    pub runnable_since: i64,
    /// Estimated build time in milliseconds (historical mean, or a default).
    pub estimate_ms: u64,
    /// Unfinished steps it needs.
    pub deps: HashSet<StepId>,
    /// Unfinished steps that need it.
    pub dependents: HashSet<StepId>,
    /// Unfinished builds whose closure holds it.
    pub builds: HashSet<BuildId>,
}

impl StepNode {
    /// Whether it may be dispatched at `now`: no unfinished dependency, not dispatched, past
    /// its retry time, and needed by some build.
    pub fn is_runnable(&self, now: i64) -> bool {
        self.state == StepState::Waiting
            && self.deps.is_empty()
            && self.retry_at.is_none_or(|t| t <= now)
            && !self.builds.is_empty()
    }
}

/// One unfinished build.
#[derive(Debug, Clone)]
pub struct BuildNode {
    /// Its row.
    pub id: BuildId,
    /// Its jobset, for fair share.
    pub jobset: JobsetId,
    /// `meta.schedulingPriority`.
    pub priority: i64,
    /// Raised by `bump`.
    pub global_priority: i64,
    /// The step of its own derivation.
    pub top: StepId,
    /// Every unfinished step of its closure.
    pub steps: HashSet<StepId>,
}

/// What a step's final outcome did to the graph.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Builds that are now finished, with their status.
    pub finished_builds: Vec<(BuildId, Status)>,
    /// Steps that can never run now (their dependency failed), removed from the graph.
    pub doomed_steps: Vec<StepId>,
    /// Steps whose last dependency just finished.
    pub released_steps: Vec<StepId>,
}

/// The unfinished steps and builds.
#[derive(Debug, Default)]
pub struct Graph {
    steps: HashMap<StepId, StepNode>,
    builds: HashMap<BuildId, BuildNode>,
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Graph {
        Graph::default()
    }

    /// The step `id`, if unfinished.
    pub fn step(&self, id: StepId) -> Option<&StepNode> {
        self.steps.get(&id)
    }

    /// The step `id`, mutable.
    pub fn step_mut(&mut self, id: StepId) -> Option<&mut StepNode> {
        self.steps.get_mut(&id)
    }

    /// The build `id`, if unfinished.
    pub fn build(&self, id: BuildId) -> Option<&BuildNode> {
        self.builds.get(&id)
    }

    /// The build `id`, mutable.
    pub fn build_mut(&mut self, id: BuildId) -> Option<&mut BuildNode> {
        self.builds.get_mut(&id)
    }

    /// Every unfinished step.
    pub fn steps(&self) -> impl Iterator<Item = &StepNode> {
        self.steps.values()
    }

    /// Every unfinished build.
    pub fn builds(&self) -> impl Iterator<Item = &BuildNode> {
        self.builds.values()
    }

    /// Number of unfinished steps and builds.
    pub fn len(&self) -> (usize, usize) {
        (self.steps.len(), self.builds.len())
    }

    /// Whether nothing is unfinished.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty() && self.builds.is_empty()
    }

    /// Adds a step unless it is present (a step shared with builds already loaded).
    pub fn insert_step(&mut self, node: StepNode) {
        self.steps.entry(node.id).or_insert(node);
    }

    /// Records that `step` needs `dep`; both must be present.
    pub fn add_dep(&mut self, step: StepId, dep: StepId) {
        if step == dep || !self.steps.contains_key(&dep) {
            return;
        }
        if let Some(node) = self.steps.get_mut(&step) {
            node.deps.insert(dep);
        } else {
            return;
        }
        if let Some(node) = self.steps.get_mut(&dep) {
            node.dependents.insert(step);
        }
    }

    /// Adds a build and ties it to the steps of its closure that are present.
    pub fn insert_build(
        &mut self,
        mut build: BuildNode,
        closure: impl IntoIterator<Item = StepId>,
    ) {
        build.steps = closure
            .into_iter()
            .filter(|id| self.steps.contains_key(id))
            .collect();
        for step in &build.steps {
            if let Some(node) = self.steps.get_mut(step) {
                node.builds.insert(build.id);
            }
        }
        self.builds.insert(build.id, build);
    }

    /// Removes a build (finished by other means: cancelled). Returns the steps no unfinished
    /// build needs any more.
    pub fn remove_build(&mut self, id: BuildId) -> Vec<StepId> {
        let Some(build) = self.builds.remove(&id) else {
            return Vec::new();
        };
        let mut orphaned = Vec::new();
        for step in build.steps {
            if let Some(node) = self.steps.get_mut(&step) {
                node.builds.remove(&id);
                if node.builds.is_empty() {
                    orphaned.push(step);
                }
            }
        }
        orphaned.sort();
        orphaned
    }

    /// Removes a step no build needs (after it was cancelled), detaching it from its
    /// neighbours.
    pub fn remove_orphan(&mut self, id: StepId) {
        if let Some(node) = self.steps.remove(&id) {
            for dep in &node.deps {
                if let Some(d) = self.steps.get_mut(dep) {
                    d.dependents.remove(&id);
                }
            }
            for dependent in &node.dependents {
                if let Some(d) = self.steps.get_mut(dependent) {
                    d.deps.remove(&id);
                }
            }
        }
    }

    /// `id` succeeded: it leaves the graph, its dependents lose a dependency, and the builds
    /// whose own step it is are finished as `status` (`succeeded`; a build's own step is the
    /// last of its closure).
    pub fn succeed(&mut self, id: StepId, status: Status, now: i64) -> Outcome {
        let mut outcome = Outcome::default();
        let Some(node) = self.steps.remove(&id) else {
            return outcome;
        };
        for dependent in &node.dependents {
            if let Some(d) = self.steps.get_mut(dependent) {
                d.deps.remove(&id);
                if d.deps.is_empty() {
                    d.runnable_since = now;
                    outcome.released_steps.push(*dependent);
                }
            }
        }
        for dep in &node.deps {
            if let Some(d) = self.steps.get_mut(dep) {
                d.dependents.remove(&id);
            }
        }
        let mut builds: Vec<BuildId> = node.builds.iter().copied().collect();
        builds.sort();
        for build in builds {
            let top = self.builds.get(&build).map(|b| b.top);
            if top == Some(id) {
                self.finish_build(build);
                outcome.finished_builds.push((build, status));
            } else if let Some(b) = self.builds.get_mut(&build) {
                b.steps.remove(&id);
            }
        }
        outcome.released_steps.sort();
        outcome
    }

    /// `id` ended with the failure `status`: it and every step that depends on it (they are
    /// doomed: dependency failed) leave the graph, and every build needing any of them is
    /// finished: with `status` where it is the build's own step, otherwise as a dependency
    /// failure (`unsupported` carries over).
    pub fn fail(&mut self, id: StepId, status: Status) -> Outcome {
        let mut outcome = Outcome::default();
        if !self.steps.contains_key(&id) {
            return outcome;
        }
        // Every transitive dependent, found before anything is removed.
        let mut doomed = vec![id];
        let mut seen: HashSet<StepId> = HashSet::from([id]);
        let mut i = 0;
        while i < doomed.len() {
            let current = doomed[i];
            i += 1;
            if let Some(node) = self.steps.get(&current) {
                let mut next: Vec<StepId> = node.dependents.iter().copied().collect();
                next.sort();
                for d in next {
                    if seen.insert(d) {
                        doomed.push(d);
                    }
                }
            }
        }
        let mut builds: Vec<BuildId> = doomed
            .iter()
            .filter_map(|s| self.steps.get(s))
            .flat_map(|n| n.builds.iter().copied())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        builds.sort();
        for build in builds {
            let Some(b) = self.builds.get(&build) else {
                continue;
            };
            let build_status = if b.top == id {
                status
            } else {
                status.for_dependent_build()
            };
            self.finish_build(build);
            outcome.finished_builds.push((build, build_status));
        }
        for step in &doomed {
            self.remove_orphan(*step);
        }
        outcome.doomed_steps = doomed.into_iter().filter(|s| *s != id).collect();
        outcome.doomed_steps.sort();
        outcome
    }

    /// Removes a finished build from the steps that referred to it.
    fn finish_build(&mut self, id: BuildId) {
        if let Some(build) = self.builds.remove(&id) {
            for step in build.steps {
                if let Some(node) = self.steps.get_mut(&step) {
                    node.builds.remove(&id);
                }
            }
        }
    }

    /// Critical path length of every step: its estimate plus the longest path through the
    /// steps that depend on it, in milliseconds.
    pub fn critical_paths(&self) -> HashMap<StepId, u64> {
        // Iterative post-order over dependents (the graph can be deep: no recursion).
        let mut lengths: HashMap<StepId, u64> = HashMap::with_capacity(self.steps.len());
        for start in self.steps.keys() {
            if lengths.contains_key(start) {
                continue;
            }
            let mut stack = vec![(*start, false)];
            while let Some((id, expanded)) = stack.pop() {
                if lengths.contains_key(&id) {
                    continue;
                }
                let Some(node) = self.steps.get(&id) else {
                    continue;
                };
                if expanded {
                    let longest = node
                        .dependents
                        .iter()
                        .filter_map(|d| lengths.get(d))
                        .max()
                        .copied()
                        .unwrap_or(0);
                    lengths.insert(id, node.estimate_ms.saturating_add(longest));
                } else {
                    stack.push((id, true));
                    for d in &node.dependents {
                        if !lengths.contains_key(d) {
                            stack.push((*d, false));
                        }
                    }
                }
            }
        }
        lengths
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn node(id: i64, estimate_ms: u64) -> StepNode {
        StepNode {
            id: StepId(id),
            drv_path: format!("/nix/store/{}-s{id}.drv", "0".repeat(32)),
            drv_name: format!("s{id}"),
            queue: kiln_bus::step_queue("x86_64-linux", &[]),
            outputs: BTreeMap::new(),
            state: StepState::Waiting,
            attempt: 0,
            transient_failures: 0,
            retry_at: None,
            runnable_since: 0,
            estimate_ms,
            deps: HashSet::new(),
            dependents: HashSet::new(),
            builds: HashSet::new(),
        }
    }

    pub(crate) fn build(id: i64, top: i64) -> BuildNode {
        BuildNode {
            id: BuildId(id),
            jobset: JobsetId(1),
            priority: 100,
            global_priority: 0,
            top: StepId(top),
            steps: HashSet::new(),
        }
    }

    /// 1 <- 2 <- 3 (3 needs 2 needs 1), and 4 needing 1; builds 10 (top 3) and 11 (top 4).
    fn diamond() -> Graph {
        let mut g = Graph::new();
        for id in 1..=4 {
            g.insert_step(node(id, 1000));
        }
        g.add_dep(StepId(2), StepId(1));
        g.add_dep(StepId(3), StepId(2));
        g.add_dep(StepId(4), StepId(1));
        g.insert_build(build(10, 3), [1, 2, 3].map(StepId));
        g.insert_build(build(11, 4), [1, 4].map(StepId));
        g
    }

    fn runnable(g: &Graph) -> Vec<i64> {
        let mut ids: Vec<i64> = g
            .steps()
            .filter(|s| s.is_runnable(0))
            .map(|s| s.id.0)
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn success_releases_dependents_and_finishes_the_builds_it_tops() {
        let mut g = diamond();
        assert_eq!(runnable(&g), [1]);
        let outcome = g.succeed(StepId(1), Status::Succeeded, 5);
        assert_eq!(outcome.released_steps, [StepId(2), StepId(4)]);
        assert!(outcome.finished_builds.is_empty());
        assert_eq!(runnable(&g), [2, 4]);
        assert_eq!(g.step(StepId(4)).unwrap().runnable_since, 5);
        let outcome = g.succeed(StepId(4), Status::Succeeded, 6);
        assert_eq!(outcome.finished_builds, [(BuildId(11), Status::Succeeded)]);
        assert!(g.build(BuildId(11)).is_none());
    }

    #[test]
    fn failure_dooms_dependents_and_finishes_every_build_needing_them() {
        let mut g = diamond();
        let outcome = g.fail(StepId(1), Status::Failed);
        assert_eq!(outcome.doomed_steps, [StepId(2), StepId(3), StepId(4)]);
        assert_eq!(
            outcome.finished_builds,
            [
                (BuildId(10), Status::DependencyFailed),
                (BuildId(11), Status::DependencyFailed)
            ]
        );
        assert!(g.is_empty());
    }

    #[test]
    fn a_failing_top_step_gives_its_build_the_failure_itself() {
        let mut g = diamond();
        g.succeed(StepId(1), Status::Succeeded, 0);
        let outcome = g.fail(StepId(4), Status::TimedOut);
        assert_eq!(outcome.finished_builds, [(BuildId(11), Status::TimedOut)]);
        assert!(outcome.doomed_steps.is_empty());
        assert_eq!(runnable(&g), [2]);
    }

    #[test]
    fn unsupported_carries_over_to_dependent_builds() {
        let mut g = diamond();
        let outcome = g.fail(StepId(2), Status::Unsupported);
        assert_eq!(
            outcome.finished_builds,
            [(BuildId(10), Status::Unsupported)]
        );
        // Step 1 is still needed by build 11.
        assert_eq!(runnable(&g), [1]);
    }

    #[test]
    fn steps_without_builds_are_not_runnable_and_are_reported_orphaned() {
        let mut g = diamond();
        let orphaned = g.remove_build(BuildId(10));
        assert_eq!(orphaned, [StepId(2), StepId(3)]);
        g.succeed(StepId(1), Status::Succeeded, 0);
        assert_eq!(runnable(&g), [4]);
    }

    #[test]
    fn critical_paths_sum_estimates_along_the_longest_chain_of_dependents() {
        let mut g = diamond();
        g.step_mut(StepId(4)).unwrap().estimate_ms = 5000;
        let cp = g.critical_paths();
        assert_eq!(cp[&StepId(3)], 1000);
        assert_eq!(cp[&StepId(2)], 2000);
        assert_eq!(cp[&StepId(4)], 5000);
        assert_eq!(cp[&StepId(1)], 6000);
    }
}
