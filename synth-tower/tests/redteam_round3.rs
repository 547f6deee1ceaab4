//! Red team round 3 (rt15): the polled mirror queue and its saturated fast path, the shared tee
//! (`tap.rs`), `MarkerRemoved` / `synthetic-traffic-removed`, and the capture's cached JSON line.
//! Tests named `rt15_*` reproduce a finding and are expected to FAIL on the code they were
//! written against; `rt15_probe_*` are attacks that held (they pass) and stay as guards.
#![cfg(all(feature = "mirror", feature = "capture", feature = "axum"))]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod support;

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::{Body, Bytes},
    routing::{get, post},
};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use support::*;
use synth_ctx::{KeyRing, RunId, Signer};
use synth_tower::{
    InvalidMarkerPolicy, KillSwitch, VerifySyntheticLayer,
    capture::{CaptureLayer, CaptureRecord, CaptureSink, CaptureSinkError},
    mirror::{CompareResult, CompareSpec, DarkResult, DarkTarget, Decision, MirrorHandle, MirrorLayer},
};
use tower::{Layer, ServiceExt, service_fn};

fn mirror(target: DarkTarget) -> synth_tower::mirror::MirrorBuilder {
    MirrorLayer::builder(target, Signer::new(keys()), RunId::new("dark-rt15").unwrap())
        .share(1.0)
        .timeout(Duration::from_millis(500))
}

fn settled(h: &MirrorHandle) -> bool {
    let s = h.snapshot();
    s.pending == 0
        && s.pending_bytes == 0
        && s.decided(Decision::Queued) == DarkResult::ALL.iter().map(|r| s.dark(*r)).sum::<u64>()
}

/// FINDING A (a real request's side effect done twice). A dark service behind
/// `VerifySyntheticLayer` with `InvalidMarkerPolicy::TreatAsReal` (the policy the docs suggest
/// for a gateway) that does not (yet) trust the real service's key, e.g. mid key rotation, strips
/// the copy's `dark` marker and serves the copy **as a real request**: its guards run the real
/// effect (here a charge) a second time for the same real user. docs/dark-traffic.md promises
/// "A copy refused by the dark service's verifier (unknown key, expired) gets its 403"; that
/// only holds under `Reject`.
#[tokio::test]
async fn rt15_a_dark_copy_refused_by_a_treat_as_real_dark_service_charges_for_real() {
    let charged_for_real = Arc::new(AtomicUsize::new(0));
    let suppressed = Arc::new(AtomicUsize::new(0));
    // The dark service trusts another key (k2) than the one the real service signs with (k1).
    let other_keys = KeyRing::parse("k2:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8").unwrap();
    let (real_charges, stubbed) = (charged_for_real.clone(), suppressed.clone());
    let dark_app = Router::new()
        .route(
            "/checkout",
            post(move |_body: Bytes| {
                let (real_charges, stubbed) = (real_charges.clone(), stubbed.clone());
                async move {
                    // What `Guard::run` does: the real effect unless the request is synthetic.
                    if synth_ctx::current().is_some() {
                        stubbed.fetch_add(1, SeqCst);
                    } else {
                        real_charges.fetch_add(1, SeqCst);
                    }
                    "charged"
                }
            }),
        )
        .layer(
            VerifySyntheticLayer::new(synth_ctx::Verifier::new(other_keys))
                .with_invalid_marker_policy(InvalidMarkerPolicy::TreatAsReal),
        );
    let dark = serve(dark_app).await;
    let layer = mirror(DarkTarget::url(&format!("http://{dark}")).unwrap()).build().unwrap();
    let handle = layer.handle();
    let real_app = Router::new().route("/checkout", post(|_body: Bytes| async { "charged" })).layer(layer);
    let real = serve(real_app).await;

    let (status, _) = send(real, "POST", "/checkout", &[], Body::from("card=4242")).await;
    assert_eq!(status, StatusCode::OK);
    eventually("the copy answered", || handle.snapshot().dark(DarkResult::Answered) == 1).await;
    assert_eq!(
        (charged_for_real.load(SeqCst), suppressed.load(SeqCst)),
        (0, 0),
        "the dark copy of one real checkout must never charge for real (it should be refused: 403)"
    );
}

