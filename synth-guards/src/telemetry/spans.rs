//! A span processor that marks spans started inside a synthetic scope (feature `otel-traces`).
//!
//! ```
//! use opentelemetry_sdk::trace::SdkTracerProvider;
//! use synth_guards::telemetry::spans::SyntheticSpanProcessor;
//!
//! let provider = SdkTracerProvider::builder().with_span_processor(SyntheticSpanProcessor::new()).build();
//! # drop(provider);
//! ```
//!
//! Register it before exporting processors: processors run in order, and the attributes are set
//! when the span starts.

use std::time::Duration;

use opentelemetry::{Context, KeyValue, trace::Span as _};
use opentelemetry_sdk::{
    error::OTelSdkResult,
    trace::{Span, SpanData, SpanProcessor},
};

use super::{SYNTHETIC, SYNTHETIC_ORIGIN, SYNTHETIC_RUN};

/// Adds `synthetic=true`, `synthetic.origin` and `synthetic.run` to spans whose parent context
/// is synthetic. Real spans are left as they are.
#[derive(Clone, Copy, Debug, Default)]
pub struct SyntheticSpanProcessor {
    _priv: (),
}

impl SyntheticSpanProcessor {
    /// A new processor.
    pub fn new() -> Self {
        Self::default()
    }
}

impl SpanProcessor for SyntheticSpanProcessor {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        if let Some(s) = synth_ctx::from_context(cx) {
            span.set_attribute(KeyValue::new(SYNTHETIC, true));
            span.set_attribute(KeyValue::new(SYNTHETIC_ORIGIN, s.origin().as_str()));
            span.set_attribute(KeyValue::new(SYNTHETIC_RUN, s.run().to_string()));
        }
    }

    fn on_end(&self, _span: SpanData) {}

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}
