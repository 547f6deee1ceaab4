//! Cost of the layers on an in-process axum hello-world: `cargo bench -p synth-tower`.
//!
//! Compare `layered/*` with `bare/*` of the same request: the difference is what the layer adds.
//! Targets: <= 300 ns without a marker, <= 600 ns with a (cached) valid one.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::{convert::Infallible, hint::black_box, time::Duration};

use axum::{Router, body::Body, routing::get};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use synth_ctx::{KeyRing, Origin, RunId, Signer, Verifier};
use synth_tower::{PropagateSyntheticLayer, VerifySyntheticLayer};
use tower::{Layer, ServiceExt, service_fn};

fn keys() -> KeyRing {
    KeyRing::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8").unwrap()
}

fn request(token: Option<&str>) -> Request<Body> {
    let mut req = Request::get("/").header("user-agent", "bench");
    if let Some(t) = token {
        req = req.header("synthetic-traffic", t);
    }
    req.body(Body::empty()).unwrap()
}

fn server(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let token =
        Signer::new(keys()).mint(Origin::Load, &RunId::new("bench").unwrap(), Duration::from_secs(3600));
    let bare: Router = Router::new().route("/", get(|| async { "hello" }));
    let layered =
        bare.clone().layer(VerifySyntheticLayer::new(Verifier::new(keys())).with_service_name("bench"));

    let mut group = c.benchmark_group("server");
    for (name, token) in [("no_marker", None), ("cached_marker", Some(token.as_str()))] {
        group.bench_with_input(BenchmarkId::new("bare", name), &token, |b, token| {
            b.to_async(&rt).iter(|| bare.clone().oneshot(request(*token)))
        });
        group.bench_with_input(BenchmarkId::new("layered", name), &token, |b, token| {
            b.to_async(&rt).iter(|| layered.clone().oneshot(request(*token)))
        });
    }
    group.finish();
}

fn client(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let synthetic = Signer::new(keys()).mint_synthetic(
        Origin::Load,
        &RunId::new("bench").unwrap(),
        Duration::from_secs(3600),
    );
    let send = service_fn(|req: Request<Body>| async move {
        black_box(req.headers().len());
        Ok::<_, Infallible>(Response::new(Body::empty()))
    });
    let propagating = PropagateSyntheticLayer::new().layer(send);

    let mut group = c.benchmark_group("client");
    group.bench_function("bare/real", |b| b.to_async(&rt).iter(|| send.oneshot(request(None))));
    group.bench_function("propagating/real", |b| {
        b.to_async(&rt).iter(|| propagating.clone().oneshot(request(None)))
    });
    group.bench_function("propagating/synthetic", |b| {
        let _scope = synthetic.attach();
        b.to_async(&rt).iter(|| propagating.clone().oneshot(request(None)))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    targets = server, client
}
criterion_main!(benches);
