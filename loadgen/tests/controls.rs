//! The production-safety controls against an in-test server that speaks the Prometheus query
//! API and plays scripted values: abort, back-off and recovery, a source that goes quiet, top-up,
//! and the dead-man's switch.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{Json, Router, extract::Query, http::StatusCode, response::IntoResponse, routing::get};
use clap::Parser as _;
use loadgen::{
    Control, Ending, RunConfig, Scenario,
    cli::{Cli, Exit},
    scenario,
};
use serde_json::{Value, json};

#[path = "support/cli.rs"]
mod support;

const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

/// What the scripted query API answers for a query at `t` seconds after it started.
#[derive(Clone, Copy, Debug)]
enum Answer {
    Value(f64),
    /// A sample as Prometheus writes it (`+Inf`, `NaN`).
    Sample(&'static str),
    Down,
    /// The query cannot run (a typo): HTTP 400, `bad_data`.
    BadQuery,
    /// The query runs but matches no series (a misspelt metric): an empty vector.
    NoSeries,
}

type Script = Arc<dyn Fn(&str, f64) -> Answer + Send + Sync>;

async fn prometheus(script: Script) -> SocketAddr {
    let started = Instant::now();
    let app = Router::new().route(
        "/api/v1/query",
        get(move |Query(q): Query<HashMap<String, String>>, headers: axum::http::HeaderMap| {
            let script = script.clone();
            async move {
                // Scenarios that send credentials send these (see `signals_yaml`).
                let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
                if !auth.is_empty() && auth != concat!("Bearer ", env!("CARGO_PKG_NAME")) {
                    return (StatusCode::UNAUTHORIZED, "bad credentials").into_response();
                }
                let query = q.get("query").cloned().unwrap_or_default();
                let sample = |v: String| {
                    Json(json!({
                        "status": "success",
                        "data": { "resultType": "vector", "result": [
                            { "metric": { "job": "shop" }, "value": [1.7e9, v] }
                        ] }
                    }))
                    .into_response()
                };
                match script(&query, started.elapsed().as_secs_f64()) {
                    Answer::Value(v) => sample(v.to_string()),
                    Answer::Sample(v) => sample(v.to_owned()),
                    Answer::Down => (StatusCode::SERVICE_UNAVAILABLE, "down").into_response(),
                    Answer::NoSeries => Json(json!({
                        "status": "success",
                        "data": { "resultType": "vector", "result": [] }
                    }))
                    .into_response(),
                    Answer::BadQuery => (
                        StatusCode::BAD_REQUEST,
                        Json(json!({ "status": "error", "errorType": "bad_data", "error": "1:9: parse error: unexpected end" })),
                    )
                        .into_response(),
                }
            }
        }),
    );
    serve(app).await
}

async fn serve(app: Router) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

async fn target() -> SocketAddr {
    serve(Router::new().route("/", get(|| async { "ok" }))).await
}

fn write(name: &str, yaml: &str) -> PathBuf {
    support::scenario_file("loadgen-controls", name, yaml, KEYS)
}

/// Runs the scenario file through the typed API, with its JSON and HTML reports; returns the
/// exit code, the JSON report and the text `loadgen run` would print.
async fn run_file(path: &std::path::Path) -> (Exit, Value, String) {
    let json = path.with_extension("json");
    let html = path.with_extension("html");
    let (exit, out) = support::run_file(path, |c| c.with_report_json(&json).with_report_html(&html)).await;
    // A run that did not start (exit 4) writes no report.
    if exit == Exit::PreflightFailed {
        assert!(!json.exists(), "a run that did not start wrote a report");
        return (exit, Value::Null, out);
    }
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let page = std::fs::read_to_string(&html).unwrap();
    if !report["decisions"].as_array().unwrap().is_empty() {
        assert!(
            page.contains("Controls and impact") && page.contains("<svg"),
            "the HTML report shows the controls"
        );
    }
    (exit, report, out)
}

fn decisions(report: &Value) -> Vec<(String, String, f64)> {
    report["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["action"].as_str().unwrap().to_owned(),
                d["source"].as_str().unwrap().to_owned(),
                d["t_s"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// Mean requests per second of the report's one-second intervals that end between `a` and
/// `b` seconds (an interval ending at 2.0 s covers 1.0 to 2.0 s; ends are a few ms late).
fn rps(report: &Value, a: f64, b: f64) -> f64 {
    let pts: Vec<f64> = report["series"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            let t = p["t_s"].as_f64().unwrap();
            t > a + 0.25 && t <= b + 0.25
        })
        .map(|p| p["rps"].as_f64().unwrap())
        .collect();
    assert!(!pts.is_empty(), "no series points in ({a}, {b}]");
    pts.iter().sum::<f64>() / pts.len() as f64
}

/// A scenario of one GET at a constant rate, with `signals`.
fn one_get(target: SocketAddr, phase: &str, signals: &str) -> String {
    format!(
        "target: http://{target}\nphases: [{{ {phase} }}]\njourneys: [{{ name: s, steps: [{{ get: / }}] }}]\n{signals}"
    )
}

fn signals_yaml(prom: SocketAddr, body: &str) -> String {
    // Credentials from the environment: cargo sets CARGO_PKG_NAME for the tests it runs.
    format!(
        "signals:\n  prometheus: http://{prom}\n  interval: 200ms\n  timeout: 500ms\n  headers: {{ authorization: \"Bearer {{{{ env('CARGO_PKG_NAME') }}}}\" }}\n{body}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_within_one_poll_interval_of_a_breach_that_lasts_its_window() {
    let t = target().await;
    // Real p95 breaches from 1.0 s on; the window is 1 s: abort due at 2.0 s, within a poll.
    let prom = prometheus(Arc::new(|q, t| {
        assert!(q.contains("synthetic=\"false\""), "the query arrives intact: {q}");
        Answer::Value(if t >= 1.0 { 0.5 } else { 0.1 })
    }))
    .await;
    let yaml = one_get(
        t,
        "duration: 10s, arrival_rate: 20",
        &signals_yaml(
            prom,
            "  conditions:\n    - { name: real p95, query: 'histogram_quantile(0.95, rate(h_bucket{synthetic=\"false\"}[1m]))', above: 0.33, for: 1s, action: abort }\n",
        ),
    );
    let started = Instant::now();
    let (exit, report, out) = run_file(&write("abort", &yaml)).await;
    assert_eq!(exit, Exit::Stopped, "aborted runs exit 3\n{out}");
    assert_eq!(report["ending"], "aborted");
    assert!(report["abort_reason"].as_str().unwrap().contains("real p95"), "{}", report["abort_reason"]);
    assert_eq!(report["abort_kind"], "condition");
    let d = decisions(&report);
    let abort = d.iter().find(|x| x.0 == "abort").unwrap_or_else(|| panic!("{d:?}"));
    assert!(
        abort.2 >= 1.9 && abort.2 <= 2.0 + 0.2 + 0.35,
        "abort at {}s: one poll after the window",
        abort.2
    );
    assert!(started.elapsed() < Duration::from_secs(5), "the run stopped at once");
    assert!(report["signals"].as_array().unwrap().iter().any(|p| p["value"] == 0.5));

    // A breach shorter than its window does nothing.
    let prom =
        prometheus(Arc::new(|_, t| Answer::Value(if (0.8..1.4).contains(&t) { 0.5 } else { 0.1 }))).await;
    let yaml = one_get(
        t,
        "duration: 2500ms, arrival_rate: 20",
        &signals_yaml(
            prom,
            "  conditions:\n    - { name: real p95, query: 'p95', above: 0.33, for: 1s, action: abort }\n",
        ),
    );
    let (exit, report, out) = run_file(&write("no-abort", &yaml)).await;
    assert_eq!(exit, Exit::Ok, "{out}");
    assert_eq!(report["ending"], "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_off_holds_then_recovers_slowly_when_healthy() {
    let t = target().await;
    let prom =
        prometheus(Arc::new(|_, t| Answer::Value(if (1.0..2.0).contains(&t) { 0.05 } else { 0.001 }))).await;
    let yaml = one_get(
        t,
        "duration: 6s, arrival_rate: 100",
        &signals_yaml(
            prom,
            "  recover: { step: 0.25, every: 500ms }\n  conditions:\n    - { name: real 5xx ratio, query: 'errors', above: 0.01, action: back_off, factor: 0.5, hold: 1s }\n",
        ),
    );
    let (exit, report, out) = run_file(&write("backoff", &yaml)).await;
    assert_eq!(exit, Exit::Ok, "{out}");
    let d = decisions(&report);
    let actions: Vec<&str> = d.iter().map(|x| x.0.as_str()).collect();
    // One back-off (not compounded while holding), then two recovery steps back to 1.
    assert_eq!(actions, ["back_off", "recover", "recover"], "{d:?}");
    // The script's clock starts with its server, a little before the run (the signal check
    // before the start asks it once): run times may be a few tens of ms early.
    assert!((0.9..1.5).contains(&d[0].2), "backed off at the first breaching poll: {d:?}");
    assert!(d[1].2 >= 2.4, "recovery starts after the hold and the breach: {d:?}");
    let first = &report["decisions"][0];
    assert!((first["new_rate"].as_f64().unwrap() - 50.0).abs() < 1.0, "{first}");
    // The rate follows: ~100/s before, ~50/s while backed off, ~100/s again at the end.
    assert!((85.0..115.0).contains(&rps(&report, 0.0, 1.0)), "{}", rps(&report, 0.0, 1.0));
    assert!((35.0..65.0).contains(&rps(&report, 1.5, 2.5)), "{}", rps(&report, 1.5, 2.5));
    assert!((85.0..115.0).contains(&rps(&report, 4.0, 6.0)), "{}", rps(&report, 4.0, 6.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_source_that_stops_answering_pauses_the_run_until_it_answers() {
    let t = target().await;
    let prom =
        prometheus(Arc::new(|_, t| if (1.0..3.5).contains(&t) { Answer::Down } else { Answer::Value(0.1) }))
            .await;
    let yaml = one_get(
        t,
        "duration: 5s, arrival_rate: 50",
        &signals_yaml(
            prom,
            "  conditions:\n    - { name: real p95, query: 'p95', above: 0.33, action: abort }\n",
        ),
    );
    let (exit, report, out) = run_file(&write("dead", &yaml)).await;
    assert_eq!(exit, Exit::Ok, "{out}");
    let d = decisions(&report);
    let actions: Vec<&str> = d.iter().map(|x| x.0.as_str()).collect();
    assert_eq!(actions, ["pause", "resume"], "{d:?}");
    // Script time runs a few tens of ms ahead of run time (see the back-off test).
    assert!((1.1..1.9).contains(&d[0].2), "paused after two failed polls: {d:?}");
    assert!((3.4..4.1).contains(&d[1].2), "resumed at the first answer: {d:?}");
    // Nothing was sent blind: no arrivals in the second that was wholly paused.
    assert!(rps(&report, 2.5, 3.0) < 3.0, "{}", report["series"]);
    assert!(rps(&report, 0.5, 1.0) > 40.0, "{}", report["series"]);
    assert!(rps(&report, 4.5, 5.0) > 40.0, "{}", report["series"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_up_tracks_a_stepping_real_rate_without_overshoot() {
    let t = target().await;
    // Real traffic: 100 req/s, then 300 from 3 s on. Target 400: synthetic 300, then 100.
    let prom = prometheus(Arc::new(|_, t| Answer::Value(if t >= 3.0 { 300.0 } else { 100.0 }))).await;
    let yaml = one_get(
        t,
        "duration: 7s, arrival_rate: 500",
        &signals_yaml(
            prom,
            "  top_up: { real_rate: 'sum(rate(requests{synthetic=\"false\"}[1m]))', target: 400, max_share: 3, smoothing: 400ms }\n",
        ),
    );
    let (exit, report, out) = run_file(&write("topup", &yaml)).await;
    assert_eq!(exit, Exit::Ok, "{out}");
    let series = report["series"].as_array().unwrap();
    // Stated bound: no second more than 10 % above the highest goal (300), ever.
    for p in series {
        assert!(p["rps"].as_f64().unwrap() <= 330.0, "overshoot: {p}");
    }
    let before = rps(&report, 1.5, 3.0);
    let after = rps(&report, 4.5, 7.0);
    assert!((255.0..=330.0).contains(&before), "tracks 400 - 100 = 300: {before}");
    assert!((85.0..=115.0).contains(&after), "tracks 400 - 300 = 100: {after}");
    // After the step the rate only goes down (a smooth filter: no dip below and back).
    let mut last = f64::MAX;
    for p in series.iter().filter(|p| (3.5..5.0).contains(&p["t_s"].as_f64().unwrap())) {
        let r = p["rps"].as_f64().unwrap();
        assert!(r <= last + 15.0 && r >= 80.0, "no oscillation after the step: {series:?}");
        last = r;
    }
    assert!(decisions(&report).iter().any(|d| d.0 == "top_up"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heartbeat_keeps_a_run_alive_and_its_absence_stops_it() {
    let t = target().await;
    let path = write("heartbeat", &one_get(t, "duration: 20s, arrival_rate: 10", ""));
    let s = Arc::new(Scenario::from_file(&path).unwrap());
    let control = Control::new();
    let beats = {
        let control = control.clone();
        tokio::spawn(async move {
            for _ in 0..6 {
                tokio::time::sleep(Duration::from_millis(250)).await;
                control.heartbeat();
            }
        })
    };
    // The heartbeat needs a control server and a token; the beats here go to the same
    // control directly, as `POST /heartbeat` would.
    let control_addr = format!("127.0.0.1:{}", synth_testkit::free_port().unwrap()).parse().unwrap();
    let config = RunConfig::new(synth_ctx::KeyRing::parse(KEYS).unwrap())
        .with_run_id(synth_ctx::RunId::new("hb").unwrap())
        .with_seed(1)
        .with_quiet(true)
        .with_control(control)
        .with_control_addr(control_addr)
        .with_control_token("hb-token")
        .with_heartbeat(Duration::from_millis(700));
    let started = Instant::now();
    let outcome = loadgen::run(s, config).await.unwrap();
    beats.await.unwrap();
    // Beats for 1.5 s, then silence: the run stops 0.7 s later, as if Ctrl-C.
    let took = started.elapsed();
    assert_eq!(outcome.finished.ending, Ending::Stopped);
    assert!(took >= Duration::from_millis(2000) && took < Duration::from_millis(3200), "{took:?}");
    let r = &outcome.controls;
    assert_eq!(r.decisions.len(), 1);
    assert_eq!((r.decisions[0].source.as_str(), r.decisions[0].action.as_str()), ("heartbeat", "stop"));

    // The flag needs the control API (where the heartbeat goes).
    let err = Cli::try_parse_from(["loadgen", "run", "x.yaml", "--heartbeat", "30s"]).unwrap_err();
    assert!(err.to_string().contains("--control-addr"), "{err}");
}

#[test]
fn bad_signal_settings_are_clear_scenario_errors() {
    let base = "target: http://127.0.0.1:1\nphases: [{ duration: 1s, arrival_rate: 1 }]\njourneys: [{ name: s, steps: [{ get: / }] }]\n";
    for (signals, want) in [
        ("signals: { prometheus: 'not a url', conditions: [] }\n", "is not a URL"),
        ("signals: { prometheus: http://p:9090 }\n", "do nothing"),
        (
            "signals: { prometheus: http://p:9090, conditions: [{ name: x, query: q, action: abort }] }\n",
            "needs one bound",
        ),
        (
            "signals: { prometheus: http://p:9090, conditions: [{ name: x, query: q, above: 1, action: panic }] }\n",
            "use abort or back_off",
        ),
        (
            "signals: { prometheus: http://p:9090, conditions: [{ name: x, query: q, above: 1, action: back_off, factor: 2 }] }\n",
            "between 0 and 1",
        ),
        (
            "signals: { prometheus: http://p:9090, on_unavailable: ignore, conditions: [{ name: x, query: q, above: 1, action: abort }] }\n",
            "pause (the default), abort or continue",
        ),
        ("signals: { prometheus: http://p:9090, intervall: 1s }\n", "interval"),
    ] {
        let path = write("bad", &format!("{base}{signals}"));
        let err = scenario::load(&path).unwrap_err().to_string();
        assert!(err.contains(want), "{signals} -> {err}");
        assert!(err.contains(":4:"), "points at the line: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markers_are_short_lived_and_refreshed_while_the_run_is_alive() {
    use std::sync::Mutex;
    let seen: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let s2 = seen.clone();
    let app = Router::new().route(
        "/",
        get(move |headers: axum::http::HeaderMap| {
            let seen = s2.clone();
            async move {
                let token = headers.get("synthetic-traffic").unwrap().to_str().unwrap().to_owned();
                let now =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
                seen.lock().unwrap().push((token, now));
                "ok"
            }
        }),
    );
    let t = serve(app).await;
    let path = write("refresh", &one_get(t, "duration: 3500ms, arrival_rate: 20", ""));
    assert_eq!(support::run_file(&path, |c| c.with_token_ttl(Duration::from_secs(3))).await.0, Exit::Ok);
    let verifier = synth_ctx::Verifier::new(synth_ctx::KeyRing::parse(KEYS).unwrap());
    let seen = seen.lock().unwrap();
    let mut distinct: Vec<&str> = seen.iter().map(|(t, _)| t.as_str()).collect();
    distinct.dedup();
    assert!(distinct.len() >= 3, "a fresh marker every second: {}", distinct.len());
    for (token, at) in seen.iter() {
        let s = verifier.verify(token).unwrap();
        assert!(s.expires_at() <= at + 4, "each lives about 3 s: expires {} seen {at}", s.expires_at());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_reports_hops_and_guards_and_a_missing_one_stops_the_run() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    // Service `a` verifies the marker; its checkout engages the `payment.charge` guard.
    let app = Router::new()
        .route(
            "/checkout",
            axum::routing::post(move || {
                h.fetch_add(1, Ordering::SeqCst);
                synth_ctx::trail::record_guard("payment.charge");
                async { "ok" }
            }),
        )
        .route("/", get(|| async { "home" }))
        .layer(
            synth_tower::VerifySyntheticLayer::new(synth_ctx::Verifier::new(
                synth_ctx::KeyRing::parse(KEYS).unwrap(),
            ))
            .with_service_name("a"),
        );
    let t = serve(app).await;
    let scenario = |path: &str, guards: &str| {
        format!(
            "target: http://{t}\nphases: [{{ duration: 1s, arrival_rate: 5 }}]\njourneys:\n  - name: buy\n    steps:\n      - {{ get: / }}\n      - {{ name: checkout, post: /checkout, expect_path: [{path}], expect_guards: [{guards}] }}\n"
        )
    };

    // What the service really does: preflight passes, and the run goes on.
    let ok = write("preflight-ok", &scenario("a", "payment.charge"));
    let (exit, text) = support::preflight_file(&ok, |c| c).await;
    assert_eq!(exit, Exit::Ok);
    assert!(
        text.contains("checkout") && text.contains("payment.charge") && text.contains("preflight passed"),
        "{text}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1, "each journey once");
    let (exit, report, out) = run_file(&ok).await;
    assert_eq!(exit, Exit::Ok, "{out}");
    assert!(hits.load(Ordering::SeqCst) >= 4, "the run went on after its preflight");
    assert!(report["total"]["requests"].as_u64().unwrap() >= 6);

    // A hop and a guard the scenario expects but the service does not have: exit 4, no run.
    let before = hits.load(Ordering::SeqCst);
    let bad = write("preflight-bad", &scenario("a, orders", "payment.charge, email"));
    let (exit, text) = support::preflight_file(&bad, |c| c).await;
    assert_eq!(exit, Exit::PreflightFailed);
    assert!(text.contains("missing hop orders (path: a)"), "{text}");
    assert!(text.contains("missing guard email (engaged: payment.charge)"), "{text}");
    assert!(text.contains("preflight FAILED"), "{text}");
    let json = bad.with_extension("json");
    let (exit, out) = support::run_file(&bad, |c| c.with_report_json(&json)).await;
    assert_eq!(exit, Exit::PreflightFailed);
    assert!(out.contains("the run did not start"));
    assert_eq!(hits.load(Ordering::SeqCst), before + 2, "only the two preflights reached the service");
    assert!(!json.exists(), "no run, no report");

    // --no-preflight: the operator takes responsibility.
    assert_eq!(support::run_file(&bad, |c| c.with_no_preflight(true)).await.0, Exit::Ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worst_cases_fail_closed() {
    let t = target().await;
    let base = |prom: SocketAddr, extra: &str, conditions: &str| {
        one_get(
            t,
            "duration: 4s, arrival_rate: 40",
            &signals_yaml(prom, &format!("{extra}  conditions:\n{conditions}")),
        )
    };
    let cond = "    - { name: real p95, query: 'p95', above: 0.33, for: 1s, action: abort }\n";

    // A quantile past the highest bucket is +Inf: the worst latency, a breach (not "no data").
    let prom =
        prometheus(Arc::new(|_, t| if t >= 0.5 { Answer::Sample("+Inf") } else { Answer::Value(0.1) })).await;
    let (exit, report, out) = run_file(&write("inf", &base(prom, "", cond))).await;
    assert_eq!((exit, report["ending"].as_str()), (Exit::Stopped, Some("aborted")), "{out}");

    // Scrape hiccups (a failed poll now and then) do not restart the breach's window.
    let prom = prometheus(Arc::new(|_, t| {
        if (t * 5.0).round() as i64 % 3 == 2 { Answer::Down } else { Answer::Value(0.5) }
    }))
    .await;
    let (exit, report, out) =
        run_file(&write("hiccups", &base(prom, "  unavailable_after: 5\n", cond))).await;
    assert_eq!((exit, report["ending"].as_str()), (Exit::Stopped, Some("aborted")), "{out}");
    let abort =
        report["decisions"].as_array().unwrap().iter().find(|d| d["action"] == "abort").unwrap().clone();
    assert!(abort["t_s"].as_f64().unwrap() < 2.0, "the window ran through the failed polls: {abort}");
    assert_eq!(abort["new_rate"], 0.0, "an abort takes the rate to 0: {abort}");

    // A query the source cannot run is a scenario mistake: the run does not start, saying why.
    let prom = prometheus(Arc::new(|_, _| Answer::BadQuery)).await;
    let (exit, _, out) = run_file(&write("badquery", &base(prom, "", cond))).await;
    assert_eq!(exit, Exit::PreflightFailed, "{out}");
    assert!(out.contains("real p95") && out.contains("refused"), "{out}");
    // Refused mid-run (a rule reloaded with a typo): abort at once, saying why.
    let prom = prometheus(Arc::new(|_, t| if t < 0.5 { Answer::Value(0.1) } else { Answer::BadQuery })).await;
    let (exit, report, _) = run_file(&write("badquery-later", &base(prom, "", cond))).await;
    assert_eq!(exit, Exit::Stopped);
    assert!(report["abort_reason"].as_str().unwrap().contains("refused"), "{}", report["abort_reason"]);
    assert_eq!(report["abort_kind"], "signal_query");
    assert!(report["duration_s"].as_f64().unwrap() < 1.5, "{}", report["duration_s"]);

    // A source that has not answered yet: nothing is sent until it does (never start blind).
    let prom = prometheus(Arc::new(|_, t| if t < 1.2 { Answer::Down } else { Answer::Value(0.1) })).await;
    let (exit, report, out) = run_file(&write("gate", &base(prom, "", cond))).await;
    assert_eq!(exit, Exit::Ok, "{out}");
    let d = decisions(&report);
    let actions: Vec<&str> = d.iter().map(|x| x.0.as_str()).collect();
    assert_eq!(actions, ["pause", "resume"], "{d:?}");
    assert!(rps(&report, 0.0, 1.0) < 3.0, "{}", report["series"]);
    assert!(rps(&report, 2.0, 4.0) > 30.0, "{}", report["series"]);
}

/// A safety signal that reads no data is blind, never healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_with_no_data_never_reads_as_healthy() {
    let t = target().await;
    let scenario = |prom: SocketAddr, cond: &str| {
        one_get(t, "duration: 3s, arrival_rate: 40", &signals_yaml(prom, &format!("  conditions:\n{cond}")))
    };
    let cond = "    - { name: real p95, query: 'p95_misspelt', above: 0.3, for: 1s, action: abort }\n";

    // No series at the start (a misspelt metric): the run does not start; the message names the
    // query and the likely causes.
    let prom = prometheus(Arc::new(|_, _| Answer::NoSeries)).await;
    let (exit, _, out) = run_file(&write("nodata-start", &scenario(prom, cond))).await;
    assert_eq!(exit, Exit::PreflightFailed, "{out}");
    assert!(out.contains("real p95") && out.contains("p95_misspelt"), "{out}");
    assert!(out.contains("no series") && out.contains("allow_no_data"), "{out}");

    // A series that disappears mid-run pauses it like a silent source, on the record.
    let prom = prometheus(Arc::new(|_, t| if t < 1.0 { Answer::Value(0.1) } else { Answer::NoSeries })).await;
    let (exit, report, out) = run_file(&write("nodata-later", &scenario(prom, cond))).await;
    assert_eq!(exit, Exit::Ok, "{out}");
    let d = decisions(&report);
    assert_eq!(d.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(), ["pause"], "{d:?}");
    let pause = &report["decisions"][0];
    assert!(pause["detail"].as_str().unwrap().contains("no data"), "{pause}");
    assert!(pause["t_s"].as_f64().unwrap() < 1.8, "paused within a few polls: {pause}");
    assert!(rps(&report, 0.0, 0.9) > 30.0, "{}", report["series"]);
    assert!(rps(&report, 2.0, 3.0) < 3.0, "no arrivals while blind: {}", report["series"]);
    let nulls = report["signals"].as_array().unwrap().iter().filter(|p| p["value"].is_null()).count();
    assert!(nulls > 0, "the blind polls are on the record: {}", report["signals"]);

    // allow_no_data opts out, explicitly: the run starts and goes on.
    let allowed = "    - { name: real p95, query: 'p95_misspelt', above: 0.3, for: 1s, action: abort, allow_no_data: true }\n";
    let prom = prometheus(Arc::new(|_, _| Answer::NoSeries)).await;
    let (exit, report, out) = run_file(&write("nodata-allowed", &scenario(prom, allowed))).await;
    assert_eq!(exit, Exit::Ok, "{out}");
    assert!(decisions(&report).is_empty(), "{:?}", decisions(&report));
    assert!(rps(&report, 1.0, 2.5) > 30.0, "{}", report["series"]);
}

/// A guard that engages after the response (an e-mail from a spawned task) is proven by the
/// service's own `/metrics` page (`--observe`), marked "after the response"; counters that move
/// with no journey in flight are reported, not attributed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_proves_guards_that_engage_after_the_response_through_observe() {
    use synth_guards::GuardRegistry;
    let guards = GuardRegistry::new();
    let email = guards.guard("email");
    let page = guards.clone();
    let app = Router::new()
        .route(
            "/checkout",
            axum::routing::post(move || {
                let email = email.clone();
                // The confirmation goes out later, from a task that keeps the synthetic scope.
                synth_ctx::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let _ = email.decide(false).allows_effect();
                });
                async { "ok" }
            }),
        )
        .layer(synth_tower::VerifySyntheticLayer::new(synth_ctx::Verifier::new(
            synth_ctx::KeyRing::parse(KEYS).unwrap(),
        )))
        .route("/metrics", get(move || std::future::ready(page.render_prometheus())));
    let t = serve(app).await;
    let yaml = format!(
        "target: http://{t}\nphases: [{{ duration: 1s, arrival_rate: 5 }}]\njourneys:\n  - name: buy\n    steps:\n      - {{ name: checkout, post: /checkout, expect_guards: [email] }}\n"
    );
    let file = write("preflight-observe", &yaml);
    let metrics = format!("http://{t}/metrics");
    let preflight = |observe: Option<(String, u64)>| {
        support::preflight_file(&file, move |c| match observe {
            Some((url, settle_ms)) => c.with_observe(vec![url], Duration::from_millis(settle_ms)),
            None => c,
        })
    };

    // Without --observe the header cannot show it: missing, with the way out in the message.
    let (exit, text) = preflight(None).await;
    assert_eq!(exit, Exit::PreflightFailed, "{text}");
    assert!(text.contains("missing guard email") && text.contains("--observe"), "{text}");
    // Its e-mail lands 300 ms later: let it, or the next case would see it as another run's.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // With it: engaged after the response, and the preflight passes.
    let (exit, text) = preflight(Some((metrics.clone(), 700))).await;
    assert_eq!(exit, Exit::Ok, "{text}");
    assert!(
        text.contains("email (after)") && text.contains("after the response: buy / checkout: email"),
        "{text}"
    );

    // A settle time shorter than the effect's delay does not see it: missing, not guessed.
    let (exit, text) = preflight(Some((metrics.clone(), 50))).await;
    assert_eq!(exit, Exit::PreflightFailed, "{text}");
    // Let that journey's late e-mail land before the next case watches.
    tokio::time::sleep(Duration::from_millis(400)).await;

    // Another synthetic run moving the same counter: reported, nothing attributed, so it fails.
    let other = guards.guard("email");
    let noisy = tokio::spawn(async move {
        loop {
            let s = synth_ctx::Signer::new(synth_ctx::KeyRing::parse(KEYS).unwrap()).mint_synthetic(
                synth_ctx::Origin::Load,
                &synth_ctx::RunId::new("other").unwrap(),
                Duration::from_secs(60),
            );
            s.in_scope(|| other.decide(false));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let (exit, text) = preflight(Some((metrics.clone(), 700))).await;
    noisy.abort();
    assert_eq!(exit, Exit::PreflightFailed, "{text}");
    assert!(text.contains("moved with no journey in flight"), "{text}");

    // A page that cannot be read fails the preflight (fail closed), saying which.
    let nothing = format!("http://{t}/nothing-here");
    let (exit, text) = preflight(Some((nothing, 2000))).await;
    assert_eq!(exit, Exit::PreflightFailed, "{text}");
    assert!(text.contains("nothing-here"), "{text}");
}

/// A run whose signal source never answers sends nothing, and says it tested nothing (exit 3),
/// whatever `on_unavailable` says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_signal_source_never_answers_tests_nothing_and_does_not_pass() {
    let t = target().await;
    for on_unavailable in ["pause", "continue"] {
        let prom = prometheus(Arc::new(|_, _| Answer::Down)).await;
        let yaml = one_get(
            t,
            "duration: 1s, arrival_rate: 40",
            &signals_yaml(
                prom,
                &format!(
                    "  on_unavailable: {on_unavailable}\n  conditions:\n    - {{ name: real p95, query: 'p95', above: 0.33, action: abort }}\n"
                ),
            ),
        );
        let (exit, report, out) = run_file(&write(&format!("never-{on_unavailable}"), &yaml)).await;
        assert_eq!(exit, Exit::Stopped, "{on_unavailable}: {out}");
        assert!(out.contains("never answered"), "{out}");
        assert_eq!(report["total"]["requests"].as_u64(), Some(0), "{on_unavailable}: nothing was sent");
    }
}
