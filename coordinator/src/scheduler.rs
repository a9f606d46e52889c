//! Which runnable steps to dispatch next, in the order: bumped (global) priority, jobset
//! fair share, build priority (`meta.schedulingPriority`), then critical-path length weighted by
//! historical durations; ties go to the older step. Only as many steps as the queue's window
//! has room for are chosen, so the backlog stays here where these priorities still apply.
//!
//! This module is pure: it reads the [`Graph`] and the fair-share account and returns step ids.

use std::cmp::{Ordering, Reverse};
use std::collections::HashMap;

use kiln_bus::QueueName;
use kiln_db::{JobsetId, StepId};

use crate::graph::Graph;

/// Half-life of the fair-share account: build time a jobset used counts half as much after
/// this long.
const SHARE_HALF_LIFE_MS: f64 = 3_600_000.0;

/// Build time each jobset was given recently (decaying), against its shares.
#[derive(Debug, Default, Clone)]
pub struct FairShare {
    used_ms: HashMap<JobsetId, f64>,
    shares: HashMap<JobsetId, u32>,
    last_decay_ms: i64,
}

impl FairShare {
    /// Sets the shares of `jobset` (at least 1).
    pub fn set_shares(&mut self, jobset: JobsetId, shares: u32) {
        self.shares.insert(jobset, shares.max(1));
    }

    /// The jobset's recent use divided by its shares: lower goes first.
    pub fn ratio(&self, jobset: JobsetId) -> f64 {
        let used = self.used_ms.get(&jobset).copied().unwrap_or(0.0);
        let shares = self.shares.get(&jobset).copied().unwrap_or(100);
        used / f64::from(shares)
    }

    /// Charges `ms` of build time to `jobset`.
    pub fn charge(&mut self, jobset: JobsetId, ms: u64) {
        *self.used_ms.entry(jobset).or_default() += ms as f64;
    }

    /// Lets past use fade with time.
    pub fn decay(&mut self, now_ms: i64) {
        if self.last_decay_ms == 0 || now_ms <= self.last_decay_ms {
            self.last_decay_ms = now_ms.max(self.last_decay_ms);
            return;
        }
        let factor = 0.5f64.powf((now_ms - self.last_decay_ms) as f64 / SHARE_HALF_LIFE_MS);
        for used in self.used_ms.values_mut() {
            *used *= factor;
        }
        self.last_decay_ms = now_ms;
    }
}

/// A step's place in the order; smaller sorts first.
#[derive(Debug, Clone, PartialEq)]
struct Key {
    global_priority: Reverse<i64>,
    share_ratio: f64,
    priority: Reverse<i64>,
    critical_path: Reverse<u64>,
    id: StepId,
}

impl Key {
    fn cmp(&self, other: &Key) -> Ordering {
        self.global_priority
            .cmp(&other.global_priority)
            .then(self.share_ratio.total_cmp(&other.share_ratio))
            .then(self.priority.cmp(&other.priority))
            .then(self.critical_path.cmp(&other.critical_path))
            .then(self.id.cmp(&other.id))
    }
}

/// A runnable step with what its key is made of.
struct Candidate {
    id: StepId,
    queue: QueueName,
    estimate_ms: u64,
    global_priority: i64,
    priority: i64,
    critical_path: u64,
    jobsets: Vec<JobsetId>,
}

impl Candidate {
    /// The key under the current account, and the jobset the step would be charged to (its
    /// builds' jobset that is furthest below its share).
    fn key(&self, share: &FairShare) -> (Key, Option<JobsetId>) {
        let best = self
            .jobsets
            .iter()
            .map(|j| (share.ratio(*j), *j))
            .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        (
            Key {
                global_priority: Reverse(self.global_priority),
                share_ratio: best.map_or(0.0, |b| b.0),
                priority: Reverse(self.priority),
                critical_path: Reverse(self.critical_path),
                id: self.id,
            },
            best.map(|b| b.1),
        )
    }
}

