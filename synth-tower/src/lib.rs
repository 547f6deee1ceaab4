//! Tower layers for the synthetic-traffic marker: verify, scope, shed and propagate.
//!
//! - [`VerifySyntheticLayer`] (server): verifies the marker at ingress, rejects forged ones (403
//!   or gRPC `PERMISSION_DENIED`), runs the request in the synthetic scope, sheds synthetic load
//!   on a [`KillSwitch`] or a policy, and reports the path the request took.
//! - [`PropagateSyntheticLayer`] (client): sends the marker on from inside a synthetic scope and
//!   collects the downstream path report.
//! - [`trace::make_span`]: a span for tower-http's `TraceLayer` with the synthetic fields.
//! - [`mirror`] (feature `mirror`): dark traffic, a share of real requests copied to a new
//!   service off the critical path, marked `dark`, and their answers compared.
//! - [`capture`] (feature `capture`): a sample of real requests recorded, scrubbed, for replay;
//!   synthetic requests (replays included) never recorded.
//! - [`admin`] (feature `axum`), [`tonic`](mod@crate::tonic) (feature `tonic`) and
//!   [`reqwest`](mod@crate::reqwest) (feature `reqwest`) integrations.
//!
//! All layers are generic over `http::Request<B>` / `http::Response<B>` and depend only on
//! `tower-layer` and `tower-service`, so one layer serves axum, hyper and tonic.
//!
//! # Example
//!
//! ```
//! use axum::{Router, routing::get};
//! use synth_ctx::{KeyRing, Verifier};
//! use synth_tower::VerifySyntheticLayer;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let keys = KeyRing::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8")?; // KeyRing::from_env()?
//! let layer = VerifySyntheticLayer::new(Verifier::new(keys)).with_service_name("orders");
//! let kill = layer.kill_switch().clone(); // kill.stop() sheds all synthetic traffic
//! let app: Router = Router::new().route("/", get(|| async { "ok" })).layer(layer);
//! # Ok(()) }
//! ```
//!
//! # Feature flags
//!
//! - `axum`: the [`admin`] router.
//! - `tonic`: a client interceptor and request helpers.
//! - `reqwest`: a `reqwest-middleware` middleware.
//! - `mirror`: [`MirrorLayer`](mirror::MirrorLayer) for dark traffic (pulls in hyper, tokio and rustls).
//! - `capture`: [`CaptureLayer`](capture::CaptureLayer), a scrubbed sample of real requests for replay.
//! - `full`: all of the above.

#[cfg(feature = "axum")]
pub mod admin;
mod body;
#[cfg(feature = "capture")]
pub mod capture;
pub mod client;
#[cfg(any(feature = "mirror", feature = "capture"))]
pub mod compare;
mod kill;
#[cfg(feature = "mirror")]
pub mod mirror;
#[cfg(feature = "reqwest")]
pub mod reqwest;
mod response;
pub mod scope;
pub mod server;
mod stats;
#[cfg(any(feature = "mirror", feature = "capture"))]
mod tap;
#[cfg(feature = "tonic")]
pub mod tonic;
pub mod trace;

pub use body::ResponseBody;
pub use client::{PropagateSynthetic, PropagateSyntheticLayer};
pub use kill::KillSwitch;
pub use scope::InScope;
pub use server::{InvalidMarkerPolicy, VerifySynthetic, VerifySyntheticLayer};
pub use stats::{REFUSAL_REASONS, ShedCause, StatsSnapshot, SyntheticStats};
pub use synth_ctx;

/// In a request's extensions: the request carried a marker that did not verify, which
/// [`InvalidMarkerPolicy::TreatAsReal`] removed before serving it as a real request. Such a
/// request is served as real but never recorded for replay or mirrored: it came marked.
///
/// ```
/// let mut req = http::Request::new(());
/// assert!(req.extensions().get::<synth_tower::MarkerRemoved>().is_none());
/// ```
#[derive(Clone, Copy, Debug)]
pub struct MarkerRemoved(());

/// The header [`InvalidMarkerPolicy::TreatAsReal`] adds when it removes a refused marker, so that
/// the hops behind (a gateway's backends) know it too: `synthetic-traffic-removed: 1`. Capture
/// and mirror never take a request that carries it. Sending it makes a request only less
/// recorded, never synthetic.
pub const MARKER_REMOVED_HEADER: http::HeaderName =
    http::HeaderName::from_static("synthetic-traffic-removed");
