//! Kiln's coordinator: watches git repositories, evaluates jobsets into derivation graphs, schedules
//! every step once and records the results.
//!
//! It owns the database (the farm's source of truth) and must never build anything itself nor hold
//! the cache's signing key. [`git`] keeps bare mirrors of jobset repositories and checks commits
//! out; [`eval`] evaluates a checked-out jobset with real Nix, in several memory-capped processes,
//! into jobs (derivations written to a Nix store) and per-job errors.

pub mod eval;
pub mod git;
