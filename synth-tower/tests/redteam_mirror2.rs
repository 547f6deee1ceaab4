//! Second red team of `synth_tower::mirror` (issue 14), after the first round's fixes. Every
//! finding test here failed against the code it was written for; they now guard the fixes.
//! Memory is measured as the process's resident set, so the tests of this file run one at a
//! time (`SERIAL`), whatever `--test-threads` says.
#![cfg(all(feature = "mirror", feature = "axum"))]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod support;

/// One test of this file at a time: the memory tests read the whole process's resident set.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use support::*;
use synth_ctx::{RunId, Signer};
use synth_tower::mirror::{DarkResult, DarkTarget, Decision, MirrorBuilder, MirrorLayer, MirrorRequestBody};
use tower::{Layer, ServiceExt, service_fn};

/// The process's resident memory (the lints forbid a counting allocator's `unsafe`).
fn live() -> isize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: isize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn builder(target: DarkTarget) -> MirrorBuilder {
    MirrorLayer::builder(target, Signer::new(keys()), RunId::new("dark-rt2").unwrap()).share(1.0)
}

static BIG: [u8; 4 << 20] = [7; 4 << 20];

/// A body: the given frames, then (if `hang`) pending for ever.
struct Scripted {
    frames: std::vec::IntoIter<Bytes>,
    /// Then this many data frames of `filler` (generated, not stored).
    empties: usize,
    filler: &'static [u8],
    hang: bool,
}

impl Body for Scripted {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(b) = self.frames.next() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        if self.empties > 0 {
            self.empties -= 1;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(self.filler)))));
        }
        match None::<Bytes> {
            Some(_) => unreachable!(),
            None if self.hang => Poll::Pending,
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        !self.hang && self.frames.len() == 0 && self.empties == 0
    }
}

fn hanging_target() -> DarkTarget {
    DarkTarget::service(
        service_fn(|_req: Request<Full<Bytes>>| {
            std::future::pending::<Result<Response<Full<Bytes>>, Infallible>>()
        }),
        "hangs",
    )
}

/// FINDING A (memory past the documented bound). The dark answer is read into a buffer of up to
/// `answer_limit` per copy, even when nothing is compared, and those bytes are outside
/// `max_pending_bytes`: concurrency x answer_limit (64 x 256 KiB = 16 MiB by default; here
/// 8 x 4 MiB) stay alive while `pending_bytes` reports a few hundred bytes under a 100 KB budget.
#[tokio::test]
async fn rt14b_dark_answers_are_buffered_outside_the_byte_budget_even_without_compare() {
    let _serial = SERIAL.lock().await;
    // A dark service that sends 4 MiB (static: it allocates nothing itself), then stalls.
    let dark = DarkTarget::service(
        service_fn(|_req: Request<Full<Bytes>>| async {
            let body = Scripted {
                frames: vec![Bytes::from_static(&BIG)].into_iter(),
                empties: 0,
                filler: b"",
                hang: true,
            };
            Ok::<_, Infallible>(Response::new(body))
        }),
        "stalls after 4 MiB",
    );
    let layer = builder(dark)
        .concurrency(8)
        .answer_limit(8 << 20)
        .max_pending_bytes(100_000)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let handle = layer.handle();
    let real = layer.layer(service_fn(|_req: Request<MirrorRequestBody<Full<Bytes>>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"real"))))
    }));
    assert!(BIG.iter().all(|b| *b == 7)); // its pages are resident before we measure
    let before = live();
    for id in 0..8 {
        let req = Request::get(format!("/products/{id}")).body(Full::new(Bytes::new())).unwrap();
        real.clone().oneshot(req).await.unwrap().into_body().collect().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = live() - before;
    let s = handle.snapshot();
    assert!(
        grown < 4 << 20,
        "{grown} resident bytes held by 8 copies (max_pending_bytes 100000, pending_bytes {}, pending {})",
        s.pending_bytes,
        s.pending
    );
}

