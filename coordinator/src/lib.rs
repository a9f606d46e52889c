//! Kiln's coordinator: watches git repositories, evaluates jobsets into derivation graphs, schedules
//! every step once and records the results.
//!
//! It owns the farm's state in the database (the source of truth) and the unfinished part of the
//! step graph in memory, rebuilt from the database after a restart. It talks to workers only
//! through the bus ([`kiln_bus::Bus`]) and to the cache through its index and upload API. It must
//! never build anything itself nor hold the cache's signing key.

pub mod graph;
pub mod model;
pub mod scheduler;
