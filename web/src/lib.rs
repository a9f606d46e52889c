//! Kiln's web tier: dashboard, JSON API, the binary cache's HTTP endpoints, webhooks and metrics.
//!
//! It is stateless (many replicas may run) and must never schedule or build. The HTTP handlers
//! arrive with the binary-cache work; until then this crate only marks the boundary in the workspace.