/// FINDING B (memory past the documented bound). The request tee keeps every frame as its own
/// `Bytes` in a `Vec` (32 bytes each) but counts only the frame's data against the budget and
/// `body_limit`. Empty data frames count 0: a body of 1 M empty frames (legal; an HTTP/2 client
/// can send empty DATA frames) grows a 32 MB vector while `pending_bytes` is a few hundred bytes.
/// (One-byte frames: a 256 KiB body holds 8 MiB.)
#[tokio::test]
async fn rt14b_empty_or_tiny_request_frames_hold_memory_outside_the_budget() {
    let _serial = SERIAL.lock().await;
    let layer = builder(hanging_target())
        .concurrency(1)
        .max_pending_bytes(100_000)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let handle = layer.handle();
    let real = layer.layer(service_fn(|req: Request<MirrorRequestBody<Scripted>>| async move {
        // The handler reads the body and keeps nothing of it.
        let mut body = std::pin::pin!(req.into_body());
        while let Some(f) = body.frame().await {
            drop(f);
        }
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"real"))))
    }));
    // The first copy takes the only slot (the dark target hangs); the next ones wait with their bodies.
    let first =
        Scripted { frames: vec![Bytes::from_static(b"x")].into_iter(), empties: 0, filler: b"", hang: false };
    real.clone().oneshot(Request::post("/first").body(first).unwrap()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = live();
    let empty = Scripted { frames: Vec::new().into_iter(), empties: 1_000_000, filler: b"", hang: false };
    real.clone().oneshot(Request::post("/empty-frames").body(empty).unwrap()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let grown = live() - before;
    let s = handle.snapshot();
    assert!(
        grown < 1_000_000,
        "{grown} resident bytes held by one queued copy with an empty body (max_pending_bytes 100000, \
         pending_bytes {}, queued {})",
        s.pending_bytes,
        s.decided(Decision::Queued)
    );
}

/// FINDING B, one-byte frames (what a client controls: 1-byte chunks or HTTP/2 DATA frames).
/// A 250 000-byte body, within `body_limit` (256 KiB) and `max_pending_bytes` (300 000), holds
/// about 8 MB while queued (32 bytes of `Bytes` per byte of body).
#[tokio::test]
async fn rt14b_one_byte_request_frames_hold_32_times_the_counted_bytes() {
    let _serial = SERIAL.lock().await;
    let layer = builder(hanging_target())
        .concurrency(1)
        .max_pending_bytes(300_000)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let handle = layer.handle();
    let real = layer.layer(service_fn(|req: Request<MirrorRequestBody<Scripted>>| async move {
        let mut body = std::pin::pin!(req.into_body());
        while let Some(f) = body.frame().await {
            drop(f);
        }
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"real"))))
    }));
    let first =
        Scripted { frames: vec![Bytes::from_static(b"x")].into_iter(), empties: 0, filler: b"", hang: false };
    real.clone().oneshot(Request::post("/first").body(first).unwrap()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = live();
    let tiny = Scripted { frames: Vec::new().into_iter(), empties: 250_000, filler: b"x", hang: false };
    real.clone().oneshot(Request::post("/tiny-frames").body(tiny).unwrap()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let grown = live() - before;
    let s = handle.snapshot();
    assert!(
        grown < 1_000_000,
        "{grown} resident bytes held by one queued 250000-byte body (pending_bytes {}, max 300000, queued {})",
        s.pending_bytes,
        s.decided(Decision::Queued)
    );
}

/// FINDING C (counters that lie). A copy is queued as soon as the request body ends, but the
/// real latency is recorded only when the real response future completes. A real request that
/// is cancelled (client gone, a timeout layer above) or fails has its copy sent and its dark
/// latency recorded, but no real latency: the two histograms no longer count the same requests,
/// and exactly the slowest real answers drop out, so "dark is slower" comparisons are biased.
#[tokio::test]
async fn rt14b_cancelled_real_requests_leave_dark_latency_without_real_latency() {
    let _serial = SERIAL.lock().await;
    let dark = DarkTarget::service(
        service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"dark"))))
        }),
        "answers at once",
    );
    let layer = builder(dark).build().unwrap();
    let handle = layer.handle();
    let real = layer.layer(service_fn(|_req: Request<MirrorRequestBody<Full<Bytes>>>| async {
        tokio::time::sleep(Duration::from_millis(500)).await; // slow real answers
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"real"))))
    }));
    for id in 0..5 {
        let req = Request::get(format!("/products/{id}")).body(Full::new(Bytes::new())).unwrap();
        // A timeout above the mirror gives up on the slow real answer.
        let _ = tokio::time::timeout(Duration::from_millis(20), real.clone().oneshot(req)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = handle.snapshot();
    assert_eq!(
        s.real_latency.count(),
        s.dark_latency.count(),
        "real latency counted for {} requests, dark latency for {} (answered {})",
        s.real_latency.count(),
        s.dark_latency.count(),
        s.dark(DarkResult::Answered)
    );
}

fn mirror_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.trim() == "synth-mirror")
        .count()
}

