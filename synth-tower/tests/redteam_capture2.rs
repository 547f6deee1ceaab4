//! Second red team of the capture layer (issue 13). Each test reproduced a finding on the code it
//! was written against (all failed there); they now guard the fixes.
#![cfg(all(feature = "capture", feature = "axum"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering::SeqCst},
    time::Duration,
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
    capture::{
        CaptureBuilder, CaptureLayer, CaptureRecord, CaptureSink, CaptureSinkError, JsonLinesSink, Scrub,
    },
    compare::JsonPath,
};

fn app() -> Router {
    Router::new()
        .route("/products/{id}", get(|| async { "product" }))
        .route("/login", post(|body: Bytes| async move { format!("{} bytes", body.len()) }))
        .route("/orders", post(|body: Bytes| async move { format!("{} bytes", body.len()) }))
}

fn builder(dir: &PathBuf, prefix: &str) -> CaptureBuilder {
    CaptureLayer::builder(JsonLinesSink::new(dir, prefix).unwrap())
        .share(1.0)
        .per_second(None)
        .methods([http::Method::GET, http::Method::POST])
}

/// FINDING A (personal data stored). A query parameter the capture is told to scrub (`email`)
/// is replaced in `uri`, but the same URL, query and all, travels in headers the default policy
/// keeps: `referer` (every browser sends it, same-origin with the full query), and the original
/// URL headers proxies add (`x-forwarded-uri` Traefik, `x-original-uri` nginx ingress,
/// `x-envoy-original-path` Envoy). The value the operator asked to scrub is in the file.
#[tokio::test]
async fn rt13b_scrubbed_query_value_stored_in_url_headers() {
    let d = fresh_dir("rt13b-urlheaders");
    let scrub = Scrub { query: vec!["email".into()], ..Scrub::default() };
    let layer = builder(&d, "t").scrub(scrub).build().unwrap();
    let handle = layer.handle();
    let addr = serve(app().layer(layer)).await;
    let url = "/products/7?email=ann%40example.com";
    send_status(
        addr,
        "GET",
        url,
        &[
            ("referer", "https://shop.example/account?email=ann%40example.com"),
            ("x-forwarded-uri", url),
            ("x-original-uri", url),
            ("x-envoy-original-path", url),
        ],
        Body::empty(),
    )
    .await;
    eventually("one record", || handle.snapshot().written == 1).await;
    let stored = dir_text(&d);
    assert!(stored.contains("__synth_scrubbed__"), "the uri was scrubbed: {stored}");
    assert!(!stored.contains("ann%40example.com"), "a scrubbed query value was stored in a header: {stored}");
}

/// FINDING B (personal data stored). Form bodies are scrubbed by the `query` names only when
/// they are `application/x-www-form-urlencoded`. An HTML form with `enctype="multipart/form-data"`
/// (any form with a file input, many frameworks' default) sends the same fields as
/// `multipart/form-data`: stored verbatim, password included, with nothing in `scrubbed`.
#[tokio::test]
async fn rt13b_multipart_form_fields_are_not_scrubbed() {
    let d = fresh_dir("rt13b-multipart");
    let scrub = Scrub { query: vec!["password".into(), "email".into()], ..Scrub::default() };
    let layer = builder(&d, "t").scrub(scrub).build().unwrap();
    let handle = layer.handle();
    let addr = serve(app().layer(layer)).await;
    let body = "--XyZ\r\nContent-Disposition: form-data; name=\"email\"\r\n\r\nann@example.com\r\n\
                --XyZ\r\nContent-Disposition: form-data; name=\"password\"\r\n\r\nhunter2-secret\r\n--XyZ--\r\n";
    let status = send_status(
        addr,
        "POST",
        "/login",
        &[("content-type", "multipart/form-data; boundary=XyZ")],
        Body::from(body),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    eventually("one record", || handle.snapshot().written == 1).await;
    let stored = dir_text(&d);
    for secret in ["hunter2-secret", "ann@example.com"] {
        assert!(
            !stored.contains(secret),
            "{secret} (a form field named in Scrub.query) was stored: {stored}"
        );
    }
}

/// FINDING C (records counted written but lost; retention crosses captures). Retention lists
/// `<prefix>-*.jsonl`, so a sink with prefix `catalog` also counts (and sorts before) the files of
/// a sink with prefix `catalog-v2` in the same directory. With `catalog-v2` holding `keep` files,
/// every file `catalog` opens is deleted at once, while it is still being written: `written`
/// goes up, the records are on no disk, and `files()` hands a reader the other capture's files.
#[tokio::test]
async fn rt13b_retention_deletes_the_file_just_opened_when_prefixes_share_a_start() {
    let d = fresh_dir("rt13b-prefix");
    let v2 = CaptureLayer::builder(JsonLinesSink::new(&d, "catalog-v2").unwrap().max_bytes(1))
        .share(1.0)
        .per_second(None)
        .build()
        .unwrap();
    let v2_handle = v2.handle();
    let v2_addr = serve(app().layer(v2)).await;
    for i in 0..2 {
        send_status(v2_addr, "GET", &format!("/products/{i}"), &[], Body::empty()).await;
        eventually("v2 record", || v2_handle.snapshot().written == i + 1).await;
        tokio::time::sleep(Duration::from_millis(5)).await; // a new file name each time
    }
    let catalog = CaptureLayer::builder(JsonLinesSink::new(&d, "catalog").unwrap().keep_files(2))
        .share(1.0)
        .per_second(None)
        .build()
        .unwrap();
    let handle = catalog.handle();
    let addr = serve(app().layer(catalog)).await;
    for i in 0..3 {
        send_status(addr, "GET", &format!("/products/{i}"), &[], Body::empty()).await;
    }
    eventually("three records", || handle.snapshot().written == 3).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let own: usize = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_str().unwrap();
            n.starts_with("catalog-") && !n.starts_with("catalog-v2-")
        })
        .map(|p| std::fs::read_to_string(p).unwrap().lines().count())
        .sum();
    assert_eq!(
        own,
        3,
        "`written` says 3 but the catalog's files hold {own} lines: {:?}",
        std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name()).collect::<Vec<_>>()
    );
}

