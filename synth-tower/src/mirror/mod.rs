//! Dark traffic: copy a share of real requests to a new service off the critical path, each copy
//! marked `dark`, and compare its answers with the real ones (feature `mirror`).
//!
//! [`MirrorLayer`] goes on the real service (axum, hyper, tonic: it is generic over
//! `http::Request<B>`). For each real request it decides, in this order: is mirroring on and the
//! kill switch off, is the request in the sampled share, does it pass the route and method
//! filters, is it real (a request that carries a marker in any form, valid or not, or runs in a
//! synthetic scope is never copied unless [`MirrorBuilder::mirror_synthetic`] asks; a
//! mirror's copy, of origin `dark`, never: no copy of a copy; nor a request whose marker a
//! `TreatAsReal` verify layer refused and removed, [`MarkerRemoved`](crate::MarkerRemoved), which
//! may have been a copy). A chosen request is served
//! exactly as before; meanwhile:
//!
//! - its body is copied as it streams to the handler, frame by frame, never waited for (up to
//!   [`body_limit`](MirrorBuilder::body_limit), default 256 KiB; a larger body is not copied).
//!   The copy is owned: a frame kept by reference could pin a whole read buffer of the server's;
//! - once the body has ended, a copy goes into a **bounded queue** (by copies and by bytes); a
//!   full queue drops the copy and counts it; nothing ever waits for the mirror. The byte
//!   budget ([`max_pending_bytes`](MirrorBuilder::max_pending_bytes)) counts every byte a copy
//!   holds, so memory stays bounded whatever the dark target does;
//! - a sender on its own thread and runtime (`synth-mirror`, started with the first copy; the
//!   real service's threads never run a copy) sends copies to the [`DarkTarget`] under a
//!   concurrency limit and a timeout,
//!   each with hop-by-hop headers and any marker removed and a fresh **`dark` marker** for the
//!   configured run id, minted with the service's [`Signer`](synth_ctx::Signer) (short TTL,
//!   re-minted). The dark service's `VerifySyntheticLayer` scopes the copy, its guards make
//!   payments and emails no-ops (the real request already made them), and its rows are tagged
//!   with the run id, for `synth-cleanup --run <run>`;
//! - in compare mode ([`MirrorBuilder::compare`]) the real answer is copied too (up
//!   to [`answer_limit`](MirrorBuilder::answer_limit)) and compared with the dark one:
//!   status, chosen headers, and the body (JSON-aware, with [`JsonPath`]s to ignore). A real
//!   answer that will not be whole (dropped, failed) is counted `real_incomplete` at once.
//!
//! The [`KillSwitch`](crate::KillSwitch) given with [`MirrorBuilder::kill_switch`] stops
//! mirroring at once: no new copies, queued copies dropped, copies in flight cut short (within
//! 20 ms), those waiting for their real answer to compare too. [`MirrorHandle`] switches mirroring on and off and changes the share at run time;
//! [`admin_router`] serves it (feature `axum`).
//!
//! What the mirror did is counted ([`MirrorSnapshot`], [`MirrorHandle::to_prometheus`]:
//! `synth_mirror_requests_total`, `synth_mirror_dark_total`, `synth_mirror_compared_total`, the
//! latency of real and dark answers side by side in `synth_mirror_latency_seconds`), with the
//! most recent mismatches and dark errors kept as samples.
//!
//! # Example
//!
//! ```
//! use axum::{Router, routing::get};
//! use synth_ctx::{KeyRing, RunId, Signer};
//! use synth_tower::{KillSwitch, mirror::{CompareSpec, DarkTarget, JsonPath, MirrorLayer}};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let keys = KeyRing::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8")?; // KeyRing::from_env()?
//! let kill = KillSwitch::new();
//! let mirror = MirrorLayer::builder(
//!     DarkTarget::url("http://catalog-v2.internal:8080")?,
//!     Signer::new(keys),
//!     RunId::new("dark-catalog-v2")?,
//! )
//! .share(0.2)
//! .routes(["/search", "/products/"])
//! .compare(CompareSpec {
//!     headers: vec![http::header::CONTENT_TYPE],
//!     ignore: vec![JsonPath::parse("$.generated_at")?],
//! })
//! .kill_switch(kill.clone())
//! .service_name("catalog")
//! .build()?;
//! let handle = mirror.handle(); // handle.set_share(0.05)?, handle.snapshot(), handle.to_prometheus()
//! let app: Router = Router::new().route("/search", get(|| async { "[]" })).layer(mirror);
//! assert_eq!(handle.share(), 0.2);
//! # Ok(()) }
//! ```

#[cfg(feature = "axum")]
mod admin;
mod body;
/// The answer comparison (also at `synth_tower::compare`).
pub use crate::compare;
mod config;
mod dispatch;
mod service;
mod stats;
mod target;

#[cfg(feature = "axum")]
pub use admin::admin_router;
pub use body::{MirrorRequestBody, MirrorResponseBody};
pub use compare::{Answer, CompareSpec, Comparison, Difference, JsonPath, JsonPathError};
pub use config::{MirrorBuilder, MirrorConfigError, MirrorHandle, MirrorLayer};
pub use service::{Mirror, MirrorFuture};
pub use stats::{
    CompareResult, DarkResult, Decision, ErrorSample, HistogramSnapshot, LATENCY_BUCKETS, MirrorSnapshot,
    MismatchSample,
};
pub use target::{DarkTarget, DarkTargetError};

/// The rustls crate, for [`DarkTarget::url_with_roots`]'s certificates.
pub use rustls;
