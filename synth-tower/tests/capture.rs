//! Capture over real sockets: a real axum service behind `CaptureLayer` (and the verify layer),
//! records read back from the JSON Lines files.
#![cfg(all(feature = "capture", feature = "axum"))]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod support;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::{Body, Bytes},
    routing::{get, post},
};
use http::StatusCode;
use serde_json::Value;
use support::*;
use synth_tower::{
    VerifySyntheticLayer,
    capture::{
        CaptureBuilder, CaptureHandle, CaptureLayer, CaptureRecord, CaptureSink, CaptureSinkError, Decision,
        HeaderPolicy, JsonLinesSink, Scrub,
    },
    compare::JsonPath,
};

fn app() -> Router {
    Router::new()
        .route("/products/{id}", get(|| async { "product" }))
        .route(
            "/orders",
            post(|body: Bytes| async move { (StatusCode::CREATED, format!("{} bytes", body.len())) }),
        )
        .route("/ignore", post(|| async { "not read" }))
}

fn builder(dir: &PathBuf) -> CaptureBuilder {
    CaptureLayer::builder(JsonLinesSink::new(dir, "test").unwrap())
        .share(1.0)
        .per_second(None)
        .methods([http::Method::GET, http::Method::POST])
}

async fn serve_with(layer: CaptureLayer) -> (SocketAddr, CaptureHandle) {
    let handle = layer.handle();
    (serve(app().layer(layer)).await, handle)
}

/// Every line of every file, parsed.
fn lines(dir: &PathBuf) -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<Value>>()
        })
        .collect()
}

#[tokio::test]
async fn real_requests_are_recorded_scrubbed_with_status_and_latency() {
    let d = fresh_dir("capture-record");
    let scrub = Scrub {
        headers: HeaderPolicy::DropListed(vec![http::HeaderName::from_static("x-session")]),
        query: vec!["email".into()],
        json: vec![JsonPath::parse("$.card").unwrap(), JsonPath::parse("$.customer.email").unwrap()],
    };
    let (addr, handle) = serve_with(builder(&d).scrub(scrub).build().unwrap()).await;
    send_status(
        addr,
        "GET",
        "/products/7?email=ann%40example.com&page=2",
        &[("authorization", "Bearer s3cret-token"), ("x-session", "sess-1"), ("accept", "application/json")],
        Body::empty(),
    )
    .await;
    let order =
        r#"{"card":"4111111111111111","customer":{"email":"ann@example.com","name":"Ann"},"sku":"sku-7"}"#;
    let status = send_status(
        addr,
        "POST",
        "/orders",
        &[("content-type", "application/json"), ("cookie", "sid=abc")],
        Body::from(order),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    eventually("two records written", || handle.snapshot().written == 2).await;

    let raw: String =
        std::fs::read_dir(&d).unwrap().map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap()).collect();
    for secret in
        ["s3cret-token", "sess-1", "ann%40example.com", "ann@example.com", "4111111111111111", "sid=abc"]
    {
        assert!(!raw.contains(secret), "{secret} was stored: {raw}");
    }
    let records = lines(&d);
    let get = records.iter().find(|r| r["method"] == "GET").unwrap();
    assert_eq!(get["v"], 1);
    assert_eq!(get["uri"], "/products/7?email=__synth_scrubbed__&page=2");
    assert_eq!(get["status"], 200);
    assert!(get["latency_us"].as_u64().is_some());
    assert!(get["at_us"].as_u64().unwrap() > 1_700_000_000_000_000);
    assert_eq!(get["scrubbed"]["headers"], serde_json::json!(["authorization", "x-session"]));
    assert_eq!(get["scrubbed"]["query"], serde_json::json!(["email"]));
    let post = records.iter().find(|r| r["method"] == "POST").unwrap();
    assert_eq!(post["status"], 201);
    assert_eq!(post["scrubbed"]["json"], serde_json::json!(["$.card", "$.customer.email"]));
    let body: Value = serde_json::from_str(post["body"].as_str().unwrap()).unwrap();
    assert_eq!((body["customer"]["name"].as_str(), body["sku"].as_str()), (Some("Ann"), Some("sku-7")));
    // The length of the body recorded (scrubbed), which a reader checks against `body`.
    assert_eq!(post["body_len"], post["body"].as_str().unwrap().len());
    assert_ne!(post["body_len"], order.len());
    let s = handle.snapshot();
    assert_eq!(s.scrubbed, [3, 1, 2]);
    assert_eq!(s.decided(Decision::Queued), 2);
}

