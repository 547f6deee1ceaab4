//! Tower layers for the synthetic-traffic marker.
//!
//! **Status: not built yet.** This crate is reserved in the workspace so its name and place are
//! fixed; it exports nothing until its issue lands. It will hold the server layer (verify the
//! marker at ingress, scope the request, shed synthetic load on a kill switch), the client
//! propagation layer, and tonic and reqwest glue, all built on [`synth_ctx`].
//!
//! Until then, use [`synth_ctx::http`] (feature `http`) to read and write the marker on
//! `http::HeaderMap`s by hand.

pub use synth_ctx;