/// Probe (held): the sender thread ends when the layer and everything made from it are dropped.
#[tokio::test]
async fn rt14b_probe_sender_thread_ends_when_the_layer_is_dropped() {
    let _serial = SERIAL.lock().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let base = mirror_threads();
    for _ in 0..5 {
        let dark = DarkTarget::service(
            service_fn(|_req: Request<Full<Bytes>>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"dark"))))
            }),
            "ok",
        );
        let layer = builder(dark).build().unwrap();
        let real = layer.layer(service_fn(|_req: Request<MirrorRequestBody<Full<Bytes>>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"real"))))
        }));
        let req = Request::get("/p").body(Full::new(Bytes::new())).unwrap();
        real.clone().oneshot(req).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(mirror_threads(), base, "sender threads left after their layers were dropped");
}

/// FINDING D (a safety bound silently off; counters lie). All copies of a mirror run on one
/// current-thread runtime. An in-process dark target (`DarkTarget::service`) that blocks (sync
/// I/O, a lock, a CPU loop: the very bug dark launches exist to find) stalls that thread: the
/// `timeout` cannot fire, `concurrency` means 1, and the copy is counted `answered` after 1 s
/// under a 50 ms timeout, its latency in the dark histogram. (Real requests are not hurt: held.)
#[tokio::test]
async fn rt14b_a_blocking_in_process_dark_target_defeats_the_copy_timeout() {
    let _serial = SERIAL.lock().await;
    let dark = DarkTarget::service(
        service_fn(|_req: Request<Full<Bytes>>| async {
            std::thread::sleep(Duration::from_millis(1000)); // the dark service's bug
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"dark"))))
        }),
        "blocks",
    );
    let layer = builder(dark).timeout(Duration::from_millis(50)).build().unwrap();
    let handle = layer.handle();
    let real = layer.layer(service_fn(|_req: Request<MirrorRequestBody<Full<Bytes>>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"real"))))
    }));
    for id in 0..2 {
        let req = Request::get(format!("/p/{id}")).body(Full::new(Bytes::new())).unwrap();
        real.clone().oneshot(req).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let s = handle.snapshot();
    assert_eq!(
        (s.dark(DarkResult::Timeout), s.dark(DarkResult::Answered)),
        (2, 0),
        "(timeout, answered) under a 50 ms timeout for copies that took 1 s each; dark latency p50 <= {:?}",
        s.dark_latency.quantile_upper_bound(0.5)
    );
}

