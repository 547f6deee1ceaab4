//! loadgen's gRPC steps against the shop's real tonic catalogue (behind its
//! `VerifySyntheticLayer`) over loopback sockets: the marker on every call, statuses by name in
//! the reports, captures feeding an HTTP step, a stop with calls in flight, and the load-time
//! errors of a bad `.proto`, an unknown method or field.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use loadgen::{Ending, RunConfig, Scenario};
use serde_json::Value;
use shop::common::{ServiceBase, Shutdown, serve};
use synth_ctx::{KeyRing, RunId, Verifier};

const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
/// Another key with the same id: markers signed with it do not verify at the catalogue.
const WRONG_KEYS: &str = "k1:HxwdGhsYGRYXFBUSExAREA4PDA0KCwgJBgcEBQIDAAE";

/// A scratch directory with the shop's `catalog.proto` in it, for a scenario file beside it.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shop-grpc-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("proto/catalog.proto"), d.join("catalog.proto"))
        .unwrap();
    d
}

/// The catalogue on a loopback port.
async fn catalog() -> (SocketAddr, ServiceBase, Shutdown) {
    let (addr, base, shutdown, _) = slow_catalog(Duration::ZERO).await;
    (addr, base, shutdown)
}

/// The catalogue on a loopback port, every call held `delay` before it reaches the catalogue;
/// the last value counts the calls that arrived.
async fn slow_catalog(delay: Duration) -> (SocketAddr, ServiceBase, Shutdown, Arc<AtomicU64>) {
    let verifier = Verifier::new(KeyRing::parse(KEYS).unwrap());
    let (mut app, base) = shop::catalog::router(verifier);
    let arrived = Arc::new(AtomicU64::new(0));
    if !delay.is_zero() {
        let arrived = arrived.clone();
        app = app.layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                arrived.fetch_add(1, Ordering::SeqCst);
                async move {
                    tokio::time::sleep(delay).await;
                    next.run(req).await
                }
            },
        ));
    }
    let shutdown = Shutdown::new();
    let addr = serve("127.0.0.1:0".parse().unwrap(), app, &shutdown).await.unwrap();
    (addr, base, shutdown, arrived)
}

/// Loads `yaml` from a file in `dir` (so `proto:` is relative to it).
fn load(dir: &Path, yaml: &str) -> Result<Scenario, loadgen::ScenarioError> {
    let path = dir.join("scenario.yaml");
    std::fs::write(&path, yaml).unwrap();
    Scenario::from_file(&path)
}

