//! The propagator alone and inside a composite with the SDK's trace-context and baggage
//! propagators.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::{collections::HashMap, time::Duration};

use opentelemetry::{
    Context, KeyValue,
    baggage::BaggageExt,
    propagation::{TextMapCompositePropagator, TextMapPropagator},
    trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState},
};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use synth_ctx::{ExtractedMarker, KeyRing, Origin, RunId, Signer, SyntheticPropagator, Verifier};

fn keys() -> KeyRing {
    KeyRing::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8").unwrap()
}

fn composite(verify: bool) -> TextMapCompositePropagator {
    let synthetic = if verify {
        SyntheticPropagator::new().with_verifier(Verifier::new(keys()))
    } else {
        SyntheticPropagator::new()
    };
    TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
        Box::new(synthetic),
    ])
}

fn baggage_members(header: &str) -> Vec<String> {
    let mut m: Vec<String> = header.split(',').map(|s| s.trim().to_owned()).collect();
    m.sort();
    m
}

#[test]
fn composite_round_trip_keeps_trace_and_other_baggage() {
    let s =
        Signer::new(keys()).mint_synthetic(Origin::Load, &RunId::new("r1").unwrap(), Duration::from_secs(60));
    let span = SpanContext::new(
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
        SpanId::from_hex("00f067aa0ba902b7").unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    let cx = Context::new()
        .with_remote_span_context(span.clone())
        .with_baggage([KeyValue::new("tenant", "acme"), KeyValue::new("user.tier", "gold")]);
    let cx = s.to_context(&cx);

    let mut headers = HashMap::new();
    composite(true).inject_context(&cx, &mut headers);
    assert_eq!(headers["synthetic-traffic"], s.token());
    assert_eq!(
        baggage_members(&headers["baggage"]),
        baggage_members(&format!("tenant=acme,user.tier=gold,synthetic={}", s.token()))
    );
    assert!(headers["traceparent"].contains("4bf92f3577b34da6a3ce929d0e0e4736"));

    // The next hop extracts all three.
    let next = composite(true).extract(&headers);
    assert_eq!(synth_ctx::from_context(&next).map(|s| s.run().as_str()), Some("r1"));
    assert_eq!(next.baggage().get("tenant").map(|v| v.as_str().to_owned()).as_deref(), Some("acme"));
    assert_eq!(next.span().span_context().trace_id(), span.trace_id());

    // ...and passes them on again, unchanged.
    let mut onward = HashMap::new();
    composite(true).inject_context(&next, &mut onward);
    assert_eq!(onward["synthetic-traffic"], s.token());
    assert_eq!(baggage_members(&onward["baggage"]), baggage_members(&headers["baggage"]));
}

#[test]
fn baggage_only_hops_carry_the_marker() {
    // A hop in another language that forwards only `baggage` still carries the marker.
    let s =
        Signer::new(keys()).mint_synthetic(Origin::Dark, &RunId::new("r2").unwrap(), Duration::from_secs(60));
    let mut headers = HashMap::new();
    headers.insert("baggage".to_owned(), format!("a=1,synthetic={}", s.token()));
    let cx = composite(true).extract(&headers);
    assert_eq!(synth_ctx::from_context(&cx).map(|s| s.origin()), Some(Origin::Dark));
}

#[test]
fn real_requests_get_nothing_added() {
    let cx = Context::new().with_baggage([KeyValue::new("tenant", "acme")]);
    let mut headers = HashMap::new();
    composite(true).inject_context(&cx, &mut headers);
    assert!(!headers.contains_key("synthetic-traffic"));
    assert_eq!(headers["baggage"], "tenant=acme");
    let mut only_ours = HashMap::new();
    SyntheticPropagator::new().inject_context(&cx, &mut only_ours);
    assert!(only_ours.is_empty());
}

#[test]
fn forged_markers_are_not_trusted_and_not_carried_on() {
    let forged = "v1.load.r42.4102444800.k1.AIWragboMd7Ioyrggq-3wEKFkUN56JM0LU_J-5XHBDU";
    for (header, baggage) in [(Some(forged), None), (None, Some(forged))] {
        let mut incoming = HashMap::new();
        if let Some(h) = header {
            incoming.insert("synthetic-traffic".to_owned(), h.to_owned());
        }
        incoming.insert(
            "baggage".to_owned(),
            format!("tenant=acme{}", baggage.map(|b| format!(",synthetic={b}")).unwrap_or_default()),
        );
        let cx = composite(true).extract(&incoming);
        assert!(synth_ctx::from_context(&cx).is_none());
        // Kept for a later verification step, marked as unverified.
        assert_eq!(ExtractedMarker::from_context(&cx).map(|m| m.token()), Some(forged));
        let mut outgoing = HashMap::new();
        composite(true).inject_context(&cx, &mut outgoing);
        assert_eq!(outgoing.get("baggage").map(String::as_str), Some("tenant=acme"));
        assert!(!outgoing.contains_key("synthetic-traffic"));
    }
}

#[test]
fn without_a_verifier_a_marker_is_only_a_candidate() {
    let token = Signer::new(keys()).mint(Origin::Load, &RunId::new("r3").unwrap(), Duration::from_secs(60));
    let mut incoming = HashMap::new();
    incoming.insert("synthetic-traffic".to_owned(), format!("  {token} "));
    let cx = composite(false).extract(&incoming);
    assert!(synth_ctx::from_context(&cx).is_none());
    let marker = ExtractedMarker::from_context(&cx).unwrap();
    assert_eq!(marker.verify(&Verifier::new(keys())).unwrap().run().as_str(), "r3");
}

#[test]
fn header_wins_over_baggage_and_malformed_header_falls_back() {
    let signer = Signer::new(keys());
    let a = signer.mint(Origin::Load, &RunId::new("from-header").unwrap(), Duration::from_secs(60));
    let b = signer.mint(Origin::Load, &RunId::new("from-baggage").unwrap(), Duration::from_secs(60));
    let p = SyntheticPropagator::new().with_verifier(Verifier::new(keys()));
    let mut h = HashMap::new();
    h.insert("synthetic-traffic".to_owned(), a);
    h.insert("baggage".to_owned(), format!("synthetic={b}"));
    let run = |h: &HashMap<String, String>| {
        synth_ctx::from_context(&p.extract_with_context(&Context::new(), h)).map(|s| s.run().to_string())
    };
    assert_eq!(run(&h).as_deref(), Some("from-header"));
    h.insert("synthetic-traffic".to_owned(), "garbage".to_owned());
    assert_eq!(run(&h).as_deref(), Some("from-baggage"));
}

#[test]
fn oversized_baggage_still_yields_its_marker_but_passes_nothing_else_on() {
    // The W3C limits bound what is passed on, not whether a request is synthetic: a marker that
    // is silently missed makes a synthetic request run as a real one.
    let token = Signer::new(keys()).mint(Origin::Load, &RunId::new("r4").unwrap(), Duration::from_secs(60));
    let mut h = HashMap::new();
    h.insert(
        "baggage".to_owned(),
        format!("pad={},synthetic={token}", "x".repeat(synth_ctx::MAX_BAGGAGE_LEN)),
    );
    let cx = composite(true).extract(&h);
    assert_eq!(synth_ctx::from_context(&cx).map(|s| s.run().as_str()), Some("r4"));
    let mut outgoing = HashMap::new();
    composite(true).inject_context(&cx, &mut outgoing);
    assert_eq!(outgoing["baggage"], format!("synthetic={token}"));
    let p = SyntheticPropagator::new();
    let fields: Vec<&str> = p.fields().collect();
    assert_eq!(fields, ["synthetic-traffic", "baggage"]);
}
