//! Tracing spans that show whether a request is synthetic.
//!
//! The server layer records `synthetic`, `synthetic.origin` and `synthetic.run` on the current
//! span, but `tracing` only records fields a span declared when it was created. Spans made by
//! [`make_span`] declare them (and fill them in if the server layer already ran), so use it with
//! tower-http's `TraceLayer`:
//!
//! ```
//! use axum::{Router, routing::get};
//! use tower_http::trace::TraceLayer;
//!
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "ok" }))
//!     .layer(TraceLayer::new_for_http().make_span_with(synth_tower::trace::make_span));
//! ```
//!
//! With `tracing-opentelemetry`, recorded fields become attributes of the exported span.
//! Put the synth server layer **outside** `TraceLayer` (added after it) so the span is created
//! with the fields set and inside the synthetic scope; the other order works too, the layer then
//! records the fields on the `TraceLayer` span after it was created.

use http::Request;
use synth_ctx::Synthetic;
use tracing::{Level, Span, field::Empty};

/// A `request` span at INFO level with `method`, `uri`, `version` and the synthetic fields.
pub fn make_span<B>(req: &Request<B>) -> Span {
    let span = tracing::span!(
        Level::INFO,
        "request",
        method = %req.method(),
        uri = %req.uri(),
        version = ?req.version(),
        synthetic = Empty,
        synthetic.origin = Empty,
        synthetic.run = Empty,
    );
    record(&span, req);
    span
}

/// Records the synthetic fields of `req` (set by the server layer) on `span`, if it declared
/// them. For your own `make_span` functions.
///
/// Nothing is recorded for a request without a verified marker: the server layer may still
/// record the fields later (when it runs inside `TraceLayer`), and OpenTelemetry exporters keep
/// both values of a field recorded twice. A span without `synthetic=true` is a real request.
pub fn record<B>(span: &Span, req: &Request<B>) {
    if let Some(s) = req.extensions().get::<Synthetic>() {
        span.record("synthetic", true);
        span.record("synthetic.origin", s.origin().as_str());
        span.record("synthetic.run", s.run().as_str());
    }
}
