//! The server layer: verify the marker at ingress, scope the request, shed synthetic load.
//!
//! [`VerifySyntheticLayer`] is generic over `http::Request<B>`, so the same layer serves an axum
//! `Router`, a hyper service and a tonic `Server::builder().layer(..)`. For each request it:
//!
//! 1. reads the `synthetic-traffic` header, else the `synthetic` baggage member;
//! 2. without a marker: calls the inner service untouched (a real request);
//! 3. with a marker that does not verify: answers 403 (gRPC `PERMISSION_DENIED`) with the reason,
//!    or, with [`InvalidMarkerPolicy::TreatAsReal`], strips the marker and serves a real request
//!    (unless the marker reads `dark` or `replay`: a copy or a replay is refused all the same);
//! 4. with a valid marker: sheds it (503 + `Retry-After` + `synthetic-traffic-shed: 1`, gRPC
//!    `UNAVAILABLE`) if the [`KillSwitch`](crate::KillSwitch) is on, the shedding predicate says so
//!    or too many synthetic requests are in flight; otherwise puts [`Synthetic`] in the request
//!    extensions, records `synthetic`, `synthetic.origin` and `synthetic.run` on the current
//!    tracing span, and runs the inner service inside the synthetic scope with a fresh
//!    [`Trail`](synth_ctx::Trail). The response carries `synthetic-traffic-seen: <run>`,
//!    `synthetic-traffic-path` and `synthetic-traffic-guards`.
//!
//! [`Synthetic`]: synth_ctx::Synthetic
//!
//! # Example
//!
//! ```
//! use axum::{Router, routing::get};
//! use synth_ctx::{KeyRing, Verifier};
//! use synth_tower::{KillSwitch, VerifySyntheticLayer};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let keys = KeyRing::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8")?; // KeyRing::from_env()?
//! let kill = KillSwitch::new();
//! let app: Router = Router::new()
//!     .route("/", get(|| async { if synth_ctx::is_synthetic() { "synthetic" } else { "real" } }))
//!     .layer(VerifySyntheticLayer::new(Verifier::new(keys)).with_service_name("gateway").with_kill_switch(kill.clone()));
//! # Ok(()) }
//! ```

mod future;
mod layer;
mod service;

pub use future::ResponseFuture;
pub use layer::{InvalidMarkerPolicy, VerifySyntheticLayer};
pub use service::VerifySynthetic;
