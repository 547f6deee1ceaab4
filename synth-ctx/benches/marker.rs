//! Marker hot paths: `cargo bench -p synth-ctx`.
//!
//! Targets on a 2-core CI machine: cached verify <= 100 ns, cold verify <= 2 µs.

#![allow(missing_docs, clippy::unwrap_used)]

use std::{collections::HashMap, hint::black_box, time::Duration};

use criterion::{Criterion, criterion_group, criterion_main};
use opentelemetry::{Context, propagation::TextMapPropagator};
use synth_ctx::{KeyRing, Origin, RunId, Signer, SyntheticPropagator, Verifier};

fn keys() -> KeyRing {
    KeyRing::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8").unwrap()
}

fn bench(c: &mut Criterion) {
    let keys = keys();
    let signer = Signer::new(keys.clone());
    let run = RunId::new("bench-run-2026-11-27").unwrap();
    let token = signer.mint(Origin::Load, &run, Duration::from_secs(3600));

    c.bench_function("mint", |b| {
        b.iter(|| signer.mint(Origin::Load, black_box(&run), Duration::from_secs(3600)))
    });

    let cold = Verifier::new(keys.clone()).with_cache_capacity(0);
    c.bench_function("verify_cold", |b| b.iter(|| cold.verify(black_box(&token)).unwrap()));

    let cached = Verifier::new(keys.clone());
    cached.verify(&token).unwrap();
    c.bench_function("verify_cached", |b| b.iter(|| cached.verify(black_box(&token)).unwrap()));

    let forged = format!("{}A", &token[..token.len() - 1]);
    c.bench_function("verify_forged", |b| b.iter(|| cached.verify(black_box(&forged)).unwrap_err()));

    let propagator = SyntheticPropagator::new().with_verifier(Verifier::new(keys));
    let mut headers = HashMap::new();
    headers.insert("synthetic-traffic".to_owned(), token.clone());
    headers.insert("baggage".to_owned(), "tenant=acme,region=eu".to_owned());
    c.bench_function("propagator_extract_cached", |b| {
        b.iter(|| propagator.extract_with_context(&Context::new(), black_box(&headers)))
    });

    // The hot path of real traffic: one baggage line, no marker.
    let mut real = HashMap::new();
    real.insert("baggage".to_owned(), "tenant=acme,region=eu,user.tier=gold".to_owned());
    c.bench_function("propagator_extract_real", |b| {
        b.iter(|| propagator.extract_with_context(&Context::new(), black_box(&real)))
    });

    #[cfg(feature = "http")]
    {
        let mut real = http::HeaderMap::new();
        real.insert("baggage", http::HeaderValue::from_static("tenant=acme,region=eu,user.tier=gold"));
        c.bench_function("find_marker_real", |b| {
            b.iter(|| synth_ctx::http::find_marker(black_box(&real)).is_none())
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