#[tokio::test]
async fn synthetic_requests_and_replays_are_never_recorded() {
    let d = fresh_dir("capture-synthetic");
    let layer = builder(&d).build().unwrap();
    let handle = layer.handle();
    // The capture inside the verify layer, the way a service stacks them.
    let addr = serve(app().layer(layer).layer(VerifySyntheticLayer::new(verifier()))).await;
    send_status(addr, "GET", "/products/1", &[], Body::empty()).await;
    eventually("the real request recorded", || handle.snapshot().written == 1).await;

    let replay = support::mint("replay-run");
    let baggage = format!("synthetic={replay}");
    for headers in [vec![("synthetic-traffic", replay.as_str())], vec![("baggage", baggage.as_str())]] {
        for _ in 0..5 {
            send_status(addr, "GET", "/products/1", &headers, Body::empty()).await;
        }
    }
    // Invalid markers are refused by the verify layer; through a capture alone they are still
    // never recorded.
    let (alone, alone_handle) =
        serve_with(builder(&fresh_dir("capture-synthetic-alone")).build().unwrap()).await;
    for headers in
        [vec![("synthetic-traffic", "v1.replay.forged.9999999999.k1.AAAA")], vec![("baggage", "synthetic=x")]]
    {
        send_status(alone, "GET", "/products/1", &headers, Body::empty()).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(handle.snapshot().written, 1);
    assert_eq!(handle.snapshot().decided(Decision::Synthetic), 10);
    assert_eq!(alone_handle.snapshot().decided(Decision::Synthetic), 2);
    assert_eq!(alone_handle.snapshot().written, 0);
    assert_eq!(lines(&d).len(), 1);
}

#[tokio::test]
async fn long_or_unread_bodies_are_recorded_without_them() {
    let d = fresh_dir("capture-bodies");
    let (addr, handle) = serve_with(builder(&d).body_limit(100).build().unwrap()).await;
    send_status(addr, "POST", "/orders", &[], Body::from(vec![b'a'; 500])).await;
    send_status(addr, "POST", "/ignore", &[], Body::from(vec![b'b'; 50])).await;
    send_status(addr, "POST", "/orders", &[], Body::from(vec![b'c'; 100])).await;
    eventually("three records", || handle.snapshot().written == 3).await;
    let records = lines(&d);
    let long = records.iter().find(|r| r["body_len"] == 500).unwrap();
    assert_eq!((long["body_omitted"].as_bool(), long["body"].as_str()), (Some(true), Some("")));
    let unread = records.iter().find(|r| r["uri"] == "/ignore").unwrap();
    assert_eq!(unread["body_omitted"], true);
    let kept = records.iter().find(|r| r["body_len"] == 100).unwrap();
    assert_eq!(kept["body"].as_str().unwrap(), "c".repeat(100));
    assert_eq!(handle.snapshot().body_omitted, 2);
}

#[tokio::test]
async fn the_per_second_ceiling_and_the_share_hold() {
    let d = fresh_dir("capture-ceiling");
    let (addr, handle) = serve_with(builder(&d).per_second(5).build().unwrap()).await;
    let started = Instant::now();
    for i in 0..40 {
        send_status(addr, "GET", &format!("/products/{i}"), &[], Body::empty()).await;
    }
    let seconds = started.elapsed().as_secs() + 1;
    let s = handle.snapshot();
    assert!(s.decided(Decision::Queued) <= 5 * (seconds + 1), "{s:?}");
    assert_eq!(s.decided(Decision::Queued) + s.decided(Decision::RateLimited), 40);

    let (addr, handle) = serve_with(builder(&fresh_dir("capture-share")).share(0.25).build().unwrap()).await;
    for i in 0..2000 {
        send_status(addr, "GET", &format!("/products/{i}"), &[], Body::empty()).await;
    }
    let queued = handle.snapshot().decided(Decision::Queued) as f64 / 2000.0;
    // Four standard deviations of a binomial(2000, 0.25).
    assert!((0.211..=0.289).contains(&queued), "{queued}");
}

/// A sink that takes its time, or fails: the capture must neither wait for it nor stop.
struct Slow {
    delay: Duration,
    fail: bool,
    seen: Arc<AtomicUsize>,
}

impl CaptureSink for Slow {
    fn write(&self, _: &CaptureRecord) -> Result<(), CaptureSinkError> {
        std::thread::sleep(self.delay);
        self.seen.fetch_add(1, Ordering::SeqCst);
        if self.fail { Err(CaptureSinkError::Other("disk full".into())) } else { Ok(()) }
    }
}

#[tokio::test]
async fn a_slow_or_failing_sink_never_slows_or_fails_a_real_request() {
    let seen = Arc::new(AtomicUsize::new(0));
    let slow = Slow { delay: Duration::from_millis(200), fail: false, seen: seen.clone() };
    let layer = CaptureLayer::builder(slow).share(1.0).per_second(None).queue(4).build().unwrap();
    let (addr, handle) = serve_with(layer).await;
    let started = Instant::now();
    for i in 0..100 {
        assert_eq!(
            send_status(addr, "GET", &format!("/products/{i}"), &[], Body::empty()).await,
            StatusCode::OK
        );
    }
    // 100 records through a 200 ms sink would take 20 s.
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    let s = handle.snapshot();
    assert_eq!(s.decided(Decision::Queued) + s.decided(Decision::QueueFull), 100);
    assert!(s.decided(Decision::QueueFull) >= 90, "{s:?}");

    let failing = Slow { delay: Duration::ZERO, fail: true, seen: Arc::new(AtomicUsize::new(0)) };
    let layer = CaptureLayer::builder(failing).share(1.0).per_second(None).build().unwrap();
    let (addr, handle) = serve_with(layer).await;
    for i in 0..10 {
        assert_eq!(
            send_status(addr, "GET", &format!("/products/{i}"), &[], Body::empty()).await,
            StatusCode::OK
        );
    }
    eventually("ten sink errors", || handle.snapshot().sink_errors == 10).await;
    assert_eq!(handle.snapshot().written, 0);
}

#[tokio::test]
async fn files_rotate_by_size_and_allowlist_mode_keeps_only_listed_headers() {
    let d = fresh_dir("capture-rotate");
    let sink = JsonLinesSink::new(&d, "test").unwrap().max_bytes(600);
    let layer = CaptureLayer::builder(sink)
        .share(1.0)
        .per_second(None)
        .scrub(Scrub { headers: HeaderPolicy::KeepOnly(vec![http::header::ACCEPT]), ..Scrub::default() })
        .build()
        .unwrap();
    let (addr, handle) = serve_with(layer).await;
    for i in 0..20 {
        send_status(
            addr,
            "GET",
            &format!("/products/{i}"),
            &[("accept", "text/plain"), ("x-other", "o")],
            Body::empty(),
        )
        .await;
    }
    eventually("twenty records", || handle.snapshot().written == 20).await;
    let files = std::fs::read_dir(&d).unwrap().count();
    assert!(files >= 3, "{files} files");
    let records = lines(&d);
    assert_eq!(records.len(), 20);
    for r in &records {
        assert_eq!(r["headers"], serde_json::json!([["accept", "text/plain"]]), "{r}");
    }
}

#[tokio::test]
async fn the_metrics_page_passes_promtool_and_bad_settings_are_refused() {
    let d = fresh_dir("capture-metrics");
    let (addr, handle) = serve_with(builder(&d).service_name("catalog").build().unwrap()).await;
    send_status(addr, "GET", "/products/1", &[("authorization", "x")], Body::empty()).await;
    eventually("one record", || handle.snapshot().written == 1).await;
    let page = handle.to_prometheus();
    assert!(
        page.contains("synth_capture_requests_total{service=\"catalog\",decision=\"queued\"} 1"),
        "{page}"
    );
    assert!(page.contains("synth_capture_scrubbed_total{service=\"catalog\",what=\"header\"} 1"), "{page}");
    if let Some(checked) = synth_testkit::promtool::check_metrics("capture metrics page", &page) {
        checked.unwrap();
    }
    for share in [f64::NAN, -0.5, 2.0] {
        assert!(builder(&d).share(share).build().is_err());
        assert!(handle.set_share(share).is_err());
    }
    assert!(builder(&d).queue(0).build().is_err());
    assert!(builder(&d).per_second(0).build().is_err());
    assert!(builder(&d).routes(["products"]).build().is_err());
    handle.set_enabled(false);
    send_status(addr, "GET", "/products/2", &[], Body::empty()).await;
    assert_eq!(handle.snapshot().decided(Decision::Disabled), 1);
}

#[tokio::test]
async fn by_default_only_get_head_and_options_are_recorded_and_forms_are_scrubbed() {
    let d = fresh_dir("capture-defaults");
    let layer = CaptureLayer::builder(JsonLinesSink::new(&d, "test").unwrap()).share(1.0).build().unwrap();
    let (addr, handle) = serve_with(layer).await;
    send_status(
        addr,
        "POST",
        "/orders",
        &[("content-type", "application/x-www-form-urlencoded")],
        Body::from("user=ann&password=hunter2"),
    )
    .await;
    send_status(addr, "GET", "/products/1", &[], Body::empty()).await;
    eventually("one record", || handle.snapshot().written == 1).await;
    assert_eq!(handle.snapshot().decided(Decision::Filtered), 1);

    // Widened: a form's fields are scrubbed by the query rules.
    let d = fresh_dir("capture-forms");
    let layer =
        builder(&d).scrub(Scrub { query: vec!["password".into()], ..Scrub::default() }).build().unwrap();
    let (addr, handle) = serve_with(layer).await;
    send_status(
        addr,
        "POST",
        "/orders",
        &[("content-type", "application/x-www-form-urlencoded; charset=utf-8")],
        Body::from("user=ann&pass%77ord=hunter2"),
    )
    .await;
    eventually("one record", || handle.snapshot().written == 1).await;
    let raw: String =
        std::fs::read_dir(&d).unwrap().map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap()).collect();
    assert!(!raw.contains("hunter2"), "{raw}");
    assert_eq!(lines(&d)[0]["body"], "user=ann&pass%77ord=__synth_scrubbed__");
    // The length of the body recorded, not of the one received: a reader compares them.
    assert_eq!(lines(&d)[0]["body_len"], "user=ann&pass%77ord=__synth_scrubbed__".len());
}