/// FINDING B (compare mode silently off for streamed answers). A real answer streamed with a
/// `content-length` (a gateway passing a backend's or a file's stream on, `Body::from_stream`)
/// reaches the client whole, but hyper's HTTP/1 server stops polling the body once it has
/// written `content-length` bytes, and a stream body does not say `is_end_stream`: the response
/// tee never sees its end. Every such request waits the whole timeout (holding its real answer
/// in the budget and a concurrency slot) and is counted `real_incomplete`; none is compared.
#[tokio::test]
async fn rt15_a_streamed_real_answer_with_content_length_is_never_compared() {
    let same = || Response::new(Full::new(Bytes::from_static(b"hello world")));
    let dark =
        DarkTarget::service(service_fn(move |_req| async move { Ok::<_, Infallible>(same()) }), "same");
    let layer = mirror(dark).compare(CompareSpec { headers: vec![], ignore: vec![] }).build().unwrap();
    let handle = layer.handle();
    let app = Router::new()
        .route(
            "/file",
            get(|| async {
                let chunks: Vec<Result<Bytes, Infallible>> =
                    vec![Ok(Bytes::from_static(b"hello")), Ok(Bytes::from_static(b" world"))];
                Response::builder()
                    .header(http::header::CONTENT_LENGTH, "11")
                    .body(Body::from_stream(tokio_stream::iter(chunks)))
                    .unwrap()
            }),
        )
        .layer(layer);
    let real = serve(app).await;
    let (status, body) = send(real, "GET", "/file", &[], Body::empty()).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "hello world"), "the client got the whole answer");
    eventually("compared or given up", || {
        let s = handle.snapshot();
        CompareResult::ALL.iter().map(|r| s.compared(*r)).sum::<u64>() == 1
    })
    .await;
    let s = handle.snapshot();
    assert_eq!(
        (s.compared(CompareResult::Match), s.compared(CompareResult::RealIncomplete)),
        (1, 0),
        "a whole real answer, identical to the dark one, must be compared as a match"
    );
}

/// A sink that keeps the lines it would write.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl CaptureSink for Lines {
    fn write(&self, record: &CaptureRecord) -> Result<(), CaptureSinkError> {
        self.0.lock().unwrap().push(record.to_json_line());
        Ok(())
    }
}

/// FINDING C (a line against the format; replay refuses the file). docs/capture-format.md: `uri`
/// "starts with `/` ... (`OPTIONS *` is not recorded)". The capture records `OPTIONS *` (OPTIONS
/// is in the default methods) with `"uri":"*"`, which `loadgen replay` refuses as "not
/// origin-form": one such request (a CORS-less health check, a proxy probe) stops a replay of
/// the whole capture unless `--skip-bad`.
#[tokio::test]
async fn rt15_options_star_is_recorded_with_a_uri_that_is_not_origin_form() {
    let lines = Lines::default();
    let layer = CaptureLayer::builder(lines.clone()).share(1.0).per_second(None).build().unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(
        |_req: Request<synth_tower::capture::CaptureRequestBody<Full<Bytes>>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        },
    ));
    let req = Request::builder().method("OPTIONS").uri("*").body(Full::new(Bytes::new())).unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    eventually("written or skipped", || {
        let s = handle.snapshot();
        s.written + s.decided(synth_tower::capture::Decision::Filtered) == 1
    })
    .await;
    for line in lines.0.lock().unwrap().iter() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let uri = v["uri"].as_str().unwrap();
        assert!(uri.starts_with('/'), "a capture line whose uri is not origin-form: {line}");
    }
}

/// A sink that writes the record, then an extra-redacted copy elsewhere (a tee to another
/// store): the copy drops the body and a header before it is turned into a line.
#[derive(Clone, Default)]
struct RedactingTee {
    primary: Arc<Mutex<Vec<String>>>,
    redacted: Arc<Mutex<Vec<String>>>,
}

impl CaptureSink for RedactingTee {
    fn write(&self, record: &CaptureRecord) -> Result<(), CaptureSinkError> {
        self.primary.lock().unwrap().push(record.to_json_line());
        let mut copy = record.clone();
        copy.headers.remove("x-customer-email");
        copy.body = Bytes::new();
        self.redacted.lock().unwrap().push(copy.to_json_line());
        Ok(())
    }
}

