//! Extraction from arbitrary `synthetic-traffic` text and several arbitrary `baggage` lines, by
//! the propagator and by the server-side `find_marker` / `remove_marker`: never panic, never
//! synthetic, the same decision however the baggage is split into lines, and no marker left
//! after stripping.
#![no_main]

use std::collections::HashMap;

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use opentelemetry::{Context, propagation::TextMapPropagator};
use synth_ctx::{
    KeyRing, SyntheticPropagator, Verifier,
    http::{HeaderExtractor, find_marker, remove_marker},
};

fuzz_target!(|input: (&str, Vec<&str>)| {
    let (header, lines) = input;
    let keys = KeyRing::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8").unwrap();
    let verifier = Verifier::new(keys).with_cache_capacity(0);
    let propagator = SyntheticPropagator::new().with_verifier(verifier.clone());

    // One line, through the plain map carrier.
    let mut carrier = HashMap::new();
    carrier.insert("synthetic-traffic".to_owned(), header.to_owned());
    carrier.insert("baggage".to_owned(), lines.join(","));
    let cx = propagator.extract_with_context(&Context::new(), &carrier);
    assert!(synth_ctx::from_context(&cx).is_none());

    // Several lines, through a header map; lines that are not header values are left out.
    let lines: Vec<HeaderValue> = lines.iter().filter_map(|l| HeaderValue::from_str(l).ok()).collect();
    let mut many = HeaderMap::new();
    for line in &lines {
        many.append("baggage", line.clone());
    }
    let mut joined = HeaderMap::new();
    if !lines.is_empty() {
        let text: Vec<&str> = lines.iter().filter_map(|l| l.to_str().ok()).collect();
        if text.len() == lines.len() {
            joined.append("baggage", HeaderValue::from_str(&text.join(",")).unwrap());
            // Splitting the baggage into lines never changes what is found.
            assert_eq!(find_marker(&many), find_marker(&joined));
        }
    }
    if let Ok(v) = HeaderValue::from_str(header) {
        many.append("synthetic-traffic", v);
    }
    let cx = propagator.extract_with_context(&Context::new(), &HeaderExtractor(&many));
    assert!(synth_ctx::from_context(&cx).is_none());
    if let Some(found) = find_marker(&many) {
        // The fuzzer cannot forge an HMAC: anything it finds that verifies is a bug.
        assert!(found.verify(&verifier).is_err());
    }
    remove_marker(&mut many);
    assert_eq!(find_marker(&many), None);
});