/// Chooses the steps to dispatch now, best first: runnable at `now`, at most `room(queue)` per
/// queue. Each choice is charged to its jobset's fair share before the next is made, so two
/// jobsets with equal shares take turns.
pub fn choose(
    graph: &Graph,
    now: i64,
    share: &mut FairShare,
    mut room: impl FnMut(&QueueName) -> u32,
) -> Vec<StepId> {
    let critical = graph.critical_paths();
    let mut candidates: Vec<Candidate> = graph
        .steps()
        .filter(|s| s.is_runnable(now))
        .map(|s| {
            let builds: Vec<_> = s.builds.iter().filter_map(|b| graph.build(*b)).collect();
            let mut jobsets: Vec<JobsetId> = builds.iter().map(|b| b.jobset).collect();
            jobsets.sort();
            jobsets.dedup();
            Candidate {
                id: s.id,
                queue: s.queue.clone(),
                estimate_ms: s.estimate_ms,
                global_priority: builds.iter().map(|b| b.global_priority).max().unwrap_or(0),
                priority: builds.iter().map(|b| b.priority).max().unwrap_or(0),
                critical_path: critical.get(&s.id).copied().unwrap_or(s.estimate_ms),
                jobsets,
            }
        })
        .collect();
    let mut rooms: HashMap<QueueName, u32> = HashMap::new();
    for c in &candidates {
        if !rooms.contains_key(&c.queue) {
            let r = room(&c.queue);
            rooms.insert(c.queue.clone(), r);
        }
    }
    candidates.retain(|c| rooms[&c.queue] > 0);
    let mut chosen = Vec::new();
    while !candidates.is_empty() {
        let (index, jobset) = {
            let mut best: Option<(usize, Key, Option<JobsetId>)> = None;
            for (i, c) in candidates.iter().enumerate() {
                let (key, jobset) = c.key(share);
                if best
                    .as_ref()
                    .is_none_or(|(_, k, _)| key.cmp(k) == Ordering::Less)
                {
                    best = Some((i, key, jobset));
                }
            }
            let (i, _, jobset) = best.expect("candidates is not empty");
            (i, jobset)
        };
        let c = candidates.swap_remove(index);
        if let Some(jobset) = jobset {
            share.charge(jobset, c.estimate_ms.max(1));
        }
        let left = rooms.get_mut(&c.queue).expect("every queue has a room");
        *left -= 1;
        if *left == 0 {
            let full = c.queue.clone();
            candidates.retain(|other| other.queue != full);
        }
        chosen.push(c.id);
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::tests::{build, node};

    fn graph_of(steps: &[(i64, u64)]) -> Graph {
        let mut g = Graph::new();
        for (id, est) in steps {
            g.insert_step(node(*id, *est));
        }
        g
    }

    fn ids(steps: Vec<StepId>) -> Vec<i64> {
        steps.into_iter().map(|s| s.0).collect()
    }

    fn unlimited(_: &QueueName) -> u32 {
        u32::MAX
    }

    #[test]
    fn a_long_chain_goes_before_short_independent_steps() {
        // 1 <- 2 <- 3 is a chain; 4, 5, 6 are independent; one build per top.
        let mut g = graph_of(&[
            (1, 1000),
            (2, 1000),
            (3, 1000),
            (4, 1000),
            (5, 1000),
            (6, 1000),
        ]);
        g.add_dep(StepId(2), StepId(1));
        g.add_dep(StepId(3), StepId(2));
        g.insert_build(build(10, 3), [1, 2, 3].map(StepId));
        for id in 4..=6 {
            g.insert_build(build(id * 10, id), [StepId(id)]);
        }
        let order = choose(&g, 0, &mut FairShare::default(), unlimited);
        assert_eq!(ids(order), [1, 4, 5, 6]);
    }

    #[test]
    fn historical_durations_weight_the_critical_path() {
        // A single slow step beats a chain of two quick ones.
        let mut g = graph_of(&[(1, 100), (2, 100), (3, 5000)]);
        g.add_dep(StepId(2), StepId(1));
        g.insert_build(build(10, 2), [1, 2].map(StepId));
        g.insert_build(build(30, 3), [StepId(3)]);
        let order = choose(&g, 0, &mut FairShare::default(), unlimited);
        assert_eq!(ids(order), [3, 1]);
    }

    #[test]
    fn build_priority_beats_critical_path_and_bumps_beat_everything() {
        let mut g = graph_of(&[(1, 1000), (2, 9000), (3, 9000)]);
        let mut urgent = build(10, 1);
        urgent.priority = 200;
        g.insert_build(urgent, [StepId(1)]);
        g.insert_build(build(20, 2), [StepId(2)]);
        let mut bumped = build(30, 3);
        bumped.priority = 1;
        bumped.global_priority = 1;
        g.insert_build(bumped, [StepId(3)]);
        let order = choose(&g, 0, &mut FairShare::default(), unlimited);
        assert_eq!(ids(order), [3, 1, 2]);
    }

    #[test]
    fn jobsets_with_equal_shares_take_turns_whatever_their_priorities() {
        let mut g = graph_of(&[(1, 1000), (2, 1000), (3, 1000), (4, 1000)]);
        for (id, jobset, priority) in [(1, 1, 500), (2, 1, 500), (3, 2, 1), (4, 2, 1)] {
            let mut b = build(id * 10, id);
            b.jobset = JobsetId(jobset);
            b.priority = priority;
            g.insert_build(b, [StepId(id)]);
        }
        let mut share = FairShare::default();
        share.set_shares(JobsetId(1), 100);
        share.set_shares(JobsetId(2), 100);
        let order = choose(&g, 0, &mut share, unlimited);
        assert_eq!(ids(order), [1, 3, 2, 4]);
    }

    #[test]
    fn more_shares_give_a_jobset_more_turns() {
        let mut g = Graph::new();
        for id in 1..=6 {
            g.insert_step(node(id, 1000));
            let mut b = build(id * 10, id);
            b.jobset = JobsetId(if id <= 3 { 1 } else { 2 });
            g.insert_build(b, [StepId(id)]);
        }
        let mut share = FairShare::default();
        share.set_shares(JobsetId(1), 200);
        share.set_shares(JobsetId(2), 100);
        let order = ids(choose(&g, 0, &mut share, |_| 3));
        // Three picks: jobset 1 twice (ratio 0, then 5 < 10), jobset 2 once.
        assert_eq!(order, [1, 4, 2]);
    }

    #[test]
    fn windows_bound_each_queue_separately() {
        let mut g = graph_of(&[(1, 1000), (2, 1000), (3, 1000)]);
        g.step_mut(StepId(3)).unwrap().queue =
            kiln_bus::step_queue("x86_64-linux", &["kvm".to_owned()]);
        for id in 1..=3 {
            g.insert_build(build(id * 10, id), [StepId(id)]);
        }
        let kvm = kiln_bus::step_queue("x86_64-linux", &["kvm".to_owned()]);
        let order = choose(&g, 0, &mut FairShare::default(), |q| u32::from(q == &kvm));
        assert_eq!(ids(order), [3]);
        let order = choose(&g, 0, &mut FairShare::default(), |q| u32::from(q != &kvm));
        assert_eq!(ids(order), [1]);
    }

    #[test]
    fn steps_waiting_for_a_retry_or_a_dependency_are_not_chosen() {
        let mut g = graph_of(&[(1, 1000), (2, 1000), (3, 1000)]);
        g.add_dep(StepId(2), StepId(1));
        g.step_mut(StepId(1)).unwrap().retry_at = Some(100);
        g.insert_build(build(20, 2), [1, 2].map(StepId));
        g.insert_build(build(30, 3), [StepId(3)]);
        assert_eq!(
            ids(choose(&g, 99, &mut FairShare::default(), unlimited)),
            [3]
        );
        assert_eq!(
            ids(choose(&g, 100, &mut FairShare::default(), unlimited)),
            [1, 3]
        );
    }

    #[test]
    fn fair_share_fades_with_time() {
        let mut share = FairShare::default();
        share.decay(1);
        share.charge(JobsetId(1), 1000);
        share.decay(1 + 3_600_000);
        assert!((share.ratio(JobsetId(1)) - 5.0).abs() < 1e-9);
    }
}