/// FINDING D (stale line; data a sink removed is written). `CaptureRecord`'s fields are public
/// and it is `Clone`, and `to_json_line` promises "the record as one line of JSON"; since the
/// line is made once and the cache is cloned with the record, a sink that edits a clone after
/// the line was made (here: a second, more redacted store) writes the old line, header and body
/// included.
#[tokio::test]
async fn rt15_to_json_line_of_an_edited_clone_still_shows_what_was_removed() {
    let sink = RedactingTee::default();
    let layer = CaptureLayer::builder(sink.clone())
        .share(1.0)
        .per_second(None)
        .methods([http::Method::POST])
        .build()
        .unwrap();
    let handle = layer.handle();
    let app = Router::new().route("/orders", post(|body: Bytes| async move { body })).layer(layer);
    let addr = serve(app).await;
    send(addr, "POST", "/orders", &[("x-customer-email", "ann@example.com")], Body::from("secret-body"))
        .await;
    eventually("written", || handle.snapshot().written == 1).await;
    let redacted = sink.redacted.lock().unwrap()[0].clone();
    assert!(
        !redacted.contains("ann@example.com") && !redacted.contains("secret-body"),
        "the edited clone's line still has what the sink removed: {redacted}"
    );
}

/// PROBE (held). A lone copy after a long idle (the sender's poll backed off to 50 ms) reaches
/// the dark target within the documented bound; a burst to a hanging target with a tiny queue,
/// then the kill switch, leaves every counter settled and the budget back at 0.
#[tokio::test]
async fn rt15_probe_idle_latency_and_budget_after_burst_and_kill() {
    let arrived: Arc<Mutex<Option<Instant>>> = Arc::default();
    let seen = arrived.clone();
    let dark = DarkTarget::service(
        service_fn(move |_req: Request<Full<Bytes>>| {
            let seen = seen.clone();
            async move {
                *seen.lock().unwrap() = Some(Instant::now());
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            }
        }),
        "records arrival",
    );
    let layer = mirror(dark).build().unwrap();
    let handle = layer.handle();
    let svc =
        layer.layer(service_fn(|_req: Request<synth_tower::mirror::MirrorRequestBody<Full<Bytes>>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"real"))))
        }));
    // Start the sender, then let it idle.
    svc.clone().oneshot(Request::get("/a").body(Full::new(Bytes::new())).unwrap()).await.unwrap();
    eventually("first copy", || handle.snapshot().dark(DarkResult::Answered) == 1).await;
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        *arrived.lock().unwrap() = None;
        let sent = Instant::now();
        svc.clone().oneshot(Request::get("/b").body(Full::new(Bytes::new())).unwrap()).await.unwrap();
        eventually("lone copy", || arrived.lock().unwrap().is_some()).await;
        worst = worst.max(arrived.lock().unwrap().unwrap() - sent);
    }
    assert!(worst < Duration::from_millis(80), "a lone copy after idle waited {worst:?}");

    // Burst into a hanging target, small queue and budget, bodies streamed; then stop.
    let kill = KillSwitch::new();
    let hang = DarkTarget::service(
        service_fn(|_req: Request<Full<Bytes>>| {
            std::future::pending::<Result<Response<Full<Bytes>>, Infallible>>()
        }),
        "hangs",
    );
    let layer = mirror(hang)
        .queue(4)
        .concurrency(2)
        .max_pending_bytes(64 * 1024)
        .timeout(Duration::from_secs(30))
        .kill_switch(kill.clone())
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(
        |req: Request<synth_tower::mirror::MirrorRequestBody<Full<Bytes>>>| async move {
            let n = req.into_body().collect().await.unwrap().to_bytes().len();
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(n.to_string()))))
        },
    ));
    let mut tasks = Vec::new();
    for i in 0..400 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            let body = Full::new(Bytes::from(vec![b'x'; 100 + i * 37 % 5000]));
            svc.oneshot(Request::post("/p").body(body).unwrap()).await.unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().status(), StatusCode::OK);
    }
    let s = handle.snapshot();
    assert!(s.decided(Decision::QueueFull) > 0 && s.decided(Decision::Queued) >= 4, "{s:?}");
    assert!(s.pending_bytes <= 64 * 1024, "{s:?}");
    kill.stop();
    eventually("settled after the stop", || settled(&handle)).await;
    let s = handle.snapshot();
    assert_eq!(s.decided(Decision::Queued), s.dark(DarkResult::Stopped), "{s:?}");
}