/// A sink whose `flush` panics once (an fsync wrapper's `unwrap`, a client's bug).
struct FlushPanicsOnce(AtomicBool);

impl CaptureSink for FlushPanicsOnce {
    fn write(&self, _: &CaptureRecord) -> Result<(), CaptureSinkError> {
        Ok(())
    }
    fn flush(&self) -> Result<(), CaptureSinkError> {
        if !self.0.swap(true, SeqCst) {
            panic!("rt13b: flush bug");
        }
        Ok(())
    }
}

/// FINDING D (capture stops for good). Round one's fix catches a panic in `write` only; a panic
/// in `flush` (called whenever the queue runs empty) still kills the writer thread, and every
/// later record is `no_writer` for the life of the process.
#[tokio::test]
async fn rt13b_one_flush_panic_stops_the_capture_for_good() {
    let layer = CaptureLayer::builder(FlushPanicsOnce(AtomicBool::new(false)))
        .share(1.0)
        .per_second(None)
        .build()
        .unwrap();
    let handle = layer.handle();
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
    assert_eq!(s.written, 11, "the capture did not go on after one flush panic: {s:?}");
}

/// FINDING E (replay sends a different body). With any JSON path configured every JSON body is
/// re-serialised (round one's fix), and serde_json's `Value` does not keep numbers or key order:
/// an id over u64 becomes a rounded float, `1.10` becomes `1.1`, `1e2` becomes `100.0`, keys are
/// sorted. Fields the scrub never touched reach replay changed (a different order id).
#[tokio::test]
async fn rt13b_json_scrub_changes_untouched_numbers() {
    let d = fresh_dir("rt13b-numbers");
    let scrub = Scrub { json: vec![JsonPath::parse("$.card").unwrap()], ..Scrub::default() };
    let layer = builder(&d, "t").scrub(scrub).build().unwrap();
    let handle = layer.handle();
    let addr = serve(app().layer(layer)).await;
    let body = r#"{"order":123456789012345678901234567890,"price":1.10,"qty":1e2,"card":"4111"}"#;
    send_status(addr, "POST", "/orders", &[("content-type", "application/json")], Body::from(body)).await;
    eventually("one record", || handle.snapshot().written == 1).await;
    let line: Value = serde_json::from_str(dir_text(&d).lines().next().unwrap()).unwrap();
    let stored = line["body"].as_str().unwrap();
    assert!(!stored.contains("4111"));
    for untouched in ["123456789012345678901234567890", "1.10", "1e2"] {
        assert!(stored.contains(untouched), "{untouched} was changed by the scrub: {stored}");
    }
}

/// A sink that takes 20 ms per record (a remote store) and counts what it took.
struct Slow(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl CaptureSink for Slow {
    fn write(&self, _: &CaptureRecord) -> Result<(), CaptureSinkError> {
        std::thread::sleep(Duration::from_millis(20));
        self.0.fetch_add(1, SeqCst);
        Ok(())
    }
}

/// FINDING F (records lost at shutdown). The module docs say the writer "ends (after a flush)
/// when the capture is dropped"; but the writer gives up as soon as the capture is gone, and
/// every record still in the queue (counted `queued`) is silently thrown away: a graceful
/// shutdown loses up to `queue` records.
#[tokio::test]
async fn rt13b_records_queued_at_shutdown_are_lost() {
    use tower::ServiceExt as _;
    let taken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let layer = CaptureLayer::builder(Slow(taken.clone())).share(1.0).per_second(None).build().unwrap();
    let handle = layer.handle();
    let svc = app().layer(layer);
    for i in 0..20 {
        let req = http::Request::get(format!("/products/{i}")).body(Body::empty()).unwrap();
        assert_eq!(svc.clone().oneshot(req).await.unwrap().status(), StatusCode::OK);
    }
    let queued = handle.snapshot().decided(synth_tower::capture::Decision::Queued);
    assert_eq!(queued, 20);
    drop(svc);
    drop(handle);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(taken.load(SeqCst), 20, "records queued before shutdown never reached the sink");
}

/// FINDING G (counters/format: a real GET marked as omitted, skipped by replay). A GET whose
/// (empty) body comes chunked (`transfer-encoding: chunked`, `0\r\n\r\n`) is not at its end when
/// the capture looks; the handler never reads a GET body, so the record says `body_omitted: true`
/// and `body_omitted_total` counts it, though nothing was over the limit and nothing was left
/// out. Replay then skips a plain GET.
#[tokio::test]
async fn rt13b_empty_chunked_get_is_recorded_as_body_omitted() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let d = fresh_dir("rt13b-chunkedget");
    let layer = builder(&d, "t").build().unwrap();
    let handle = layer.handle();
    let addr = serve(app().layer(layer)).await;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        b"GET /products/1 HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    eventually("one record", || handle.snapshot().written == 1).await;
    let line: Value = serde_json::from_str(dir_text(&d).lines().next().unwrap()).unwrap();
    assert_eq!(line["body_len"], 0, "{line}");
    assert_ne!(line["body_omitted"], true, "an empty body was recorded as omitted: {line}");
    assert_eq!(handle.snapshot().body_omitted, 0);
}

