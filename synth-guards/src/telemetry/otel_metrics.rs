//! A `MeterProvider` wrapper that tags every measurement with the synthetic context (feature
//! `otel-metrics`).
//!
//! ```
//! use opentelemetry::metrics::MeterProvider as _;
//! use opentelemetry_sdk::metrics::SdkMeterProvider;
//! use synth_guards::telemetry::otel_metrics::SyntheticMeterProvider;
//!
//! let provider = SyntheticMeterProvider::new(SdkMeterProvider::builder().build());
//! let requests = provider.meter("shop").u64_counter("http.server.requests").build();
//! requests.add(1, &[]); // recorded with synthetic="false" here, "true" inside a synthetic scope
//! ```
//!
//! Observable (callback) instruments are passed through untagged: their callbacks run on the
//! exporter's schedule, outside any request, so there is no context to read.

use std::sync::Arc;

use opentelemetry::{
    InstrumentationScope, KeyValue,
    metrics::{
        AsyncInstrumentBuilder, Counter, Gauge, Histogram, HistogramBuilder, InstrumentBuilder,
        InstrumentProvider, Meter, MeterProvider, ObservableCounter, ObservableGauge,
        ObservableUpDownCounter, SyncInstrument, UpDownCounter,
    },
};

use super::{SYNTHETIC, SYNTHETIC_ORIGIN};

/// Wraps a `MeterProvider` so that every synchronous instrument tags its measurements.
#[derive(Clone, Debug)]
pub struct SyntheticMeterProvider<P> {
    inner: P,
}

impl<P> SyntheticMeterProvider<P> {
    /// Wraps `inner` (e.g. an `SdkMeterProvider`).
    pub fn new(inner: P) -> Self {
        SyntheticMeterProvider { inner }
    }

    /// The wrapped provider (to flush or shut it down).
    pub fn inner(&self) -> &P {
        &self.inner
    }
}

impl<P: MeterProvider> MeterProvider for SyntheticMeterProvider<P> {
    fn meter_with_scope(&self, scope: InstrumentationScope) -> Meter {
        Meter::new(Arc::new(Tagging { inner: self.inner.meter_with_scope(scope) }))
    }
}

/// The synthetic attributes of the current context, appended to `attributes`.
pub(crate) fn with_context_attributes(attributes: &[KeyValue]) -> Vec<KeyValue> {
    let mut all = Vec::with_capacity(attributes.len() + 2);
    all.extend_from_slice(attributes);
    match synth_ctx::current() {
        Some(s) => {
            all.push(KeyValue::new(SYNTHETIC, "true"));
            all.push(KeyValue::new(SYNTHETIC_ORIGIN, s.origin().as_str()));
        }
        None => all.push(KeyValue::new(SYNTHETIC, "false")),
    }
    all
}

struct Tagging {
    inner: Meter,
}

struct Tag<I>(I);

macro_rules! tagged_sync {
    ($method:ident, $kind:ident, $t:ty) => {
        fn $method(&self, b: InstrumentBuilder<'_, $kind<$t>>) -> $kind<$t> {
            let mut inner = self.inner.$method(b.name);
            inner.description = b.description;
            inner.unit = b.unit;
            $kind::new(Arc::new(Tag(inner.build())))
        }
    };
}

macro_rules! sync_instrument {
    ($kind:ident, $t:ty, $record:ident) => {
        impl SyncInstrument<$t> for Tag<$kind<$t>> {
            fn measure(&self, value: $t, attributes: &[KeyValue]) {
                self.0.$record(value, &with_context_attributes(attributes));
            }
        }
    };
}

sync_instrument!(Counter, u64, add);
sync_instrument!(Counter, f64, add);
sync_instrument!(UpDownCounter, i64, add);
sync_instrument!(UpDownCounter, f64, add);
sync_instrument!(Gauge, u64, record);
sync_instrument!(Gauge, f64, record);
sync_instrument!(Gauge, i64, record);
sync_instrument!(Histogram, u64, record);
sync_instrument!(Histogram, f64, record);

macro_rules! passthrough_async {
    ($method:ident, $kind:ident, $t:ty) => {
        fn $method(&self, b: AsyncInstrumentBuilder<'_, $kind<$t>, $t>) -> $kind<$t> {
            let mut inner = self.inner.$method(b.name);
            inner.description = b.description;
            inner.unit = b.unit;
            inner.callbacks = b.callbacks;
            inner.build()
        }
    };
}

impl InstrumentProvider for Tagging {
    tagged_sync!(u64_counter, Counter, u64);
    tagged_sync!(f64_counter, Counter, f64);
    tagged_sync!(i64_up_down_counter, UpDownCounter, i64);
    tagged_sync!(f64_up_down_counter, UpDownCounter, f64);
    tagged_sync!(u64_gauge, Gauge, u64);
    tagged_sync!(f64_gauge, Gauge, f64);
    tagged_sync!(i64_gauge, Gauge, i64);

    fn f64_histogram(&self, b: HistogramBuilder<'_, Histogram<f64>>) -> Histogram<f64> {
        let mut inner = self.inner.f64_histogram(b.name);
        inner.description = b.description;
        inner.unit = b.unit;
        inner.boundaries = b.boundaries;
        Histogram::new(Arc::new(Tag(inner.build())))
    }

    fn u64_histogram(&self, b: HistogramBuilder<'_, Histogram<u64>>) -> Histogram<u64> {
        let mut inner = self.inner.u64_histogram(b.name);
        inner.description = b.description;
        inner.unit = b.unit;
        inner.boundaries = b.boundaries;
        Histogram::new(Arc::new(Tag(inner.build())))
    }

    passthrough_async!(u64_observable_counter, ObservableCounter, u64);
    passthrough_async!(f64_observable_counter, ObservableCounter, f64);
    passthrough_async!(i64_observable_up_down_counter, ObservableUpDownCounter, i64);
    passthrough_async!(f64_observable_up_down_counter, ObservableUpDownCounter, f64);
    passthrough_async!(u64_observable_gauge, ObservableGauge, u64);
    passthrough_async!(i64_observable_gauge, ObservableGauge, i64);
    passthrough_async!(f64_observable_gauge, ObservableGauge, f64);
}