/// FINDING E (every scrubbed body is a bad record at replay). docs/capture-format.md: when the
/// body is recorded, `body_len` is "the length of `body` decoded (a reader refuses a record
/// where they differ: it was cut or altered)", and `loadgen replay` does refuse it
/// (loadgen/src/replay/jsonl.rs: "body_len is N but the body has M bytes"). Scrubbing a JSON
/// field (or a form field) rewrites the body but leaves `body_len` at the received length: every
/// record whose body was scrubbed, the very records scrubbing exists for, stops a replay (or is
/// skipped with `--skip-bad`).
#[tokio::test]
async fn rt15_a_scrubbed_body_keeps_the_original_body_len_and_replay_refuses_it() {
    let lines = Lines::default();
    let scrub = synth_tower::capture::Scrub {
        json: vec![synth_tower::compare::JsonPath::parse("$.card").unwrap()],
        query: vec!["password".into()],
        ..Default::default()
    };
    let layer = CaptureLayer::builder(lines.clone())
        .share(1.0)
        .per_second(None)
        .methods([http::Method::POST])
        .scrub(scrub)
        .build()
        .unwrap();
    let handle = layer.handle();
    let app = Router::new().route("/orders", post(|body: Bytes| async move { body })).layer(layer);
    let addr = serve(app).await;
    send(
        addr,
        "POST",
        "/orders",
        &[("content-type", "application/json")],
        Body::from(r#"{"card":"4242","n":1}"#),
    )
    .await;
    send(
        addr,
        "POST",
        "/orders",
        &[("content-type", "application/x-www-form-urlencoded")],
        Body::from("user=ann&password=hunter2"),
    )
    .await;
    eventually("written", || handle.snapshot().written == 2).await;
    for line in lines.0.lock().unwrap().iter() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["body_encoding"], "utf8");
        assert!(v["scrubbed"].is_object(), "scrubbed: {line}");
        let body_len = v["body_len"].as_u64().unwrap();
        let body = v["body"].as_str().unwrap();
        if v["body_omitted"] == true {
            // (Fix-side amendment.) With a JSON scrub path, a body that is not JSON (the form)
            // cannot be searched for it and is left out, by design; the format then says
            // `body_len` is the received length, and a reader does not compare it with `body`.
            assert_eq!((body, body_len), ("", 25), "an omitted body: {line}");
            continue;
        }
        assert_eq!(body_len, body.len() as u64, "body_len is not the recorded body's length: {line}");
    }
}

/// FINDING F (the kill switch leaves copies holding memory and working). docs: the kill switch
/// "stops mirroring at once: ... copies in flight cut short (within 20 ms)". In compare mode a
/// copy whose dark answer came waits for the real answer with no regard for the switch: it keeps
/// its concurrency slot and the real answer's bytes in the budget until the real answer ends or
/// the timeout passes, and then compares and counts it, after the stop.
#[tokio::test]
async fn rt15_the_kill_switch_does_not_cut_a_copy_waiting_for_its_real_answer() {
    let kill = KillSwitch::new();
    let dark = DarkTarget::service(
        service_fn(|_req| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(vec![b'd'; 50_000]))))
        }),
        "answers at once",
    );
    let layer = mirror(dark)
        .timeout(Duration::from_secs(30))
        .compare(CompareSpec { headers: vec![], ignore: vec![] })
        .kill_switch(kill.clone())
        .build()
        .unwrap();
    let handle = layer.handle();
    // The real answer: 50 kB at once, the rest 3 s later (a download, a slow backend).
    let app = Router::new()
        .route(
            "/download",
            get(|| async {
                let stream = async_stream_like();
                Body::from_stream(stream)
            }),
        )
        .layer(layer);
    let real = serve(app).await;
    let client = tokio::spawn(async move { send(real, "GET", "/download", &[], Body::empty()).await });
    eventually("dark answered and the real answer's start held", || {
        let s = handle.snapshot();
        s.dark(DarkResult::Answered) == 1 && s.pending_bytes >= 50_000
    })
    .await;
    kill.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = handle.snapshot().pending_bytes;
    client.await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = handle.snapshot();
    let compared_after_stop: u64 = CompareResult::ALL.iter().map(|r| s.compared(*r)).sum();
    assert_eq!(
        (held, compared_after_stop),
        (0, 0),
        "500 ms after the kill switch a copy still held its real answer's bytes / compared after the stop"
    );
}

