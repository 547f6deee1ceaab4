//! The typed run API (`loadgen::run` with a `RunConfig`) against loopback servers, and the
//! proof that `loadgen run` is a thin shell over it: the same scenario through both gives the
//! same JSON report.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, routing::get};
use loadgen::{Ending, Exit, RunConfig, RunError, Scenario};
use synth_ctx::{KeyRing, RunId, Verifier};
use synth_tower::VerifySyntheticLayer;

const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

#[path = "support/schema.rs"]
mod schema;
#[path = "support/cli.rs"]
mod support;
use support::loadgen;

/// A server that verifies every marker (and echoes the run id, so answers count as tagged),
/// and how many requests reached its handlers.
async fn server() -> (SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let layer = VerifySyntheticLayer::new(Verifier::new(KeyRing::parse(KEYS).unwrap()));
    let app = Router::new()
        .route(
            "/",
            get(move || {
                h.fetch_add(1, Ordering::SeqCst);
                async { "ok" }
            }),
        )
        .layer(layer);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (addr, hits)
}

fn dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("loadgen-api-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A fixed-rate phase: 20 arrivals in its second, whatever the machine's speed, so both runs
/// send exactly the same number of requests.
fn scenario_yaml(addr: SocketAddr) -> String {
    format!(
        "target: http://{addr}\nphases: [{{ duration: 1s, arrival_rate: 20 }}]\njourneys: [{{ name: home, steps: [{{ get: / }}] }}]\nthresholds: [\"error_rate < 0.01\"]\n"
    )
}

/// The report with every number replaced by its type and every array by its first element:
/// what must be equal between two runs of one scenario.
fn shape(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        Value::Array(a) => Value::Array(a.first().map(shape).into_iter().collect()),
        Value::Number(_) => Value::String("number".into()),
        Value::String(_) => Value::String("string".into()),
        other => other.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_and_the_typed_api_write_the_same_report() {
    let (addr, hits) = server().await;
    let dir = dir("same");
    let file = dir.join("s.yaml");
    std::fs::write(&file, scenario_yaml(addr)).unwrap();
    let keys_file = dir.join("keys");
    std::fs::write(&keys_file, KEYS).unwrap();
    let (cli_json, api_json) = (dir.join("cli.json"), dir.join("api.json"));

    let (exit, out) = loadgen(&[
        "run",
        file.to_str().unwrap(),
        "--run-id",
        "same-run",
        "--seed",
        "7",
        "--keys-file",
        keys_file.to_str().unwrap(),
        "--report-json",
        cli_json.to_str().unwrap(),
        "-q",
    ])
    .await;
    assert_eq!(exit, Exit::Ok, "{out}");
    let by_cli = hits.swap(0, Ordering::SeqCst);

    let scenario = Scenario::from_file(&file).unwrap();
    let config = RunConfig::new(KeyRing::parse(KEYS).unwrap())
        .with_run_id(RunId::new("same-run").unwrap())
        .with_seed(7)
        .with_report_json(&api_json)
        .with_quiet(true);
    let outcome = loadgen::run(Arc::new(scenario), config).await.unwrap();
    assert_eq!(outcome.exit(), Exit::Ok);
    let by_api = hits.load(Ordering::SeqCst);

    let cli: serde_json::Value = serde_json::from_slice(&std::fs::read(&cli_json).unwrap()).unwrap();
    let api: serde_json::Value = serde_json::from_slice(&std::fs::read(&api_json).unwrap()).unwrap();
    // The file the API wrote is the outcome's own JSON rendering (read back the same way:
    // serde_json's float parsing is not exact to the last bit).
    let rendered: serde_json::Value =
        serde_json::from_slice(&serde_json::to_vec_pretty(&outcome.to_json()).unwrap()).unwrap();
    assert_eq!(api, rendered);
    assert_eq!(shape(&cli), shape(&api));
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../../docs/report.schema.json")).unwrap();
    let mut errors = Vec::new();
    schema::validate(&schema, &schema, &api, "$", &mut errors);
    assert!(errors.is_empty(), "the API's report does not match docs/report.schema.json: {errors:?}");
    assert_eq!(by_cli, 20);
    assert_eq!(by_api, 20);
    for key in ["run_id", "target", "ending", "abort_reason", "journeys", "thresholds"] {
        assert_eq!(cli[key], api[key], "{key}");
    }
    for key in ["requests", "responses", "errors", "status_codes", "tagged", "shed"] {
        assert_eq!(cli["total"][key], api["total"][key], "total.{key}");
        assert_eq!(cli["steps"][0][key], api["steps"][0][key], "steps[0].{key}");
    }
    assert_eq!(api["total"]["requests"], 20);
    assert_eq!(api["total"]["tagged"], 20, "every answer echoed the run's marker");
    // The summary the CLI prints is the outcome's.
    assert!(out.contains(&outcome.summary().lines().nth(2).unwrap().to_owned()), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configs_control_handle_stops_the_run() {
    let (addr, hits) = server().await;
    let yaml = format!(
        "target: http://{addr}\nphases: [{{ duration: 60s, arrival_rate: 20 }}]\njourneys: [{{ name: home, steps: [{{ get: / }}] }}]\n"
    );
    let scenario = Scenario::from_yaml(&yaml).unwrap();
    let config = RunConfig::new(KeyRing::parse(KEYS).unwrap()).with_quiet(true);
    let control = config.control();
    let started = Instant::now();
    let run = tokio::spawn(loadgen::run(Arc::new(scenario), config));
    tokio::time::sleep(Duration::from_millis(500)).await;
    control.stop();
    let outcome = run.await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert_eq!(outcome.finished.ending, Ending::Stopped);
    assert_eq!(outcome.exit(), Exit::Stopped);
    assert!(hits.load(Ordering::SeqCst) > 0, "the run sent something before it was stopped");
    let json = outcome.to_json();
    assert_eq!(json["ending"], "stopped");
    assert!(outcome.to_html().contains("stopped"));
}

/// Whether an error is the one a case expects.
type Expected = fn(&RunError) -> bool;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_or_bad_configs_are_typed_errors_and_send_nothing() {
    let (addr, hits) = server().await;
    let scenario = Arc::new(Scenario::from_yaml(&scenario_yaml(addr)).unwrap());
    let keys = || RunConfig::new(KeyRing::parse(KEYS).unwrap()).with_quiet(true);
    let public: SocketAddr = "0.0.0.0:0".parse().unwrap();
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let cases: Vec<(RunConfig, Expected)> = vec![
        (keys().with_target("ftp://example.com/".parse().unwrap()), |e| matches!(e, RunError::Target(_))),
        (keys().with_target("/relative".parse().unwrap()), |e| matches!(e, RunError::Target(_))),
        (keys().with_token_ttl(Duration::from_millis(500)), |e| matches!(e, RunError::TokenTtl)),
        (keys().with_control_addr(local).with_control_token("  "), |e| {
            matches!(e, RunError::EmptyControlToken)
        }),
        (keys().with_heartbeat(Duration::from_secs(5)).with_control_token("secret"), |e| {
            matches!(e, RunError::HeartbeatWithoutServer)
        }),
        (keys().with_heartbeat(Duration::from_secs(5)).with_control_addr(local), |e| {
            matches!(e, RunError::HeartbeatWithoutToken)
        }),
        (keys().with_metrics_addr(public), |e| {
            matches!(e, RunError::OpenListener { listener: loadgen::Listener::Metrics, .. })
        }),
    ];
    for (config, expected) in cases {
        let err = loadgen::run(scenario.clone(), config).await.unwrap_err();
        assert!(expected(&err), "{err:?}");
        assert_eq!(err.exit(), Exit::Usage);
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_preflight_is_an_error_that_maps_to_exit_4() {
    let (addr, _) = server().await;
    // The server names no hops: a step that expects one fails the preflight.
    let yaml = format!(
        "target: http://{addr}\nphases: [{{ duration: 1s, arrival_rate: 20 }}]\njourneys: [{{ name: home, steps: [{{ get: /, expect_path: [gateway, orders] }}] }}]\n"
    );
    let scenario = Scenario::from_yaml(&yaml).unwrap();
    let report = dir("preflight").join("never.json");
    let config = RunConfig::new(KeyRing::parse(KEYS).unwrap()).with_quiet(true).with_report_json(&report);
    let err = loadgen::run(Arc::new(scenario.clone()), config).await.unwrap_err();
    assert!(matches!(err, RunError::PreflightFailed(_)), "{err:?}");
    assert_eq!(err.exit(), Exit::PreflightFailed);
    assert!(!report.exists(), "a run that did not start wrote a report");
    // Skipping the preflight runs it.
    let config = RunConfig::new(KeyRing::parse(KEYS).unwrap()).with_quiet(true).with_no_preflight(true);
    let outcome = loadgen::run(Arc::new(scenario), config).await.unwrap();
    assert_eq!(outcome.finished.ending, Ending::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_and_metrics_servers_close_when_the_run_ends() {
    let (addr, _) = server().await;
    let scenario = Scenario::from_yaml(&scenario_yaml(addr)).unwrap();
    // Two free ports (a library caller learns nothing else: the run prints where it listens).
    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (control_at, metrics_at) = (free(), free());
    let config = RunConfig::new(KeyRing::parse(KEYS).unwrap())
        .with_quiet(true)
        .with_control_addr(control_at)
        .with_metrics_addr(metrics_at);
    let run = tokio::spawn(loadgen::run(Arc::new(scenario), config));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(tokio::net::TcpStream::connect(control_at).await.is_ok(), "the control API is up during the run");
    assert_eq!(run.await.unwrap().unwrap().exit(), Exit::Ok);
    // A program that runs many scenarios must not leave a control API answering for a run
    // that is over, nor a listening socket per run.
    tokio::time::sleep(Duration::from_millis(50)).await;
    for at in [control_at, metrics_at] {
        assert!(tokio::net::TcpStream::connect(at).await.is_err(), "{at} still listens after the run");
    }
}

#[test]
fn scenarios_load_from_yaml_and_from_files_with_located_errors() {
    let yaml = "target: http://127.0.0.1:9\nphases: [{ duration: 1s, arrival_rate: 5 }]\njourneys: [{ name: home, steps: [{ get: / }] }]\n";
    let from_yaml = Scenario::from_yaml(yaml).unwrap();
    let path = dir("load").join("s.yaml");
    std::fs::write(&path, yaml).unwrap();
    let from_file = Scenario::from_file(&path).unwrap();
    assert_eq!(from_yaml.target, from_file.target);
    assert_eq!(from_yaml.step_names, from_file.step_names);
    // A mistake is an error that says where, never a scenario that half-loaded.
    let err = Scenario::from_yaml("target: http://127.0.0.1:9\nphases: [{ duration: 1s, arival_rate: 5 }]\n")
        .unwrap_err();
    assert_eq!((err.file.as_str(), err.line), ("<yaml>", 2), "{err}");
    let err = Scenario::from_file(dir("load").join("missing.yaml")).unwrap_err();
    assert!(err.to_string().contains("missing.yaml"), "{err}");
}

#[test]
fn a_configs_debug_never_shows_the_control_token_or_a_secret() {
    let config = RunConfig::new(KeyRing::parse(KEYS).unwrap()).with_control_token("s3cret-control-token");
    let shown = format!("{config:?}");
    assert!(!shown.contains("s3cret-control-token"), "{shown}");
    assert!(!shown.contains("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"), "{shown}");
    assert!(shown.contains("k1") && shown.contains("redacted"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_given_in_is_the_one_the_run_obeys() {
    let (addr, hits) = server().await;
    let scenario = Scenario::from_yaml(&scenario_yaml(addr)).unwrap();
    let control = loadgen::Control::new();
    // Half the written rate, set before the run: 20 arrivals/s for 1 s become about 10.
    control.set_rate_factor(0.5).unwrap();
    let config = RunConfig::new(KeyRing::parse(KEYS).unwrap()).with_quiet(true).with_control(control.clone());
    assert!(config.control().rate_factor() == 0.5);
    let outcome = loadgen::run(Arc::new(scenario), config).await.unwrap();
    let sent = hits.load(Ordering::SeqCst);
    assert!((8..=12).contains(&sent), "{sent} requests at half of 20/s for 1s");
    assert_eq!(outcome.to_json()["total"]["requests"], sent);
    assert!(control.live().is_some(), "the run registered its live view on the given control");
}

/// A live marker never shows in a `Debug` print of what holds it (logs are where tokens leak):
/// the control holds the run's marker once the run has started. The engine's own options are
/// checked by a unit test in `api.rs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_prints_never_show_the_marker() {
    let (addr, hits) = server().await;
    let scenario = Scenario::from_yaml(&scenario_yaml(addr)).unwrap();
    let config = RunConfig::new(KeyRing::parse(KEYS).unwrap())
        .with_quiet(true)
        .with_run_id(RunId::new("dbg-run").unwrap());
    let control = config.control();
    let outcome = loadgen::run(Arc::new(scenario), config).await.unwrap();
    assert!(hits.load(Ordering::SeqCst) > 0, "the run sent its marker");
    for printed in [format!("{control:?}"), format!("{outcome:?}")] {
        assert!(!printed.contains("v1.load.dbg-run"), "{printed}");
    }
}
