//! The engine against in-test servers on port 0: captures, cookies, tagging verified by the
//! synth server layer, weights, ramp shape, thresholds and exit codes, stop latency, error classes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
    routing::{get, post},
};
use clap::Parser;
use loadgen::{
    Control, Ending, ErrorClass, Finished, RunConfig, Scenario,
    cli::{Cli, Exit, run_async},
    scenario,
};
use synth_ctx::{KeyRing, Origin, RunId, Verifier};
use synth_tower::VerifySyntheticLayer;

const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

#[path = "support/schema.rs"]
mod schema;
#[path = "support/cli.rs"]
mod support;
use support::loadgen;

#[path = "support/http.rs"]
mod http_support;
use http_support::http;

/// Checks a report against the committed schema, `docs/report.schema.json`.
fn assert_matches_schema(report: &serde_json::Value) {
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../../docs/report.schema.json")).expect("the schema is JSON");
    let mut errors = Vec::new();
    schema::validate(&schema, &schema, report, "$", &mut errors);
    assert!(errors.is_empty(), "the report does not match docs/report.schema.json:\n{}", errors.join("\n"));
    // The validator itself catches a wrong report.
    let mut broken = report.clone();
    broken["journeys"]["started"] = serde_json::json!("many");
    broken["surprise"] = serde_json::json!(1);
    let mut errors = Vec::new();
    schema::validate(&schema, &schema, &broken, "$", &mut errors);
    assert_eq!(errors.len(), 2, "{errors:?}");
}

async fn serve(app: Router) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

