//! Red team of `synth_tower::mirror` (issue 14). Every test here reproduced a finding against
//! the first version of the mirror (all failed there); they now guard the fixes. Each says what
//! it shows.
#![cfg(all(feature = "mirror", feature = "axum"))]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod support;

use std::{
    convert::Infallible,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{Router, routing::get};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use support::*;
use synth_ctx::{RunId, Signer};
use synth_tower::mirror::{
    CompareResult, CompareSpec, DarkResult, DarkTarget, Decision, MirrorBuilder, MirrorLayer,
    MirrorRequestBody,
};
use tower::{Layer, ServiceExt, service_fn};

fn builder(target: DarkTarget) -> MirrorBuilder {
    MirrorLayer::builder(target, Signer::new(keys()), RunId::new("dark-rt").unwrap()).share(1.0)
}

/// Bytes whose owner counts how many of them are alive (so we see who keeps them).
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

fn tracked(len: usize, live: &Arc<AtomicUsize>) -> Bytes {
    live.fetch_add(len, SeqCst);
    Bytes::from_owner(Tracked { data: vec![b'x'; len], live: live.clone() })
}

/// A request body fed from a channel: it ends only when the sender is dropped.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// A body of fixed frames (data and trailers).
struct Frames(std::collections::VecDeque<Frame<Bytes>>);

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

fn grpc_answer(status: &'static str) -> Frames {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static(status));
    if status != "0" {
        trailers.insert("grpc-message", HeaderValue::from_static("dark service failed"));
    }
    Frames([Frame::data(Bytes::from_static(b"\0\0\0\0\x02\x08\x01")), Frame::trailers(trailers)].into())
}

fn hanging_target() -> DarkTarget {
    DarkTarget::service(
        service_fn(|_req: Request<Full<Bytes>>| {
            std::future::pending::<Result<Response<Full<Bytes>>, Infallible>>()
        }),
        "hangs",
    )
}

/// FINDING 1 (real requests hurt). An in-process dark target (`DarkTarget::service`, advertised
/// for "an in-process router") runs its copies as tasks on the real service's runtime. A dark
/// handler that blocks (a bug in the new code: sync I/O, a CPU loop) takes the workers from the
/// real traffic; the mirror's timeout cannot pre-empt it. Expected: a real request on an
/// unmirrored route answers at once. Found: it waits for the dark copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rt14_blocking_in_process_dark_target_delays_real_requests() {
    let dark = DarkTarget::service(
        service_fn(|_req: Request<Full<Bytes>>| async {
            std::thread::sleep(Duration::from_millis(400)); // the dark service's bug
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"dark"))))
        }),
        "catalog-v2 (in process)",
    );
    let layer = builder(dark).routes(["/mirrored"]).timeout(Duration::from_millis(50)).build().unwrap();
    let app = Router::new()
        .route("/mirrored", get(|| async { "real" }))
        .route("/other", get(|| async { "real" }))
        .layer(layer);
    let addr = serve(app).await;
    let client = client();
    fetch(&client, addr, "/other", &[]).await; // warm the connection
    let mut slowest = Duration::ZERO;
    for path in ["/mirrored", "/other"].repeat(4) {
        let started = Instant::now();
        assert_eq!(fetch(&client, addr, path, &[]).await.body, "real");
        slowest = slowest.max(started.elapsed());
    }
    assert!(slowest < Duration::from_millis(150), "a real request took {slowest:?} because of dark copies");
}