/// 50 kB now, 50 kB in 3 s.
fn async_stream_like() -> impl tokio_stream::Stream<Item = Result<Bytes, Infallible>> {
    use tokio_stream::StreamExt as _;
    tokio_stream::iter([0u8, 1]).then(|i| async move {
        if i == 1 {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        Ok(Bytes::from(vec![b'd'; 50_000]))
    })
}

/// A body: one frame, then pending for ever.
struct OneThenHang(Option<Bytes>);

impl http_body::Body for OneThenHang {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        match self.0.take() {
            Some(b) => std::task::Poll::Ready(Some(Ok(http_body::Frame::data(b)))),
            None => std::task::Poll::Pending,
        }
    }
}

/// FINDING G (a dropped real answer pins the budget until the timeout). When the real answer's
/// body is dropped before its end (the client went away, a timeout layer above gave up, the body
/// failed), the response tee is dropped without telling the copy: the copy goes on waiting for
/// an answer that can no longer come, with the real answer's bytes (and the dark answer's) in the
/// byte budget and its concurrency slot taken, for the whole `timeout`. (`AnswerSlot` says the
/// bytes are given back "at once" when the copy stops waiting; nobody stops it.)
#[tokio::test]
async fn rt15_a_real_answer_dropped_before_its_end_holds_the_budget_until_the_timeout() {
    let dark = DarkTarget::service(
        service_fn(|_req| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"dark"))))
        }),
        "answers at once",
    );
    let layer = mirror(dark)
        .timeout(Duration::from_secs(30))
        .compare(CompareSpec { headers: vec![], ignore: vec![] })
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc =
        layer.layer(service_fn(|_req: Request<synth_tower::mirror::MirrorRequestBody<Full<Bytes>>>| async {
            Ok::<_, Infallible>(Response::new(OneThenHang(Some(Bytes::from(vec![b'r'; 100_000])))))
        }));
    let res = svc.oneshot(Request::get("/download").body(Full::new(Bytes::new())).unwrap()).await.unwrap();
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.data_ref().unwrap().len(), 100_000);
    eventually("the copy answered", || handle.snapshot().dark(DarkResult::Answered) == 1).await;
    drop(body); // the client went away
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s = handle.snapshot();
    assert_eq!(
        (s.pending_bytes, s.compared(CompareResult::RealIncomplete)),
        (0, 1),
        "1 s after the real answer was dropped: its bytes are still reserved and the copy still waits"
    );
}

/// FINDING H (HTTP/2 requests recorded without their authority). docs/capture-format.md: "`host`
/// (or HTTP/2's `:authority`, written as `host`) is the recorded authority". An HTTP/2 request
/// has no `host` header (the authority is in the URI), and the capture writes only the header
/// map: the record has no `host`, so a replay of a virtual-hosted service loses which host the
/// request was for.
#[tokio::test]
async fn rt15_an_http2_request_is_recorded_without_its_authority() {
    let lines = Lines::default();
    let layer = CaptureLayer::builder(lines.clone()).share(1.0).per_second(None).build().unwrap();
    let handle = layer.handle();
    let app = Router::new().route("/products/{id}", get(|| async { "p" })).layer(layer);
    let addr = serve(app).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let req = Request::get(format!("http://{addr}/products/7")).body(Full::new(Bytes::new())).unwrap();
    let res = client.request(req).await.unwrap();
    assert_eq!((res.status(), res.version()), (StatusCode::OK, http::Version::HTTP_2));
    eventually("written", || handle.snapshot().written == 1).await;
    let line = lines.0.lock().unwrap()[0].clone();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["version"], "HTTP/2");
    let host = v["headers"].as_array().unwrap().iter().find(|h| h[0] == "host").map(|h| h[1].clone());
    assert_eq!(host, Some(serde_json::Value::String(addr.to_string())), "no recorded authority: {line}");
}

