//! Dark traffic over real sockets: a real axum service behind `MirrorLayer`, a dark axum service
//! behind `VerifySyntheticLayer`, and dark targets that hang, reset, answer garbage or are not
//! there at all.
#![cfg(all(feature = "mirror", feature = "axum"))]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod support;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Path, Request},
    routing::{get, post},
};
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use support::*;
use synth_ctx::{Origin, RunId, Signer, Synthetic};
use synth_tower::{
    InvalidMarkerPolicy, KillSwitch, VerifySyntheticLayer,
    mirror::{
        CompareResult, CompareSpec, DarkResult, DarkTarget, Decision, JsonPath, MirrorBuilder, MirrorHandle,
        MirrorLayer, MirrorRequestBody,
    },
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::{Layer, ServiceExt};

const RUN: &str = "dark-test";

/// What the dark service saw of one copy.
#[derive(Clone, Debug)]
struct Seen {
    origin: Option<Origin>,
    run: Option<String>,
    method: String,
    uri: String,
    headers: HeaderMap,
    body: Bytes,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// A dark service: records every request it gets (after `VerifySyntheticLayer`), answers like
/// the real one except that product ids divisible by ten have another price and every answer
/// has another `generated_at`.
async fn dark_service() -> (SocketAddr, Log) {
    let (app, log) = dark_app();
    (serve(app).await, log)
}

fn dark_app() -> (Router, Log) {
    let log: Log = Arc::default();
    let seen = log.clone();
    let app = Router::new()
        .route("/products/{id}", get(|Path(id): Path<u64>| async move { Json(product(id, true)) }))
        .route("/orders", post(|body: Bytes| async move { body }))
        .fallback(|| async { "dark" })
        .layer(axum::middleware::from_fn(move |req: Request, next: axum::middleware::Next| {
            let seen = seen.clone();
            async move {
                let synthetic = req.extensions().get::<Synthetic>().cloned();
                let (parts, body) = req.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                seen.lock().unwrap().push(Seen {
                    origin: synthetic.as_ref().map(Synthetic::origin),
                    run: synthetic.as_ref().map(|s| s.run().to_string()),
                    method: parts.method.to_string(),
                    uri: parts.uri.to_string(),
                    headers: parts.headers.clone(),
                    body: body.clone(),
                });
                next.run(Request::from_parts(parts, Body::from(body))).await
            }
        }))
        .layer(VerifySyntheticLayer::new(verifier()).with_service_name("catalog-v2"));
    (app, log)
}

fn product(id: u64, dark: bool) -> Value {
    let price = if dark && id.is_multiple_of(10) { id * 100 + 1 } else { id * 100 };
    json!({ "id": id, "price": price, "generated_at": if dark { "dark-clock" } else { "real-clock" } })
}

/// The real service: products, orders (reads the body), and a route that ignores its body.
fn real_app() -> Router {
    Router::new()
        .route("/products/{id}", get(|Path(id): Path<u64>| async move { Json(product(id, false)) }))
        .route("/orders", post(|body: Bytes| async move { format!("{} bytes", body.len()) }))
        .route("/ignore", post(|| async { "not read" }))
}

fn builder(target: DarkTarget) -> MirrorBuilder {
    MirrorLayer::builder(target, Signer::new(keys()), RunId::new(RUN).unwrap())
        .share(1.0)
        .timeout(Duration::from_millis(500))
}

async fn real_service(layer: MirrorLayer) -> (SocketAddr, MirrorHandle) {
    let handle = layer.handle();
    (serve(real_app().layer(layer)).await, handle)
}

async fn get_ok(addr: SocketAddr, path: &str) -> String {
    let (status, body) = send(addr, "GET", path, &[], Body::empty()).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    body
}

fn settled(h: &MirrorHandle) -> bool {
    let s = h.snapshot();
    s.pending == 0 && s.decided(Decision::Queued) == DarkResult::ALL.iter().map(|r| s.dark(*r)).sum::<u64>()
}

#[tokio::test]
async fn copies_carry_a_dark_marker_the_whole_body_and_no_hop_by_hop_headers() {
    let (dark, log) = dark_service().await;
    let (real, handle) =
        real_service(builder(DarkTarget::url(&format!("http://{dark}")).unwrap()).build().unwrap()).await;

    let body = get_ok(real, "/products/7?q=shoes").await;
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), product(7, false));
    // A streamed body of 40 chunks (no content-length): the copy must have all of it.
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        (0..40u8).map(|i| Ok(Bytes::from(vec![i; 1000]))).collect();
    let (status, text) = send(
        real,
        "POST",
        "/orders",
        &[("x-request-id", "r-1"), ("connection", "keep-alive, x-hop"), ("x-hop", "only for this hop")],
        Body::from_stream(futures_stream(chunks)),
    )
    .await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "40000 bytes"));

    eventually("both copies at the dark service", || log.lock().unwrap().len() == 2).await;
    let seen = log.lock().unwrap().clone();
    let get = seen.iter().find(|s| s.method == "GET").unwrap();
    assert_eq!(get.uri, "/products/7?q=shoes");
    let post = seen.iter().find(|s| s.method == "POST").unwrap();
    let expected: Vec<u8> = (0..40u8).flat_map(|i| vec![i; 1000]).collect();
    assert_eq!(post.body.as_ref(), expected.as_slice());
    assert_eq!(post.headers["x-request-id"], "r-1");
    assert!(!post.headers.contains_key("x-hop"), "a header named by Connection is hop-by-hop");
    assert_eq!(post.headers["host"], dark.to_string().as_str());
    for s in &seen {
        assert_eq!(s.origin, Some(Origin::Dark), "{s:?}");
        assert_eq!(s.run.as_deref(), Some(RUN));
    }
    eventually("settled", || settled(&handle)).await;
    let snap = handle.snapshot();
    assert_eq!(snap.decided(Decision::Queued), 2);
    assert_eq!(snap.dark(DarkResult::Answered), 2);
    assert_eq!(snap.real_latency.count(), 2);
    assert_eq!(snap.dark_latency.count(), 2);
}

