//! Tagged telemetry through the real SDKs: OpenTelemetry metrics (in-memory exporter), spans
//! (in-memory exporter), the `metrics` facade, and JSON log lines.
#![cfg(all(feature = "otel-metrics", feature = "otel-traces", feature = "metrics", feature = "tracing"))]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry::{
    KeyValue,
    metrics::MeterProvider as _,
    trace::{Tracer as _, TracerProvider as _},
};
use opentelemetry_sdk::{
    metrics::{
        InMemoryMetricExporter, PeriodicReader, SdkMeterProvider,
        data::{AggregatedMetrics, MetricData},
    },
    trace::{InMemorySpanExporter, SdkTracerProvider},
};
use synth_ctx::{KeyRing, Origin, RunId, Signer, Synthetic};
use synth_guards::telemetry::{
    logs::SyntheticFields, metrics_layer::SyntheticRecorder, otel_metrics::SyntheticMeterProvider,
    spans::SyntheticSpanProcessor,
};

fn synthetic(origin: Origin, run: &str) -> Synthetic {
    let keys = KeyRing::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8").unwrap();
    Signer::new(keys).mint_synthetic(origin, &RunId::new(run).unwrap(), Duration::from_secs(60))
}

fn attrs<'a>(it: impl Iterator<Item = &'a KeyValue>) -> BTreeMap<String, String> {
    it.map(|kv| (kv.key.to_string(), kv.value.to_string())).collect()
}