/// FINDING I (an endless copy loop, every hop served as real). docs: "A mirror's copy (origin
/// `dark`) is **never** copied again, whatever the setting". `is_dark` looks at the marker, the
/// extension and the scope, but a `TreatAsReal` verify layer in front has already removed a
/// refused marker (leaving only `MarkerRemoved`, which `mirror_synthetic(true)` skips): a copy
/// whose `dark` marker the receiving service refuses (unknown key, expired, clock skew) is
/// mirrored again, and again. Here one service mirrors to itself (the docs' own example of the
/// loop the rule prevents): one real request becomes an endless chain of copies, each run as a
/// real request.
#[tokio::test]
async fn rt15_a_refused_dark_copy_is_copied_again_without_end() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let other_keys = KeyRing::parse("k2:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8").unwrap();
    let layer =
        mirror(DarkTarget::url(&format!("http://{addr}")).unwrap()).mirror_synthetic(true).build().unwrap();
    let handle = layer.handle();
    let counted = hits.clone();
    let app = Router::new()
        .route(
            "/x",
            get(move || {
                counted.fetch_add(1, SeqCst);
                async { "x" }
            }),
        )
        .layer(layer)
        .layer(
            VerifySyntheticLayer::new(synth_ctx::Verifier::new(other_keys))
                .with_invalid_marker_policy(InvalidMarkerPolicy::TreatAsReal),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    assert_eq!(send_status(addr, "GET", "/x", &[], Body::empty()).await, StatusCode::OK);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (served, queued) = (hits.load(SeqCst), handle.snapshot().decided(Decision::Queued));
    handle.set_enabled(false);
    // (Fix-side amendment.) Since a refused marker that reads `dark` is refused with 403 under
    // `TreatAsReal` too (finding A), the copy is no longer served as real: served once (the real
    // request), copied once. That a request whose marker was removed is never copied, the fix
    // for this finding, is guarded without a `dark` marker in tests/mirror.rs.
    assert_eq!(
        (served, queued),
        (1, 1),
        "one real request: served once, copied once (the copy refused, never copied again)"
    );
}

/// Bytes whose owner counts how many of them are alive.
struct Tracked {
    data: Vec<u8>,
    live: Arc<AtomicUsize>,
}

impl AsRef<[u8]> for Tracked {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.live.fetch_sub(self.data.len(), SeqCst);
    }
}

/// FINDING J (memory past the byte budget: copies pin the server's read buffers through their
/// headers). The body is copied (owned) so that the budget counts what is held, but the head is
/// `parts.headers.clone()`: hyper's HTTP/1 parser makes every header value a slice of the
/// connection's read buffer (`buf.split_to(len).freeze()`, then `from_maybe_shared_unchecked`,
/// hyper src/proto/h1/role.rs), at least 8 KiB (`INIT_BUFFER_SIZE`) and up to ~400 KiB once the
/// adaptive read strategy has grown it. A queued copy keeps that whole allocation alive while the
/// budget counts `name + value + 4` per header. Here each request's head comes from its own 8 KiB
/// buffer, as from hyper: 500 queued copies pin 4 MiB under a 64 KiB budget.
#[tokio::test]
async fn rt15_queued_copies_pin_read_buffers_through_header_values_outside_the_budget() {
    let live = Arc::new(AtomicUsize::new(0));
    let hang = DarkTarget::service(
        service_fn(|_req: Request<Full<Bytes>>| {
            std::future::pending::<Result<Response<Full<Bytes>>, Infallible>>()
        }),
        "hangs",
    );
    let budget = 64 * 1024;
    let layer = mirror(hang)
        .queue(1000)
        .concurrency(1)
        .max_pending_bytes(budget)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc =
        layer.layer(service_fn(|_req: Request<synth_tower::mirror::MirrorRequestBody<Full<Bytes>>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"real"))))
        }));
    for _ in 0..500 {
        // A connection's read buffer; the head is its first bytes, the values slices of it.
        live.fetch_add(8192, SeqCst);
        let buf = Bytes::from_owner(Tracked { data: vec![b'a'; 8192], live: live.clone() });
        let mut req = Request::get("/products/7").body(Full::new(Bytes::new())).unwrap();
        req.headers_mut()
            .insert("x-request-id", http::HeaderValue::from_maybe_shared(buf.slice(0..16)).unwrap());
        drop(buf);
        svc.clone().oneshot(req).await.unwrap();
    }
    let s = handle.snapshot();
    assert_eq!(s.decided(Decision::Queued), 500, "{s:?}");
    let pinned = live.load(SeqCst) as u64;
    assert!(
        pinned <= budget,
        "queued copies keep {pinned} bytes of read buffers alive; the budget ({budget}) counts {}",
        s.pending_bytes
    );
    handle.set_enabled(false);
}

