//! What `MirrorLayer` adds to a real request on an in-process axum hello-world:
//! `cargo bench -p synth-tower --features mirror,axum --bench mirror`.
//!
//! Compare `mirror_*` with `bare` of the same request: the difference is the layer's cost on the
//! real path. Targets: <= 50 ns at share 0, <= 1.5 us at share 1 (plus the body copy).
//!
//! - `share_0/*`, `share_1/*`: the layer per route (`Router::layer`; axum boxes the layer's
//!   bodies once more); `*/outer_get`: the layer around the whole router.
//! - `share_1/*`: copies go to an in-process dark service that answers at once, sent from the
//!   mirror's own threads. Pinned to one core (`taskset -c 0`), the figure is all the CPU a
//!   mirrored request costs, building, queuing and sending its copy included.
//! - `share_1_queue_full/get`: the dark target never gets ready, the queue is full, and the
//!   real request pays only for finding that out.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::{convert::Infallible, time::Duration};

use axum::{
    Router,
    body::{Body, Bytes},
    routing::{get, post},
};
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use synth_ctx::{KeyRing, RunId, Signer};
use synth_tower::mirror::{DarkTarget, MirrorLayer};
use tower::{ServiceExt, service_fn};

fn keys() -> KeyRing {
    KeyRing::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8").unwrap()
}

fn get_request() -> Request<Body> {
    Request::get("/products/7?q=shoes")
        .header("user-agent", "bench")
        .header("accept", "application/json")
        .header("x-request-id", "4bf92f3577b34da6a3ce929d0e0e4736")
        .body(Body::empty())
        .unwrap()
}

fn post_request(body: &Bytes) -> Request<Body> {
    Request::post("/orders")
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .body(Body::from(body.clone()))
        .unwrap()
}

fn mirror(share: f64) -> MirrorLayer {
    let dark = service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
    });
    MirrorLayer::builder(
        DarkTarget::service(dark, "in process"),
        Signer::new(keys()),
        RunId::new("bench").unwrap(),
    )
    .share(share)
    .build()
    .unwrap()
}

fn layer(c: &mut Criterion) {
    // The bench thread runs the measured requests (block_on); the mirror sends from its own threads.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let bare: Router = Router::new()
        .route("/products/{id}", get(|| async { "hello" }))
        .route("/orders", post(|body: Bytes| async move { body.len().to_string() }));
    let body = Bytes::from(vec![b'x'; 4096]);

    let mut group = c.benchmark_group("mirror");
    group.bench_function("bare/get", |b| b.to_async(&rt).iter(|| run(bare.clone(), get_request())));
    group.bench_function("bare/post_4k", |b| b.to_async(&rt).iter(|| run(bare.clone(), post_request(&body))));
    for (name, share) in [("share_0", 0.0), ("share_1", 1.0)] {
        // `Router::layer`: axum boxes the layer's bodies again for each route.
        let layered = bare.clone().layer(mirror(share));
        group.bench_function(format!("{name}/get"), |b| {
            b.to_async(&rt).iter(|| run(layered.clone(), get_request()))
        });
        group.bench_function(format!("{name}/post_4k"), |b| {
            b.to_async(&rt).iter(|| run(layered.clone(), post_request(&body)))
        });
        // Around the whole router, as a server would serve it: the answer is not boxed again.
        let outer = tower::ServiceBuilder::new().layer(mirror(share)).service(bare.clone());
        group.bench_function(format!("{name}/outer_get"), |b| {
            b.to_async(&rt).iter(|| run(outer.clone(), get_request()))
        });
    }
    // A dark target that is slow or gone: the queue is full, so the mirror builds no copy at
    // all. What a real request pays then.
    let stalled = bare.clone().layer(mirror_stalled());
    group.bench_function("share_1_queue_full/get", |b| {
        b.to_async(&rt).iter(|| run(stalled.clone(), get_request()))
    });
    group.finish();
}

/// Share 1 to a dark service that is never ready, one copy at a time, a queue of one.
fn mirror_stalled() -> MirrorLayer {
    #[derive(Clone)]
    struct NeverReady;
    impl tower::Service<Request<Full<Bytes>>> for NeverReady {
        type Response = Response<Full<Bytes>>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;
        fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
            std::task::Poll::Pending
        }
        fn call(&mut self, _: Request<Full<Bytes>>) -> Self::Future {
            std::future::ready(Ok(Response::new(Full::new(Bytes::new()))))
        }
    }
    MirrorLayer::builder(
        DarkTarget::service(NeverReady, "stalled"),
        Signer::new(keys()),
        RunId::new("bench").unwrap(),
    )
    .share(1.0)
    .queue(1)
    .concurrency(1)
    .timeout(Duration::from_secs(3600))
    .build()
    .unwrap()
}

/// One request through `app`, its answer read to the end (as a server would).
async fn run<S, B>(app: S, req: Request<Body>)
where
    S: tower::Service<Request<Body>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let res = app.oneshot(req).await.unwrap();
    let _ = res.into_body().collect().await.unwrap();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    targets = layer
}
criterion_main!(benches);