#[test]
fn otel_metrics_are_split_at_record_time_without_changing_the_recording_code() {
    let exporter = InMemoryMetricExporter::default();
    let sdk =
        SdkMeterProvider::builder().with_reader(PeriodicReader::builder(exporter.clone()).build()).build();
    let provider = SyntheticMeterProvider::new(sdk);
    let meter = provider.meter("shop");
    // Instruments created once, at start-up, outside any request.
    let requests = meter.u64_counter("requests").build();
    let latency = meter.f64_histogram("latency").with_unit("s").build();

    // The recording code knows nothing about synthetic traffic.
    let handle = |route: &'static str| {
        requests.add(1, &[KeyValue::new("route", route)]);
        latency.record(0.25, &[KeyValue::new("route", route)]);
    };
    handle("/");
    handle("/");
    synthetic(Origin::Load, "m1").in_scope(|| handle("/"));
    synthetic(Origin::Dark, "m1").in_scope(|| handle("/"));
    provider.inner().force_flush().unwrap();

    let mut sums = BTreeMap::new();
    let mut hist = BTreeMap::new();
    for rm in exporter.get_finished_metrics().unwrap() {
        for sm in rm.scope_metrics() {
            for m in sm.metrics() {
                match m.data() {
                    AggregatedMetrics::U64(MetricData::Sum(s)) if m.name() == "requests" => {
                        for p in s.data_points() {
                            sums.insert(attrs(p.attributes()), p.value());
                        }
                    }
                    AggregatedMetrics::F64(MetricData::Histogram(h)) if m.name() == "latency" => {
                        for p in h.data_points() {
                            hist.insert(attrs(p.attributes()), p.count());
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    let key = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    };
    let real = key(&[("route", "/"), ("synthetic", "false")]);
    let load = key(&[("route", "/"), ("synthetic", "true"), ("synthetic.origin", "load")]);
    let dark = key(&[("route", "/"), ("synthetic", "true"), ("synthetic.origin", "dark")]);
    assert_eq!(sums.get(&real), Some(&2), "{sums:?}");
    assert_eq!(sums.get(&load), Some(&1), "{sums:?}");
    assert_eq!(sums.get(&dark), Some(&1), "{sums:?}");
    assert_eq!(hist.get(&real), Some(&2), "{hist:?}");
    assert_eq!(hist.len(), 3, "no series carries the run id: {hist:?}");
}

#[test]
fn spans_started_in_a_synthetic_scope_carry_the_attributes() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(SyntheticSpanProcessor::new())
        .with_simple_exporter(exporter.clone())
        .build();
    let tracer = provider.tracer("shop");
    tracer.in_span("real", |_| {});
    synthetic(Origin::Replay, "sp-1")
        .in_scope(|| tracer.in_span("synthetic", |_| tracer.in_span("child", |_| {})));
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let by_name: BTreeMap<String, BTreeMap<String, String>> =
        spans.iter().map(|s| (s.name.to_string(), attrs(s.attributes.iter()))).collect();
    assert!(by_name["real"].is_empty(), "{by_name:?}");
    for name in ["synthetic", "child"] {
        let a = &by_name[name];
        assert_eq!(a.get("synthetic").map(String::as_str), Some("true"), "{name}: {a:?}");
        assert_eq!(a.get("synthetic.origin").map(String::as_str), Some("replay"));
        assert_eq!(a.get("synthetic.run").map(String::as_str), Some("sp-1"));
    }
}

/// A `metrics` recorder that remembers every series and its total.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<BTreeMap<String, f64>>>);

struct Series(String, Arc<Mutex<BTreeMap<String, f64>>>);

impl metrics::CounterFn for Series {
    fn increment(&self, value: u64) {
        *self.1.lock().unwrap().entry(self.0.clone()).or_default() += value as f64;
    }
    fn absolute(&self, value: u64) {
        self.1.lock().unwrap().insert(self.0.clone(), value as f64);
    }
}

impl metrics::HistogramFn for Series {
    fn record(&self, value: f64) {
        *self.1.lock().unwrap().entry(self.0.clone()).or_default() += value;
    }
}

impl Capture {
    fn series(&self, key: &metrics::Key) -> Arc<Series> {
        let mut labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
        labels.sort();
        Arc::new(Series(format!("{}{{{}}}", key.name(), labels.join(",")), self.0.clone()))
    }
}

impl metrics::Recorder for Capture {
    fn describe_counter(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_gauge(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_histogram(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::from_arc(self.series(key))
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Histogram {
        metrics::Histogram::from_arc(self.series(key))
    }
}

#[test]
fn metrics_facade_values_are_labelled_when_recorded_even_on_kept_handles() {
    let capture = Capture::default();
    let recorder = SyntheticRecorder::new(capture.clone());
    metrics::with_local_recorder(&recorder, || {
        let kept = metrics::counter!("orders_total", "shop" => "eu");
        kept.increment(1);
        synthetic(Origin::Load, "mf").in_scope(|| {
            kept.increment(1);
            metrics::counter!("orders_total", "shop" => "eu").increment(2);
            metrics::histogram!("latency_seconds").record(0.5);
        });
        metrics::histogram!("latency_seconds").record(0.25);
    });
    let got = capture.0.lock().unwrap().clone();
    assert_eq!(got.get("orders_total{shop=eu,synthetic=false}"), Some(&1.0), "{got:?}");
    assert_eq!(got.get("orders_total{shop=eu,synthetic.origin=load,synthetic=true}"), Some(&3.0), "{got:?}");
    assert_eq!(got.get("latency_seconds{synthetic.origin=load,synthetic=true}"), Some(&0.5), "{got:?}");
    assert_eq!(got.get("latency_seconds{synthetic=false}"), Some(&0.25), "{got:?}");
}

#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn json_log_lines_carry_the_synthetic_fields() {
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(move || writer.clone())
        .map_event_format(SyntheticFields::new)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        tracing::info!(order = 7, "order placed");
        synthetic(Origin::Load, "logs-1").in_scope(|| tracing::info!(order = 8, "order placed"));
    });
    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let parsed: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(parsed.len(), 2, "{text}");
    assert!(parsed[0].get("synthetic").is_none(), "{text}");
    assert_eq!(parsed[1]["synthetic"], true);
    assert_eq!(parsed[1]["synthetic.origin"], "load");
    assert_eq!(parsed[1]["synthetic.run"], "logs-1");
    assert_eq!(parsed[1]["fields"]["order"], 8);
}