fn futures_stream(
    items: Vec<Result<Bytes, std::io::Error>>,
) -> impl tokio_stream::Stream<Item = Result<Bytes, std::io::Error>> {
    tokio_stream::iter(items)
}

#[tokio::test]
async fn an_h2c_target_gets_copies_over_http2() {
    let (dark, log) = dark_service().await;
    let (real, handle) =
        real_service(builder(DarkTarget::url(&format!("h2c://{dark}")).unwrap()).build().unwrap()).await;
    for id in 0..5 {
        get_ok(real, &format!("/products/{id}")).await;
    }
    eventually("five copies", || log.lock().unwrap().len() == 5).await;
    eventually("settled", || settled(&handle)).await;
    assert_eq!(handle.snapshot().dark(DarkResult::Answered), 5);
}

fn tls_data(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tls").join(name)
}

/// The dark app over TLS, offering h2 and http/1.1.
async fn tls_dark_service() -> (SocketAddr, Log) {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(tls_data("server.pem")).unwrap().collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_file(tls_data("server.key")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let (app, log) = dark_app();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(
                        hyper_util::rt::TokioIo::new(tls),
                        hyper_util::service::TowerToHyperService::new(app),
                    )
                    .await;
            });
        }
    });
    (addr, log)
}

#[tokio::test]
async fn an_https_target_with_its_own_ca_gets_copies_and_an_untrusted_one_none() {
    use rustls::pki_types::{CertificateDer, pem::PemObject as _};
    let (dark, log) = tls_dark_service().await;
    let ca: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(tls_data("ca.pem")).unwrap().collect::<Result<_, _>>().unwrap();
    let target = DarkTarget::url_with_roots(&format!("https://localhost:{}", dark.port()), ca).unwrap();
    let (real, handle) = real_service(builder(target).build().unwrap()).await;
    for id in 0..3 {
        get_ok(real, &format!("/products/{id}")).await;
    }
    eventually("three copies over TLS", || log.lock().unwrap().len() == 3).await;
    eventually("settled", || settled(&handle)).await;
    assert!(log.lock().unwrap().iter().all(|s| s.origin == Some(Origin::Dark)));

    // Without the CA the handshake fails: counted as dark errors, real answers untouched.
    let untrusted = DarkTarget::url(&format!("https://localhost:{}", dark.port())).unwrap();
    let (real, handle2) = real_service(builder(untrusted).build().unwrap()).await;
    get_ok(real, "/products/1").await;
    eventually("settled", || settled(&handle2)).await;
    assert_eq!(handle2.snapshot().dark(DarkResult::Error), 1);
    assert!(
        handle2.error_samples()[0].error.to_lowercase().contains("certificate"),
        "{:?}",
        handle2.error_samples()
    );
    assert_eq!(log.lock().unwrap().len(), 3);
    assert_eq!(handle.snapshot().dark(DarkResult::Answered), 3);
}

