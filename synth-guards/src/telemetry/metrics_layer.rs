//! A `metrics` recorder wrapper that labels every measurement with the synthetic context
//! (feature `metrics`).
//!
//! ```
//! use synth_guards::telemetry::metrics_layer::SyntheticRecorder;
//!
//! # let exporter = metrics::NoopRecorder;
//! // let exporter = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
//! let recorder = SyntheticRecorder::new(exporter);
//! // metrics::set_global_recorder(recorder)?;
//! # drop(recorder);
//! ```
//!
//! The label is chosen when a value is recorded, not when the handle is registered, so handles
//! created once at start-up and kept are labelled correctly too: each handle registers (lazily)
//! one inner series per variant: `synthetic="false"`, or `synthetic="true"` with
//! `synthetic.origin`.

use std::sync::{Arc, OnceLock};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Label, Level, Metadata,
    Recorder, SharedString, Unit,
};
use synth_ctx::Origin;

use super::{SYNTHETIC, SYNTHETIC_ORIGIN};

/// Histogram buckets (seconds) for request latencies, from 1 ms to 10 s. Prometheus exporters
/// default to summaries, whose quantiles cannot be aggregated or asked for by
/// `histogram_quantile`: a loadgen signal on real users' p95 would read no data. Give your
/// exporter buckets, e.g. `PrometheusBuilder::new().set_buckets(LATENCY_BUCKETS)`.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

static METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// Wraps a recorder (an exporter) so that every measurement carries the synthetic labels.
#[derive(Debug)]
pub struct SyntheticRecorder<R> {
    inner: Arc<R>,
}

impl<R> SyntheticRecorder<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        SyntheticRecorder { inner: Arc::new(inner) }
    }

    /// The wrapped recorder.
    pub fn inner(&self) -> &R {
        &self.inner
    }
}

/// 0: real; 1..=3: synthetic, by origin.
fn variant() -> usize {
    match synth_ctx::current().map(|s| s.origin()) {
        None => 0,
        Some(Origin::Load) => 1,
        Some(Origin::Replay) => 2,
        Some(Origin::Dark) => 3,
    }
}

fn labels(variant: usize) -> Vec<Label> {
    let origin = match variant {
        0 => return vec![Label::new(SYNTHETIC, "false")],
        1 => Origin::Load,
        2 => Origin::Replay,
        _ => Origin::Dark,
    };
    vec![Label::new(SYNTHETIC, "true"), Label::new(SYNTHETIC_ORIGIN, origin.as_str())]
}

struct Tagged<R, H> {
    key: Key,
    recorder: Arc<R>,
    variants: [OnceLock<H>; 4],
}

impl<R, H> Tagged<R, H> {
    fn handle(&self, register: impl FnOnce(&R, &Key) -> H) -> &H {
        let i = variant();
        self.variants[i].get_or_init(|| register(&self.recorder, &self.key.with_extra_labels(labels(i))))
    }
}

impl<R: Recorder> CounterFn for Tagged<R, Counter> {
    fn increment(&self, value: u64) {
        self.handle(|r, k| r.register_counter(k, &METADATA)).increment(value);
    }

    fn absolute(&self, value: u64) {
        self.handle(|r, k| r.register_counter(k, &METADATA)).absolute(value);
    }
}

impl<R: Recorder> GaugeFn for Tagged<R, Gauge> {
    fn increment(&self, value: f64) {
        self.handle(|r, k| r.register_gauge(k, &METADATA)).increment(value);
    }

    fn decrement(&self, value: f64) {
        self.handle(|r, k| r.register_gauge(k, &METADATA)).decrement(value);
    }

    fn set(&self, value: f64) {
        self.handle(|r, k| r.register_gauge(k, &METADATA)).set(value);
    }
}

impl<R: Recorder> HistogramFn for Tagged<R, Histogram> {
    fn record(&self, value: f64) {
        self.handle(|r, k| r.register_histogram(k, &METADATA)).record(value);
    }
}

impl<R: Recorder + Send + Sync + 'static> Recorder for SyntheticRecorder<R> {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, _metadata: &Metadata<'_>) -> Counter {
        Counter::from_arc(Arc::new(Tagged {
            key: key.clone(),
            recorder: self.inner.clone(),
            variants: Default::default(),
        }))
    }

    fn register_gauge(&self, key: &Key, _metadata: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(Arc::new(Tagged {
            key: key.clone(),
            recorder: self.inner.clone(),
            variants: Default::default(),
        }))
    }

    fn register_histogram(&self, key: &Key, _metadata: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(Arc::new(Tagged {
            key: key.clone(),
            recorder: self.inner.clone(),
            variants: Default::default(),
        }))
    }
}
