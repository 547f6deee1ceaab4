//! Extraction from arbitrary header and baggage text: never panic, never synthetic.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use opentelemetry::{Context, propagation::TextMapPropagator};
use synth_ctx::{KeyRing, SyntheticPropagator, Verifier};

fuzz_target!(|input: (&str, &str)| {
    let keys = KeyRing::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8").unwrap();
    let propagator = SyntheticPropagator::new().with_verifier(Verifier::new(keys));
    let mut carrier = HashMap::new();
    carrier.insert("synthetic-traffic".to_owned(), input.0.to_owned());
    carrier.insert("baggage".to_owned(), input.1.to_owned());
    let cx = propagator.extract_with_context(&Context::new(), &carrier);
    assert!(synth_ctx::from_context(&cx).is_none());
});
