//! Which queues have workers, and how many build slots serve each: what the dispatch window
//! and the `unsupported` decision are based on.

use std::collections::HashMap;
use std::sync::RwLock;

use kiln_bus::{QueueName, queues_served};

/// The workers the coordinator can count on (static in `kiln up`; a registry with heartbeats
/// in the distributed mode).
pub trait WorkerPool: Send + Sync {
    /// Build slots of the workers that read `queue`; 0 if none does.
    fn slots_for(&self, queue: &QueueName) -> u32;
}

/// A fixed set of workers, as `kiln up` starts them.
#[derive(Debug, Default)]
pub struct StaticPool {
    slots: RwLock<HashMap<QueueName, u32>>,
}

impl StaticPool {
    /// No workers.
    pub fn new() -> StaticPool {
        StaticPool::default()
    }

    /// Replaces every worker with `workers` (systems, features, slots): the registry's view
    /// in the distributed mode.
    pub fn replace<'a>(
        &self,
        workers: impl IntoIterator<Item = (&'a [String], &'a [String], u32)>,
    ) {
        let mut map = HashMap::new();
        for (systems, features, slots) in workers {
            for queue in queues_served(systems, features) {
                *map.entry(queue).or_default() += slots;
            }
        }
        *self.slots.write().unwrap_or_else(|e| e.into_inner()) = map;
    }

    /// Adds a worker for `systems` with `features` and `slots` build slots.
    pub fn add(&self, systems: &[String], features: &[String], slots: u32) {
        let mut map = self.slots.write().unwrap_or_else(|e| e.into_inner());
        for queue in queues_served(systems, features) {
            *map.entry(queue).or_default() += slots;
        }
    }
}

impl WorkerPool for StaticPool {
    fn slots_for(&self, queue: &QueueName) -> u32 {
        self.slots
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(queue)
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_bus::step_queue;

    #[test]
    fn slots_add_up_over_the_workers_serving_a_queue() {
        let pool = StaticPool::new();
        let linux = vec!["x86_64-linux".to_owned()];
        pool.add(&linux, &[], 2);
        pool.add(&linux, &["kvm".to_owned()], 1);
        assert_eq!(pool.slots_for(&step_queue("x86_64-linux", &[])), 3);
        assert_eq!(
            pool.slots_for(&step_queue("x86_64-linux", &["kvm".to_owned()])),
            1
        );
        assert_eq!(pool.slots_for(&step_queue("aarch64-linux", &[])), 0);
        let arm = ["aarch64-linux".to_owned()];
        pool.replace([(&arm[..], &[][..], 4)]);
        assert_eq!(pool.slots_for(&step_queue("x86_64-linux", &[])), 0);
        assert_eq!(pool.slots_for(&step_queue("aarch64-linux", &[])), 4);
    }
}
