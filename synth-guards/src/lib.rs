//! Guards for side effects of synthetic traffic.
//!
//! **Status: not built yet.** This crate is reserved in the workspace so its name and place are
//! fixed; it exports nothing until its issue lands. It will hold the email, payment and
//! third-party HTTP guards, database row tagging, telemetry tagging and the `synth-cleanup` job,
//! all asking [`synth_ctx::is_synthetic`].

pub use synth_ctx;
