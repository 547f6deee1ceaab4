//! Guards for the side effects of synthetic traffic: turn emails, payments and third-party calls
//! into no-ops, tag the rows and telemetry synthetic requests produce, and purge tagged rows.
//!
//! Every guard asks [`synth_ctx::is_synthetic`] (the scope the synth-tower server layer sets up)
//! and fails closed: input that is visibly synthetic (a reserved test identity) is refused even
//! when the context says real, with an error ([`ContextLost`], or the email guard's
//! `GuardedError::ContextLost`) that no caller can mistake for success, and that mismatch is
//! counted and logged as "context lost".
//!
//! - [`Guard`]: any side effect (a payment charge, a webhook): real effect or stub, counted.
//! - [`email`] (feature `lettre`): a guarded lettre transport.
//! - [`third_party`] (feature `http`): a tower client layer with per-host rules (block, reroute
//!   to a sandbox, pass) for synthetic traffic.
//! - [`identity`]: conventions for synthetic identities and reserved domains.
//! - [`telemetry`]: metrics (OpenTelemetry, `metrics` facade), spans and log lines split real vs
//!   synthetic.
//! - [`db`]: the tag column convention; PostgreSQL (feature `postgres`) and SQLite (feature
//!   `sqlite`) helpers.
//!
//! # Feature flags
//!
//! `lettre`, `http`, `postgres`, `sqlite`, `cleanup` (the `synth-cleanup` library and binary),
//! `metrics`, `otel-metrics`, `otel-traces`, `tracing`, `full`.

#[cfg(feature = "cleanup")]
pub mod cleanup;
pub mod db;
#[cfg(feature = "lettre")]
pub mod email;
mod guard;
pub mod identity;
pub mod telemetry;
#[cfg(feature = "http")]
pub mod third_party;

pub use guard::{ContextLost, Decision, Guard, GuardRegistry, GuardStats, all_stats, render_prometheus};
pub use synth_ctx;
