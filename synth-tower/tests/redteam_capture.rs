//! Red team of the capture layer (issue 13). Every test here failed on the code it was written
//! against (each reproduced a finding); they now guard the fixes.
#![cfg(all(feature = "capture", feature = "axum"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    path::PathBuf,
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
    InvalidMarkerPolicy, VerifySyntheticLayer,
    capture::{
        CaptureBuilder, CaptureHandle, CaptureLayer, CaptureRecord, CaptureSink, CaptureSinkError, Decision,
        JsonLinesSink, Scrub,
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
    // Since the fixes, only GET, HEAD and OPTIONS are recorded by default; these tests post.
    CaptureLayer::builder(JsonLinesSink::new(dir, "test").unwrap())
        .share(1.0)
        .per_second(None)
        .methods([http::Method::GET, http::Method::POST])
}

/// FINDING 1 (personal data stored). A JSON body with a duplicate key: serde_json keeps the last
/// `customer` (an empty object), so `$.customer.email` matches nothing, nothing is "hit", and the
/// ORIGINAL bytes are stored, with the first `customer`'s email in them.
#[tokio::test]
async fn rt13_json_duplicate_keys_store_a_scrubbed_field() {
    let d = fresh_dir("rt13-dupkeys");
    let scrub = Scrub {
        json: vec![JsonPath::parse("$.card").unwrap(), JsonPath::parse("$.customer.email").unwrap()],
        ..Scrub::default()
    };
    let layer = builder(&d).scrub(scrub).build().unwrap();
    let handle = layer.handle();
    let addr = serve(app().layer(layer)).await;
    for body in [
        r#"{"customer":{"email":"ann@example.com"},"customer":{}}"#,
        r#"{"card":{"number":"4111111111111111"},"card":null}"#,
    ] {
        send_status(addr, "POST", "/orders", &[("content-type", "application/json")], Body::from(body)).await;
    }
    eventually("two records", || handle.snapshot().written == 2).await;
    let stored = dir_text(&d);
    for secret in ["ann@example.com", "4111111111111111"] {
        assert!(!stored.contains(secret), "{secret} was stored despite the JSON scrub: {stored}");
    }
}