/// PROBE (held). A real client that sends `synthetic-traffic-removed: 1` itself (any case, twice)
/// is served as real (no synthetic scope: its guards run), is neither recorded nor mirrored (a
/// request may make itself less recorded), and the header is not echoed in the answer.
#[tokio::test]
async fn rt15_probe_a_client_sent_removed_header_never_makes_a_request_synthetic() {
    let lines = Lines::default();
    let capture = CaptureLayer::builder(lines.clone()).share(1.0).per_second(None).build().unwrap();
    let ch = capture.handle();
    let dark = DarkTarget::service(
        service_fn(|_req| async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"d")))) }),
        "dark",
    );
    let mirror_layer = mirror(dark).build().unwrap();
    let mh = mirror_layer.handle();
    let synthetic_seen = Arc::new(AtomicUsize::new(0));
    let seen = synthetic_seen.clone();
    let app = Router::new()
        .route(
            "/x",
            get(move || {
                if synth_ctx::current().is_some() || synth_ctx::is_synthetic() {
                    seen.fetch_add(1, SeqCst);
                }
                async { "x" }
            }),
        )
        .layer(mirror_layer)
        .layer(capture)
        .layer(
            VerifySyntheticLayer::new(verifier())
                .with_invalid_marker_policy(InvalidMarkerPolicy::TreatAsReal),
        );
    let addr = serve(app).await;
    let answer = fetch(
        &client(),
        addr,
        "/x",
        &[("Synthetic-Traffic-Removed", "1"), ("synthetic-traffic-removed", "0")],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(
        answer.headers.keys().all(|k| !k.as_str().starts_with("synthetic-traffic")),
        "{:?}",
        answer.headers
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(synthetic_seen.load(SeqCst), 0);
    assert_eq!(ch.snapshot().decided(synth_tower::capture::Decision::Synthetic), 1);
    assert_eq!(mh.snapshot().decided(Decision::Synthetic), 1);
    assert!(lines.0.lock().unwrap().is_empty());
}

/// PROBE (held). Odd inputs still give one valid JSON line in the documented shape with no
/// scrubbed value in it: non-UTF-8 and tab header values, a body nested past serde's depth limit
/// with a scrub path (omitted, not stored), keys spelled with escapes as duplicates (omitted),
/// an escaped key matching the scrub path (scrubbed), binary bodies (base64).
#[tokio::test]
async fn rt15_probe_odd_inputs_give_valid_lines_without_scrubbed_values() {
    let lines = Lines::default();
    let scrub = synth_tower::capture::Scrub {
        json: vec![synth_tower::compare::JsonPath::parse("$.card").unwrap()],
        ..Default::default()
    };
    let layer = CaptureLayer::builder(lines.clone())
        .share(1.0)
        .per_second(None)
        .methods([http::Method::POST])
        .scrub(scrub)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(
        |req: Request<synth_tower::capture::CaptureRequestBody<Full<Bytes>>>| async move {
            let _ = req.into_body().collect().await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        },
    ));
    let deep = format!("{}{}{}", "[".repeat(200), r#"{"card":"4111"}"#, "]".repeat(200));
    let bodies: Vec<Vec<u8>> = vec![
        deep.into_bytes(),
        br#"{"card":"4111","c\u0061rd":"x"}"#.to_vec(),
        br#"{"c\u0061rd":"4111"}"#.to_vec(),
        vec![0xff, 0xfe, b'4', b'1', b'1', b'1'],
    ];
    let n = bodies.len() as u64;
    for body in bodies {
        let mut req = Request::post("/o").body(Full::new(Bytes::from(body))).unwrap();
        req.headers_mut().insert("x-bin", http::HeaderValue::from_bytes(&[0xe9, b'a', b'\t', b'b']).unwrap());
        svc.clone().oneshot(req).await.unwrap();
    }
    eventually("written", || handle.snapshot().written == n).await;
    for line in lines.0.lock().unwrap().iter() {
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["uri"].as_str().unwrap().starts_with('/'));
        if v["body_encoding"] == "utf8" {
            assert!(!line.contains("4111"), "{line}");
        }
    }
}