/// FINDING 2 (mirroring silently off for good; counters lie). A copy whose dark target panics
/// (an in-process router with a panicking handler, or its body) kills the copy's task before
/// `finished` runs: `pending` and `pending_bytes` never come down, the copy is in no dark result,
/// and once the leaked bytes reach `max_pending_bytes` every later copy is dropped as
/// `queue_full`, though nothing is pending, while the admin page says `active: true`.
#[tokio::test]
async fn rt14_a_panicking_dark_copy_leaks_the_budget_and_mirroring_never_recovers() {
    let dark = DarkTarget::service(
        service_fn(|req: Request<Full<Bytes>>| async move {
            if req.uri().path() == "/boom" {
                panic!("bug in the dark service");
            }
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        }),
        "catalog-v2 (in process)",
    );
    let layer = builder(dark).max_pending_bytes(4_000).timeout(Duration::from_millis(500)).build().unwrap();
    let handle = layer.handle();
    let real = layer.layer(service_fn(|req: Request<MirrorRequestBody<Full<Bytes>>>| async move {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        Ok::<_, Infallible>(Response::new(Full::new(body)))
    }));
    let post = |path: &str| Request::post(path).body(Full::new(Bytes::from(vec![1u8; 1000]))).unwrap();
    for _ in 0..4 {
        let res = real.clone().oneshot(post("/boom")).await.unwrap();
        res.into_body().collect().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The dark service is fixed (or the panic was a one-off): healthy copies should flow again.
    for _ in 0..3 {
        let res = real.clone().oneshot(post("/fine")).await.unwrap();
        res.into_body().collect().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = handle.snapshot();
    let results: u64 = DarkResult::ALL.iter().map(|r| s.dark(*r)).sum();
    assert!(
        s.pending == 0 && s.pending_bytes == 0 && s.decided(Decision::Queued) == results,
        "after the copies ended: pending {} pending_bytes {}, queued {} but only {results} dark results",
        s.pending,
        s.pending_bytes,
        s.decided(Decision::Queued)
    );
    assert_eq!(
        s.dark(DarkResult::Answered),
        3,
        "healthy copies after 4 dark panics: {} answered, {} dropped as queue_full (active: {})",
        s.dark(DarkResult::Answered),
        s.decided(Decision::QueueFull),
        handle.is_active()
    );
}

/// FINDING 3 (mirroring silently off for good; counters lie). The sender task is spawned once,
/// on the runtime of the first copy, and never again. When that runtime shuts down (a warm-up
/// or test runtime, one runtime per worker thread, a restart of the serving runtime), every later
/// copy is `no_sender` forever, `pending` stays above 0 for the copies that died with it, and the
/// handle (and the admin page) still says `active: true`.
#[test]
fn rt14_the_sender_dies_with_its_runtime_and_never_comes_back() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let dark = DarkTarget::service(
        service_fn(move |_req: Request<Full<Bytes>>| {
            let seen = seen.clone();
            async move {
                seen.fetch_add(1, SeqCst);
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            }
        }),
        "catalog-v2 (in process)",
    );
    let layer = builder(dark).build().unwrap();
    let handle = layer.handle();
    let real = layer.layer(service_fn(|_req: Request<MirrorRequestBody<Full<Bytes>>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"real"))))
    }));
    let get = || Request::get("/products/1").body(Full::new(Bytes::new())).unwrap();

    let first = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    first.block_on(real.clone().oneshot(get())).unwrap();
    drop(first);

    let serving = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    serving.block_on(async {
        for _ in 0..5 {
            real.clone().oneshot(get()).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    });
    let s = handle.snapshot();
    assert!(
        calls.load(SeqCst) >= 5,
        "copies that reached the dark service on the serving runtime: {} of 5; no_sender {}, pending {} \
         (stuck), is_active() {}",
        calls.load(SeqCst),
        s.decided(Decision::NoSender),
        s.pending,
        handle.is_active()
    );
}

/// FINDING 4a (memory past the documented bound). `max_pending_bytes` ("bytes of request bodies
/// that may be queued or in flight") is the only byte bound, but in compare mode each queued copy
/// also holds the whole real answer (up to `answer_limit`, 256 KiB) in its oneshot, uncounted: with
/// a dark target that never answers, queue (1024) x 256 KiB = 256 MiB stay alive while
/// `pending_bytes` says 0.
#[tokio::test]
async fn rt14_compare_mode_keeps_real_answers_outside_the_byte_budget() {
    let live = Arc::new(AtomicUsize::new(0));
    let layer = builder(hanging_target())
        .compare(CompareSpec::default())
        .concurrency(1)
        .max_pending_bytes(1_000_000)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let handle = layer.handle();
    let answers = live.clone();
    let real = layer.layer(service_fn(move |_req: Request<MirrorRequestBody<Full<Bytes>>>| {
        let body = tracked(200_000, &answers);
        async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
    }));
    for id in 0..50 {
        let req = Request::get(format!("/products/{id}")).body(Full::new(Bytes::new())).unwrap();
        let res = real.clone().oneshot(req).await.unwrap();
        drop(res.into_body().collect().await.unwrap()); // the client has its answer; it is gone
    }
    let s = handle.snapshot();
    let held = live.load(SeqCst);
    assert!(
        held <= 1_000_000,
        "{held} bytes of real answers still alive (max_pending_bytes 1000000, pending_bytes {}, queued {})",
        s.pending_bytes,
        s.decided(Decision::Queued)
    );
}

