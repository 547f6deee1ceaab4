//! Tagged telemetry: split every metric, span and log line into real and synthetic.
//!
//! - [`otel_metrics::SyntheticMeterProvider`] (feature `otel-metrics`): every instrument created
//!   through it records `synthetic="true"|"false"` (and `synthetic.origin`) from the context at
//!   record time, with no change to the code that records.
//! - [`metrics_layer::SyntheticRecorder`] (feature `metrics`): the same for the `metrics` facade.
//! - [`spans::SyntheticSpanProcessor`] (feature `otel-traces`): every span started inside a
//!   synthetic scope gets `synthetic`, `synthetic.origin`, `synthetic.run`.
//! - [`logs::SyntheticFields`] (feature `tracing`): log lines written inside a synthetic scope
//!   carry the same fields (JSON or text).
//!
//! The run id goes on spans and logs, never on metrics: it would make every run a new time
//! series.

#[cfg(feature = "tracing")]
pub mod logs;
#[cfg(feature = "metrics")]
pub mod metrics_layer;
#[cfg(feature = "otel-metrics")]
pub mod otel_metrics;
#[cfg(feature = "otel-traces")]
pub mod spans;

/// `synthetic` label/attribute name.
pub const SYNTHETIC: &str = "synthetic";
/// `synthetic.origin` label/attribute name.
pub const SYNTHETIC_ORIGIN: &str = "synthetic.origin";
/// `synthetic.run` attribute name (spans and logs only).
pub const SYNTHETIC_RUN: &str = "synthetic.run";
