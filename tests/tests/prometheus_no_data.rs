//! Safety signals against a real Prometheus never read "no data" as healthy: a misspelt metric
//! stops the run before it starts, the guide's own metrics setup and query return data, a
//! series that goes away mid-run pauses it, and `allow_no_data` opts out explicitly.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, routing::get};
use loadgen::{Exit, RunConfig, Scenario};
use metrics_exporter_prometheus::PrometheusBuilder;
use synth_ctx::{KeyRing, Verifier};
use synth_guards::telemetry::metrics_layer::{LATENCY_BUCKETS, SyntheticRecorder};
use synth_testkit::prometheus::Prometheus;
use synth_tower::VerifySyntheticLayer;

const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
/// The guide's query for real users' p95 (docs/guide.md, section 7), over a short window.
const GUIDE_QUERY: &str = r#"histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{synthetic="false"}[2s])))"#;

/// A service set up exactly as the guide's section 7 shows.
async fn service() -> SocketAddr {
    let prometheus = PrometheusBuilder::new().set_buckets(LATENCY_BUCKETS).unwrap().build_recorder();
    let handle = prometheus.handle();
    metrics::set_global_recorder(SyntheticRecorder::new(prometheus)).unwrap();
    let work = || async {
        let start = Instant::now();
        tokio::time::sleep(Duration::from_millis(2)).await;
        metrics::histogram!("http_request_duration_seconds", "route" => "/")
            .record(start.elapsed().as_secs_f64());
        "ok"
    };
    let app = Router::new()
        .route("/", get(work))
        .layer(VerifySyntheticLayer::new(Verifier::new(KeyRing::parse(KEYS).unwrap())))
        .route("/metrics", get(move || std::future::ready(handle.render())));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

async fn run(
    dir: &Path,
    name: &str,
    app: SocketAddr,
    prom: &str,
    condition: &str,
    secs: u32,
) -> (Exit, String, PathBuf) {
    let scenario = format!(
        "target: http://{app}\nphases: [{{ duration: {secs}s, arrival_rate: 20 }}]\njourneys: [{{ name: s, steps: [{{ get: / }}] }}]\n\
         signals:\n  prometheus: {prom}\n  interval: 250ms\n  conditions:\n    - {condition}\n"
    );
    let json = dir.join(format!("{name}.json"));
    let config = RunConfig::new(KeyRing::parse(KEYS).unwrap()).with_quiet(true).with_report_json(&json);
    // The exit code and what `loadgen run` would print: the summary, or why it did not start.
    match loadgen::run(Arc::new(Scenario::from_yaml(&scenario).unwrap()), config).await {
        Ok(outcome) => (outcome.exit(), outcome.summary(), json),
        Err(e) => (e.exit(), e.to_string(), json),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_that_read_no_data_never_read_as_healthy_in_a_real_prometheus() {
    let app = service().await;
    let Some(prom) = Prometheus::start(
        "signals_that_read_no_data_never_read_as_healthy_in_a_real_prometheus",
        &[app],
        Duration::from_millis(250),
    ) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("synth-e2e-nodata-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // Real users, until told to stop.
    let real_users = Arc::new(AtomicBool::new(true));
    let real = {
        let on = real_users.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            while on.load(Ordering::Relaxed) {
                let _ = client.get(format!("http://{app}/")).send().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // Let Prometheus see a few scrapes of real traffic.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // A misspelt metric: the run does not start, and says which query and why.
    let misspelt = GUIDE_QUERY.replace("duration_seconds", "duration_secs");
    let cond = |q: &str, extra: &str| {
        format!("{{ name: real p95, query: '{q}', above: 0.5, for: 1s, action: abort{extra} }}")
    };
    let (exit, out, json) = run(&dir, "misspelt", app, &prom.url(), &cond(&misspelt, ""), 2).await;
    assert_eq!(exit, Exit::PreflightFailed, "{out}");
    assert!(out.contains("no series") && out.contains("duration_secs"), "{out}");
    assert!(!json.exists(), "a run that did not start wrote a report");

    // allow_no_data: the same query starts, explicitly blind.
    let (exit, out, _) =
        run(&dir, "allowed", app, &prom.url(), &cond(&misspelt, ", allow_no_data: true"), 2).await;
    assert_eq!(exit, Exit::Ok, "{out}");

    // The guide's exact setup and query return data: the run starts and ends normally...
    let (exit, out, json) = run(&dir, "guide", app, &prom.url(), &cond(GUIDE_QUERY, ""), 2).await;
    assert_eq!(exit, Exit::Ok, "{out}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(report["decisions"].as_array().unwrap().is_empty(), "{}", report["decisions"]);
    assert!(
        report["signals"].as_array().unwrap().iter().all(|p| p["value"].as_f64().is_some()),
        "every poll read real users' p95: {}",
        report["signals"]
    );

    // ...and when the series goes away mid-run (real users stop: the quantile of no traffic is
    // NaN), the run pauses as if the source were silent.
    let stop_real = {
        let on = real_users.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            on.store(false, Ordering::Relaxed);
        })
    };
    let (exit, out, json) = run(&dir, "vanishing", app, &prom.url(), &cond(GUIDE_QUERY, ""), 8).await;
    stop_real.await.unwrap();
    real.await.unwrap();
    assert_eq!(exit, Exit::Ok, "{out}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let pause = report["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["action"] == "pause")
        .unwrap_or_else(|| panic!("no pause: {}", report["decisions"]))
        .clone();
    assert!(pause["detail"].as_str().unwrap().contains("no data"), "{pause}");
    drop(prom);
}