/// FINDING E (compare mode silently blind for a method). In compare mode, HEAD answers are never
/// compared: the server (hyper) does not poll a HEAD answer's body, so the response tee is dropped
/// unfinished and every HEAD copy is counted `real_incomplete`, even when real and dark agree.
/// Same for any answer whose body the server never polls (204/304 with a body).
#[tokio::test]
async fn rt14b_head_answers_are_never_compared() {
    let _serial = SERIAL.lock().await;
    use axum::{Router, routing::get};
    use synth_tower::mirror::{CompareResult, CompareSpec};
    let app = || Router::new().route("/products/1", get(|| async { "{\"id\":1}" }));
    let dark = DarkTarget::service(app(), "same app");
    let layer = builder(dark).compare(CompareSpec::default()).build().unwrap();
    let handle = layer.handle();
    let addr = serve(app().layer(layer)).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    for method in [http::Method::GET, http::Method::HEAD] {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{addr}/products/1"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let res = client.request(req).await.unwrap();
        assert_eq!(res.status(), 200);
        res.into_body().collect().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = handle.snapshot();
    let compared: Vec<_> = CompareResult::ALL.iter().map(|r| (r.as_str(), s.compared(*r))).collect();
    assert_eq!(s.compared(CompareResult::Match), 2, "GET and HEAD, same app on both sides: {compared:?}");
}

/// FINDING F (mirroring silently off; counters lie). In compare mode the response tee gives its
/// bytes back only when it sees the comparison gone *on the next data frame*. A long-lived
/// streaming answer (SSE, a gRPC server stream, a long poll) that goes idle after its first
/// chunks keeps its bytes in `pending_bytes` for as long as the stream lives, though its copy
/// finished long ago (`pending` 0). A few idle streams use up `max_pending_bytes`, and every
/// later copy is dropped as `queue_full` while the admin page says active.
#[tokio::test]
async fn rt14b_an_idle_streaming_answer_pins_the_byte_budget_after_its_copy_ended() {
    let _serial = SERIAL.lock().await;
    use synth_tower::mirror::CompareSpec;
    let dark = DarkTarget::service(
        service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"dark"))))
        }),
        "answers at once",
    );
    let layer = builder(dark)
        .compare(CompareSpec::default())
        .max_pending_bytes(120_000)
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let handle = layer.handle();
    let real = layer.layer(service_fn(|req: Request<MirrorRequestBody<Full<Bytes>>>| async move {
        let stream = req.uri().path() == "/events";
        req.into_body().collect().await.unwrap();
        let body = Scripted {
            frames: vec![Bytes::from_static(&BIG[..50_000])].into_iter(),
            empties: 0,
            filler: b"",
            hang: stream, // the event stream stays open, idle
        };
        Ok::<_, Infallible>(Response::new(body))
    }));
    // Two clients subscribe to the event stream and read its first chunk.
    let mut streams = Vec::new();
    for _ in 0..2 {
        let req = Request::get("/events").body(Full::new(Bytes::new())).unwrap();
        let mut body = real.clone().oneshot(req).await.unwrap().into_body();
        body.frame().await.unwrap().unwrap();
        streams.push(body);
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // both copies are long over
    // Ordinary requests, each with a 30 KB body, well within the budget on their own.
    for _ in 0..3 {
        let req = Request::post("/orders").body(Full::new(Bytes::from_static(&BIG[..30_000]))).unwrap();
        let res = real.clone().oneshot(req).await.unwrap();
        res.into_body().collect().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let s = handle.snapshot();
    assert_eq!(
        (s.decided(Decision::QueueFull), s.decided(Decision::Queued)),
        (0, 5),
        "ordinary copies dropped as queue_full; pending {} but pending_bytes {} held by idle streams \
         whose copies ended (active: {})",
        s.pending,
        s.pending_bytes,
        handle.is_active()
    );
    drop(streams);
}

/// FINDING C2 (counters that lie, in the direction that hides a slow dark service). The dark
/// latency histogram records only copies that were `answered`; the real one records every queued
/// copy. Copies that time out (the slowest dark answers) are in the real histogram and missing
/// from the dark one, so the dark p99 looks fast exactly when the dark service is too slow.
/// (`RealTiming`'s doc: "so that the real and the dark histograms count the same requests".)
#[tokio::test]
async fn rt14b_dark_timeouts_are_missing_from_the_dark_latency_histogram() {
    let _serial = SERIAL.lock().await;
    let dark = DarkTarget::service(
        service_fn(|req: Request<Full<Bytes>>| async move {
            if req.uri().path().ends_with("slow") {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"dark"))))
        }),
        "slow for half",
    );
    let layer = builder(dark).timeout(Duration::from_millis(100)).build().unwrap();
    let handle = layer.handle();
    let real = layer.layer(service_fn(|_req: Request<MirrorRequestBody<Full<Bytes>>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"real"))))
    }));
    for id in 0..10 {
        let path = if id % 2 == 0 { format!("/p/{id}/fast") } else { format!("/p/{id}/slow") };
        let req = Request::get(path).body(Full::new(Bytes::new())).unwrap();
        real.clone().oneshot(req).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = handle.snapshot();
    assert_eq!(
        s.real_latency.count(),
        s.dark_latency.count(),
        "real latency for {} copies, dark latency for {} (timeouts {}); dark p99 <= {:?}",
        s.real_latency.count(),
        s.dark_latency.count(),
        s.dark(DarkResult::Timeout),
        s.dark_latency.quantile_upper_bound(0.99)
    );
}

