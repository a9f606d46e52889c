//! Running one step.

pub mod plan;