#[tokio::test]
async fn synthetic_requests_are_never_copied_unless_asked() {
    let (dark, log) = dark_service().await;
    let target = DarkTarget::url(&format!("http://{dark}")).unwrap();
    let (real, handle) = real_service(builder(target.clone()).build().unwrap()).await;
    let valid = mint("load-run");
    let baggage = format!("synthetic={valid}");
    for headers in [
        vec![("synthetic-traffic", valid.as_str())],
        vec![("synthetic-traffic", "v1.load.forged.9999999999.k1.AAAA")],
        vec![("synthetic-traffic", "")],
        vec![("baggage", baggage.as_str())],
        vec![("baggage", "synthetic=garbage")],
    ] {
        let (status, _) = send(real, "GET", "/products/1", &headers, Body::empty()).await;
        assert_eq!(status, StatusCode::OK);
    }
    // Inside the verify layer the marker is gone from nowhere: the scope says synthetic.
    let inner = builder(target.clone()).build().unwrap();
    let inner_handle = inner.handle();
    let scoped = serve(real_app().layer(inner).layer(VerifySyntheticLayer::new(verifier()))).await;
    let (status, _) =
        send(scoped, "GET", "/products/1", &[("synthetic-traffic", &valid)], Body::empty()).await;
    assert_eq!(status, StatusCode::OK);

    assert_eq!(handle.snapshot().decided(Decision::Synthetic), 5);
    assert_eq!(inner_handle.snapshot().decided(Decision::Synthetic), 1);
    assert_eq!(
        handle.snapshot().decided(Decision::Queued) + inner_handle.snapshot().decided(Decision::Queued),
        0
    );

    // Asked for: copied, and the copy carries the dark marker only.
    let (real2, handle2) = real_service(builder(target).mirror_synthetic(true).build().unwrap()).await;
    send(real2, "GET", "/products/1", &[("synthetic-traffic", &valid), ("baggage", &baggage)], Body::empty())
        .await;
    eventually("the copy", || log.lock().unwrap().len() == 1).await;
    let seen = log.lock().unwrap()[0].clone();
    assert_eq!((seen.origin, seen.run.as_deref()), (Some(Origin::Dark), Some(RUN)));
    assert_ne!(seen.headers["synthetic-traffic"], valid.as_str());
    assert_eq!(handle2.snapshot().decided(Decision::Queued), 1);
}