/// FINDING G (a confusing error). Copies now run on a current-thread runtime. An in-process dark
/// router whose handlers use `tokio::task::block_in_place` (usual around sync database drivers;
/// fine on the app's multi-thread runtime) panics on every copy: every copy is a dark `error`
/// ("the copy panicked"), though the same router serves real traffic fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rt14b_an_in_process_dark_router_using_block_in_place_fails_every_copy() {
    let _serial = SERIAL.lock().await;
    let dark_service = service_fn(|_req: Request<Full<Bytes>>| async {
        let answer = tokio::task::block_in_place(|| "dark"); // a sync driver call
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(answer.as_bytes()))))
    });
    // The same service works on the application's runtime.
    let res = dark_service.oneshot(Request::new(Full::new(Bytes::new()))).await.unwrap();
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "dark");
    let layer = builder(DarkTarget::service(dark_service, "in process")).build().unwrap();
    let handle = layer.handle();
    let real = layer.layer(service_fn(|_req: Request<MirrorRequestBody<Full<Bytes>>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"real"))))
    }));
    for id in 0..3 {
        let req = Request::get(format!("/p/{id}")).body(Full::new(Bytes::new())).unwrap();
        real.clone().oneshot(req).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = handle.snapshot();
    let errors: Vec<String> = handle.error_samples().into_iter().map(|e| e.error).collect();
    assert_eq!(
        s.dark(DarkResult::Answered),
        3,
        "answered {}; errors: {errors:?}",
        s.dark(DarkResult::Answered)
    );
}

/// A body of data frames and then trailers.
struct WithTrailers(std::collections::VecDeque<Frame<Bytes>>);

impl Body for WithTrailers {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
}

fn echo_with_trailers(body: Bytes) -> WithTrailers {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    WithTrailers([Frame::data(body), Frame::trailers(trailers)].into())
}

/// Probe (held for the real path): a real HTTP/2 (h2c) request with a streamed body, answered
/// with trailers, in compare mode: the client gets the same body and trailers. HTTP/1.1
/// `Expect: 100-continue` still gets its `100 Continue` through the mirror. (The comparisons of
/// these answers are FINDING H below.)
#[tokio::test]
async fn rt14b_probe_h2c_streams_trailers_and_expect_continue_pass_untouched() {
    let _serial = SERIAL.lock().await;
    use axum::{Router, routing::post};
    use synth_tower::mirror::{CompareResult, CompareSpec};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = || {
        Router::new().route(
            "/echo",
            post(|body: axum::body::Bytes| async move {
                Response::new(axum::body::Body::new(echo_with_trailers(body)))
            }),
        )
    };
    let layer = builder(DarkTarget::service(app(), "same")).compare(CompareSpec::default()).build().unwrap();
    let handle = layer.handle();
    let addr = serve(app().layer(layer)).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::StreamBody<tokio_stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>>();
    let frames: Vec<Result<Frame<Bytes>, Infallible>> =
        (0..50).map(|i| Ok(Frame::data(Bytes::from(format!("chunk{i};"))))).collect();
    let req = Request::post(format!("http://{addr}/echo"))
        .body(http_body_util::StreamBody::new(tokio_stream::iter(frames)))
        .unwrap();
    let res = client.request(req).await.unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    let collected = res.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().and_then(|t| t.get("grpc-status")).unwrap(), "0");
    let expected: String = (0..50).map(|i| format!("chunk{i};")).collect();
    assert_eq!(collected.to_bytes(), expected.as_bytes());

    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut buf)).await.unwrap().unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 100 Continue"), "{:?}", String::from_utf8_lossy(&buf[..n]));
    tcp.write_all(b"hello").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("hello"));
    drop(tcp);

    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = handle.snapshot();
    assert_eq!((s.pending, s.pending_bytes), (0, 0));
    let _ = CompareResult::Match;
}

