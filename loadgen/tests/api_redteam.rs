//! Found by a red team (each failed before the fix): the typed run API sent preflight journeys
//! before a failed signal-data check, after its control was stopped, and before a busy control
//! port failed the run; two runs from clones of one config shared a control and so each other's
//! marker.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use axum::{Router, routing::get};
use loadgen::{RunConfig, RunError, Scenario};
use synth_ctx::KeyRing;

const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
const NO_DATA: &str = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;

async fn serve(app: Router) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

async fn target() -> (SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = Router::new().route(
        "/",
        get(move || {
            h.fetch_add(1, Ordering::SeqCst);
            async { "ok" }
        }),
    );
    (serve(app).await, hits)
}

/// The signal-data check must run before anything is sent: a run whose safety signal reads
/// no data returns `SignalsUnreadable` ("errors mean nothing was sent"). Today the preflight
/// sends every journey to the target first, and only then is the signal found unreadable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signal_check_runs_before_the_preflight_sends() {
    let (addr, hits) = echoing_target().await;
    let prom = serve(
        Router::new()
            .route("/api/v1/query", get(|| async { ([("content-type", "application/json")], NO_DATA) })),
    )
    .await;
    let yaml = format!(
        "target: http://{addr}\nphases: [{{ duration: 1s, arrival_rate: 5 }}]\njourneys: [{{ name: home, steps: [{{ get: /, expect_path: [gateway] }}] }}]\nsignals:\n  prometheus: http://{prom}\n  interval: 200ms\n  timeout: 500ms\n  conditions:\n    - {{ name: real 5xx, query: 'x', above: 0.01, action: abort }}\n"
    );
    let scenario = Arc::new(Scenario::from_yaml(&yaml).unwrap());
    let config = RunConfig::new(KeyRing::parse(KEYS).unwrap()).with_quiet(true);
    let err = loadgen::run(scenario, config).await.unwrap_err();
    let sent = hits.load(Ordering::SeqCst);
    assert!(
        matches!(err, RunError::SignalsUnreadable(_)) && sent == 0,
        "a run with an unreadable safety signal sent {sent} request(s) and failed with {err:?}"
    );
}

/// A control that is stopped ("once stopped it stays stopped, so a second run with it ends at
/// once") must send nothing; today the preflight ignores the control and sends every journey.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_control_sends_nothing_not_even_the_preflight() {
    let (addr, hits) = target().await;
    let yaml = format!(
        "target: http://{addr}\nphases: [{{ duration: 1s, arrival_rate: 5 }}]\njourneys: [{{ name: a, steps: [{{ get: /, expect_path: [gateway] }}] }}, {{ name: b, steps: [{{ get: / }}, {{ get: / }}] }}]\n"
    );
    let scenario = Arc::new(Scenario::from_yaml(&yaml).unwrap());
    let control = loadgen::Control::new();
    control.stop();
    let config = RunConfig::new(KeyRing::parse(KEYS).unwrap()).with_quiet(true).with_control(control);
    let result = loadgen::run(scenario, config).await;
    let sent = hits.load(Ordering::SeqCst);
    assert_eq!(sent, 0, "a stopped control sent {sent} request(s); result {:?}", result.map(|o| o.exit()));
}

/// A target that records the run id of every marker it receives.
async fn recording_target() -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let app = Router::new().route(
        "/",
        get(move |headers: axum::http::HeaderMap| {
            let s = s.clone();
            async move {
                let run = headers
                    .get("synthetic-traffic")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|t| t.split('.').nth(2))
                    .unwrap_or("<none>")
                    .to_owned();
                s.lock().unwrap().push(run);
                "ok"
            }
        }),
    );
    (serve(app).await, seen)
}

