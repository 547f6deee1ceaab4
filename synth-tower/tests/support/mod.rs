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
