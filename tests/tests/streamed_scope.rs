//! A synthetic request's streamed response body is produced inside its synthetic scope: server-sent
//! events and a chunked stream in axum, and a tonic server stream. A guard inside the stream is
//! suppressed for synthetic requests and runs for real ones.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::{convert::Infallible, net::SocketAddr, pin::Pin, time::Duration};

use axum::{
    Router,
    body::Body,
    response::sse::{Event, Sse},
    routing::get,
};
use futures_util::{Stream, StreamExt, stream};
use http_body_util::BodyExt;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use synth_ctx::{KeyRing, Origin, RunId, Signer, Verifier};
use synth_e2e::ticker::{
    Tick, TicksRequest,
    ticker_client::TickerClient,
    ticker_server::{Ticker, TickerServer},
};
use synth_guards::Guard;
use synth_tower::VerifySyntheticLayer;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, transport::Channel};

const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
const ITEMS: usize = 5;

fn layer() -> VerifySyntheticLayer {
    VerifySyntheticLayer::new(Verifier::new(KeyRing::parse(KEYS).unwrap()))
}

fn token(run: &str) -> String {
    Signer::new(KeyRing::parse(KEYS).unwrap()).mint(
        Origin::Load,
        &RunId::new(run).unwrap(),
        Duration::from_secs(60),
    )
}

/// What the code producing one item saw, after running the item's side effect through `guard`.
fn produce_item(guard: &Guard) -> String {
    // The effect's outcome does not matter here; the guard's counters say whether it ran.
    let _ = guard.decide(false).allows_effect();
    synth_ctx::current().map_or_else(|| "real".to_owned(), |s| format!("synthetic {}", s.run()))
}

/// `ITEMS` items, each produced after a sleep, so every item comes from a later poll (on whatever
/// worker thread), long after the handler's future returned.
fn items(guard: Guard) -> impl Stream<Item = String> + Send + 'static {
    stream::unfold(0, move |n| {
        let guard = guard.clone();
        async move {
            if n == ITEMS {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            Some((produce_item(&guard), n + 1))
        }
    })
}

async fn serve_axum(sse_guard: Guard, chunk_guard: Guard) -> SocketAddr {
    let app =
        Router::new()
            .route(
                "/sse",
                get(move || {
                    let guard = sse_guard.clone();
                    async move {
                        Sse::new(items(guard).map(|seen| Ok::<_, Infallible>(Event::default().data(seen))))
                    }
                }),
            )
            .route(
                "/chunks",
                get(move || {
                    let guard = chunk_guard.clone();
                    async move {
                        Body::from_stream(items(guard).map(|seen| Ok::<_, Infallible>(format!("{seen}\n"))))
                    }
                }),
            )
            .layer(layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

async fn get_lines(addr: SocketAddr, path: &str, marker: Option<&str>) -> Vec<String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<http_body_util::Empty<bytes::Bytes>>();
    let mut req = http::Request::get(format!("http://{addr}{path}"));
    if let Some(m) = marker {
        req = req.header("synthetic-traffic", m);
    }
    let res = client.request(req.body(http_body_util::Empty::new()).unwrap()).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec())
        .unwrap()
        .lines()
        .map(|l| l.strip_prefix("data: ").unwrap_or(l).to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_and_chunked_bodies_are_produced_in_the_synthetic_scope() {
    let (sse_guard, chunk_guard) = (Guard::new("test.stream.sse"), Guard::new("test.stream.chunks"));
    let addr = serve_axum(sse_guard.clone(), chunk_guard.clone()).await;
    for (path, guard) in [("/sse", &sse_guard), ("/chunks", &chunk_guard)] {
        let before = guard.stats();
        let lines = get_lines(addr, path, Some(&token("stream-1"))).await;
        assert_eq!(lines, vec!["synthetic stream-1"; ITEMS], "{path}: every item in the scope");
        let after = guard.stats();
        assert_eq!(
            after.suppressed - before.suppressed,
            ITEMS as u64,
            "{path}: the guard in the stream was suppressed"
        );
        assert_eq!(after.executed, before.executed, "{path}: no real effect for a synthetic request");

        let lines = get_lines(addr, path, None).await;
        assert_eq!(lines, vec!["real"; ITEMS], "{path}: a real request stays real");
        let real = guard.stats();
        assert_eq!(real.executed - after.executed, ITEMS as u64, "{path}: real effects run");
        assert_eq!(real.suppressed, after.suppressed);
    }
}

struct Ticks(Guard);

#[tonic::async_trait]
impl Ticker for Ticks {
    type TicksStream = Pin<Box<dyn Stream<Item = Result<Tick, Status>> + Send + 'static>>;

    async fn ticks(&self, request: Request<TicksRequest>) -> Result<Response<Self::TicksStream>, Status> {
        let count = request.into_inner().count as usize;
        let stream = items(self.0.clone()).take(count).map(|seen| Ok(Tick { seen }));
        Ok(Response::new(Box::pin(stream)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tonic_server_stream_is_produced_in_the_synthetic_scope() {
    let guard = Guard::new("test.stream.grpc");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = TickerServer::new(Ticks(guard.clone()));
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(layer())
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap()
    });
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let client = TickerClient::new(channel);
    let collect = |marker: Option<String>| {
        let mut client = client.clone();
        async move {
            let mut request = Request::new(TicksRequest { count: ITEMS as u32 });
            if let Some(m) = marker {
                request.metadata_mut().insert("synthetic-traffic", m.parse().unwrap());
            }
            let mut stream = client.ticks(request).await.unwrap().into_inner();
            let mut seen = Vec::new();
            while let Some(tick) = stream.message().await.unwrap() {
                seen.push(tick.seen);
            }
            seen
        }
    };
    let before = guard.stats();
    assert_eq!(collect(Some(token("grpc-stream"))).await, vec!["synthetic grpc-stream"; ITEMS]);
    let after = guard.stats();
    assert_eq!(after.suppressed - before.suppressed, ITEMS as u64);
    assert_eq!(after.executed, before.executed);
    assert_eq!(collect(None).await, vec!["real"; ITEMS]);
    assert_eq!(guard.stats().executed - after.executed, ITEMS as u64);
}
