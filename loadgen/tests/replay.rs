//! `loadgen replay` end to end, on real sockets: a service with synth-tower's capture and
//! verifier takes real traffic, and its own capture is replayed onto it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

#[path = "support/cli.rs"]
mod cli_support;
#[path = "support/schema.rs"]
mod schema;

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, extract::Query, http::StatusCode, response::IntoResponse, routing::get};
use cli_support::loadgen;
use loadgen::cli::Exit;
use synth_ctx::{KeyRing, Origin, Verifier};
use synth_tower::{
    VerifySyntheticLayer,
    capture::{CaptureHandle, CaptureLayer, Decision, JsonLinesSink, Scrub},
};

const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("loadgen-replay-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("keys"), KEYS).unwrap();
    d
}

/// What the service saw: per request, whether it was synthetic (and its origin), the method,
/// the URI and the headers.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Arrival>>>);

/// The origin of a request's marker (none: real), and the request.
type Arrival = (Option<Origin>, Request);

/// A request as the handler saw it: method, URI, headers.
type Request = (String, String, Vec<(String, String)>);

impl Seen {
    /// Keeps a request as the handler sees it (its marker's origin from the verifier's scope).
    fn record(&self, req: &axum::extract::Request) -> &'static str {
        let origin = synth_ctx::current().map(|s| s.origin());
        let headers = req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        self.0.lock().unwrap().push((origin, (req.method().to_string(), req.uri().to_string(), headers)));
        "ok"
    }

    fn replayed(&self) -> Vec<Request> {
        let all = self.0.lock().unwrap();
        all.iter().filter(|s| s.0 == Some(Origin::Replay)).map(|s| s.1.clone()).collect()
    }
}

