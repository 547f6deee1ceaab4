//! HTTPS targets: TLS with ALPN (h2 or http/1.1, as the server chooses), the marker verified by
//! the server's synth layer over TLS, and a certificate the run does not trust refused.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use axum::{Router, http::Version, routing::get};
use hyper_util::{rt::TokioExecutor, rt::TokioIo, server::conn::auto, service::TowerToHyperService};
use loadgen::{ErrorClass, Finished, RunConfig, Scenario, scenario};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use synth_ctx::{KeyRing, RunId, Verifier};
use synth_tower::VerifySyntheticLayer;

const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tls").join(name)
}

/// An HTTPS server offering `alpn`; answers with the HTTP version it saw; counts requests.
async fn tls_server(alpn: &[&[u8]]) -> (SocketAddr, Arc<AtomicUsize>) {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(data("server.pem")).unwrap().collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_file(data("server.key")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = Router::new()
        .route(
            "/",
            get(move |v: Version| {
                h.fetch_add(1, Ordering::SeqCst);
                async move { ([("x-version", format!("{v:?}"))], "ok") }
            }),
        )
        .layer(VerifySyntheticLayer::new(Verifier::new(KeyRing::parse(KEYS).unwrap())));
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
    (addr, hits)
}

fn scenario_file(name: &str, yaml: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("loadgen-tls-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(data("ca.pem"), dir.join("ca.pem")).unwrap();
    let path = dir.join("s.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// A quiet run through the typed API, without preflight: the tests count every request.
async fn run(path: &Path) -> Finished {
    let config = RunConfig::new(KeyRing::parse(KEYS).unwrap())
        .with_run_id(RunId::new("tls").unwrap())
        .with_seed(1)
        .with_quiet(true)
        .with_no_preflight(true);
    loadgen::run(Arc::new(Scenario::from_file(path).unwrap()), config).await.unwrap().finished
}

fn yaml(addr: SocketAddr, extra: &str, version: &str) -> String {
    format!(
        "target: https://{addr}\n{extra}phases: [{{ duration: 1s, arrival_rate: 20 }}]\njourneys:\n  - name: s\n    steps: [{{ get: /, expect: {{ status: 200, header: {{ x-version: \"{version}\" }} }} }}]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_negotiates_h2_or_http1_by_alpn_and_every_request_is_tagged() {
    for (alpn, extra, want) in [
        (&[b"h2".as_slice(), b"http/1.1"][..], "tls: { ca: ca.pem }\n", "HTTP/2.0"),
        (&[b"http/1.1".as_slice()][..], "tls: { ca: ca.pem }\n", "HTTP/1.1"),
        (&[b"h2".as_slice(), b"http/1.1"][..], "tls: { ca: ca.pem }\nhttp2: true\n", "HTTP/2.0"),
    ] {
        let (addr, hits) = tls_server(alpn).await;
        let finished = run(&scenario_file("alpn", &yaml(addr, extra, want))).await;
        let total = finished.total();
        assert!(total.responses >= 15, "{want}: {total:?}");
        assert_eq!(total.error_count(), 0, "{want}: every answer came over {want}: {:?}", total.errors);
        assert_eq!(total.tagged, total.responses, "the server verified every marker over TLS");
        assert_eq!(hits.load(Ordering::SeqCst) as u64, total.responses);
    }
    // `http2: true` offers only h2: a server that speaks only HTTP/1.1 cannot agree (the case
    // above passes even if the flag were ignored, since the server prefers h2 anyway).
    let (addr, hits) = tls_server(&[b"http/1.1"]).await;
    let finished =
        run(&scenario_file("h2only", &yaml(addr, "tls: { ca: ca.pem }\nhttp2: true\n", "HTTP/2.0"))).await;
    let total = finished.total();
    assert_eq!(total.responses, 0, "{total:?}");
    assert!(total.errors.get(&ErrorClass::Connect).copied().unwrap_or(0) >= 15, "{:?}", total.errors);
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_refused_before_any_request() {
    let (addr, hits) = tls_server(&[b"h2", b"http/1.1"]).await;
    // No `tls.ca`: the test CA is not among the system's roots.
    let finished = run(&scenario_file("untrusted", &yaml(addr, "", "HTTP/2.0"))).await;
    let total = finished.total();
    assert_eq!(total.responses, 0);
    assert!(total.errors.get(&ErrorClass::Connect).copied().unwrap_or(0) >= 15, "{:?}", total.errors);
    assert_eq!(hits.load(Ordering::SeqCst), 0, "no request (and no marker) reached the server");
}

#[test]
fn a_bad_ca_file_is_a_clear_scenario_error() {
    let path = scenario_file(
        "badca",
        "target: https://127.0.0.1:1\ntls: { ca: missing.pem }\nphases: [{ duration: 1s, arrival_rate: 1 }]\njourneys: [{ name: s, steps: [{ get: / }] }]\n",
    );
    let err = scenario::load(&path).unwrap_err().to_string();
    assert!(err.contains(":2:") && err.contains("tls.ca") && err.contains("missing.pem"), "{err}");
    std::fs::write(path.with_file_name("empty.pem"), "not a certificate\n").unwrap();
    std::fs::write(&path, "target: https://127.0.0.1:1\ntls: { ca: empty.pem }\nphases: [{ duration: 1s, arrival_rate: 1 }]\njourneys: [{ name: s, steps: [{ get: / }] }]\n").unwrap();
    let err = scenario::load(&path).unwrap_err().to_string();
    assert!(err.contains("holds no certificate"), "{err}");
}
