//! `http::HeaderMap` adapters.
#![cfg(feature = "http")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use opentelemetry::propagation::TextMapPropagator;
use synth_ctx::{
    KeyRing, Origin, RunId, Signer, SyntheticPropagator, Verifier,
    http::{HeaderExtractor, HeaderInjector, MarkerSource, find_marker, insert_marker, remove_marker},
};

fn keys() -> KeyRing {
    KeyRing::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8").unwrap()
}

#[test]
fn insert_find_remove_keep_other_baggage() {
    let s =
        Signer::new(keys()).mint_synthetic(Origin::Load, &RunId::new("r1").unwrap(), Duration::from_secs(60));
    let mut h = HeaderMap::new();
    h.insert("baggage", HeaderValue::from_static("tenant=acme;ttl=1,synthetic=stale"));
    insert_marker(&mut h, &s);
    assert_eq!(h["synthetic-traffic"], s.token());
    assert_eq!(h["baggage"], format!("tenant=acme;ttl=1,synthetic={}", s.token()).as_str());
    let found = find_marker(&h).unwrap();
    assert_eq!((found.source, &*found.value), (MarkerSource::Header, s.token()));

    h.remove("synthetic-traffic");
    assert_eq!(find_marker(&h).unwrap().source, MarkerSource::Baggage);

    remove_marker(&mut h);
    assert_eq!(h["baggage"], "tenant=acme;ttl=1");
    assert_eq!(find_marker(&h), None);

    let mut only = HeaderMap::new();
    insert_marker(&mut only, &s);
    remove_marker(&mut only);
    assert!(only.is_empty(), "{only:?}");
}

#[test]
fn non_text_marker_is_present_but_fails_verification() {
    let mut h = HeaderMap::new();
    h.insert("synthetic-traffic", HeaderValue::from_bytes(b"v1.load.\xff").unwrap());
    let found = find_marker(&h).unwrap();
    assert_eq!(found.source, MarkerSource::Header);
    assert_eq!(Verifier::new(keys()).verify(&found.value).unwrap_err().reason(), "malformed");
}

#[test]
fn propagator_over_header_maps_and_crlf_is_never_written() {
    let s = Signer::new(keys()).mint_synthetic(
        Origin::Replay,
        &RunId::new("r2").unwrap(),
        Duration::from_secs(60),
    );
    let p = SyntheticPropagator::new().with_verifier(Verifier::new(keys()));
    let mut h = HeaderMap::new();
    p.inject_context(&s.to_context(&opentelemetry::Context::new()), &mut HeaderInjector(&mut h));
    let cx = p.extract(&HeaderExtractor(&h));
    assert_eq!(synth_ctx::from_context(&cx).map(|s| s.origin()), Some(Origin::Replay));

    use opentelemetry::propagation::Injector;
    HeaderInjector(&mut h).set("x-test", "a\r\nset-cookie: evil".to_owned());
    assert!(!h.contains_key("x-test"));
}
