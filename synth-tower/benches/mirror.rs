//! What `MirrorLayer` adds to a real request on an in-process axum hello-world:
//! `cargo bench -p synth-tower --features mirror,axum --bench mirror`.
//!
//! Compare `mirror_*` with `bare` of the same request: the difference is the layer's cost on the
//! real path. Targets: <= 50 ns at share 0, <= 1.5 us at share 1 (plus the body copy, which is by
//! reference). Copies go to an in-process dark service that answers at once; they are sent by
//! the mirror's task on the runtime's worker thread, while the measured requests run on the
//! bench thread, so the sending is not counted here (the throughput benchmark,
//! `scripts/bench-mirror`, counts everything).

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
    // The bench thread runs the measured requests (block_on); the mirror's sender runs on the one
    // worker thread.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let bare: Router = Router::new()
        .route("/products/{id}", get(|| async { "hello" }))
        .route("/orders", post(|body: Bytes| async move { body.len().to_string() }));
    let body = Bytes::from(vec![b'x'; 4096]);

    let mut group = c.benchmark_group("mirror");
    group.bench_function("bare/get", |b| b.to_async(&rt).iter(|| run(bare.clone(), get_request())));
    group.bench_function("bare/post_4k", |b| b.to_async(&rt).iter(|| run(bare.clone(), post_request(&body))));
    for (name, share) in [("share_0", 0.0), ("share_1", 1.0)] {
        let layered = bare.clone().layer(mirror(share));
        group.bench_function(format!("{name}/get"), |b| {
            b.to_async(&rt).iter(|| run(layered.clone(), get_request()))
        });
        group.bench_function(format!("{name}/post_4k"), |b| {
            b.to_async(&rt).iter(|| run(layered.clone(), post_request(&body)))
        });
    }
    group.finish();
}

/// One request through `app`, its answer read to the end (as a server would).
async fn run(app: Router, req: Request<Body>) {
    let res = app.oneshot(req).await.unwrap();
    let _ = res.into_body().collect().await.unwrap();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    targets = layer
}
criterion_main!(benches);