/// FINDING 4b (memory past the documented bound). Request headers are not in the byte budget:
/// each queued copy keeps a clone of the real request's headers (with hyper, slices that pin the
/// connection's read buffer). With a hanging dark target, 30 requests carrying a 60 KB cookie are
/// all queued under a 100 KB budget.
#[tokio::test]
async fn rt14_request_headers_are_outside_the_byte_budget() {
    let layer = builder(hanging_target())
        .concurrency(1)
        .max_pending_bytes(100_000)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let handle = layer.handle();
    let real = layer.layer(service_fn(|_req: Request<MirrorRequestBody<Full<Bytes>>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"real"))))
    }));
    let cookie = format!("session={}", "c".repeat(60_000));
    for _ in 0..30 {
        let req = Request::get("/products/1")
            .header("cookie", cookie.as_str())
            .body(Full::new(Bytes::new()))
            .unwrap();
        real.clone().oneshot(req).await.unwrap();
    }
    let s = handle.snapshot();
    let kept = s.decided(Decision::Queued) as usize * cookie.len();
    assert!(
        kept <= 100_000,
        "{} copies queued holding {kept} header bytes under max_pending_bytes 100000 (pending_bytes {})",
        s.decided(Decision::Queued),
        s.pending_bytes
    );
}

/// FINDING 5 (unbounded memory with many streams). The request tee keeps every chunk of a body
/// still streaming (up to `body_limit` per request), and nothing bounds the sum: the byte budget
/// counts a copy only once it is queued. Many slow uploads or long client streams (gRPC) each pin
/// up to 256 KiB after the handler has consumed and dropped the chunks.
#[tokio::test]
async fn rt14_request_tees_pin_unfinished_bodies_outside_any_budget() {
    let live = Arc::new(AtomicUsize::new(0));
    let consumed = Arc::new(AtomicUsize::new(0));
    let layer = builder(hanging_target()).max_pending_bytes(1_000_000).build().unwrap();
    let handle = layer.handle();
    let eaten = consumed.clone();
    let real = layer.layer(service_fn(move |req: Request<MirrorRequestBody<ChannelBody>>| {
        let eaten = eaten.clone();
        async move {
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                drop(frame.unwrap()); // a streaming handler: each chunk is processed and dropped
                eaten.fetch_add(1, SeqCst);
            }
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        }
    }));
    let mut senders = Vec::new();
    for _ in 0..40 {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let req = Request::post("/upload").body(ChannelBody(rx)).unwrap();
        tokio::spawn(real.clone().oneshot(req));
        for _ in 0..5 {
            tx.send(tracked(40_000, &live)).await.unwrap();
        }
        senders.push(tx); // the uploads go on (slowly)
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while consumed.load(SeqCst) < 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(consumed.load(SeqCst), 200);
    let held = live.load(SeqCst);
    assert!(
        held <= 1_000_000,
        "{held} bytes the handlers already dropped are kept by the mirror (max_pending_bytes 1000000, \
         pending_bytes {})",
        handle.snapshot().pending_bytes
    );
    drop(senders);
}