/// FINDING H (compare mode silently blind). A real answer that ends with trailers is never
/// compared unless its body also says `is_end_stream()` after them: hyper (HTTP/1 and HTTP/2)
/// stops polling once it has the trailers frame (always the last), so the response tee never sees
/// the end, is dropped, and the copy counts `real_incomplete`. Any `StreamBody` or hand-written
/// body with trailers (gRPC-web, checksums, hand-rolled gRPC) is affected; tonic's own body
/// happens to report its end. Same app on both sides: expected `match`.
#[tokio::test]
async fn rt14b_answers_ending_in_trailers_are_never_compared() {
    let _serial = SERIAL.lock().await;
    use axum::{Router, routing::get};
    use synth_tower::mirror::{CompareResult, CompareSpec};
    let app = || {
        Router::new().route(
            "/p",
            get(|| async {
                Response::new(axum::body::Body::new(echo_with_trailers(Bytes::from_static(b"{\"id\":1}"))))
            }),
        )
    };
    let layer = builder(DarkTarget::service(app(), "same")).compare(CompareSpec::default()).build().unwrap();
    let handle = layer.handle();
    let addr = serve(app().layer(layer)).await;
    let res = fetch(&client(), addr, "/p", &[]).await;
    assert_eq!(res.body, "{\"id\":1}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = handle.snapshot();
    let compared: Vec<_> = CompareResult::ALL.iter().map(|r| (r.as_str(), s.compared(*r))).collect();
    assert_eq!(s.compared(CompareResult::Match), 1, "same app on both sides: {compared:?}");
}

/// Probe (held): after the kill switch, every queued copy is accounted for, in flight or waiting
/// (in the queue or for a slot), and `pending` and `pending_bytes` return to 0 at once.
#[tokio::test]
async fn rt14b_probe_counters_settle_after_a_stop() {
    let _serial = SERIAL.lock().await;
    use synth_tower::{KillSwitch, mirror::CompareSpec};
    let kill = KillSwitch::new();
    let layer = builder(hanging_target())
        .compare(CompareSpec::default())
        .concurrency(2)
        .queue(100)
        .timeout(Duration::from_secs(60))
        .kill_switch(kill.clone())
        .build()
        .unwrap();
    let handle = layer.handle();
    let real = layer.layer(service_fn(|req: Request<MirrorRequestBody<Full<Bytes>>>| async move {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        Ok::<_, Infallible>(Response::new(Full::new(body)))
    }));
    for id in 0..50 {
        let req = Request::post(format!("/p/{id}")).body(Full::new(Bytes::from(vec![1u8; 1000]))).unwrap();
        real.clone().oneshot(req).await.unwrap().into_body().collect().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(handle.snapshot().pending > 0);
    kill.stop();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let s = handle.snapshot();
    let results: u64 = DarkResult::ALL.iter().map(|r| s.dark(*r)).sum();
    assert_eq!((s.pending, s.pending_bytes, s.decided(Decision::Queued)), (0, 0, results));
}
