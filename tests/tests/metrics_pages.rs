//! A `/metrics` page built as the guide shows (section 7: the exporter with histogram buckets
//! behind `SyntheticRecorder`, the layer's counters, the service's guard registry), after real,
//! synthetic and refused requests, is accepted by `promtool check metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::time::{Duration, Instant};

use axum::{Router, routing::get};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use synth_ctx::{KeyRing, Origin, RunId, Signer, Verifier};
use synth_guards::{
    GuardRegistry,
    telemetry::metrics_layer::{LATENCY_BUCKETS, SyntheticRecorder},
};
use synth_tower::VerifySyntheticLayer;

const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

/// The guide's `metrics_page`, as written there.
fn metrics_page(handle: PrometheusHandle, layer: &VerifySyntheticLayer, guards: GuardRegistry) -> Router {
    let stats = layer.stats().clone();
    Router::new().route(
        "/metrics",
        get(move || {
            let page = format!(
                "{}{}{}",
                handle.render(),
                stats.snapshot().to_prometheus("orders"),
                guards.render_prometheus()
            );
            std::future::ready(page)
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guides_metrics_page_passes_promtool_after_real_synthetic_and_refused_traffic() {
    // The guide's recorder and its HELP text.
    let prometheus = PrometheusBuilder::new().set_buckets(LATENCY_BUCKETS).unwrap().build_recorder();
    let handle = prometheus.handle();
    metrics::set_global_recorder(SyntheticRecorder::new(prometheus)).unwrap();
    metrics::describe_histogram!("http_request_duration_seconds", metrics::Unit::Seconds, "Time to answer.");

    let guards = GuardRegistry::new();
    let charge = guards.guard("payment.charge");
    let layer =
        VerifySyntheticLayer::new(Verifier::new(KeyRing::parse(KEYS).unwrap())).with_service_name("orders");
    let app = Router::new()
        .route(
            "/orders",
            get(move || {
                let charge = charge.clone();
                async move {
                    let start = Instant::now();
                    let _ = charge.decide(false).allows_effect();
                    metrics::histogram!("http_request_duration_seconds", "route" => "/orders")
                        .record(start.elapsed().as_secs_f64());
                    "ok"
                }
            }),
        )
        .layer(layer.clone())
        .merge(metrics_page(handle, &layer, guards.clone()));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });

    let client = reqwest::Client::new();
    let token = Signer::new(KeyRing::parse(KEYS).unwrap()).mint(
        Origin::Load,
        &RunId::new("page").unwrap(),
        Duration::from_secs(60),
    );
    for marker in [None, Some(token.as_str()), Some("v1.load.forged.1.k1.x")] {
        let mut req = client.get(format!("http://{addr}/orders"));
        if let Some(m) = marker {
            req = req.header("synthetic-traffic", m);
        }
        req.send().await.unwrap();
    }
    let page = client.get(format!("http://{addr}/metrics")).send().await.unwrap().text().await.unwrap();
    for family in [
        "http_request_duration_seconds_bucket{route=\"/orders\",synthetic=\"false\"",
        "synth_requests_total{service=\"orders\",synthetic=\"true\",origin=\"load\"} 1",
        "synth_marker_rejected_total{service=\"orders\",reason=\"malformed\"} 1",
        "synth_guard_executed_total{guard=\"payment.charge\"} 1",
        "synth_guard_suppressed_total{guard=\"payment.charge\"} 1",
    ] {
        assert!(page.contains(family), "{family} missing from\n{page}");
    }
    let test = "the_guides_metrics_page_passes_promtool_after_real_synthetic_and_refused_traffic";
    if let Some(checked) = synth_testkit::promtool::check_metrics(test, &page) {
        checked.unwrap_or_else(|why| panic!("promtool refused the guide's page: {why}\n{page}"));
    }
}
