//! Deciding what a collection keeps: the roots (paths retention keeps, pinned paths) and
//! everything they refer to, directly or not. Pure: the caller loads the graph.

use std::collections::{HashMap, HashSet};

use kiln_config::Retention;
use kiln_db::Timestamp;

/// One path of the cache, as collection sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathNode {
    /// `paths.id`.
    pub id: i64,
    /// The store path's hash part.
    pub hash_part: String,
    /// When it was published.
    pub created_at: Timestamp,
    /// When its narinfo was last read (or its publication, if never read).
    pub last_accessed_at: Timestamp,
}

/// A cache's paths and references.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    /// Every path.
    pub paths: Vec<PathNode>,
    /// The hash parts each path (by id) refers to; references to itself included or not.
    pub refs: HashMap<i64, Vec<String>>,
}

/// Why a path is kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Marked {
    /// Ids of the paths kept.
    pub live: HashSet<i64>,
    /// How many paths retention keeps by themselves (not expired).
    pub unexpired: usize,
    /// How many of the paths present are pinned.
    pub pinned: usize,
}

/// Whether `path` has expired under `retention` at `now`. Timestamps in the future (clock
/// changes) never expire anything.
pub fn expired(retention: &Retention, path: &PathNode, now: Timestamp) -> bool {
    let older_than = |at: Timestamp, limit: Option<kiln_config::TimeSpan>| {
        limit.is_some_and(|limit| at < now.minus(limit.duration()))
    };
    older_than(path.created_at, retention.max_age)
        || older_than(path.last_accessed_at, retention.max_idle)
}

/// The paths to keep: every unexpired or pinned path and the closure of each.
pub fn mark(
    graph: &Graph,
    pinned: &HashSet<String>,
    retention: &Retention,
    now: Timestamp,
) -> Marked {
    let by_hash: HashMap<&str, i64> = graph
        .paths
        .iter()
        .map(|p| (p.hash_part.as_str(), p.id))
        .collect();
    let mut marked = Marked::default();
    let mut stack = Vec::new();
    for path in &graph.paths {
        let is_pinned = pinned.contains(&path.hash_part);
        let unexpired = !expired(retention, path, now);
        marked.pinned += usize::from(is_pinned);
        marked.unexpired += usize::from(unexpired);
        if (is_pinned || unexpired) && marked.live.insert(path.id) {
            stack.push(path.id);
        }
    }
    while let Some(id) = stack.pop() {
        for hash in graph.refs.get(&id).into_iter().flatten() {
            // The commit transaction guarantees every reference is a path of the cache; one that
            // is not (a corrupt index) cannot be kept and is ignored.
            if let Some(&target) = by_hash.get(hash.as_str())
                && marked.live.insert(target)
            {
                stack.push(target);
            }
        }
    }
    marked
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_config::TimeSpan;
    use std::time::Duration;

    const DAY: i64 = 86_400_000;

    fn node(id: i64, created_days_ago: i64, read_days_ago: i64) -> PathNode {
        let now = Timestamp(100 * DAY);
        PathNode {
            id,
            hash_part: format!("h{id}"),
            created_at: Timestamp(now.0 - created_days_ago * DAY),
            last_accessed_at: Timestamp(now.0 - read_days_ago * DAY),
        }
    }

    fn days(n: u64) -> Option<TimeSpan> {
        Some(TimeSpan(Duration::from_secs(n * 86_400)))
    }

    /// 1 → 2 → 3, 4 → 3, 5 alone; 3 refers to itself.
    fn graph(nodes: Vec<PathNode>) -> Graph {
        let mut refs = HashMap::new();
        refs.insert(1, vec!["h2".to_owned()]);
        refs.insert(2, vec!["h3".to_owned()]);
        refs.insert(3, vec!["h3".to_owned()]);
        refs.insert(4, vec!["h3".to_owned()]);
        Graph { paths: nodes, refs }
    }

    fn live(marked: &Marked) -> Vec<i64> {
        let mut ids: Vec<i64> = marked.live.iter().copied().collect();
        ids.sort();
        ids
    }

    #[test]
    fn without_retention_everything_is_kept() {
        let g = graph((1..=5).map(|i| node(i, 1000, 1000)).collect());
        let marked = mark(
            &g,
            &HashSet::new(),
            &Retention::default(),
            Timestamp(100 * DAY),
        );
        assert_eq!(live(&marked), vec![1, 2, 3, 4, 5]);
        assert_eq!(marked.unexpired, 5);
    }

    #[test]
    fn a_kept_path_keeps_its_whole_closure_however_old() {
        // Only 1 is young; 2 and 3 are ancient but 1 needs them; 4 and 5 expire.
        let g = graph(vec![
            node(1, 1, 1),
            node(2, 50, 50),
            node(3, 50, 50),
            node(4, 50, 50),
            node(5, 50, 50),
        ]);
        let retention = Retention {
            max_age: days(10),
            max_idle: None,
        };
        let marked = mark(&g, &HashSet::new(), &retention, Timestamp(100 * DAY));
        assert_eq!(live(&marked), vec![1, 2, 3]);
        assert_eq!(marked.unexpired, 1);
    }

    #[test]
    fn max_idle_expires_unread_paths_and_max_age_expires_read_ones() {
        let g = graph(vec![
            node(1, 50, 50),
            node(2, 50, 1),
            node(3, 1, 1),
            node(4, 1, 1),
            node(5, 50, 1),
        ]);
        let idle = Retention {
            max_age: None,
            max_idle: days(10),
        };
        // 1 is unread for 50 days; 2 is read recently and keeps 3.
        assert_eq!(
            live(&mark(&g, &HashSet::new(), &idle, Timestamp(100 * DAY))),
            vec![2, 3, 4, 5]
        );
        let both = Retention {
            max_age: days(30),
            max_idle: days(10),
        };
        // Read or not, 1, 2 and 5 are older than 30 days; 4 keeps 3.
        assert_eq!(
            live(&mark(&g, &HashSet::new(), &both, Timestamp(100 * DAY))),
            vec![3, 4]
        );
    }

    #[test]
    fn pins_keep_expired_paths_and_their_closures() {
        let g = graph((1..=5).map(|i| node(i, 50, 50)).collect());
        let retention = Retention {
            max_age: Some(TimeSpan(Duration::ZERO)),
            max_idle: None,
        };
        let pins: HashSet<String> = ["h2".to_owned(), "h9".to_owned()].into();
        let marked = mark(&g, &pins, &retention, Timestamp(100 * DAY));
        assert_eq!(live(&marked), vec![2, 3]);
        assert_eq!(
            marked.pinned, 1,
            "a pin on an absent path counts for nothing"
        );
        assert_eq!(marked.unexpired, 0);
    }

    #[test]
    fn timestamps_in_the_future_do_not_expire() {
        let g = Graph {
            paths: vec![node(1, -5, -5)],
            refs: HashMap::new(),
        };
        let retention = Retention {
            max_age: days(1),
            max_idle: days(1),
        };
        assert_eq!(
            live(&mark(&g, &HashSet::new(), &retention, Timestamp(100 * DAY))),
            vec![1]
        );
    }
}
