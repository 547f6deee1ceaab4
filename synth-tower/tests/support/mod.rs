//! Shared helpers: keys, tokens, loopback servers and a client.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::{net::SocketAddr, time::Duration};

use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use synth_ctx::{KeyRing, Origin, RunId, Signer, Verifier};
use synth_tower::{PropagateSynthetic, PropagateSyntheticLayer};
use tower::{Layer, ServiceExt};

pub const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

pub fn keys() -> KeyRing {
    KeyRing::parse(KEYS).unwrap()
}

pub fn verifier() -> Verifier {
    Verifier::new(keys())
}

pub fn mint(run: &str) -> String {
    Signer::new(keys()).mint(Origin::Load, &RunId::new(run).unwrap(), Duration::from_secs(600))
}

/// Serves `app` on a free loopback port.
pub async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

pub type HttpClient = PropagateSynthetic<Client<HttpConnector, Full<Bytes>>>;

/// A hyper-util client behind the propagation layer.
pub fn client() -> HttpClient {
    PropagateSyntheticLayer::new().layer(Client::builder(TokioExecutor::new()).build_http())
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

/// GETs `http://addr/path` with `headers`.
pub async fn fetch(client: &HttpClient, addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res: Response<_> = client.clone().oneshot(req.body(Full::new(Bytes::new())).unwrap()).await.unwrap();
    let (parts, body) = res.into_parts();
    let body = String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
    Answer { status: parts.status, headers: parts.headers, body }
}

/// Sends one request to `http://addr{path}`; the status and the body as text.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: axum::body::Body,
) -> (StatusCode, String) {
    let client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let mut req = Request::builder().method(method).uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = client.request(req.body(body).unwrap()).await.unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// [`send`], the status only.
pub async fn send_status(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: axum::body::Body,
) -> StatusCode {
    send(addr, method, path, headers, body).await.0
}

/// Waits (up to 10 s) until `done` holds.
pub async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A fresh, empty directory name under the temporary directory, for one test.
pub fn fresh_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("synth-tower-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Every file in `dir`, in name order, as one text.
pub fn dir_text(dir: &std::path::Path) -> String {
    let mut files: Vec<std::path::PathBuf> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files.iter().map(|f| std::fs::read_to_string(f).unwrap()).collect()
}

/// Bytes whose owner counts how many of them are alive.
struct Tracked {
    data: Vec<u8>,
    live: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl AsRef<[u8]> for Tracked {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.live.fetch_sub(self.data.len(), std::sync::atomic::Ordering::SeqCst);
    }
}

/// An 8 KiB buffer that starts with `head`, as a connection's read buffer does with a request's
/// head; `live` counts its bytes while any slice of it is alive.
pub fn tracked_buffer(live: &std::sync::Arc<std::sync::atomic::AtomicUsize>, head: &[u8]) -> Bytes {
    let mut data = vec![b'a'; 8192];
    data[..head.len()].copy_from_slice(head);
    live.fetch_add(data.len(), std::sync::atomic::Ordering::SeqCst);
    Bytes::from_owner(Tracked { data, live: live.clone() })
}
