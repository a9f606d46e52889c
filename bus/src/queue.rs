//! Queue names: one queue per (system, required features) for steps, the results queue, and the
//! dead-letter queue of poison steps.

use std::fmt;

/// Most system features a worker may declare: it reads one queue per subset of them.
pub const MAX_FEATURES: usize = 8;

/// The queue step results travel on, from workers to the coordinator.
pub const RESULTS_QUEUE: &str = "kiln.results";

/// Prefix of every step queue's name.
const STEP_PREFIX: &str = "kiln.steps.";

/// Where step messages go that were delivered more often than the bus's delivery limit (a step
/// that kills every worker that takes it) or rejected without requeueing: kept with their
/// original bodies for an operator to inspect, never delivered to workers.
pub const DEAD_STEPS_QUEUE: &str = "kiln.steps.dead";

/// How many times a step message may return to its queue unacknowledged (its consumer died, or
/// it was rejected with requeueing) before it is moved to [`DEAD_STEPS_QUEUE`] on its next
/// return, unless the bus is configured otherwise.
pub const DEFAULT_DELIVERY_LIMIT: u32 = 3;

/// The name of a queue. Step queues read `kiln.steps.<system>` or
/// `kiln.steps.<system>.<feature>+<feature>...` with the features sorted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueName(String);

impl QueueName {
    /// A queue with exactly this name.
    pub fn new(name: impl Into<String>) -> QueueName {
        QueueName(name.into())
    }

    /// The results queue.
    pub fn results() -> QueueName {
        QueueName(RESULTS_QUEUE.to_owned())
    }

    /// The dead-letter queue of step messages ([`DEAD_STEPS_QUEUE`]).
    pub fn dead_steps() -> QueueName {
        QueueName(DEAD_STEPS_QUEUE.to_owned())
    }

    /// Whether this is a step queue, whose messages are subject to the delivery limit and
    /// dead-lettered to [`DEAD_STEPS_QUEUE`] (which is not itself a step queue).
    pub fn is_step_queue(&self) -> bool {
        self.0.starts_with(STEP_PREFIX) && self.0 != DEAD_STEPS_QUEUE
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The queue for steps of `system` that require `features` (in any order, duplicates ignored).
pub fn step_queue(system: &str, features: &[String]) -> QueueName {
    let mut features: Vec<&str> = features.iter().map(String::as_str).collect();
    features.sort_unstable();
    features.dedup();
    if features.is_empty() {
        QueueName(format!("{STEP_PREFIX}{system}"))
    } else {
        QueueName(format!("{STEP_PREFIX}{system}.{}", features.join("+")))
    }
}

/// Every step queue a worker for `systems` with `features` can serve: each system with each
/// subset of the features (a step may require fewer features than a worker has). Features
/// beyond [`MAX_FEATURES`] are ignored, with the first ones (sorted) kept.
pub fn queues_served(systems: &[String], features: &[String]) -> Vec<QueueName> {
    let mut features: Vec<String> = features.to_vec();
    features.sort_unstable();
    features.dedup();
    features.truncate(MAX_FEATURES);
    let mut queues = Vec::new();
    for system in systems {
        for mask in 0u32..(1 << features.len()) {
            let subset: Vec<String> = features
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, f)| f.clone())
                .collect();
            queues.push(step_queue(system, &subset));
        }
    }
    queues.sort();
    queues.dedup();
    queues
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn step_queues_name_the_system_and_the_sorted_features() {
        assert_eq!(
            step_queue("x86_64-linux", &[]).as_str(),
            "kiln.steps.x86_64-linux"
        );
        assert_eq!(
            step_queue("x86_64-linux", &strings(&["kvm", "big-parallel", "kvm"])).as_str(),
            "kiln.steps.x86_64-linux.big-parallel+kvm"
        );
    }

    #[test]
    fn a_worker_serves_every_subset_of_its_features() {
        let queues = queues_served(
            &strings(&["x86_64-linux"]),
            &strings(&["kvm", "big-parallel"]),
        );
        let names: Vec<&str> = queues.iter().map(QueueName::as_str).collect();
        assert_eq!(
            names,
            [
                "kiln.steps.x86_64-linux",
                "kiln.steps.x86_64-linux.big-parallel",
                "kiln.steps.x86_64-linux.big-parallel+kvm",
                "kiln.steps.x86_64-linux.kvm",
            ]
        );
        assert!(!queues.contains(&step_queue("x86_64-linux", &strings(&["nixos-test"]))));
    }

    #[test]
    fn only_step_queues_are_subject_to_the_delivery_limit() {
        assert!(step_queue("x86_64-linux", &strings(&["kvm"])).is_step_queue());
        assert!(!QueueName::results().is_step_queue());
        assert!(!QueueName::dead_steps().is_step_queue());
    }
}