fn config(keys: &str, run: &str, dir: &Path) -> RunConfig {
    RunConfig::new(KeyRing::parse(keys).unwrap())
        .with_run_id(RunId::new(run).unwrap())
        .with_quiet(true)
        .with_report_html(dir.join("report.html"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_carries_the_marker_the_catalogue_verifies() {
    let (addr, base, shutdown) = catalog().await;
    let dir = scratch("marker");
    let yaml = format!(
        "target: http://{addr}
phases: [{{ duration: 2s, arrival_rate: 20 }}]
journeys:
  - name: search
    steps:
      - name: search
        grpc:
          proto: catalog.proto
          call: shop.catalog.v1.Catalog/Search
          message: {{ query: \"{{{{ pick('hats', 'red hats') }}}}\", limit: 3 }}
        expect: {{ grpc_status: OK, json: {{ \"$.products[0].price_cents\": 750 }} }}
      - name: product
        grpc:
          proto: catalog.proto
          call: shop.catalog.v1.Catalog/GetProduct
          message: {{ id: \"{{{{ random_int(1, 100) }}}}\" }}
"
    );
    let scenario = load(&dir, &yaml).unwrap();
    let outcome = loadgen::run(Arc::new(scenario), config(KEYS, "grpc-ok", &dir)).await.unwrap();
    let report = outcome.to_json();
    let total = &report["total"];
    let calls = total["requests"].as_u64().unwrap();
    assert!(calls >= 60, "about 40 journeys of two calls: {report}");
    // Both searches find "red hats" (product 2, 750 cents) first: the JSON expectation holds.
    let search = &report["steps"][0];
    let product = &report["steps"][1];
    assert_eq!(search["name"], "search");
    assert_eq!(search["grpc_status_codes"]["OK"], search["requests"], "{search}");
    assert_eq!(search["errors"]["expectation"], 0, "{search}");
    assert_eq!(product["grpc_status_codes"]["OK"], product["requests"], "{product}");
    assert_eq!(product["errors"]["expectation"], 0, "a number written as a template string fits uint32");
    // The catalogue verified the marker of every call, and the answers said so.
    let seen = base.requests();
    assert_eq!(seen.synthetic, calls, "{seen:?}");
    assert_eq!((seen.real, seen.rejected), (0, 0), "{seen:?}");
    assert_eq!(total["tagged"].as_u64(), Some(calls));
    assert_eq!(total["responses"].as_u64(), Some(calls));
    assert!(outcome.summary().contains(&format!("grpc statuses: OK: {calls}")), "{}", outcome.summary());
    shutdown.fire();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_permission_denied_by_name_in_every_report() {
    let (addr, base, shutdown) = catalog().await;
    let dir = scratch("denied");
    let yaml = format!(
        "target: http://{addr}
phases: [{{ duration: 1s, arrival_rate: 20 }}]
journeys:
  - name: search
    steps:
      - grpc: {{ proto: catalog.proto, call: shop.catalog.v1.Catalog/Search, message: {{ query: hats }} }}
"
    );
    let scenario = load(&dir, &yaml).unwrap();
    assert_eq!(&*scenario.step_names[0], "search: grpc Catalog/Search", "the default step name");
    let cfg = config(WRONG_KEYS, "grpc-denied", &dir).with_report_json(dir.join("report.json"));
    let outcome = loadgen::run(Arc::new(scenario), cfg).await.unwrap();
    let report: Value = serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    let step = &report["steps"][0];
    let calls = step["requests"].as_u64().unwrap();
    assert!(calls >= 15, "{report}");
    assert_eq!(step["grpc_status_codes"], serde_json::json!({ "PERMISSION_DENIED": calls }), "{step}");
    assert_eq!(step["errors"]["status"].as_u64(), Some(calls), "an unexpected status is a status error");
    assert_eq!(step["tagged"], 0);
    assert_eq!(step["status_codes"], serde_json::json!({}), "no HTTP status for gRPC calls");
    let seen = base.requests();
    assert_eq!((seen.synthetic, seen.rejected), (0, calls), "{seen:?}");
    assert!(outcome.summary().contains(&format!("grpc statuses: PERMISSION_DENIED: {calls}")));
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("gRPC PERMISSION_DENIED"), "the HTML report names the status");
    shutdown.fire();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expected_status_is_not_an_error() {
    let (addr, _base, shutdown) = catalog().await;
    let dir = scratch("expected");
    let yaml = format!(
        "target: http://{addr}
phases: [{{ duration: 1s, arrival_rate: 10 }}]
journeys:
  - name: missing
    steps:
      - grpc: {{ proto: catalog.proto, call: shop.catalog.v1.Catalog/GetProduct, message: {{ id: 999 }} }}
        expect: {{ grpc_status: [OK, NOT_FOUND] }}
"
    );
    let outcome =
        loadgen::run(Arc::new(load(&dir, &yaml).unwrap()), config(KEYS, "grpc-nf", &dir)).await.unwrap();
    let step = &outcome.to_json()["steps"][0];
    assert!(step["requests"].as_u64().unwrap() >= 5, "{step}");
    assert_eq!(step["grpc_status_codes"]["NOT_FOUND"], step["requests"], "{step}");
    assert_eq!(step["errors"]["status"], 0, "{step}");
    shutdown.fire();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_that_renders_a_wrong_type_is_an_expectation_error_and_sends_nothing() {
    let (addr, base, shutdown) = catalog().await;
    let dir = scratch("wrong-type");
    let yaml = format!(
        "target: http://{addr}
phases: [{{ duration: 1s, arrival_rate: 10 }}]
journeys:
  - name: product
    steps:
      - grpc:
          proto: catalog.proto
          call: shop.catalog.v1.Catalog/GetProduct
          message: {{ id: \"{{{{ pick('seven', 'eight') }}}}\" }}
"
    );
    let outcome =
        loadgen::run(Arc::new(load(&dir, &yaml).unwrap()), config(KEYS, "grpc-type", &dir)).await.unwrap();
    let step = &outcome.to_json()["steps"][0];
    // As for an HTTP request that cannot be built: a failure of the step, not a request sent.
    let started = outcome.finished.journeys.started;
    assert!(started >= 5, "{step}");
    assert_eq!(step["errors"]["expectation"].as_u64(), Some(started), "{step}");
    assert_eq!((&step["requests"], &step["responses"]), (&Value::from(0), &Value::from(0)), "{step}");
    assert_eq!(base.requests().synthetic + base.requests().rejected, 0, "nothing was sent");
    assert_eq!(outcome.finished.journeys.failed, outcome.finished.journeys.started);
    shutdown.fire();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captures_from_the_answer_feed_a_later_http_step() {
    let (grpc, _base, shutdown) = catalog().await;
    // An HTTP target that keeps the paths it was asked for.
    let paths = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = paths.clone();
    let app = axum::Router::new().fallback(move |uri: http::Uri| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push(uri.path().to_owned());
            "ok"
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });

    let dir = scratch("capture");
    let yaml = format!(
        "target: http://{http_addr}
phases: [{{ duration: 1s, arrival_rate: 10 }}]
journeys:
  - name: buy
    steps:
      - name: find
        grpc:
          target: http://{grpc}
          proto: catalog.proto
          call: /shop.catalog.v1.Catalog/Search
          message: {{ query: navy, limit: 1 }}
        capture:
          sku: {{ json: \"$.products[0].sku\" }}
          price: {{ json: \"$.products[0].price_cents\" }}
      - get: \"/basket/{{{{ sku }}}}/{{{{ price }}}}\"
"
    );
    let outcome =
        loadgen::run(Arc::new(load(&dir, &yaml).unwrap()), config(KEYS, "grpc-cap", &dir)).await.unwrap();
    let report = outcome.to_json();
    assert_eq!(report["total"]["errors"]["capture"], 0, "{report}");
    let paths = paths.lock().unwrap().clone();
    assert!(paths.len() >= 5, "{paths:?}");
    // "navy" is the ninth colour: products 81..=90; the first is sku-81, 500 + 81 * 125 cents.
    assert!(paths.iter().all(|p| p == "/basket/sku-81/10625"), "{paths:?}");
    shutdown.fire();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_cancels_calls_in_flight_within_100ms() {
    let (addr, _base, shutdown, arrived) = slow_catalog(Duration::from_secs(5)).await;
    let dir = scratch("stop");
    let yaml = format!(
        "target: http://{addr}
phases: [{{ duration: 60s, arrival_rate: 50 }}]
journeys:
  - name: slow
    steps:
      - grpc: {{ proto: catalog.proto, call: shop.catalog.v1.Catalog/Search, message: {{ query: hats }} }}
"
    );
    let cfg = config(KEYS, "grpc-stop", &dir);
    let control = cfg.control();
    let run = tokio::spawn(loadgen::run(Arc::new(load(&dir, &yaml).unwrap()), cfg));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let in_flight = arrived.load(Ordering::SeqCst);
    assert!(in_flight >= 10, "calls reached the catalogue and wait in its delay: {in_flight}");
    let stopped = Instant::now();
    control.stop();
    let outcome = run.await.unwrap().unwrap();
    let took = stopped.elapsed();
    assert!(took < Duration::from_millis(100), "the run ended {took:?} after the stop");
    assert_eq!(outcome.finished.ending, Ending::Stopped);
    let step = &outcome.to_json()["steps"][0];
    assert!(step["errors"]["cancelled"].as_u64().unwrap() >= in_flight, "{step}");
    assert_eq!(step["responses"], 0, "{step}");
    // Nothing is sent after the stop.
    let at_stop = arrived.load(Ordering::SeqCst);
    assert!(at_stop <= step["requests"].as_u64().unwrap(), "{step}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(arrived.load(Ordering::SeqCst), at_stop);
    shutdown.fire();
}

#[test]
fn a_bad_proto_an_unknown_method_or_field_is_an_error_at_the_step() {
    let dir = scratch("errors");
    std::fs::write(
        dir.join("bad.proto"),
        "syntax = \"proto3\";\npackage p;\nmessage M {\n  string a = 1\n}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("stream.proto"),
        "syntax = \"proto3\";\npackage p;\nmessage M { string a = 1; }\nservice S { rpc Upload(stream M) returns (M); }\n",
    )
    .unwrap();
    let head = "target: http://127.0.0.1:9\nphases: [{ duration: 1s, arrival_rate: 1 }]\njourneys:\n  - name: j\n    steps:\n      - get: /\n";
    let cases = [
        ("bad.proto", "p.S/Watch", "{}", "grpc.proto `bad.proto` does not compile", Some("bad.proto:5:")),
        ("missing.proto", "p.S/Watch", "{}", "grpc.proto `missing.proto`", None),
        (
            "catalog.proto",
            "shop.catalog.v1.Catalog/Serch",
            "{}",
            "has no method `Serch`",
            Some("did you mean `Search`?"),
        ),
        (
            "catalog.proto",
            "shop.catalog.Catalog/Search",
            "{}",
            "no service `shop.catalog.Catalog`",
            Some("shop.catalog.v1.Catalog"),
        ),
        (
            "catalog.proto",
            "shop.catalog.v1.Catalog/Search",
            "{ qeury: hats }",
            "has no field `qeury`",
            Some("`query`"),
        ),
        ("catalog.proto", "shop.catalog.v1.Catalog/Search", "{ limit: lots }", "does not fit", None),
        ("stream.proto", "p.S/Upload", "{}", "streams its request", None),
    ];
    for (proto, call, message, want, also) in cases {
        let yaml = format!("{head}      - grpc: {{ proto: {proto}, call: {call}, message: {message} }}\n");
        let e = load(&dir, &yaml).err().unwrap_or_else(|| panic!("{proto} {call} {message} loaded"));
        let text = e.to_string();
        eprintln!("{text}");
        assert_eq!(e.line, 7, "the error points at the step's line: {text}");
        assert!(e.file.ends_with("scenario.yaml"), "{text}");
        assert!(text.contains(want), "{text}");
        if let Some(also) = also {
            assert!(text.contains(also), "{text}");
        }
    }
    // The same .proto for many steps is compiled once: two steps, one file, both fine.
    let yaml = format!(
        "{head}      - grpc: {{ proto: catalog.proto, call: shop.catalog.v1.Catalog/Search }}\n      - grpc: {{ proto: ./catalog.proto, call: shop.catalog.v1.Catalog/GetProduct, message: {{ id: 3 }} }}\n"
    );
    let s = load(&dir, &yaml).unwrap();
    assert_eq!(s.requests_per_journey(), 3.0, "gRPC calls count as requests");
}

#[test]
fn the_shops_journeys_call_the_catalogue_over_grpc_and_can_be_pointed_at_it() {
    let mut s = Scenario::from_file(Path::new(env!("CARGO_MANIFEST_DIR")).join("journeys.yaml")).unwrap();
    let fixed: http::Uri = "http://127.0.0.1:7001".parse().unwrap();
    let elsewhere: http::Uri = "http://127.0.0.1:45678".parse().unwrap();
    let targets = |s: &Scenario| -> Vec<Option<http::Uri>> {
        s.journeys
            .iter()
            .flat_map(|j| j.steps.iter())
            .filter_map(|step| match step {
                loadgen::scenario::Step::Grpc(g) => Some(g.target.clone()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(targets(&s), [Some(fixed.clone())], "one gRPC step, at the documented catalogue port");
    assert_eq!(s.retarget_grpc(&"http://127.0.0.1:9999".parse().unwrap(), &elsewhere), 0);
    assert_eq!(s.retarget_grpc(&fixed, &elsewhere), 1);
    assert_eq!(targets(&s), [Some(elsewhere)]);
}

/// The test certificate for `localhost`/`127.0.0.1` and its CA (loadgen's TLS test material).
fn tls_data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../loadgen/tests/data/tls").join(name)
}

/// The catalogue over TLS offering only ALPN `h2`.
async fn tls_catalog() -> (SocketAddr, ServiceBase) {
    use hyper_util::{rt::TokioExecutor, rt::TokioIo, server::conn::auto, service::TowerToHyperService};
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
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let (app, base) = shop::catalog::router(Verifier::new(KeyRing::parse(KEYS).unwrap()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                // A client that does not trust the certificate aborts the handshake: fine.
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
                    .await;
            });
        }
    });
    (addr, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_tls_trusts_the_scenarios_ca_and_nothing_else() {
    let (addr, base) = tls_catalog().await;
    let dir = scratch("tls");
    std::fs::copy(tls_data("ca.pem"), dir.join("ca.pem")).unwrap();
    let yaml = |tls: &str| {
        format!(
            "target: https://localhost:{}
{tls}phases: [{{ duration: 1s, arrival_rate: 10 }}]
journeys:
  - name: tls
    steps:
      - grpc: {{ proto: catalog.proto, call: shop.catalog.v1.Catalog/GetProduct, message: {{ id: 5 }} }}
        capture: {{ sku: {{ json: \"$.sku\" }} }}
",
            addr.port()
        )
    };
    let trusted = load(&dir, &yaml("tls: { ca: ca.pem }\n")).unwrap();
    let outcome = loadgen::run(Arc::new(trusted), config(KEYS, "grpc-tls", &dir)).await.unwrap();
    let step = &outcome.to_json()["steps"][0];
    let calls = step["requests"].as_u64().unwrap();
    assert!(calls >= 5, "{step}");
    assert_eq!(step["grpc_status_codes"]["OK"].as_u64(), Some(calls), "{step}");
    assert_eq!(step["tagged"].as_u64(), Some(calls), "{step}");
    assert_eq!(base.requests().synthetic, calls);

    // Without the CA the handshake fails: connect errors, and no marker reaches the server.
    let untrusted = load(&dir, &yaml("")).unwrap();
    let outcome = loadgen::run(Arc::new(untrusted), config(KEYS, "grpc-tls2", &dir)).await.unwrap();
    let step = &outcome.to_json()["steps"][0];
    assert!(step["errors"]["connect"].as_u64().unwrap() >= 5, "{step}");
    assert_eq!(step["responses"], 0, "{step}");
    assert_eq!(base.requests().synthetic, calls, "nothing more arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_carries_the_refreshed_marker() {
    // No clock skew allowed: a marker is refused the second it expires.
    let verifier = Verifier::new(KeyRing::parse(KEYS).unwrap()).with_clock_skew(Duration::ZERO);
    let (app, base) = shop::catalog::router(verifier);
    let shutdown = Shutdown::new();
    let addr = serve("127.0.0.1:0".parse().unwrap(), app, &shutdown).await.unwrap();
    let dir = scratch("refresh");
    let yaml = format!(
        "target: http://{addr}
phases: [{{ duration: 4s, arrival_rate: 20 }}]
journeys:
  - name: s
    steps:
      - grpc: {{ proto: catalog.proto, call: shop.catalog.v1.Catalog/GetProduct, message: {{ id: 1 }} }}
"
    );
    // Markers live 1 s and are renewed every third of that: calls after the first second pass
    // only if each one reads the current marker (one channel carries them all).
    let cfg = config(KEYS, "grpc-refresh", &dir).with_token_ttl(Duration::from_secs(1));
    let outcome = loadgen::run(Arc::new(load(&dir, &yaml).unwrap()), cfg).await.unwrap();
    let step = &outcome.to_json()["steps"][0];
    let calls = step["requests"].as_u64().unwrap();
    assert!(calls >= 60, "{step}");
    assert_eq!(step["grpc_status_codes"]["OK"].as_u64(), Some(calls), "{step}");
    let seen = base.requests();
    assert_eq!((seen.synthetic, seen.rejected), (calls, 0), "{seen:?}");
    shutdown.fire();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_bounds_calls_in_flight() {
    let (addr, _base, shutdown, arrived) = slow_catalog(Duration::from_secs(5)).await;
    let dir = scratch("bound");
    let yaml = format!(
        "target: http://{addr}
max_connections: 3
phases: [{{ duration: 60s, arrival_rate: 50 }}]
journeys:
  - name: slow
    steps:
      - grpc: {{ proto: catalog.proto, call: shop.catalog.v1.Catalog/Search, message: {{ query: hats }} }}
"
    );
    let cfg = config(KEYS, "grpc-bound", &dir);
    let control = cfg.control();
    let run = tokio::spawn(loadgen::run(Arc::new(load(&dir, &yaml).unwrap()), cfg));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(arrived.load(Ordering::SeqCst), 3, "three calls in flight, the others wait for a slot");
    control.stop();
    let outcome = run.await.unwrap().unwrap();
    assert!(outcome.to_json()["steps"][0]["errors"]["cancelled"].as_u64().unwrap() >= 30);
    shutdown.fire();
}

/// A server-streaming method over the catalogue's products: `limit` products, then an
/// `UNAVAILABLE` status when the query is `fail`.
#[derive(Clone, Copy, Debug)]
struct Products;

impl tonic::server::ServerStreamingService<shop::proto::SearchRequest> for Products {
    type Response = shop::proto::Product;
    type ResponseStream = tokio_stream::Iter<std::vec::IntoIter<Result<shop::proto::Product, tonic::Status>>>;
    type Future = std::future::Ready<Result<tonic::Response<Self::ResponseStream>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<shop::proto::SearchRequest>) -> Self::Future {
        let r = request.get_ref();
        let mut items: Vec<_> = (1..=r.limit).filter_map(shop::catalog::product).map(Ok).collect();
        if r.query == "fail" {
            items.push(Err(tonic::Status::unavailable("the stream broke")));
        }
        std::future::ready(Ok(tonic::Response::new(tokio_stream::iter(items))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stream_is_read_to_its_end_and_counted_per_message() {
    let base = ServiceBase::new("watch", Verifier::new(KeyRing::parse(KEYS).unwrap()));
    let app = axum::Router::new()
        .route(
            "/shop.watch.v1.Watch/Products",
            axum::routing::post(|req: axum::extract::Request| async move {
                let codec =
                    tonic_prost::ProstCodec::<shop::proto::Product, shop::proto::SearchRequest>::new();
                tonic::server::Grpc::new(codec)
                    .server_streaming(Products, req)
                    .await
                    .map(axum::body::Body::new)
            }),
        )
        .layer(base.server_layer());
    let shutdown = Shutdown::new();
    let addr = serve("127.0.0.1:0".parse().unwrap(), app, &shutdown).await.unwrap();
    let dir = scratch("stream");
    std::fs::write(
        dir.join("watch.proto"),
        "syntax = \"proto3\";\npackage shop.watch.v1;\nimport \"catalog.proto\";\nservice Watch { rpc Products(shop.catalog.v1.SearchRequest) returns (stream shop.catalog.v1.Product); }\n",
    )
    .unwrap();
    let yaml = format!(
        "target: http://{addr}
phases: [{{ duration: 1s, arrival_rate: 10 }}]
journeys:
  - name: watch
    steps:
      - name: four
        grpc: {{ proto: watch.proto, call: shop.watch.v1.Watch/Products, message: {{ limit: 4 }} }}
        capture: {{ sku: {{ json: \"$.sku\" }} }}
        expect: {{ json: {{ \"$.sku\": sku-1 }} }}
      - name: broken
        grpc: {{ proto: watch.proto, call: shop.watch.v1.Watch/Products, message: {{ query: fail, limit: 2 }} }}
"
    );
    let outcome =
        loadgen::run(Arc::new(load(&dir, &yaml).unwrap()), config(KEYS, "grpc-stream", &dir)).await.unwrap();
    let report = outcome.to_json();
    let (four, broken) = (&report["steps"][0], &report["steps"][1]);
    let calls = four["requests"].as_u64().unwrap();
    assert!(calls >= 5, "{report}");
    assert_eq!(four["grpc_status_codes"]["OK"].as_u64(), Some(calls), "{four}");
    assert_eq!(four["errors"]["expectation"], 0, "the first message is the answer: {four}");
    assert_eq!(four["grpc_messages"].as_u64(), Some(4 * calls), "every message counted: {four}");
    assert_eq!(four["tagged"].as_u64(), Some(calls), "{four}");
    // A stream cut by an error status: its messages still count, and the status is named.
    assert_eq!(broken["grpc_status_codes"]["UNAVAILABLE"].as_u64(), Some(calls), "{broken}");
    assert_eq!(broken["grpc_messages"].as_u64(), Some(2 * calls), "{broken}");
    assert_eq!(broken["errors"]["status"].as_u64(), Some(calls), "{broken}");
    assert!(
        outcome.summary().contains(&format!("grpc stream messages: {}", 6 * calls)),
        "{}",
        outcome.summary()
    );
    assert_eq!(base.requests().synthetic, 2 * calls, "the marker verified on every call");
    shutdown.fire();
}

/// A journey written in Rust calls the catalogue through the generated client on
/// `user.grpc()`: every call verified by the catalogue, timed and counted by name with its
/// status; a wrong key is `PERMISSION_DENIED` in the journey's error and the report; after a
/// stop the channel sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_journey_calls_the_catalogue_through_a_generated_client() {
    use shop::proto::{GetProductRequest, SearchRequest, catalog_client::CatalogClient};

    let (addr, base, shutdown) = catalog().await;
    let dir = scratch("rust-client");
    let journey = loadgen::Journey::new("browse over grpc").run(|user| async move {
        let mut client = CatalogClient::new(user.grpc()?);
        let found = user
            .call("search", client.search(SearchRequest { query: "hats".into(), limit: 3 }))
            .await?
            .into_inner();
        let first = found.products.first().ok_or("no product found")?;
        // A branch on the answer.
        if first.price_cents > 0 {
            user.call("product", client.get_product(GetProductRequest { id: first.id })).await?;
        }
        Ok(())
    });
    let scenario = Scenario::new(format!("http://{addr}").parse().unwrap())
        .phase(loadgen::Phase::Load {
            duration: Duration::from_secs(1),
            rate: 20.0,
            ramp_to: 20.0,
            max_concurrent: None,
        })
        .journey(journey.clone());
    let outcome =
        loadgen::run(Arc::new(scenario.clone()), config(KEYS, "grpc-rust", &dir).with_no_preflight(true))
            .await
            .unwrap();
    let report = outcome.to_json();
    assert_eq!(outcome.exit(), loadgen::Exit::Ok, "{}", outcome.summary());
    let step =
        |name: &str| report["steps"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap().clone();
    for name in ["search", "product"] {
        let s = step(name);
        assert_eq!(s["requests"], 20, "{s}");
        assert_eq!(s["grpc_status_codes"]["OK"], 20, "{s}");
        assert_eq!(s["tagged"], 20, "the catalogue echoed the run: {s}");
        assert!(s["latency_ms"]["p50"].as_f64().is_some(), "{s}");
    }
    let seen = base.requests();
    assert_eq!((seen.synthetic, seen.real, seen.rejected), (40, 0, 0), "every call verified: {seen:?}");

    // A key the catalogue does not trust: PERMISSION_DENIED, by name, in the journey's failure.
    let outcome = loadgen::run(
        Arc::new(scenario),
        config(WRONG_KEYS, "grpc-rust-denied", &dir).with_no_preflight(true),
    )
    .await
    .unwrap();
    let report = outcome.to_json();
    assert_eq!(outcome.exit(), loadgen::Exit::Ok, "no threshold: the run itself completed");
    let search = report["steps"].as_array().unwrap().iter().find(|s| s["name"] == "search").unwrap();
    assert_eq!(search["grpc_status_codes"]["PERMISSION_DENIED"], 20, "{search}");
    assert_eq!(search["errors"]["status"], 20, "{search}");
    let failures = &report["by_journey"][0]["failures"];
    assert_eq!(failures["search: grpc PERMISSION_DENIED"], 20, "{failures}");
    assert_eq!(base.requests().synthetic, 40, "no refused call reached the handler");

    // After a stop, a client made on the channel sends nothing, even from a task that outlives
    // the journey (the run cannot cancel what it did not start).
    let seen_before = base.requests();
    let config = config(KEYS, "grpc-rust-stop", &dir).with_no_preflight(true);
    let control = config.control();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = Arc::new(Mutex::new(Some(tx)));
    let waits = loadgen::Journey::new("waits").run(move |user| {
        let (control, tx) = (control.clone(), tx.clone());
        async move {
            let mut client = CatalogClient::new(user.grpc()?);
            if let Some(tx) = tx.lock().unwrap().take() {
                let waiting = control.clone();
                tokio::spawn(async move {
                    waiting.stopped().await;
                    let answer = client.search(SearchRequest { query: "hats".into(), limit: 1 }).await;
                    let _ = tx.send(answer.map(|_| ()).map_err(|e| e.code()));
                });
                control.stop();
            }
            Ok(())
        }
    });
    let scenario = Scenario::new(format!("http://{addr}").parse().unwrap())
        .phase(loadgen::Phase::Load {
            duration: Duration::from_secs(5),
            rate: 5.0,
            ramp_to: 5.0,
            max_concurrent: None,
        })
        .journey(waits);
    let outcome = loadgen::run(Arc::new(scenario), config).await.unwrap();
    assert_eq!(outcome.finished.ending, Ending::Stopped);
    let after_stop = tokio::time::timeout(Duration::from_secs(5), rx).await.unwrap().unwrap();
    assert_eq!(after_stop, Err(tonic::Code::Cancelled), "refused on this side, not sent");
    let seen = base.requests();
    assert_eq!(
        seen.synthetic + seen.rejected + seen.real,
        seen_before.synthetic + seen_before.rejected + seen_before.real,
        "nothing reached the catalogue after the stop"
    );
    shutdown.fire();
}