#[tokio::test]
async fn the_share_is_respected_and_every_queued_copy_arrives() {
    let (dark, log) = dark_service().await;
    let layer = builder(DarkTarget::url(&format!("http://{dark}")).unwrap()).share(0.2).build().unwrap();
    let (real, handle) = real_service(layer).await;
    let n = 4000;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..16 {
        tasks.spawn(async move {
            for i in (w..n).step_by(16) {
                get_ok(real, &format!("/products/{i}")).await;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    eventually("settled", || settled(&handle)).await;
    let s = handle.snapshot();
    let queued = s.decided(Decision::Queued);
    assert_eq!(queued + s.decided(Decision::NotSampled), n as u64);
    let share = queued as f64 / n as f64;
    // 4 standard deviations of a binomial(4000, 0.2): a false failure about once in 15,000 runs.
    assert!((0.175..=0.225).contains(&share), "share {share}");
    assert_eq!(log.lock().unwrap().len() as u64, queued);
    assert_eq!(s.dark(DarkResult::Answered), queued);
}

/// Dark targets that misbehave in every way a socket can.
#[derive(Clone, Copy, Debug)]
enum Bad {
    NotListening,
    Hangs,
    Resets,
    Garbage,
    Errors,
}

async fn bad_target(kind: Bad) -> SocketAddr {
    if let Bad::NotListening = kind {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        return l.local_addr().unwrap(); // dropped: nothing listens there
    }
    if let Bad::Errors = kind {
        return serve(Router::new().fallback(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") })).await;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            match kind {
                Bad::Hangs => held.push(conn),
                Bad::Resets => {
                    // Linger 0 sends a reset on close, at once (it cannot block the thread).
                    #[allow(deprecated)]
                    let _ = conn.set_linger(Some(Duration::ZERO));
                    drop(conn);
                }
                _ => {
                    tokio::spawn(async move {
                        let mut buf = [0u8; 4096];
                        let _ = conn.read(&mut buf).await;
                        let _ = conn.write_all(b"HTTP/9.9 what\r\n\r\n\x00\x01garbage").await;
                    });
                }
            }
        }
    });
    addr
}

#[tokio::test]
async fn a_bad_dark_target_never_hurts_a_real_request() {
    for kind in [Bad::NotListening, Bad::Hangs, Bad::Resets, Bad::Garbage, Bad::Errors] {
        let dark = bad_target(kind).await;
        let layer = builder(DarkTarget::url(&format!("http://{dark}")).unwrap())
            .timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let (real, handle) = real_service(layer).await;
        for id in 0..50 {
            let body = get_ok(real, &format!("/products/{id}")).await;
            assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), product(id, false), "{kind:?}");
            let (status, text) = send(real, "POST", "/orders", &[], Body::from("12345")).await;
            assert_eq!((status, text.as_str()), (StatusCode::OK, "5 bytes"), "{kind:?}");
        }
        eventually("settled", || settled(&handle)).await;
        let s = handle.snapshot();
        assert_eq!(s.decided(Decision::Queued), 100, "{kind:?}");
        let (expected, count) = match kind {
            Bad::Hangs => (DarkResult::Timeout, s.dark(DarkResult::Timeout)),
            Bad::Errors => (DarkResult::Answered, s.dark(DarkResult::Answered)),
            _ => (DarkResult::Error, s.dark(DarkResult::Error)),
        };
        assert_eq!(count, 100, "{kind:?}: expected every copy to be {expected:?}: {s:?}");
        if expected != DarkResult::Answered {
            let samples = handle.error_samples();
            assert!(
                !samples.is_empty() && samples.iter().all(|e| e.result == expected && !e.error.is_empty())
            );
        }
    }
}

#[tokio::test]
async fn the_queue_is_bounded_when_the_dark_target_never_answers() {
    let dark = bad_target(Bad::Hangs).await;
    let layer = builder(DarkTarget::url(&format!("http://{dark}")).unwrap())
        .queue(8)
        .concurrency(2)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let (real, handle) = real_service(layer).await;
    let started = Instant::now();
    for id in 0..300 {
        get_ok(real, &format!("/products/{id}")).await;
    }
    // 300 real requests do not wait for 30 s timeouts.
    assert!(started.elapsed() < Duration::from_secs(10));
    let s = handle.snapshot();
    assert!(s.pending <= 8 + 2 + 1, "pending {}", s.pending);
    assert_eq!(s.decided(Decision::Queued) + s.decided(Decision::QueueFull), 300);
    assert!(s.decided(Decision::QueueFull) >= 280, "{s:?}");
    // The byte budget bounds bodies too.
    let layer = builder(DarkTarget::url(&format!("http://{dark}")).unwrap())
        .concurrency(1)
        .max_pending_bytes(10_000)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let (real, handle) = real_service(layer).await;
    for _ in 0..20 {
        let (status, _) = send(real, "POST", "/orders", &[], Body::from(vec![7u8; 3000])).await;
        assert_eq!(status, StatusCode::OK);
    }
    let s = handle.snapshot();
    assert!(s.pending_bytes <= 10_000, "{s:?}");
    assert_eq!(s.decided(Decision::Queued), 3);
    assert_eq!(s.decided(Decision::QueueFull), 17);
}

#[tokio::test]
async fn compare_finds_the_one_in_ten_that_differs_and_names_the_path() {
    let (dark, _log) = dark_service().await;
    let target = DarkTarget::url(&format!("http://{dark}")).unwrap();
    let spec = CompareSpec {
        headers: vec![http::header::CONTENT_TYPE],
        ignore: vec![JsonPath::parse("$.generated_at").unwrap()],
    };
    let (real, handle) = real_service(builder(target.clone()).compare(spec).build().unwrap()).await;
    for id in 0..200 {
        get_ok(real, &format!("/products/{id}")).await;
    }
    eventually("200 comparisons", || {
        let s = handle.snapshot();
        CompareResult::ALL.iter().map(|r| s.compared(*r)).sum::<u64>() == 200
    })
    .await;
    let s = handle.snapshot();
    assert_eq!(s.compared(CompareResult::Mismatch), 20, "{s:?}");
    assert_eq!(s.compared(CompareResult::Match), 180, "{s:?}");
    let samples = handle.mismatch_samples();
    assert_eq!(samples.len(), 20);
    for m in &samples {
        assert_eq!(m.differences.len(), 1, "{m:?}");
        assert_eq!(m.differences[0].at, "$.price");
        assert!(m.path.starts_with("/products/"));
    }

    // Without the ignored path every answer differs.
    let (real, handle) = real_service(builder(target).compare(CompareSpec::default()).build().unwrap()).await;
    for id in 1..10 {
        get_ok(real, &format!("/products/{id}")).await;
    }
    eventually("9 comparisons", || handle.snapshot().compared(CompareResult::Mismatch) == 9).await;
    assert!(handle.mismatch_samples().iter().all(|m| m.differences[0].at == "$.generated_at"));
}

#[tokio::test]
async fn the_kill_switch_and_the_admin_router_control_mirroring() {
    let (dark, log) = dark_service().await;
    let kill = KillSwitch::new();
    let layer = builder(DarkTarget::url(&format!("http://{dark}")).unwrap())
        .kill_switch(kill.clone())
        .build()
        .unwrap();
    let (real, handle) = real_service(layer).await;
    let admin = serve(synth_tower::mirror::admin_router(handle.clone(), "tok")).await;
    let auth = [("authorization", "Bearer tok"), ("content-type", "application/json")];

    let (status, _) = send(admin, "GET", "/synthetic/mirror", &[], Body::empty()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = send(
        admin,
        "POST",
        "/synthetic/mirror",
        &[("authorization", "Bearer nope")],
        Body::from(r#"{"enabled":false}"#),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(handle.is_enabled());

    for bad in
        [r#"{"share": 2}"#, r#"{"share": "0.5"}"#, r#"{"enabled": "no"}"#, r#"{"shares": 0.1}"#, "[]", "nope"]
    {
        let (status, text) = send(admin, "POST", "/synthetic/mirror", &auth, Body::from(bad)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {text}");
    }
    // A bad request changes nothing, not even the part that was right.
    let (status, _) =
        send(admin, "POST", "/synthetic/mirror", &auth, Body::from(r#"{"enabled": false, "share": -1}"#))
            .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(handle.is_enabled());
    assert_eq!(handle.share(), 1.0);

    let (status, text) =
        send(admin, "POST", "/synthetic/mirror", &auth, Body::from(r#"{"enabled": false}"#)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    get_ok(real, "/products/1").await;
    assert_eq!(handle.snapshot().decided(Decision::Disabled), 1);

    let (_, text) =
        send(admin, "POST", "/synthetic/mirror", &auth, Body::from(r#"{"enabled": true, "share": 0.5}"#))
            .await;
    let state: Value = serde_json::from_str(&text).unwrap();
    assert_eq!((state["enabled"].as_bool(), state["share"].as_f64()), (Some(true), Some(0.5)));
    handle.set_share(1.0).unwrap();
    get_ok(real, "/products/2").await;
    eventually("one copy", || log.lock().unwrap().len() == 1).await;
    eventually("settled", || settled(&handle)).await;

    kill.stop();
    get_ok(real, "/products/3").await;
    assert_eq!(handle.snapshot().decided(Decision::Disabled), 2);
    let (_, text) =
        send(admin, "GET", "/synthetic/mirror", &[("authorization", "Bearer tok")], Body::empty()).await;
    let state: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(state["active"], false);
    assert_eq!(state["requests"]["queued"], 1);
    assert_eq!(state["dark"]["answered"], 1);
}

#[tokio::test]
async fn the_kill_switch_cuts_copies_in_flight_short() {
    let dark = bad_target(Bad::Hangs).await;
    let kill = KillSwitch::new();
    let layer = builder(DarkTarget::url(&format!("http://{dark}")).unwrap())
        .kill_switch(kill.clone())
        .concurrency(4)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let (real, handle) = real_service(layer).await;
    for id in 0..20 {
        get_ok(real, &format!("/products/{id}")).await;
    }
    assert_eq!(handle.snapshot().decided(Decision::Queued), 20);
    let stopped_at = Instant::now();
    kill.stop();
    eventually("every copy stopped", || handle.snapshot().dark(DarkResult::Stopped) == 20).await;
    assert!(stopped_at.elapsed() < Duration::from_secs(2), "{:?}", stopped_at.elapsed());
    assert_eq!(handle.snapshot().pending, 0);
}

#[tokio::test]
async fn bodies_over_the_limit_or_left_unread_are_not_copied() {
    let (dark, log) = dark_service().await;
    let layer =
        builder(DarkTarget::url(&format!("http://{dark}")).unwrap()).body_limit(1000).build().unwrap();
    let (real, handle) = real_service(layer).await;
    // With a content-length over the limit.
    let (status, text) = send(real, "POST", "/orders", &[], Body::from(vec![1u8; 2000])).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "2000 bytes"));
    // Streamed, no length: found out while teeing; the handler still gets all of it.
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        (0..4).map(|_| Ok(Bytes::from(vec![2u8; 500]))).collect();
    let (status, text) = send(real, "POST", "/orders", &[], Body::from_stream(futures_stream(chunks))).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "2000 bytes"));
    // A handler that never reads its body.
    let (status, _) = send(real, "POST", "/ignore", &[], Body::from(vec![3u8; 100])).await;
    assert_eq!(status, StatusCode::OK);
    // Within the limit: copied.
    let (status, _) = send(real, "POST", "/orders", &[], Body::from(vec![4u8; 1000])).await;
    assert_eq!(status, StatusCode::OK);
    eventually("settled", || settled(&handle)).await;
    let s = handle.snapshot();
    assert_eq!(s.decided(Decision::BodyTooLarge), 2, "{s:?}");
    assert_eq!(s.decided(Decision::BodyIncomplete), 1, "{s:?}");
    assert_eq!(s.decided(Decision::Queued), 1, "{s:?}");
    assert_eq!(log.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn filters_pick_routes_and_methods() {
    let (dark, log) = dark_service().await;
    let layer = builder(DarkTarget::url(&format!("http://{dark}")).unwrap())
        .routes(["/products/"])
        .methods([http::Method::GET])
        .build()
        .unwrap();
    let (real, handle) = real_service(layer).await;
    get_ok(real, "/products/1").await;
    send(real, "POST", "/orders", &[], Body::from("x")).await;
    send(real, "GET", "/elsewhere", &[], Body::empty()).await;
    // A protocol switch is never copied, whatever the filters say.
    send(real, "GET", "/products/2", &[("connection", "upgrade"), ("upgrade", "websocket")], Body::empty())
        .await;
    eventually("one copy", || log.lock().unwrap().len() == 1).await;
    assert_eq!(handle.snapshot().decided(Decision::Filtered), 3);
    assert!(
        MirrorLayer::builder(
            DarkTarget::url("http://x").unwrap(),
            Signer::new(keys()),
            RunId::new("r").unwrap()
        )
        .routes(["products"])
        .build()
        .is_err()
    );
    for share in [f64::NAN, -0.1, 1.5] {
        assert!(builder(DarkTarget::url("http://x").unwrap()).share(share).build().is_err());
        assert!(handle.set_share(share).is_err());
    }
}

#[tokio::test]
async fn the_metrics_page_passes_promtool() {
    let (dark, _log) = dark_service().await;
    let layer = builder(DarkTarget::url(&format!("http://{dark}")).unwrap())
        .compare(CompareSpec::default())
        .service_name("catalog \"v1\"")
        .build()
        .unwrap();
    let (real, handle) = real_service(layer).await;
    for id in 0..10 {
        get_ok(real, &format!("/products/{id}")).await;
    }
    eventually("settled", || settled(&handle)).await;
    let page = handle.to_prometheus();
    assert!(
        page.contains("synth_mirror_requests_total{service=\"catalog v1\",decision=\"queued\"} 10"),
        "{page}"
    );
    assert!(
        page.contains("synth_mirror_latency_seconds_count{service=\"catalog v1\",side=\"dark\"} 10"),
        "{page}"
    );
    if let Some(checked) = synth_testkit::promtool::check_metrics("mirror metrics page", &page) {
        checked.unwrap();
    }
}

/// A request whose marker a `TreatAsReal` layer refused and removed (it may have been a copy
/// whose `dark` marker could no longer be read), or that says so with
/// `synthetic-traffic-removed`, is never copied, even with `mirror_synthetic(true)`.
#[tokio::test]
async fn a_request_whose_marker_was_removed_is_never_copied_whatever_the_setting() {
    let (dark, log) = dark_service().await;
    let layer =
        builder(DarkTarget::url(&format!("http://{dark}")).unwrap()).mirror_synthetic(true).build().unwrap();
    let handle = layer.handle();
    // The real service trusts another key than the load test's.
    let other = synth_ctx::Verifier::new(
        synth_ctx::KeyRing::parse("k2:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8").unwrap(),
    );
    let real = serve(real_app().layer(layer).layer(
        VerifySyntheticLayer::new(other).with_invalid_marker_policy(InvalidMarkerPolicy::TreatAsReal),
    ))
    .await;
    let refused = mint("load-run");
    let (status, body) =
        send(real, "GET", "/products/1", &[("synthetic-traffic", &refused)], Body::empty()).await;
    assert_eq!((status, body.contains("real-clock")), (StatusCode::OK, true), "served as real: {body}");
    get_ok(real, "/products/2").await;
    let (status, _) =
        send(real, "GET", "/products/3", &[("synthetic-traffic-removed", "1")], Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    eventually("the real request's copy", || log.lock().unwrap().len() == 1).await;
    let s = handle.snapshot();
    assert_eq!((s.decided(Decision::Synthetic), s.decided(Decision::Queued)), (2, 1), "{s:?}");
    assert_eq!(log.lock().unwrap()[0].uri, "/products/2");
}

/// A real answer that never comes (the service failed, or the request was dropped before its
/// answer's head) is given up at once: the copy counts `real_incomplete` and gives its bytes
/// back without waiting for the timeout.
#[tokio::test]
async fn a_real_answer_that_never_comes_is_given_up_at_once() {
    let dark = DarkTarget::service(
        tower::service_fn(|_req: http::Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"dark"))))
        }),
        "answers at once",
    );
    let layer = builder(dark)
        .timeout(Duration::from_secs(30))
        .compare(CompareSpec { headers: vec![], ignore: vec![] })
        .build()
        .unwrap();
    let handle = layer.handle();
    let get = || http::Request::get("/p").body(Full::new(Bytes::new())).unwrap();
    let failing =
        layer.layer(tower::service_fn(|_req: http::Request<MirrorRequestBody<Full<Bytes>>>| async {
            Err::<http::Response<Full<Bytes>>, _>(std::io::Error::other("backend down"))
        }));
    assert!(failing.oneshot(get()).await.is_err());
    let hanging = layer.layer(tower::service_fn(|_req: http::Request<MirrorRequestBody<Full<Bytes>>>| {
        std::future::pending::<Result<http::Response<Full<Bytes>>, Infallible>>()
    }));
    // A timeout layer above gives up on it.
    assert!(tokio::time::timeout(Duration::from_millis(100), hanging.oneshot(get())).await.is_err());
    eventually("both copies gave up", || handle.snapshot().compared(CompareResult::RealIncomplete) == 2)
        .await;
    eventually("their bytes given back", || handle.snapshot().pending_bytes == 0).await;
}

/// In compare mode the dark answer's head is kept until the real answer comes: it counts in the
/// byte budget like the body, and one that does not fit is not compared (`too_large`).
#[tokio::test]
async fn a_dark_answer_head_counts_in_the_byte_budget() {
    let dark = DarkTarget::service(
        tower::service_fn(|_req: http::Request<Full<Bytes>>| async {
            let mut res = http::Response::new(Full::new(Bytes::from_static(b"same")));
            res.headers_mut().insert("x-big", http::HeaderValue::from_str(&"a".repeat(16 * 1024)).unwrap());
            Ok::<_, Infallible>(res)
        }),
        "a 16 KiB head",
    );
    let layer = builder(dark)
        .max_pending_bytes(8 * 1024)
        .compare(CompareSpec { headers: vec![], ignore: vec![] })
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(tower::service_fn(|_req: http::Request<MirrorRequestBody<Full<Bytes>>>| async {
        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"same"))))
    }));
    let res = svc.oneshot(http::Request::get("/p").body(Full::new(Bytes::new())).unwrap()).await.unwrap();
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "same");
    eventually("compared", || {
        let s = handle.snapshot();
        CompareResult::ALL.iter().map(|r| s.compared(*r)).sum::<u64>() == 1
    })
    .await;
    assert_eq!(handle.snapshot().compared(CompareResult::TooLarge), 1, "{:?}", handle.snapshot());
    eventually("its bytes given back", || handle.snapshot().pending_bytes == 0).await;
}

/// A body that says its exact length but never that it has ended (after its bytes, it is
/// pending): hyper's HTTP/1 server writes `content-length` from the hint and stops there.
struct ExactThenPending(Option<Bytes>, u64);

impl http_body::Body for ExactThenPending {
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

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.1)
    }
}

