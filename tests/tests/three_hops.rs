//! A → B → C over real sockets: A is axum, B is tonic gRPC (called through the propagation
//! layer or the interceptor), C is axum (called by B through reqwest-middleware). Each service
//! has the synth server layer.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::{net::SocketAddr, time::Duration};

use axum::{Router, http::HeaderMap, routing::get};
use synth_ctx::{KeyRing, Origin, RunId, Signer, Verifier};
use synth_e2e::hop::{
    ForwardReply, ForwardRequest,
    hop_client::HopClient,
    hop_server::{Hop, HopServer},
};
use synth_tower::{PropagateSyntheticLayer, VerifySyntheticLayer, reqwest::PropagateSyntheticMiddleware};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, transport::Channel};
use tower::ServiceBuilder;

const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

fn verifier() -> Verifier {
    Verifier::new(KeyRing::parse(KEYS).unwrap())
}

fn mint(run: &str) -> String {
    Signer::new(KeyRing::parse(KEYS).unwrap()).mint(
        Origin::Load,
        &RunId::new(run).unwrap(),
        Duration::from_secs(600),
    )
}

fn seen() -> String {
    synth_ctx::current().map_or_else(|| "real".to_owned(), |s| format!("synthetic {}", s.run()))
}

async fn listener() -> (tokio::net::TcpListener, SocketAddr) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

/// C: says what it saw, and which baggage members arrived.
async fn start_c() -> SocketAddr {
    let app = Router::new()
        .route(
            "/c",
            get(|headers: HeaderMap| async move {
                synth_ctx::trail::record_guard("third-party");
                let tenant = headers
                    .get("baggage")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|b| b.split(',').any(|m| m.trim() == "tenant=acme"));
                format!("{} tenant={tenant}", seen())
            }),
        )
        .layer(VerifySyntheticLayer::new(verifier()).with_service_name("c"));
    let (l, addr) = listener().await;
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

struct B {
    c: SocketAddr,
    http: reqwest_middleware::ClientWithMiddleware,
}

#[tonic::async_trait]
impl Hop for B {
    async fn forward(&self, request: Request<ForwardRequest>) -> Result<Response<ForwardReply>, Status> {
        // The marker is in the request extensions and in the scope.
        assert_eq!(
            synth_tower::tonic::synthetic(&request).map(|s| s.run().to_string()),
            synth_ctx::current().map(|s| s.run().to_string())
        );
        let from_c = self
            .http
            .get(format!("http://{}/c", self.c))
            .send()
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .text()
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(ForwardReply { seen_by_b: seen(), from_c }))
    }
}

/// B: tonic, with the generic server layer.
async fn start_b(c: SocketAddr) -> SocketAddr {
    let http = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(PropagateSyntheticMiddleware::new())
        .build();
    let (l, addr) = listener().await;
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(VerifySyntheticLayer::new(verifier()).with_service_name("b"))
            .add_service(HopServer::new(B { c, http }))
            .serve_with_incoming(TcpListenerStream::new(l))
            .await
            .unwrap()
    });
    addr
}

/// Calls B through the propagation layer around the channel, or through the interceptor.
async fn call_b(channel: Channel, interceptor: bool) -> String {
    let spawned = synth_ctx::spawn(async { seen() }).await.unwrap();
    let request = ForwardRequest { note: "x".into() };
    let reply = if interceptor {
        HopClient::with_interceptor(channel, synth_tower::tonic::propagate).forward(request).await
    } else {
        HopClient::new(ServiceBuilder::new().layer(PropagateSyntheticLayer::new()).service(channel))
            .forward(request)
            .await
    }
    .unwrap()
    .into_inner();
    format!("a={}|spawned={spawned}|b={}|c={}", seen(), reply.seen_by_b, reply.from_c)
}

/// A: axum; `/a` calls B through the propagation layer, `/a-interceptor` through the interceptor.
async fn start_a(b: SocketAddr) -> SocketAddr {
    let channel = Channel::from_shared(format!("http://{b}")).unwrap().connect_lazy();
    let (c1, c2) = (channel.clone(), channel);
    let app = Router::new()
        .route("/a", get(move || call_b(c1.clone(), false)))
        .route("/a-interceptor", get(move || call_b(c2.clone(), true)))
        .layer(VerifySyntheticLayer::new(verifier()).with_service_name("a"));
    let (l, addr) = listener().await;
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

async fn start_all() -> SocketAddr {
    let c = start_c().await;
    let b = start_b(c).await;
    start_a(b).await
}

async fn call_a(a: SocketAddr, query: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = reqwest::Client::new().get(format!("http://{a}/a{query}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_marker_reaches_every_hop_and_the_path_comes_back() {
    let a = start_all().await;
    let token = mint("three-hops");
    let res = call_a(a, "", &[("synthetic-traffic", &token), ("baggage", "tenant=acme")]).await;
    assert_eq!(res.status(), 200);
    let h = |n: &str| res.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(h("synthetic-traffic-seen").as_deref(), Some("three-hops"));
    assert_eq!(h("synthetic-traffic-path").as_deref(), Some("a>b>c"));
    assert_eq!(h("synthetic-traffic-guards").as_deref(), Some("third-party"));
    let services: Vec<String> =
        synth_ctx::trail::path_services(&h("synthetic-traffic-path").unwrap()).map(str::to_owned).collect();
    assert_eq!(services, ["a", "b", "c"]);
    assert_eq!(
        res.text().await.unwrap(),
        "a=synthetic three-hops|spawned=synthetic three-hops|b=synthetic three-hops|c=synthetic three-hops tenant=true"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marker_only_in_baggage_and_through_the_interceptor() {
    let a = start_all().await;
    let token = mint("baggage-only");
    let baggage = format!("tenant=acme,synthetic={token}");
    let res = call_a(a, "-interceptor", &[("baggage", &baggage)]).await;
    // The interceptor cannot read responses, so B's hop is reported but not C's.
    assert_eq!(res.headers()["synthetic-traffic-path"], "a");
    assert_eq!(
        res.text().await.unwrap(),
        "a=synthetic baggage-only|spawned=synthetic baggage-only|b=synthetic baggage-only|c=synthetic baggage-only tenant=true"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_and_synthetic_requests_interleaved_never_mix() {
    let a = start_all().await;
    let mut tasks = Vec::new();
    for i in 0..24 {
        tasks.push(tokio::spawn(async move {
            if i % 3 == 0 {
                let res = call_a(a, "", &[]).await;
                assert!(res.headers().get("synthetic-traffic-path").is_none());
                (res.text().await.unwrap(), "a=real|spawned=real|b=real|c=real tenant=false".to_owned())
            } else {
                let run = format!("mix-{i}");
                let body = call_a(a, "", &[("synthetic-traffic", &mint(&run))]).await.text().await.unwrap();
                let s = format!("synthetic {run}");
                (body, format!("a={s}|spawned={s}|b={s}|c={s} tenant=false"))
            }
        }));
    }
    for t in tasks {
        let (got, want) = t.await.unwrap();
        assert_eq!(got, want);
    }
}