fn write_scenario(name: &str, yaml: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("loadgen-engine-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("users.csv"),
        "email,password\nana@loadtest.invalid,pw-a\nbo@loadtest.invalid,pw-b\n",
    )
    .unwrap();
    std::fs::write(dir.join("keys"), KEYS).unwrap();
    let path = dir.join("s.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// A server whose handler takes `delay`, and the most requests it ever had in flight at once.
async fn peak_server(delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (n, p) = (now.clone(), peak.clone());
    let app = Router::new().route(
        "/",
        get(move || {
            let (n, p) = (n.clone(), p.clone());
            async move {
                let c = n.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(c, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                n.fetch_sub(1, Ordering::SeqCst);
                "ok"
            }
        }),
    );
    (serve(app).await, peak)
}

/// A quiet run through the typed API, signed with [`KEYS`], without preflight (these tests count
/// every request the target sees).
fn config(run: &str, seed: u64) -> RunConfig {
    RunConfig::new(KeyRing::parse(KEYS).unwrap())
        .with_run_id(RunId::new(run).unwrap())
        .with_seed(seed)
        .with_quiet(true)
        .with_no_preflight(true)
}

async fn run_file(path: &std::path::Path, run: &str, seed: u64) -> Finished {
    let s = Arc::new(Scenario::from_file(path).unwrap());
    loadgen::run(s, config(run, seed)).await.unwrap().finished
}

#[derive(Default)]
struct Shop {
    logins: Mutex<Vec<String>>,
    orders: AtomicUsize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captures_cookies_and_every_request_tagged_with_a_verified_marker() {
    let shop = Arc::new(Shop::default());
    let layer =
        VerifySyntheticLayer::new(Verifier::new(KeyRing::parse(KEYS).unwrap())).with_service_name("shop");
    let stats = layer.stats().clone();
    let app = Router::new()
        .route(
            "/login",
            post(|State(shop): State<Arc<Shop>>, Json(body): Json<serde_json::Value>| async move {
                let email = body["email"].as_str().unwrap_or("").to_owned();
                shop.logins.lock().unwrap().push(email.clone());
                (
                    [("set-cookie", format!("sid=s-{email}; Path=/; HttpOnly"))],
                    Json(serde_json::json!({ "token": format!("t-{email}") })),
                )
            }),
        )
        .route(
            "/orders",
            post(|State(shop): State<Arc<Shop>>, headers: HeaderMap| async move {
                let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
                let cookie = headers.get("cookie").and_then(|v| v.to_str().ok()).unwrap_or("");
                let email = auth.strip_prefix("Bearer t-").unwrap_or("?");
                if cookie != format!("sid=s-{email}") || !synth_ctx::is_synthetic() {
                    return StatusCode::UNAUTHORIZED.into_response();
                }
                shop.orders.fetch_add(1, Ordering::SeqCst);
                (StatusCode::CREATED, Json(serde_json::json!({ "order": 1 }))).into_response()
            }),
        )
        .with_state(shop.clone())
        .layer(layer);
    let addr = serve(app).await;
    let path = write_scenario(
        "capture",
        &format!(
            r#"
target: http://{addr}
phases: [{{ duration: 1s, arrival_rate: 20 }}]
data:
  users: {{ csv: users.csv, order: sequential }}
journeys:
  - name: checkout
    steps:
      - post: /login
        json: {{ email: "{{{{ users.email }}}}", password: "{{{{ users.password }}}}" }}
        capture: {{ token: {{ json: "$.token" }} }}
        expect: {{ status: 200 }}
      - post: /orders
        headers: {{ authorization: "Bearer {{{{ token }}}}" }}
        json: {{ sku: "sku-{{{{ random_int(1, 9) }}}}" }}
        expect: {{ status: 201, json: {{ "$.order": 1 }} }}
"#
        ),
    );
    let finished = run_file(&path, "capture-run", 1).await;
    let total = finished.total();
    assert_eq!(total.error_count(), 0, "{:?}", total.errors);
    assert_eq!(finished.journeys.completed, finished.journeys.started);
    assert!(finished.journeys.started >= 15, "{:?}", finished.journeys);
    assert_eq!(total.tagged, total.responses, "every answer echoed this run's id");
    assert_eq!(shop.orders.load(Ordering::SeqCst) as u64, finished.journeys.completed);
    // Sequential CSV order: ana, bo, ana, bo, ...
    let logins = shop.logins.lock().unwrap().clone();
    let anas = logins.iter().filter(|e| e.starts_with("ana")).count();
    assert!(anas.abs_diff(logins.len() - anas) <= 1, "{logins:?}");
    // The server verified every marker.
    let s = stats.snapshot();
    assert_eq!((s.real, s.rejected_total()), (0, 0));
    assert_eq!(s.accepted(Origin::Load), total.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_and_ramp_shape_follow_the_scenario() {
    let hits: Arc<Mutex<Vec<(Instant, &'static str)>>> = Arc::default();
    let (h1, h2) = (hits.clone(), hits.clone());
    let app = Router::new()
        .route(
            "/a",
            get(move || {
                let h = h1.clone();
                async move {
                    h.lock().unwrap().push((Instant::now(), "a"));
                    "a"
                }
            }),
        )
        .route(
            "/b",
            get(move || {
                let h = h2.clone();
                async move {
                    h.lock().unwrap().push((Instant::now(), "b"));
                    "b"
                }
            }),
        );
    let addr = serve(app).await;
    let path = write_scenario(
        "ramp",
        &format!(
            "target: http://{addr}\nphases: [{{ duration: 4s, arrival_rate: 0, ramp_to: 200 }}]\njourneys:\n  - {{ name: a, weight: 1, steps: [{{ get: /a }}] }}\n  - {{ name: b, weight: 3, steps: [{{ get: /b }}] }}\n"
        ),
    );
    let start = Instant::now();
    let finished = run_file(&path, "ramp-run", 7).await;
    let hits = hits.lock().unwrap().clone();
    // 0 -> 200/s over 4 s: 400 arrivals, a quarter in the first half, three quarters in the second.
    assert!(hits.len().abs_diff(400) <= 4, "{} arrivals", hits.len());
    assert_eq!(finished.journeys.started as usize, hits.len());
    let first_half = hits.iter().filter(|(t, _)| t.duration_since(start) < Duration::from_secs(2)).count();
    assert!(
        (85..=115).contains(&first_half),
        "{first_half} of {} in the first half (expect ~100)",
        hits.len()
    );
    let first_quarter = hits.iter().filter(|(t, _)| t.duration_since(start) < Duration::from_secs(1)).count();
    assert!((15..=35).contains(&first_quarter), "{first_quarter} in the first second (expect ~25)");
    let a = hits.iter().filter(|(_, j)| *j == "a").count() as f64 / hits.len() as f64;
    // Weight 1:3 -> 25 %; 400 draws give a standard deviation of ~2.2 %.
    assert!((0.18..=0.32).contains(&a), "journey a got {:.1} %", a * 100.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thresholds_set_the_exit_code() {
    let app = Router::new().route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            "ok"
        }),
    );
    let addr = serve(app).await;
    for (threshold, want) in
        [("p95 < 5s", Exit::Ok), ("p95 < 1ms", Exit::THRESHOLD_FAILED), ("error_rate < 1%", Exit::Ok)]
    {
        let path = write_scenario(
            "thresholds",
            &format!(
                "target: http://{addr}\nphases: [{{ duration: 1s, arrival_rate: 10 }}]\njourneys: [{{ name: s, steps: [{{ get: /slow }}] }}]\nthresholds: [\"{threshold}\"]\n"
            ),
        );
        let json = path.with_extension("json");
        let html = path.with_extension("html");
        let (code, text) = support::run_file(&path, |c| {
            c.with_report_json(&json)
                .with_report_html(&html)
                .with_run_id(synth_ctx::RunId::new("thr").unwrap())
        })
        .await;
        assert_eq!(code, want, "{threshold}\n{text}");
        let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        assert_eq!(report["schema_version"], 1);
        assert_matches_schema(&report);
        assert_eq!(report["thresholds"][0]["passed"], want == Exit::Ok);
        assert!(
            report["total"]["latency_ms"]["p50"].as_f64().unwrap() >= 30.0,
            "latency includes the server's 30 ms"
        );
        assert!(!report["steps"][0]["histogram_us_hdr_v2_base64"].as_str().unwrap().is_empty());
        assert!(!report["series"].as_array().unwrap().is_empty(), "one point per second");
        let page = std::fs::read_to_string(&html).unwrap();
        assert!(
            page.starts_with("<!doctype html>")
                && page.contains("<svg")
                && page.contains("Latency percentiles")
        );
        assert!(
            !page.contains("<script") && !page.contains("src=\"http"),
            "self-contained: no scripts, no remote files"
        );
        assert!(page.contains(if want == Exit::Ok { "pass" } else { "FAIL" }));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_is_fast_and_counts_what_was_cancelled() {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = Router::new().route(
        "/slow",
        get(move || {
            let h = h.clone();
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }
        }),
    );
    let addr = serve(app).await;
    let path = write_scenario(
        "stop",
        &format!(
            "target: http://{addr}\nphases: [{{ duration: 60s, arrival_rate: 50 }}]\njourneys: [{{ name: s, steps: [{{ get: /slow }}] }}]\n"
        ),
    );
    let s = Arc::new(Scenario::from_file(&path).unwrap());
    let stop = Control::new();
    let run = tokio::spawn(loadgen::run(s, config("stop", 3).with_control(stop.clone())));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = Instant::now();
    stop.stop();
    let finished = run.await.unwrap().unwrap().finished;
    let took = asked.elapsed();
    assert!(took < Duration::from_millis(100), "the run took {took:?} to stop");
    let at_stop = hits.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(hits.load(Ordering::SeqCst), at_stop, "no request starts after the stop");
    assert_eq!(finished.ending, Ending::Stopped);
    let total = finished.total();
    assert!(finished.journeys.cancelled >= 20, "{:?}", finished.journeys);
    // Every cancelled request belongs to a cancelled journey; a journey spawned in the last
    // instant may be cancelled before its request went out.
    let cancelled_requests = total.errors.get(&ErrorClass::Cancelled).copied().unwrap_or(0);
    assert!(
        cancelled_requests <= finished.journeys.cancelled,
        "{cancelled_requests} > {:?}",
        finished.journeys
    );
    assert!(cancelled_requests >= 20, "{cancelled_requests} requests in flight were counted as cancelled");
}

/// A TCP server that misbehaves: `mode` "reset" closes at once, "stall" never answers,
/// "garbage" answers with something that is not HTTP.
async fn bad_server(mode: &'static str) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                match mode {
                    "reset" => drop(s),
                    "stall" => {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                    _ => {
                        let _ = s.write_all(b"HELLO THERE\r\n\r\n").await;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_classified() {
    let ok = serve(
        Router::new()
            .route("/500", get(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
            .route("/nojson", get(|| async { "plain" })),
    )
    .await;
    // A port that is bound but not listening refuses connections, and stays ours while the
    // socket lives (a port bound and released could be handed to another test's server).
    let reserved = tokio::net::TcpSocket::new_v4().unwrap();
    reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let refused = reserved.local_addr().unwrap();
    let cases = [
        (format!("http://{}", bad_server("reset").await), "/", ErrorClass::Reset),
        (format!("http://{}", bad_server("stall").await), "/", ErrorClass::Timeout),
        (format!("http://{}", bad_server("garbage").await), "/", ErrorClass::Protocol),
        (format!("http://{refused}"), "/", ErrorClass::Connect),
        (format!("http://{ok}"), "/500", ErrorClass::Status),
    ];
    for (target, path, class) in cases {
        let file = write_scenario(
            "errors",
            &format!(
                "target: {target}\ntimeouts: {{ request: 300ms, connect: 300ms }}\nphases: [{{ duration: 1s, arrival_rate: 3 }}]\njourneys: [{{ name: e, steps: [{{ get: \"{path}\" }}] }}]\n"
            ),
        );
        let finished = run_file(&file, "errors", 5).await;
        let total = finished.total();
        assert!(
            total.errors.get(&class).copied().unwrap_or(0) >= 2,
            "{class:?} for {target}{path}: {:?}",
            total.errors
        );
        assert_eq!(total.errors.len(), 1, "only {class:?}: {:?}", total.errors);
    }
    let file = write_scenario(
        "capture-miss",
        &format!(
            "target: http://{ok}\nphases: [{{ duration: 1s, arrival_rate: 3 }}]\njourneys: [{{ name: c, steps: [{{ get: /nojson, capture: {{ t: {{ json: \"$.t\" }} }} }}, {{ get: \"/500?{{{{ t }}}}\" }}] }}]\n"
        ),
    );
    let finished = run_file(&file, "errors", 5).await;
    let total = finished.total();
    assert!(total.errors.get(&ErrorClass::Capture).copied().unwrap_or(0) >= 2, "{:?}", total.errors);
    assert_eq!(finished.journeys.failed, finished.journeys.started, "a failed capture ends the journey");
    assert!(!total.statuses.contains_key(&500), "the step after a failed capture never runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_and_rate_changes_take_effect_live() {
    let hits: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let h = hits.clone();
    let app = Router::new().route(
        "/",
        get(move || {
            let h = h.clone();
            async move {
                h.lock().unwrap().push(Instant::now());
                "ok"
            }
        }),
    );
    let addr = serve(app).await;
    let path = write_scenario(
        "control",
        &format!(
            "target: http://{addr}\nphases: [{{ duration: 3s, arrival_rate: 100 }}]\njourneys: [{{ name: s, steps: [{{ get: / }}] }}]\n"
        ),
    );
    let s = Arc::new(Scenario::from_file(&path).unwrap());
    let control = Control::new();
    let start = Instant::now();
    let run = tokio::spawn(loadgen::run(s, config("ctl", 9).with_control(control.clone())));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    control.pause();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    control.resume();
    control.set_rate_factor(0.5).unwrap();
    let finished = run.await.unwrap().unwrap().finished;
    let hits = hits.lock().unwrap().clone();
    let in_window = |a: u64, b: u64| {
        hits.iter()
            .filter(|t| {
                (Duration::from_millis(a)..Duration::from_millis(b)).contains(&t.duration_since(start))
            })
            .count()
    };
    let first = in_window(0, 1000);
    // Margins of 150 ms around each change leave room for a busy CI machine.
    let paused = in_window(1150, 1950);
    let halved = in_window(2150, 3000);
    assert!((90..=110).contains(&first), "{first} in the first second at 100/s");
    assert_eq!(paused, 0, "no arrivals while paused");
    assert!((30..=52).contains(&halved), "{halved} in the last ~0.85 s at 50/s");
    assert_eq!(finished.ending, Ending::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_api_and_metrics_endpoint() {
    let app = Router::new().route("/", get(|| async { "ok" }));
    let addr = serve(app).await;
    let path = write_scenario(
        "api",
        &format!(
            "target: http://{addr}\nphases: [{{ duration: 30s, arrival_rate: 40 }}]\njourneys: [{{ name: s, steps: [{{ get: / , name: home }}] }}]\n"
        ),
    );
    let s = Arc::new(Scenario::from_file(&path).unwrap());
    let control = Control::new();
    let api: SocketAddr = format!("127.0.0.1:{}", synth_testkit::free_port().unwrap()).parse().unwrap();
    // Two free ports in a row may be the same one: the run would then fail to open the second.
    let metrics_only: SocketAddr = std::iter::repeat_with(|| synth_testkit::free_port().unwrap())
        .find(|p| *p != api.port())
        .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
        .unwrap();
    let config = config("api", 2)
        .with_control(control.clone())
        .with_control_addr(api)
        .with_metrics_addr(metrics_only)
        .with_control_token("sekret");
    let run = tokio::spawn(loadgen::run(s, config));
    tokio::time::sleep(Duration::from_millis(700)).await;

    assert_eq!(http(metrics_only, "GET", "/metrics", None).await.0, 401, "the token guards metrics too");
    let (code, text) = http(metrics_only, "GET", "/metrics", Some("sekret")).await;
    assert_eq!(code, 200);
    assert!(text.contains("loadgen_requests_total{run=\"api\",step=\"home\"}"), "{text}");
    assert!(text.contains("loadgen_latency_seconds{run=\"api\",step=\"home\",quantile=\"0.95\"}"), "{text}");
    assert_eq!(
        http(metrics_only, "POST", "/stop", Some("sekret")).await.0,
        404,
        "the metrics server cannot stop the run"
    );

    assert_eq!(http(api, "POST", "/pause", None).await.0, 401);
    assert_eq!(http(api, "POST", "/pause", Some("wrong")).await.0, 401);
    let (code, body) = http(api, "POST", "/pause", Some("sekret")).await;
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["paused"], true);
    assert!(control.is_paused());
    assert_eq!(http(api, "POST", "/rate?factor=-1", Some("sekret")).await.0, 400);
    assert_eq!(http(api, "POST", "/rate?factor=0.25", Some("sekret")).await.0, 200);
    assert!((control.rate_factor() - 0.25).abs() < 1e-12);
    assert_eq!(http(api, "GET", "/status", None).await.0, 401, "with a token, status needs it too");
    let (_, body) = http(api, "GET", "/status", Some("sekret")).await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["run_id"], "api");
    assert!(status["requests"].as_u64().unwrap() > 10, "{status}");

    let asked = Instant::now();
    assert_eq!(http(api, "POST", "/stop", Some("sekret")).await.0, 200);
    let finished = run.await.unwrap().unwrap().finished;
    assert!(asked.elapsed() < Duration::from_millis(200), "{:?}", asked.elapsed());
    assert_eq!(finished.ending, Ending::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_model_users_loop_with_bounded_concurrency() {
    let (addr, peak) = peak_server(Duration::from_millis(50)).await;
    let path = write_scenario(
        "closed",
        &format!(
            "target: http://{addr}\nphases: [{{ duration: 1s, users: 4 }}]\njourneys: [{{ name: s, steps: [{{ get: / }}] }}]\n"
        ),
    );
    let finished = run_file(&path, "closed", 4).await;
    let total = finished.total();
    assert_eq!(peak.load(Ordering::SeqCst), 4, "four users, four requests at a time");
    // 4 users x ~1 s / ~50 ms each.
    assert!((40..=84).contains(&total.requests()), "{} requests", total.requests());
    assert_eq!(finished.journeys.started, total.requests());
    assert_eq!(total.error_count(), 0);
    let e = scenario::parse("target: http://x\nphases: [{ duration: 1s, users: 2, arrival_rate: 3 }]\njourneys: [{ name: a, steps: [{ get: / }] }]\n", "s.yaml", std::path::Path::new(".")).unwrap_err();
    assert!(e.message.contains("open (`arrival_rate`) or closed (`users`)"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hit_command_at_a_fixed_rate() {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let app = Router::new().route(
        "/ping",
        get(move || {
            c.fetch_add(1, Ordering::SeqCst);
            async { "pong" }
        }),
    );
    let addr = serve(app).await;
    let keys = std::env::temp_dir().join(format!("loadgen-hit-keys-{}", std::process::id()));
    std::fs::write(&keys, KEYS).unwrap();
    let url = format!("http://{addr}/ping");
    let (exit, text) = loadgen(&[
        "hit",
        &url,
        "--rate",
        "200",
        "--duration",
        "1s",
        "--quiet",
        "--keys-file",
        keys.to_str().unwrap(),
    ])
    .await;
    assert_eq!(exit, Exit::Ok);
    let n = count.load(Ordering::SeqCst);
    assert!((196..=200).contains(&n), "{n} requests at 200/s for 1 s");
    assert!(text.contains("GET /ping"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_bounds_requests_in_flight_in_the_open_model() {
    let (addr, peak) = peak_server(Duration::from_millis(40)).await;
    let path = write_scenario(
        "maxconn",
        &format!(
            "target: http://{addr}\nmax_connections: 3\nphases: [{{ duration: 1s, arrival_rate: 100 }}]\njourneys: [{{ name: s, steps: [{{ get: / }}] }}]\n"
        ),
    );
    let finished = run_file(&path, "maxconn", 8).await;
    let total = finished.total();
    assert_eq!(peak.load(Ordering::SeqCst), 3, "at most three requests at once");
    assert_eq!(total.error_count(), 0);
    // Arrivals kept their schedule; the wait for a slot shows as latency (not hidden).
    assert!(
        total.latency.value_at_quantile(0.9) > 100_000,
        "p90 {} µs should include queueing",
        total.latency.value_at_quantile(0.9)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn think_time_is_not_counted_as_latency() {
    let addr = serve(Router::new().route("/", get(|| async { "ok" }))).await;
    let path = write_scenario(
        "think",
        &format!(
            "target: http://{addr}\nphases: [{{ duration: 1s, arrival_rate: 10 }}]\njourneys: [{{ name: s, steps: [{{ think: 300ms }}, {{ get: / }}] }}]\n"
        ),
    );
    let finished = run_file(&path, "think", 6).await;
    let total = finished.total();
    assert!(total.requests() >= 9);
    assert!(
        total.latency.max() < 150_000,
        "max {} µs: the 300 ms think leaked into latency",
        total.latency.max()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_with_prior_knowledge() {
    let versions: Arc<Mutex<Vec<http::Version>>> = Arc::default();
    let v = versions.clone();
    let app = Router::new().route(
        "/",
        get(move |req: axum::extract::Request| {
            let v = v.clone();
            async move {
                v.lock().unwrap().push(req.version());
                "ok"
            }
        }),
    );
    let addr = serve(app).await;
    let path = write_scenario(
        "h2",
        &format!(
            "target: http://{addr}\nhttp2: true\nphases: [{{ duration: 1s, arrival_rate: 20 }}, {{ duration: 500ms, users: 2 }}]\njourneys: [{{ name: s, steps: [{{ get: / }}] }}]\n"
        ),
    );
    let finished = run_file(&path, "h2", 10).await;
    let total = finished.total();
    assert_eq!(total.error_count(), 0, "{:?}", total.errors);
    let versions = versions.lock().unwrap().clone();
    assert!(versions.len() >= 25, "{}", versions.len());
    assert!(versions.iter().all(|v| *v == http::Version::HTTP_2), "{versions:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_flag_retargets_and_shed_answers_are_counted() {
    // A synth layer whose kill switch is on: every synthetic request is shed (503 + header).
    let layer = VerifySyntheticLayer::new(Verifier::new(KeyRing::parse(KEYS).unwrap()));
    layer.kill_switch().stop();
    let addr = serve(Router::new().route("/", get(|| async { "ok" })).layer(layer)).await;
    // The file names a port nothing listens on; --target sends the journeys to the server.
    let path = write_scenario(
        "retarget",
        "target: http://127.0.0.1:9\nphases: [{ duration: 1s, arrival_rate: 20 }]\njourneys: [{ name: s, steps: [{ get: / }] }]\n",
    );
    let json = path.with_extension("json");
    let target = format!("http://{addr}");
    let (_, text) =
        support::run_file(&path, |c| c.with_target(target.parse().unwrap()).with_report_json(&json)).await;
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_matches_schema(&report);
    assert_eq!(report["target"], format!("http://{addr}/"));
    let responses = report["total"]["responses"].as_u64().unwrap();
    assert!(responses >= 5, "{text}");
    // Shed answers make loadgen back off (on_shed defaults), and the decision is on record.
    assert!(responses < 18, "backed off from 20/s: {text}");
    let first = &report["decisions"][0];
    assert_eq!(
        (first["source"].as_str(), first["action"].as_str()),
        (Some("shed"), Some("back_off")),
        "{text}"
    );
    assert!(first["new_rate"].as_f64().unwrap() < first["old_rate"].as_f64().unwrap());
    assert!(text.contains("back_off (shed)"), "{text}");
    assert_eq!(report["total"]["errors"]["connect"], 0, "nothing went to the file's target");
    assert_eq!(report["total"]["shed"].as_u64().unwrap(), responses, "{text}");
    assert_eq!(report["total"]["status_codes"]["503"].as_u64().unwrap(), responses);
    assert!(text.contains(&format!("shed by the target: {responses} answers")), "{text}");

    // A bad --target is a usage error that says what is wrong.
    let cli = Cli::try_parse_from(["loadgen", "run", path.to_str().unwrap(), "--target", "ftp://x"]).unwrap();
    let err = run_async(cli, &mut Vec::new()).await.unwrap_err();
    assert!(err.to_string().contains("--target"), "{err}");
}