/// FINDING 5b (same cause, response side). In compare mode the response tee keeps collecting a
/// streaming answer (SSE, server streams) after the comparison has given up on it
/// (`real_incomplete`): it never checks that the receiver is gone, so each such stream pins up to
/// `answer_limit` for its whole life.
#[tokio::test]
async fn rt14_response_tee_keeps_collecting_after_the_comparison_gave_up() {
    let live = Arc::new(AtomicUsize::new(0));
    let dark = DarkTarget::service(
        service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"dark"))))
        }),
        "catalog-v2 (in process)",
    );
    let layer =
        builder(dark).compare(CompareSpec::default()).timeout(Duration::from_millis(100)).build().unwrap();
    let handle = layer.handle();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let rx = Arc::new(std::sync::Mutex::new(Some(rx)));
    let real = layer.layer(service_fn(move |_req: Request<MirrorRequestBody<Full<Bytes>>>| {
        let rx = rx.lock().unwrap().take().unwrap();
        async move { Ok::<_, Infallible>(Response::new(ChannelBody(rx))) }
    }));
    let res = real.oneshot(Request::get("/events").body(Full::new(Bytes::new())).unwrap()).await.unwrap();
    let mut body = res.into_body();
    let deadline = Instant::now() + Duration::from_secs(5);
    while handle.snapshot().compared(CompareResult::RealIncomplete) == 0 {
        assert!(Instant::now() < deadline, "the comparison never gave up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The stream goes on; the client reads and drops each event.
    for _ in 0..20 {
        tx.send(tracked(10_000, &live)).await.unwrap();
        drop(body.frame().await.unwrap().unwrap());
    }
    let held = live.load(SeqCst);
    assert_eq!(held, 0, "{held} bytes of a stream nobody will compare are kept by the response tee");
}

/// FINDING 6 (compare lies). Trailers are not compared and not even read: a gRPC call whose dark
/// answer ends with `grpc-status: 13` (INTERNAL) while the real one ends with `grpc-status: 0`
/// counts as a `match`, even with `grpc-status` among the compared headers.
#[tokio::test]
async fn rt14_compare_counts_a_dark_grpc_failure_in_trailers_as_a_match() {
    let dark = DarkTarget::service(
        service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(grpc_answer("13")))
        }),
        "catalog-v2 (in process)",
    );
    let spec =
        CompareSpec { headers: vec![http::HeaderName::from_static("grpc-status")], ..CompareSpec::default() };
    let layer = builder(dark).compare(spec).build().unwrap();
    let handle = layer.handle();
    let real = layer.layer(service_fn(|req: Request<MirrorRequestBody<Full<Bytes>>>| async {
        req.into_body().collect().await.unwrap(); // the gRPC server reads the request message
        Ok::<_, Infallible>(Response::new(grpc_answer("0")))
    }));
    let req = Request::post("/catalog.v1.Catalog/Get")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap();
    let res = real.oneshot(req).await.unwrap();
    let collected = res.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = handle.snapshot();
        if CompareResult::ALL.iter().map(|r| s.compared(*r)).sum::<u64>() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no comparison: {s:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = handle.snapshot();
    assert_eq!(
        (s.compared(CompareResult::Match), s.compared(CompareResult::Mismatch)),
        (0, 1),
        "a dark gRPC INTERNAL error was compared as a match"
    );
}

/// FINDING 7 (counters that lie). `synth_mirror_latency_seconds{side="real"}` is documented as
/// the latency of mirrored requests, to read beside the dark one, but it also counts requests
/// whose copy was dropped (`queue_full`, `body_too_large` found while streaming,
/// `body_incomplete`, `no_sender`): with a full queue the two histograms describe different
/// populations. (In compare mode those requests' answers are also teed for nobody.)
#[tokio::test]
async fn rt14_real_latency_counts_requests_that_were_never_mirrored() {
    let layer = builder(hanging_target())
        .queue(1)
        .concurrency(1)
        .compare(CompareSpec::default())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let handle = layer.handle();
    let real = layer.layer(service_fn(|_req: Request<MirrorRequestBody<Full<Bytes>>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"real"))))
    }));
    for _ in 0..10 {
        let req = Request::get("/products/1").body(Full::new(Bytes::new())).unwrap();
        real.clone().oneshot(req).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Since the second round the two histograms count exactly the copies that answered or timed
    // out (none yet: the dark target hangs for 60 s), never the requests whose copy was dropped.
    let s = handle.snapshot();
    assert_eq!(
        s.real_latency.count(),
        s.dark_latency.count(),
        "real latency observations vs dark ones (queued {}, queue_full {})",
        s.decided(Decision::Queued),
        s.decided(Decision::QueueFull)
    );
    assert!(s.decided(Decision::QueueFull) > 0);
}