/// A real answer whose length hyper's HTTP/1 server takes from an exact size hint (no
/// `content-length` header) is compared as soon as that many bytes went out.
#[tokio::test]
async fn a_real_answer_of_hinted_length_is_compared_when_its_bytes_are_out() {
    let dark = DarkTarget::service(
        tower::service_fn(|_req: http::Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"hello world"))))
        }),
        "same",
    );
    let layer = builder(dark)
        .timeout(Duration::from_secs(30))
        .compare(CompareSpec { headers: vec![], ignore: vec![] })
        .build()
        .unwrap();
    let handle = layer.handle();
    let app = Router::new()
        .route(
            "/hinted",
            get(|| async { Body::new(ExactThenPending(Some(Bytes::from_static(b"hello world")), 11)) }),
        )
        .layer(layer);
    let real = serve(app).await;
    assert_eq!(get_ok(real, "/hinted").await, "hello world");
    eventually("compared", || handle.snapshot().compared(CompareResult::Match) == 1).await;
}

/// A copy's URI is its own memory: hyper's request target is a slice of the connection's read
/// buffer, which a queued copy must not keep alive (its budget counts the URI's bytes only).
#[tokio::test]
async fn queued_copies_keep_no_read_buffer_alive_through_their_uri() {
    let live = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let hang = DarkTarget::service(
        tower::service_fn(|_req: http::Request<Full<Bytes>>| {
            std::future::pending::<Result<http::Response<Full<Bytes>>, Infallible>>()
        }),
        "hangs",
    );
    let layer = builder(hang).queue(1000).concurrency(1).timeout(Duration::from_secs(60)).build().unwrap();
    let handle = layer.handle();
    let svc = layer.layer(tower::service_fn(|_req: http::Request<MirrorRequestBody<Full<Bytes>>>| async {
        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"real"))))
    }));
    for _ in 0..200 {
        let buf = tracked_buffer(&live, b"/products/7?q=1");
        let uri = http::Uri::from_maybe_shared(buf.slice(0..15)).unwrap();
        drop(buf);
        let req = http::Request::get(uri).body(Full::new(Bytes::new())).unwrap();
        svc.clone().oneshot(req).await.unwrap();
    }
    assert_eq!(handle.snapshot().decided(Decision::Queued), 200);
    let pinned = live.load(std::sync::atomic::Ordering::SeqCst);
    handle.set_enabled(false);
    assert_eq!(pinned, 0, "queued copies keep {pinned} bytes of read buffers alive");
}
