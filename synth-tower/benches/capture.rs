//! What `CaptureLayer` adds to a real request on an in-process axum hello-world:
//! `taskset -c 0 cargo bench -p synth-tower --features capture,axum --bench capture`.
//!
//! Compare `capture_*` with `bare`: the difference is the layer's cost on the real path.
//! Targets: <= 100 ns when the request is not sampled, <= 2 us when it is (plus the body copy).
//! Records go to a sink that throws them away, on the capture's own thread; pinned to one core
//! the sampled figure also carries the writer's work (scrubbing, the JSON line).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use axum::{
    Router,
    body::{Body, Bytes},
    routing::{get, post},
};
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::BodyExt;
use synth_tower::capture::{CaptureLayer, CaptureRecord, CaptureSink, CaptureSinkError};
use tower::ServiceExt;

/// Takes every record and keeps none (the JSON line is still made, as a file sink would).
struct Discard;

impl CaptureSink for Discard {
    fn write(&self, record: &CaptureRecord) -> Result<(), CaptureSinkError> {
        std::hint::black_box(record.to_json_line());
        Ok(())
    }
}

fn get_request() -> Request<Body> {
    Request::get("/products/7?q=shoes")
        .header("user-agent", "bench")
        .header("accept", "application/json")
        .header("authorization", "Bearer 4bf92f3577b34da6a3ce929d0e0e4736")
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

fn capture(share: f64) -> CaptureLayer {
    // POST too: the bench measures a recorded body (GET, HEAD and OPTIONS only by default).
    CaptureLayer::builder(Discard)
        .share(share)
        .per_second(None)
        .methods([http::Method::GET, http::Method::POST])
        .build()
        .unwrap()
}

fn layer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let bare: Router = Router::new()
        .route("/products/{id}", get(|| async { "hello" }))
        .route("/orders", post(|body: Bytes| async move { body.len().to_string() }));
    let body = Bytes::from(format!("{{\"sku\":\"sku-7\",\"note\":\"{}\"}}", "x".repeat(4000)));

    let mut group = c.benchmark_group("capture");
    group.bench_function("bare/get", |b| b.to_async(&rt).iter(|| run(bare.clone(), get_request())));
    group.bench_function("bare/post_4k", |b| b.to_async(&rt).iter(|| run(bare.clone(), post_request(&body))));
    for (name, share) in [("share_0", 0.0), ("share_1", 1.0)] {
        let outer = tower::ServiceBuilder::new().layer(capture(share)).service(bare.clone());
        group.bench_function(format!("{name}/get"), |b| {
            b.to_async(&rt).iter(|| run(outer.clone(), get_request()))
        });
        group.bench_function(format!("{name}/post_4k"), |b| {
            b.to_async(&rt).iter(|| run(outer.clone(), post_request(&body)))
        });
    }
    group.finish();
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