/// FINDING H (credentials and personal data stored by default). The default drop list is four
/// names. Identity headers that load balancers and meshes add to EVERY request of an
/// authenticated service are kept: AWS ALB's `x-amzn-oidc-accesstoken` (a live bearer token) and
/// `x-amzn-oidc-data` (signed claims: name, email), Google IAP's `x-goog-iap-jwt-assertion`,
/// Cloudflare Access's `cf-access-jwt-assertion`, Envoy's `x-forwarded-client-cert`, and common
/// token headers (`x-auth-token`, `x-access-token`). A capture "with the defaults" stores tokens.
#[tokio::test]
async fn rt13b_default_scrub_keeps_infrastructure_credentials() {
    let d = fresh_dir("rt13b-infracreds");
    let layer = builder(&d, "t").build().unwrap();
    let handle = layer.handle();
    let addr = serve(app().layer(layer)).await;
    let jwt = "eyJhbGciOiJFUzI1NiJ9.eyJlbWFpbCI6ImFubkBleGFtcGxlLmNvbSJ9.c2lnbmF0dXJl";
    let bearer = format!("Bearer {jwt}");
    let headers = [
        ("x-amzn-oidc-accesstoken", jwt),
        ("x-amzn-oidc-data", jwt),
        ("x-goog-iap-jwt-assertion", jwt),
        ("cf-access-jwt-assertion", jwt),
        ("x-auth-token", bearer.as_str()),
        ("x-access-token", jwt),
    ];
    for h in headers {
        send_status(addr, "GET", "/products/1", &[h], Body::empty()).await;
    }
    eventually("six records", || handle.snapshot().written == 6).await;
    let stored = dir_text(&d);
    // (The names may appear in `scrubbed.headers`; their values and header pairs may not.)
    assert!(!stored.contains(jwt), "a credential's value was stored: {stored}");
    let kept: Vec<String> = stored
        .lines()
        .flat_map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["headers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h[0].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        })
        .filter(|n| headers.iter().any(|(h, _)| h == n))
        .collect();
    assert!(kept.is_empty(), "credential headers stored by the default scrub: {kept:?}");
}

/// FINDING I (replay loop across a hop). `MarkerRemoved` (round one's fix) lives in one
/// process's extensions. A gateway with `VerifySyntheticLayer` + `TreatAsReal` strips a marker it
/// cannot verify (replay signed with a key only the backends have, an expired run) and proxies
/// the request on: the backend behind it, with the capture, sees a plain real request and
/// records the replay. The documented guarantee ("never recorded: it came marked") holds only
/// when verify and capture share a process.
#[tokio::test]
async fn rt13b_treat_as_real_at_a_gateway_lets_the_backend_record_a_replay() {
    use synth_tower::{InvalidMarkerPolicy, VerifySyntheticLayer};
    let d = fresh_dir("rt13b-gateway");
    let layer = builder(&d, "t").build().unwrap();
    let handle = layer.handle();
    let backend = serve(app().layer(layer)).await;
    let proxy = move |req: http::Request<Body>| async move {
        let mut out = http::Request::get(format!("http://{backend}{}", req.uri().path()));
        for (k, v) in req.headers() {
            if k != http::header::HOST {
                out = out.header(k, v);
            }
        }
        let client = client();
        use tower::ServiceExt as _;
        let res = client.oneshot(out.body(http_body_util::Full::new(Bytes::new())).unwrap()).await.unwrap();
        res.status()
    };
    let verify =
        VerifySyntheticLayer::new(verifier()).with_invalid_marker_policy(InvalidMarkerPolicy::TreatAsReal);
    let gateway = serve(Router::new().route("/products/{id}", get(proxy)).layer(verify)).await;
    let bad = "v1.replay.forged.9999999999.k1.AAAA";
    assert_eq!(
        send_status(gateway, "GET", "/products/1", &[("synthetic-traffic", bad)], Body::empty()).await,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = handle.snapshot();
    assert_eq!(s.written, 0, "a replayed (marked) request was recorded behind the gateway: {}", dir_text(&d));
}