/// An axum service: the verifier outside (it scopes marked requests), the capture inside it.
async fn service(capture_dir: &Path) -> (SocketAddr, Seen, CaptureHandle) {
    let seen = Seen::default();
    let record = {
        let seen = seen.clone();
        // Recorded when polled: the verifier's scope is around the handler's future.
        move |req: axum::extract::Request| {
            let seen = seen.clone();
            async move { seen.record(&req) }
        }
    };
    let sink = JsonLinesSink::new(capture_dir, "shop").unwrap();
    let capture = CaptureLayer::builder(sink)
        .share(1.0)
        .per_second(None)
        .methods([http::Method::GET, http::Method::POST])
        .scrub(Scrub { query: vec!["email".into()], ..Scrub::default() })
        .build()
        .unwrap();
    let handle = capture.handle();
    let app = Router::new()
        .route("/products/{id}", get(record.clone()))
        .route("/orders", axum::routing::post(record.clone()))
        .route("/", get(record))
        .layer(capture)
        .layer(
            VerifySyntheticLayer::new(Verifier::new(KeyRing::parse(KEYS).unwrap())).with_service_name("shop"),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (addr, seen, handle)
}

async fn wait_written(handle: &CaptureHandle, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while handle.snapshot().written < n {
        assert!(Instant::now() < deadline, "capture wrote {:?}", handle.snapshot());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn capture_files(d: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_replayed_three_times_onto_its_own_service_is_tagged_and_never_recaptured() {
    let d = dir("x3");
    let captures = d.join("captures");
    let (addr, seen, capture) = service(&captures).await;

    // Real users: 20 GETs (with a credential and an e-mail in the query) and 4 POSTs, unmarked.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    for i in 0..20 {
        let req = http::Request::get(format!("http://{addr}/products/{i}?email=alice%40example.com&page=2"))
            .header("authorization", "Bearer real-user-secret")
            .header("cookie", "session=real-session")
            .body(http_body_util::Full::default())
            .unwrap();
        assert_eq!(client.request(req).await.unwrap().status(), 200);
    }
    for _ in 0..4 {
        let req = http::Request::post(format!("http://{addr}/orders"))
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{\"sku\":\"A\"}")))
            .unwrap();
        assert_eq!(client.request(req).await.unwrap().status(), 200);
    }
    wait_written(&capture, 24).await;
    let before = capture.snapshot();
    let files = capture_files(&captures);
    let file_text = || files.iter().map(|f| std::fs::read_to_string(f).unwrap()).collect::<String>();
    let recorded = file_text();
    assert_eq!(recorded.lines().count(), 24);

    let report = d.join("report.json");
    let mut args = vec!["replay"];
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    args.extend(names.iter().map(String::as_str));
    let target = format!("http://{addr}");
    let keys = d.join("keys").display().to_string();
    let report_arg = report.display().to_string();
    args.extend([
        "--target",
        &target,
        "--amplify",
        "3",
        "--speed",
        "50",
        "--no-cap",
        "--run-id",
        "replay-x3",
        "--keys-file",
        &keys,
        "--report-json",
        &report_arg,
        "--quiet",
    ]);
    let (exit, out) = loadgen(&args).await;
    assert_eq!(exit, Exit::Ok, "{out}");

    // The service saw 3 × 20 GETs, every one verified with origin `replay`; no POST replayed.
    let replayed = seen.replayed();
    assert_eq!(replayed.len(), 60, "{out}");
    assert!(replayed.iter().all(|(m, _, _)| m == "GET"));
    for i in 0..20 {
        let path = format!("/products/{i}?email=__synth_scrubbed__&page=2");
        assert_eq!(replayed.iter().filter(|(_, u, _)| *u == path).count(), 3, "{path}");
    }
    // No scrubbed value on the wire.
    for (_, uri, headers) in &replayed {
        let wire = format!("{uri} {headers:?}");
        assert!(
            !wire.contains("real-user-secret") && !wire.contains("real-session") && !wire.contains("alice"),
            "{wire}"
        );
    }
    // The capture recorded none of them: the file is as it was; each was skipped as synthetic.
    let after = capture.snapshot();
    assert_eq!(after.written, before.written);
    assert_eq!(after.decided(Decision::Synthetic) - before.decided(Decision::Synthetic), 60);
    assert_eq!(file_text(), recorded);
    assert!(!recorded.contains("real-user-secret") && !recorded.contains("alice"));

    // The report: one row per route, every answer tagged, the replay's own section.
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(json["total"]["requests"], 60);
    assert_eq!(json["total"]["tagged"], 60, "{json:#}");
    let rows: Vec<&str> =
        json["steps"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(rows, ["GET /products/{n}"]);
    assert_eq!(json["replay"]["replayed_records"], 20);
    assert_eq!(json["replay"]["not_replayed"]["method POST"], 4);
    assert_eq!(json["replay"]["scrubbed_headers"]["authorization"], 20);
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../../docs/report.schema.json")).unwrap();
    let mut errors = Vec::new();
    schema::validate(&schema, &schema, &json, "", &mut errors);
    assert!(errors.is_empty(), "{errors:#?}");
    let _ = std::fs::remove_dir_all(&d);
}

/// A Prometheus-compatible query API answering `real` with the current value (requests/s). A
/// stand-in for a real Prometheus whose value the test sets exactly: the cap's arithmetic is
/// what is under test (the scripted source is the same kind `controls.rs` uses).
async fn scripted_real_rate(real: Arc<AtomicU64>) -> SocketAddr {
    let app = Router::new().route(
        "/api/v1/query",
        get(move |Query(q): Query<HashMap<String, String>>| {
            let real = real.clone();
            async move {
                if q.get("query").map(String::as_str) != Some("real") {
                    return (StatusCode::BAD_REQUEST, "unknown query").into_response();
                }
                let v = real.load(Ordering::SeqCst);
                axum::Json(serde_json::json!({
                    "status": "success",
                    "data": { "resultType": "vector", "result": [{ "metric": {}, "value": [0, v.to_string()] }] }
                }))
                .into_response()
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

/// A synth capture file of `n` GETs `gap_ms` apart.
fn synthetic_capture(path: &Path, n: u64, gap_ms: u64) {
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&format!(
            r#"{{"v":1,"at_us":{},"method":"GET","uri":"/items/{i}","headers":[],"body":"","body_encoding":"utf8","body_len":0}}"#,
            1_764_650_000_000_000u64 + i * gap_ms * 1000
        ));
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

/// A service counting replayed requests per 100 ms.
async fn counting_service() -> (SocketAddr, Arc<Mutex<Vec<Instant>>>) {
    let times = Arc::new(Mutex::new(Vec::new()));
    let t = times.clone();
    let app = Router::new()
        .route(
            "/items/{id}",
            get(move || {
                let t = t.clone();
                async move {
                    if synth_ctx::current().is_some_and(|s| s.origin() == Origin::Replay) {
                        t.lock().unwrap().push(Instant::now());
                    }
                    "ok"
                }
            }),
        )
        .layer(VerifySyntheticLayer::new(Verifier::new(KeyRing::parse(KEYS).unwrap())));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (addr, times)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_holds_replay_at_a_share_of_real_traffic_and_follows_a_step() {
    let d = dir("cap");
    let file = d.join("rec.jsonl");
    // 20 req/s recorded; ×10 wants 200 req/s.
    synthetic_capture(&file, 200, 50);
    let real = Arc::new(AtomicU64::new(100));
    let prom = scripted_real_rate(real.clone()).await;
    let (addr, times) = counting_service().await;
    let report = d.join("report.json");
    let (file_s, target, prom_s, keys, report_s) = (
        file.display().to_string(),
        format!("http://{addr}"),
        format!("http://{prom}"),
        d.join("keys").display().to_string(),
        report.display().to_string(),
    );
    let step = {
        let real = real.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            real.store(200, Ordering::SeqCst);
        })
    };
    let port = synth_testkit::free_port().unwrap();
    let control: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let control_s = control.to_string();
    let seen_live = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(3000)).await;
        (raw(control, "GET", "/metrics").await, raw(control, "GET", "/status").await)
    });
    let start = Instant::now();
    let (exit, out) = loadgen(&[
        "replay",
        &file_s,
        "--control-addr",
        &control_s,
        "--target",
        &target,
        "--amplify",
        "10",
        "--loop",
        "--duration",
        "10s",
        "--cap-share",
        "0.25",
        "--prometheus",
        &prom_s,
        "--real-rate",
        "real",
        "--keys-file",
        &keys,
        "--report-json",
        &report_s,
        "--quiet",
    ])
    .await;
    step.await.unwrap();
    assert_eq!(exit, Exit::Ok, "{out}");
    let times = times.lock().unwrap().clone();
    let rate = |from: f64, to: f64| {
        let n = times
            .iter()
            .filter(|t| {
                let s = t.duration_since(start).as_secs_f64();
                s >= from && s < to
            })
            .count();
        n as f64 / (to - from)
    };
    // Real 100 req/s × 0.25: 25 req/s (within 10 %), from after the first poll to the step.
    let before = rate(1.5, 5.0);
    assert!((22.5..=27.5).contains(&before), "before the step: {before} req/s\n{out}");
    // Real 200 req/s: 50 req/s once the next poll has seen it.
    let after = rate(6.5, 10.0);
    assert!((45.0..=55.0).contains(&after), "after the step: {after} req/s\n{out}");
    // Every cap decision is on the record.
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let caps: Vec<&serde_json::Value> =
        json["decisions"].as_array().unwrap().iter().filter(|d| d["action"] == "cap").collect();
    assert!(caps.iter().any(|d| d["value"] == 100.0), "{caps:#?}");
    assert!(caps.iter().any(|d| d["value"] == 200.0), "{caps:#?}");
    assert!(caps.iter().any(|d| d["detail"].as_str().unwrap().contains("held at")), "{caps:#?}");
    // The operator saw the cap on /metrics and /status while it held.
    let (page, status) = seen_live.await.unwrap();
    assert!(page.contains("loadgen_replay_cap_requests_per_second{run=") && page.contains(" 25\n"), "{page}");
    assert!(page.contains("loadgen_replay_capped{run=\""), "{page}");
    assert!(status.contains("\"replay_cap\":25.0") && status.contains("\"replay_capped\":true"), "{status}");
    let body = page.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    if let Some(verdict) = synth_testkit::promtool::check_metrics("the_cap_holds_replay", &body) {
        verdict.unwrap_or_else(|why| panic!("promtool refused the replay's page: {why}\n{body}"));
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// A service that keeps every request it is sent (method, URI, headers) and its marker's origin.
async fn recording_service() -> (SocketAddr, Seen) {
    let seen = Seen::default();
    let s = seen.clone();
    let app = Router::new()
        .fallback(move |req: axum::extract::Request| {
            let seen = s.clone();
            async move { seen.record(&req) }
        })
        .layer(VerifySyntheticLayer::new(Verifier::new(KeyRing::parse(KEYS).unwrap())));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (addr, seen)
}

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/replay").join(name).display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn har_and_goreplay_files_replay_their_gets_tagged_without_recorded_credentials() {
    let d = dir("formats");
    let (addr, seen) = recording_service().await;
    let target = format!("http://{addr}");
    let keys = d.join("keys").display().to_string();
    // A HAR export with a credential and a cookie, and a request to another site.
    let har = d.join("creds.har");
    std::fs::write(
        &har,
        r#"{"log":{"version":"1.2","creator":{"name":"t","version":"1"},"entries":[
{"startedDateTime":"2026-12-01T10:00:00.000Z","time":1,"request":{"method":"GET","url":"https://shop.example/account?tab=orders","httpVersion":"HTTP/1.1","headers":[{"name":"Authorization","value":"Bearer har-secret"},{"name":"Cookie","value":"sid=har-session"},{"name":"Accept","value":"text/html"}],"queryString":[],"cookies":[],"headersSize":-1,"bodySize":0},"response":{"status":200,"statusText":"OK","httpVersion":"HTTP/1.1","headers":[],"cookies":[],"content":{"size":0,"mimeType":"text/html"},"redirectURL":"","headersSize":-1,"bodySize":0},"cache":{},"timings":{"send":0,"wait":1,"receive":0}},
{"startedDateTime":"2026-12-01T10:00:00.100Z","time":1,"request":{"method":"GET","url":"https://analytics.example/collect?id=1","httpVersion":"HTTP/1.1","headers":[],"queryString":[],"cookies":[],"headersSize":-1,"bodySize":0},"response":{"status":200,"statusText":"OK","httpVersion":"HTTP/1.1","headers":[],"cookies":[],"content":{"size":0,"mimeType":"text/html"},"redirectURL":"","headersSize":-1,"bodySize":0},"cache":{},"timings":{"send":0,"wait":1,"receive":0}}
]}}"#,
    )
    .unwrap();
    let har = har.display().to_string();
    let (chrome, gor) = (fixture("chrome-export.har"), fixture("requests.gor"));
    let (exit, out) = loadgen(&[
        "replay",
        &chrome,
        &gor,
        &har,
        "--target",
        &target,
        "--host",
        "shop.example",
        "--speed",
        "100",
        "--max-gap",
        "1s",
        "--no-cap",
        "--keys-file",
        &keys,
        "--quiet",
    ])
    .await;
    assert_eq!(exit, Exit::Ok, "{out}");
    let mut got: Vec<String> = seen.replayed().iter().map(|(m, u, _)| format!("{m} {u}")).collect();
    got.sort();
    // The GETs of the three files (the HAR's cached and non-HTTP entries, the POSTs and the PUT
    // not replayed; the analytics request not to --host).
    assert_eq!(
        got,
        ["GET /", "GET /account?tab=orders", "GET /api/products/7?ref=home", "GET /products/7?q=shoes"]
    );
    for (_, _, headers) in seen.replayed() {
        let text = format!("{headers:?}");
        assert!(!text.contains("har-secret") && !text.contains("har-session"), "{text}");
    }
    assert!(out.contains("other host 1"), "{out}");
    assert!(out.contains("method POST 3, method PUT 1"), "{out}");

    // --keep-credentials sends them; --header sets a test one instead of the recorded.
    let (exit, out) = loadgen(&[
        "replay",
        &har,
        "--target",
        &target,
        "--host",
        "shop.example",
        "--no-cap",
        "--keep-credentials",
        "--header",
        "authorization: Bearer {{ env('LOADGEN_REPLAY_TEST_UNSET', 'test-token') }}",
        "--run-id",
        "creds-kept",
        "--keys-file",
        &keys,
        "--quiet",
    ])
    .await;
    assert_eq!(exit, Exit::Ok, "{out}");
    let last = seen.replayed().pop().unwrap();
    let header = |name: &str| last.2.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    assert_eq!(header("authorization").as_deref(), Some("Bearer test-token"));
    assert_eq!(header("cookie").as_deref(), Some("sid=har-session"));
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_times_speed_rate_and_fractional_amplification() {
    let d = dir("timing");
    let file = d.join("rec.jsonl");
    // 11 GETs 100 ms apart: one second recorded.
    synthetic_capture(&file, 11, 100);
    let (addr, times) = counting_service().await;
    let (file_s, target, keys) =
        (file.display().to_string(), format!("http://{addr}"), d.join("keys").display().to_string());
    let replay = |extra: &'static [&'static str]| {
        let mut args =
            vec!["replay".to_owned(), file_s.clone(), "--target".into(), target.clone(), "--no-cap".into()];
        args.extend(["--keys-file".to_owned(), keys.clone(), "--quiet".into()]);
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    };
    let span = |args: Vec<String>| {
        let times = times.clone();
        async move {
            times.lock().unwrap().clear();
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let (exit, out) = loadgen(&refs).await;
            assert_eq!(exit, Exit::Ok, "{out}");
            let t = times.lock().unwrap().clone();
            (t.len(), t.last().unwrap().duration_since(t[0]).as_secs_f64())
        }
    };
    // As recorded: 11 requests over about a second.
    let (n, s) = span(replay(&[])).await;
    assert_eq!(n, 11);
    assert!((0.85..1.4).contains(&s), "as recorded: {s}s");
    // Twice as fast: half a second.
    let (n, s) = span(replay(&["--speed", "2"])).await;
    assert_eq!(n, 11);
    assert!((0.4..0.8).contains(&s), "speed 2: {s}s");
    // A fixed rate: 11 × 1.5 copies (16: 1, 2, 1, 2, …) at 40 req/s, about 0.4 s.
    let (n, s) = span(replay(&["--rate", "40", "--amplify", "1.5"])).await;
    assert_eq!(n, 16);
    assert!((0.3..0.65).contains(&s), "rate 40: {s}s");
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_prometheus_source_the_cap_follows_the_recordings_own_rate() {
    let d = dir("own-rate");
    let file = d.join("rec.jsonl");
    // 20 req/s recorded for 6 s; ×4 wants 80 req/s.
    synthetic_capture(&file, 120, 50);
    let (addr, times) = counting_service().await;
    let (file_s, target, keys, report) = (
        file.display().to_string(),
        format!("http://{addr}"),
        d.join("keys").display().to_string(),
        d.join("r.json").display().to_string(),
    );
    let start = Instant::now();
    // Cap 0.5 × 20 = 10 req/s.
    let (exit, out) = loadgen(&[
        "replay",
        &file_s,
        "--target",
        &target,
        "--amplify",
        "4",
        "--cap-share",
        "0.5",
        "--duration",
        "4s",
        "--keys-file",
        &keys,
        "--report-json",
        &report,
        "--quiet",
    ])
    .await;
    assert_eq!(exit, Exit::Ok, "{out}");
    let n = times.lock().unwrap().iter().filter(|t| t.duration_since(start).as_secs_f64() >= 1.0).count();
    let rate = n as f64 / 3.0;
    assert!((8.0..=12.0).contains(&rate), "{rate} req/s\n{out}");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert!(json["replay"]["cap"].as_str().unwrap().contains("recording's own rate"), "{json:#}");
    assert!(json["decisions"].as_array().unwrap().iter().any(|d| d["action"] == "cap"), "{json:#}");
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_are_refused_with_their_place_or_skipped_and_counted() {
    let d = dir("bad");
    let file = d.join("rec.jsonl");
    synthetic_capture(&file, 3, 10);
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str("{\"v\":1,\"at_us\":1764650000100000,\"method\":\"GET\"\n");
    std::fs::write(&file, text).unwrap();
    let (addr, seen) = recording_service().await;
    let (file_s, target, keys) =
        (file.display().to_string(), format!("http://{addr}"), d.join("keys").display().to_string());
    let cli = |extra: &[&str]| {
        let mut args = vec![
            "loadgen",
            "replay",
            &file_s,
            "--target",
            &target,
            "--no-cap",
            "--keys-file",
            &keys,
            "--quiet",
        ];
        args.extend_from_slice(extra);
        let owned: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        owned
    };
    let parse = |args: Vec<String>| <loadgen::cli::Cli as clap::Parser>::try_parse_from(args).unwrap();
    let mut out = Vec::new();
    let err = loadgen::cli::run_async(parse(cli(&[])), &mut out).await.unwrap_err().to_string();
    assert!(err.contains("rec.jsonl:4: truncated"), "{err}");
    assert!(err.contains("--skip-bad"), "{err}");
    assert!(seen.replayed().is_empty(), "nothing is sent before every record is read");
    let (exit, out) =
        loadgen(&cli(&["--skip-bad"]).iter().skip(1).map(String::as_str).collect::<Vec<_>>()).await;
    assert_eq!(exit, Exit::Ok, "{out}");
    assert_eq!(seen.replayed().len(), 3);
    assert!(out.contains("bad 1"), "{out}");
    // A cap must be said: neither --cap-share nor --no-cap is a usage error.
    let no_cap: Vec<String> = cli(&[]).into_iter().filter(|a| a != "--no-cap").collect();
    let e = <loadgen::cli::Cli as clap::Parser>::try_parse_from(no_cap).unwrap_err().to_string();
    assert!(e.contains("--cap-share") && e.contains("--no-cap"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_replay_serves_metrics_that_promtool_accepts_and_stops_from_the_control_api() {
    let d = dir("control");
    let file = d.join("rec.jsonl");
    synthetic_capture(&file, 40, 25);
    let (addr, times) = counting_service().await;
    let port = synth_testkit::free_port().unwrap();
    let control: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (file_s, target, keys, control_s) = (
        file.display().to_string(),
        format!("http://{addr}"),
        d.join("keys").display().to_string(),
        control.to_string(),
    );
    let operator = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let page = raw(control, "GET", "/metrics").await;
        let status = raw(control, "GET", "/status").await;
        let stopped = raw(control, "POST", "/stop").await;
        (page, status, stopped, Instant::now())
    });
    let (exit, out) = loadgen(&[
        "replay",
        &file_s,
        "--target",
        &target,
        "--loop",
        "--no-cap",
        "--control-addr",
        &control_s,
        "--keys-file",
        &keys,
        "--quiet",
    ])
    .await;
    assert_eq!(exit, Exit::Stopped, "{out}");
    let (page, status, stopped, at) = operator.await.unwrap();
    assert!(stopped.starts_with("HTTP/1.1 200"), "{stopped}");
    assert!(status.contains("\"run_id\""), "{status}");
    assert!(page.contains("loadgen_requests_total{run="), "{page}");
    assert!(page.contains("step=\"GET /items/{n}\""), "{page}");
    // Nothing sent 100 ms after the stop was answered.
    let late =
        times.lock().unwrap().iter().filter(|t| t.duration_since(at) > Duration::from_millis(100)).count();
    assert_eq!(late, 0);
    let body = page.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    if let Some(verdict) = synth_testkit::promtool::check_metrics(
        "a_looping_replay_serves_metrics_that_promtool_accepts_and_stops_from_the_control_api",
        &body,
    ) {
        verdict.unwrap_or_else(|why| panic!("promtool refused the replay's page: {why}\n{body}"));
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// One HTTP/1.1 exchange on a fresh connection: the whole answer as text.
async fn raw(addr: SocketAddr, method: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_replay_sends_nothing_before_the_cap_is_known() {
    let d = dir("unknown-cap");
    let file = d.join("rec.jsonl");
    synthetic_capture(&file, 20, 50);
    let (addr, times) = counting_service().await;
    // A source that is not there: the cap is never known.
    let silent = format!("http://127.0.0.1:{}", synth_testkit::free_port().unwrap());
    let (file_s, target, keys) =
        (file.display().to_string(), format!("http://{addr}"), d.join("keys").display().to_string());
    let (exit, out) = loadgen(&[
        "replay",
        &file_s,
        "--target",
        &target,
        "--amplify",
        "5",
        "--duration",
        "2s",
        "--cap-share",
        "0.25",
        "--prometheus",
        &silent,
        "--real-rate",
        "real",
        "--keys-file",
        &keys,
        "--quiet",
    ])
    .await;
    assert_eq!(times.lock().unwrap().len(), 0, "{out}");
    // Held for its whole length: it tested nothing, and says so (exit 3).
    assert_eq!(exit, Exit::Stopped, "{out}");
    assert!(out.contains("never answered"), "{out}");
    let _ = std::fs::remove_dir_all(&d);
}