/// A sink that holds every record until it is let go (records wait in the queue meanwhile), then
/// keeps their lines.
#[derive(Clone, Default)]
struct Gate {
    open: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    lines: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Gate {
    fn let_go(&self) {
        *self.open.0.lock().unwrap() = true;
        self.open.1.notify_all();
    }
}

impl CaptureSink for Gate {
    fn write(&self, record: &CaptureRecord) -> Result<(), CaptureSinkError> {
        let mut open = self.open.0.lock().unwrap();
        while !*open {
            open = self.open.1.wait(open).unwrap();
        }
        self.lines.lock().unwrap().push(record.to_json_line());
        Ok(())
    }
}

type InProcess = http::Request<synth_tower::capture::CaptureRequestBody<http_body_util::Full<Bytes>>>;

fn ok_service() -> impl tower::Service<
    InProcess,
    Response = http::Response<http_body_util::Full<Bytes>>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone {
    tower::service_fn(|_req: InProcess| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(Bytes::from_static(
            b"ok",
        ))))
    })
}

/// Queued records are their own memory: hyper's header values and request target are slices of
/// the connection's read buffer, which a record waiting for the writer must not keep alive.
#[tokio::test]
async fn queued_records_keep_no_read_buffer_alive() {
    use tower::{Layer, ServiceExt};
    let gate = Gate::default();
    let layer = CaptureLayer::builder(gate.clone()).share(1.0).per_second(None).queue(1000).build().unwrap();
    let handle = layer.handle();
    let svc = layer.layer(ok_service());
    let live = Arc::new(AtomicUsize::new(0));
    for _ in 0..200 {
        let buf = tracked_buffer(&live, b"/products/7?q=1 x-request-id");
        let mut req = http::Request::get(http::Uri::from_maybe_shared(buf.slice(0..15)).unwrap())
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap();
        req.headers_mut()
            .insert("x-request-id", http::HeaderValue::from_maybe_shared(buf.slice(16..28)).unwrap());
        drop(buf);
        svc.clone().oneshot(req).await.unwrap();
    }
    assert_eq!(handle.snapshot().decided(Decision::Queued), 200);
    let pinned = live.load(Ordering::SeqCst);
    gate.let_go();
    assert_eq!(pinned, 0, "queued records keep {pinned} bytes of read buffers alive");
    eventually("all written", || handle.snapshot().written == 200).await;
    assert!(gate.lines.lock().unwrap()[0].contains(r#""uri":"/products/7?q=1""#));
}

/// A request whose authority is in its URI only (HTTP/2's `:authority`, an absolute-form target)
/// is recorded with it as `host`, without any userinfo; a `host` header is kept as it is.
#[tokio::test]
async fn the_authority_of_the_uri_is_recorded_as_host_without_userinfo() {
    use tower::{Layer, ServiceExt};
    let gate = Gate::default();
    gate.let_go();
    let layer = CaptureLayer::builder(gate.clone()).share(1.0).per_second(None).build().unwrap();
    let handle = layer.handle();
    let svc = layer.layer(ok_service());
    for (uri, host) in
        [("http://ann:s3cret@shop.example:8080/p?q=1", None), ("http://a.example/p", Some("b.example"))]
    {
        let mut req = http::Request::get(uri).body(http_body_util::Full::new(Bytes::new())).unwrap();
        if let Some(host) = host {
            req.headers_mut().insert(http::header::HOST, http::HeaderValue::from_static(host));
        }
        svc.clone().oneshot(req).await.unwrap();
    }
    eventually("written", || handle.snapshot().written == 2).await;
    let lines = gate.lines.lock().unwrap().clone();
    let hosts: Vec<Value> = lines
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let headers = v["headers"].as_array().unwrap().clone();
            Value::Array(headers.into_iter().filter(|h| h[0] == "host").map(|h| h[1].clone()).collect())
        })
        .collect();
    assert_eq!(hosts, [serde_json::json!(["shop.example:8080"]), serde_json::json!(["b.example"])]);
    assert!(!lines.concat().contains("s3cret"), "{lines:?}");
}
