//! loadgen against a real Prometheus: an axum service with the synth layer and the synthetic
//! metrics recorder, scraped by Prometheus; real users' latency goes up and loadgen, reading
//! real users' p95 from Prometheus, backs off.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, routing::get};
use metrics_exporter_prometheus::PrometheusBuilder;
use synth_ctx::{KeyRing, Verifier};
use synth_guards::telemetry::metrics_layer::SyntheticRecorder;
use synth_testkit::prometheus::Prometheus;
use synth_tower::VerifySyntheticLayer;

const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

/// The service: every request takes `delay_ms` and is measured, split by `synthetic`.
async fn service(delay_ms: Arc<AtomicU64>) -> SocketAddr {
    let recorder = PrometheusBuilder::new()
        .set_buckets(&[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0])
        .unwrap()
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(SyntheticRecorder::new(recorder)).unwrap();
    let work = move || {
        let delay = delay_ms.clone();
        async move {
            let start = Instant::now();
            tokio::time::sleep(Duration::from_millis(delay.load(Ordering::Relaxed))).await;
            metrics::histogram!("http_request_duration_seconds").record(start.elapsed().as_secs_f64());
            "ok"
        }
    };
    let app = Router::new()
        .route("/", get(work))
        .layer(
            VerifySyntheticLayer::new(Verifier::new(KeyRing::parse(KEYS).unwrap())).with_service_name("app"),
        )
        .route("/metrics", get(move || std::future::ready(handle.render())));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_backs_off_when_real_users_latency_rises_in_a_real_prometheus() {
    let delay = Arc::new(AtomicU64::new(2));
    let app = service(delay.clone()).await;
    let Some(prom) = Prometheus::start(
        "loadgen_backs_off_when_real_users_latency_rises_in_a_real_prometheus",
        &[app],
        Duration::from_millis(250),
    ) else {
        return;
    };

    // Real users: a steady trickle without a marker.
    let stop = Arc::new(AtomicBool::new(false));
    let real = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !stop.load(Ordering::Relaxed) {
                let _ = client.get(format!("http://{app}/")).send().await;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };
    // After 3.5 s, real users' requests get slow (the synthetic load "hurts" them).
    let push = {
        let delay = delay.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(3500)).await;
            delay.store(150, Ordering::Relaxed);
        })
    };

    // loadgen refuses to start on a signal that reads no data: wait, as an operator would, until
    // Prometheus has real users' latency (two scrapes into the rate window).
    let query = r#"histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{synthetic="false"}[2s])))"#;
    wait_for_data(&prom.url(), query).await;
    let scenario = format!(
        "target: http://{app}\nphases: [{{ duration: 10s, arrival_rate: 40 }}]\njourneys: [{{ name: browse, steps: [{{ get: / }}] }}]\n\
         on_shed: {{ back_off: false }}\n\
         signals:\n  prometheus: {}\n  interval: 500ms\n  conditions:\n    - name: real p95\n      query: '{query}'\n      above: 0.1\n      for: 1s\n      action: back_off\n      factor: 0.25\n      hold: 60s\n",
        prom.url()
    );
    let scenario = loadgen::Scenario::from_yaml(&scenario).unwrap();
    let config = loadgen::RunConfig::new(KeyRing::parse(KEYS).unwrap()).with_quiet(true);
    let outcome = loadgen::run(Arc::new(scenario), config).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    real.await.unwrap();
    push.await.unwrap();
    let text = outcome.summary();
    assert_eq!(outcome.exit(), loadgen::Exit::Ok, "{text}");

    // The JSON report, as `--report-json` writes it.
    let report = outcome.to_json();
    // Prometheus answered with real users' p95: low before, above the bound after the push.
    let values: Vec<(f64, f64)> = report["signals"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| Some((p["t_s"].as_f64()?, p["value"].as_f64()?)))
        .collect();
    assert!(values.iter().any(|(t, v)| *t < 3.5 && *v < 0.05), "real p95 was low at first: {values:?}");
    assert!(values.iter().any(|(_, v)| *v > 0.1), "and rose above 0.1 s: {values:?}");
    let decisions = report["decisions"].as_array().unwrap();
    let back_off = decisions
        .iter()
        .find(|d| d["action"] == "back_off" && d["source"] == "real p95")
        .unwrap_or_else(|| panic!("no back-off: {text}"));
    let t = back_off["t_s"].as_f64().unwrap();
    assert!(t > 4.0 && t < 9.0, "backed off after the latency rose: {back_off}");
    assert!(back_off["value"].as_f64().unwrap() > 0.1);
    assert!((back_off["new_rate"].as_f64().unwrap() - 10.0).abs() < 1.0, "40/s x 0.25: {back_off}");
    // The synthetic rate followed: ~40/s before, ~10/s in the last seconds.
    let series = report["series"].as_array().unwrap();
    let rps_at = |a: f64, b: f64| {
        let v: Vec<f64> = series
            .iter()
            .filter(|p| (a..b).contains(&p["t_s"].as_f64().unwrap()))
            .map(|p| p["rps"].as_f64().unwrap())
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    assert!(rps_at(1.5, 4.1) > 30.0, "{series:?}");
    assert!(rps_at(t + 1.5, 10.5) < 16.0, "{series:?}");
    drop(prom);
}

/// Polls Prometheus until `query` returns a number (at most 20 s).
async fn wait_for_data(prometheus: &str, query: &str) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let encoded: String = query
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect();
        let text = client
            .get(format!("{prometheus}/api/v1/query?query={encoded}"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
        let has_data = answer["data"]["result"].as_array().is_some_and(|r| {
            r.iter()
                .any(|s| s["value"][1].as_str().is_some_and(|v| v.parse::<f64>().is_ok_and(f64::is_finite)))
        });
        if has_data {
            return;
        }
        assert!(Instant::now() < deadline, "Prometheus never had data for {query}: {answer}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