/// FINDING 2 (replay loop). The verify layer in front with `InvalidMarkerPolicy::TreatAsReal`
/// strips a marker it cannot verify (expired, rotated key, forged) and passes the request on as
/// real: the capture behind it sees no marker and records the replayed request.
#[tokio::test]
async fn rt13_treat_as_real_in_front_lets_a_replay_be_recorded() {
    let d = fresh_dir("rt13-treatasreal");
    let layer = builder(&d).build().unwrap();
    let handle = layer.handle();
    let verify =
        VerifySyntheticLayer::new(verifier()).with_invalid_marker_policy(InvalidMarkerPolicy::TreatAsReal);
    let addr = serve(app().layer(layer).layer(verify)).await;
    // A replay whose marker does not verify here (forged, expired, or signed with a key this
    // service no longer has), in both forms.
    let bad = "v1.replay.forged.9999999999.k1.AAAA";
    let baggage = format!("synthetic={bad}");
    for headers in [vec![("synthetic-traffic", bad)], vec![("baggage", baggage.as_str())]] {
        assert_eq!(send_status(addr, "GET", "/products/1", &headers, Body::empty()).await, StatusCode::OK);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = handle.snapshot();
    assert_eq!(s.written, 0, "a request that carried a marker (not valid) was recorded: {}", dir_text(&d));
    assert_eq!(s.decided(Decision::Synthetic), 2, "{s:?}");
}

/// FINDING 3 (format/counters). A body the handler does not read: the record says
/// `body_omitted` but `body_len` is what was read (0), though the length was known
/// (`content-length: 50`); the format says `body_len` is the original's length "also when omitted,
/// when known".
#[tokio::test]
async fn rt13_unread_body_len_is_the_known_original_length() {
    let d = fresh_dir("rt13-unreadlen");
    let layer = builder(&d).build().unwrap();
    let handle = layer.handle();
    let addr = serve(app().layer(layer)).await;
    send_status(addr, "POST", "/ignore", &[], Body::from(vec![b'b'; 50])).await;
    eventually("one record", || handle.snapshot().written == 1).await;
    let line: Value = serde_json::from_str(dir_text(&d).lines().next().unwrap()).unwrap();
    assert_eq!(line["body_omitted"], true);
    assert_eq!(line["body_len"], 50, "{line}");
}

/// A sink that panics on its first record (a Kafka client's `unwrap`, a bug).
struct PanicsOnce(std::sync::atomic::AtomicBool);

impl CaptureSink for PanicsOnce {
    fn write(&self, _: &CaptureRecord) -> Result<(), CaptureSinkError> {
        if !self.0.swap(true, std::sync::atomic::Ordering::SeqCst) {
            panic!("rt13: sink bug");
        }
        Ok(())
    }
}

/// FINDING 4 (capture stops for good, counters). One panic in a custom sink kills the writer
/// thread: every later record is `no_writer` for the life of the process, and the record being
/// written is counted nowhere (queued, but neither written nor a sink error). The sink docs say
/// "An error is counted and the record dropped; the capture goes on."
#[tokio::test]
async fn rt13_one_sink_panic_stops_the_capture_for_good() {
    let layer =
        CaptureLayer::builder(PanicsOnce(Default::default())).share(1.0).per_second(None).build().unwrap();
    let handle: CaptureHandle = layer.handle();
    let addr = serve(app().layer(layer)).await;
    send_status(addr, "GET", "/products/1", &[], Body::empty()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..10 {
        assert_eq!(
            send_status(addr, "GET", &format!("/products/{i}"), &[], Body::empty()).await,
            StatusCode::OK
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = handle.snapshot();
    assert_eq!(s.decided(Decision::Queued), s.written + s.sink_errors, "a queued record vanished: {s:?}");
    assert_eq!(s.written, 10, "the capture did not go on after one sink panic: {s:?}");
}

/// The child of `rt13_disk_full_...`: runs under a file size limit (`prlimit --fsize`, SIGXFSZ
/// ignored, so a write past it fails with EFBIG like a full disk fails with ENOSPC) and reports
/// the capture's counters. Does nothing when run on its own.
#[tokio::test]
async fn rt13_disk_full_child() {
    let Ok(d) = std::env::var("RT13_DISK_FULL_DIR") else { return };
    let d = PathBuf::from(d);
    let layer = builder(&d).build().unwrap();
    let handle = layer.handle();
    let addr = serve(app().layer(layer)).await;
    let pad = "x".repeat(200);
    for i in 0..40 {
        let status = send_status(addr, "GET", &format!("/products/{i}?pad={pad}"), &[], Body::empty()).await;
        assert_eq!(status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = handle.snapshot();
    println!(
        "RT13 queued={} written={} sink_errors={}",
        s.decided(Decision::Queued),
        s.written,
        s.sink_errors
    );
}

/// FINDING 5 (counters lie, file corrupted). The disk fills (here: a per-file size limit, the
/// same short write then error): `written` counts records that only reached the `BufWriter`,
/// never the file, and the file ends in half a line (which `loadgen replay` must then refuse or
/// skip). Should the disk still be full at rotation or shutdown, the buffered rest is dropped
/// with the `BufWriter` and the half line stays for good.
#[test]
fn rt13_disk_full_written_counts_lines_that_never_reach_the_file() {
    let d = fresh_dir("rt13-diskfull");
    std::fs::create_dir_all(&d).unwrap();
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("trap '' XFSZ; exec prlimit --fsize=4096 -- \"$0\" --exact rt13_disk_full_child --nocapture --test-threads=1")
        .arg(&exe)
        .env("RT13_DISK_FULL_DIR", &d)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report = stdout
        .lines()
        .find_map(|l| l.find("RT13 ").map(|at| &l[at..]))
        .unwrap_or_else(|| panic!("no child report: {stdout}"));
    let written: usize =
        report.split_whitespace().find_map(|kv| kv.strip_prefix("written=")).unwrap().parse().unwrap();
    let text = dir_text(&d);
    let whole = text.lines().filter(|l| serde_json::from_str::<Value>(l).is_ok()).count();
    let broken: Vec<&str> = text.lines().filter(|l| serde_json::from_str::<Value>(l).is_err()).collect();
    assert!(
        broken.is_empty() && written == whole,
        "{report}: `written` says {written}, the files hold {whole} whole records and these half lines: {broken:?}"
    );
}

/// A sink that keeps nothing.
struct Null;

impl CaptureSink for Null {
    fn write(&self, _: &CaptureRecord) -> Result<(), CaptureSinkError> {
        Ok(())
    }
}

/// FINDING 6 (ceiling exceeded). The per-second window is reset by any thread whose clock
/// reading differs from the window's second, also an OLDER one: a thread that read the clock
/// just before a second boundary and is scheduled after another thread opened the new window
/// puts the window back to the old second (admitted), and the next thread opens the new second
/// again (admitted): more than `per_second` in one second, under exactly the concurrency the
/// ceiling is for.
#[test]
fn rt13_per_second_ceiling_holds_across_second_boundaries_with_many_threads() {
    use tower::{Layer as _, Service as _};
    let layer = CaptureLayer::builder(Null).share(1.0).per_second(1).queue(1 << 20).build().unwrap();
    let handle = layer.handle();
    let svc = layer.layer(tower::service_fn(|_req: http::Request<_>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(()))
    }));
    let started = std::time::SystemTime::now();
    let run_for = Duration::from_millis(6500);
    std::thread::scope(|s| {
        for _ in 0..32 {
            let mut svc = svc.clone();
            s.spawn(move || {
                let until = Instant::now() + run_for;
                while Instant::now() < until {
                    let req = http::Request::get("/products/1")
                        .body(http_body_util::Empty::<Bytes>::new())
                        .unwrap();
                    drop(svc.call(req));
                }
            });
        }
    });
    let first = started.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let last = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let seconds = last - first + 1;
    let s = handle.snapshot();
    println!("RT13 seconds={seconds} queued={}", s.decided(Decision::Queued));
    assert!(
        s.decided(Decision::Queued) <= seconds,
        "per_second(1) over {seconds} distinct seconds admitted {}: {s:?}",
        s.decided(Decision::Queued)
    );
}

/// FINDING 7 (personal data stored under the defaults; a design gap rather than a slip). With
/// the default settings (every method, `Scrub::default()`), a form login's body is stored as it
/// came, password included; a `Scrub { query: ["password"] }` does not reach the form body either,
/// though it is the same `name=value&…` encoding. Only a JSON path makes the capture look at a
/// body (and then omits any body that is not JSON).
#[tokio::test]
async fn rt13_a_form_login_password_is_stored_under_the_defaults() {
    let d = fresh_dir("rt13-formlogin");
    let scrub = Scrub { query: vec!["password".into()], ..Scrub::default() };
    let layer = CaptureLayer::builder(JsonLinesSink::new(&d, "test").unwrap())
        .share(1.0)
        .scrub(scrub)
        .build()
        .unwrap();
    let handle = layer.handle();
    let addr = serve(app().layer(layer)).await;
    send_status(
        addr,
        "POST",
        "/orders",
        &[("content-type", "application/x-www-form-urlencoded")],
        Body::from("user=ann%40example.com&password=hunter2-s3cret"),
    )
    .await;
    // Under the defaults since the fix: POSTs are not recorded at all.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(handle.snapshot().decided(synth_tower::capture::Decision::Filtered), 1);
    assert!(!dir_text(&d).contains("hunter2-s3cret"));
    // Widened to POST with the field named: the form's value is scrubbed.
    let d = fresh_dir("rt13-formlogin-widened");
    let layer =
        builder(&d).scrub(Scrub { query: vec!["password".into()], ..Scrub::default() }).build().unwrap();
    let handle = layer.handle();
    let addr = serve(app().layer(layer)).await;
    send_status(
        addr,
        "POST",
        "/orders",
        &[("content-type", "application/x-www-form-urlencoded")],
        Body::from("user=ann%40example.com&password=hunter2-s3cret"),
    )
    .await;
    eventually("one record", || handle.snapshot().written == 1).await;
    let stored = dir_text(&d);
    assert!(!stored.contains("hunter2-s3cret"), "a form login's password was stored: {stored}");
}