/// `RunConfig` is `Clone`, and a clone shares the `Control`, which holds the marker every
/// request carries. Two runs started from clones of one base config (the builder invites it)
/// each write their marker into the shared control, so one run's requests carry the other
/// run's id: its rows are tagged with the wrong run, and `synth-cleanup --run` of the other
/// run deletes them (and misses its own). Expected: each run's requests carry its own run id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_drives_one_run_so_no_run_sends_another_runs_marker() {
    let (a_addr, a_seen) = recording_target().await;
    let (b_addr, b_seen) = recording_target().await;
    let yaml = |addr: SocketAddr| {
        format!(
            "target: http://{addr}\nphases: [{{ duration: 2s, arrival_rate: 10 }}]\njourneys: [{{ name: home, steps: [{{ get: / }}] }}]\n"
        )
    };
    let base = RunConfig::new(KeyRing::parse(KEYS).unwrap()).with_quiet(true);
    let a = loadgen::run(
        Arc::new(Scenario::from_yaml(&yaml(a_addr)).unwrap()),
        base.clone().with_run_id(synth_ctx::RunId::new("rt3-a").unwrap()),
    );
    let b = loadgen::run(
        Arc::new(Scenario::from_yaml(&yaml(b_addr)).unwrap()),
        base.clone().with_run_id(synth_ctx::RunId::new("rt3-b").unwrap()),
    );
    let (ra, rb) = tokio::join!(a, b);
    // The clones share one Control: one run takes it, the other is refused before it sends.
    let (ok, refused, own, own_seen, other_seen) = match (ra, rb) {
        (Ok(_), Err(e)) => ("rt3-a", e, "rt3-a", a_seen, b_seen),
        (Err(e), Ok(_)) => ("rt3-b", e, "rt3-b", b_seen, a_seen),
        (ra, rb) => {
            panic!("one run each way expected: {:?} / {:?}", ra.map(|o| o.exit()), rb.map(|o| o.exit()))
        }
    };
    assert!(matches!(refused, RunError::ControlInUse), "{refused:?} (run {ok} went ahead)");
    let own_seen = own_seen.lock().unwrap().clone();
    assert!(!own_seen.is_empty() && own_seen.iter().all(|r| r == own), "{own_seen:?}");
    assert!(other_seen.lock().unwrap().is_empty(), "the refused run sent requests");
}

/// A target whose one hop, `gateway`, echoes the run (a passing preflight), counting requests.
async fn echoing_target() -> (SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = Router::new().route(
        "/",
        get(move |headers: axum::http::HeaderMap| {
            h.fetch_add(1, Ordering::SeqCst);
            let run = headers
                .get("synthetic-traffic")
                .and_then(|v| v.to_str().ok())
                .and_then(|t| t.split('.').nth(2))
                .unwrap_or("")
                .to_owned();
            async move {
                ([("synthetic-traffic-seen", run), ("synthetic-traffic-path", "gateway".to_owned())], "ok")
            }
        }),
    );
    (serve(app).await, hits)
}

/// `run` says "errors mean nothing was sent", and a control address that cannot be bound is a
/// usage error (exit 2). But the listeners are opened after the preflight: with a busy port the
/// preflight has already sent every journey when the run fails. Expected: nothing sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_control_port_fails_the_run_before_the_preflight_sends() {
    let (addr, hits) = echoing_target().await;
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let yaml = format!(
        "target: http://{addr}\nphases: [{{ duration: 1s, arrival_rate: 5 }}]\njourneys: [{{ name: home, steps: [{{ get: /, expect_path: [gateway] }}] }}]\n"
    );
    let scenario = Arc::new(Scenario::from_yaml(&yaml).unwrap());
    let config = RunConfig::new(KeyRing::parse(KEYS).unwrap())
        .with_quiet(true)
        .with_control_addr(busy.local_addr().unwrap());
    let result = loadgen::run(scenario, config).await;
    let sent = hits.load(Ordering::SeqCst);
    assert!(
        matches!(result, Err(RunError::Listen { .. })) && sent == 0,
        "sent {sent} request(s) before failing with {:?}",
        result.map(|o| o.exit())
    );
}
