//! Property tests: round-trips, tamper detection, and "never panics" on arbitrary input.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::collections::HashMap;

use opentelemetry::{Context, propagation::TextMapPropagator};
use proptest::prelude::*;
use synth_ctx::{KeyRing, Origin, RunId, Signer, SyntheticPropagator, Token, Verifier};

const NOW: u64 = 4_102_441_200;

fn ring() -> KeyRing {
    KeyRing::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8,backup_key-2:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8").unwrap()
}

fn origin() -> impl Strategy<Value = Origin> {
    prop::sample::select(Origin::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn mint_then_verify_round_trips(origin in origin(), run in "[A-Za-z0-9_-]{1,64}", ttl in 1u64..=86_400) {
        let keys = ring();
        let run = RunId::new(&run).unwrap();
        let token = Signer::new(keys.clone()).mint_until(origin, &run, NOW + ttl);
        let s = Verifier::new(keys).verify_at(&token, NOW).unwrap();
        prop_assert_eq!(s.origin(), origin);
        prop_assert_eq!(s.run(), &run);
        prop_assert_eq!(s.expires_at(), NOW + ttl);
        prop_assert_eq!(s.key_id().as_str(), "k1");
    }

    #[test]
    fn changing_any_single_byte_invalidates(run in "[A-Za-z0-9_-]{1,64}", pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let keys = ring();
        let token = Signer::new(keys.clone()).mint_until(Origin::Load, &RunId::new(&run).unwrap(), NOW + 60);
        let mut bytes = token.clone().into_bytes();
        let i = pos.index(bytes.len());
        prop_assume!(bytes[i] != byte);
        bytes[i] = byte;
        let tampered = String::from_utf8_lossy(&bytes);
        prop_assert!(Verifier::new(keys).verify_at(&tampered, NOW).is_err(), "{} verified", tampered);
    }

    #[test]
    fn parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = Token::parse(&text);
        let _ = Verifier::new(ring()).verify_at(&text, NOW);
    }

    #[test]
    fn parser_never_panics_on_token_like_text(text in "v1\\.(load|dark|x)\\.[A-Za-z0-9_.-]{0,70}\\.[0-9+]{0,12}\\.[a-z0-9.]{0,34}\\.[A-Za-z0-9_=+/-]{0,45}") {
        let _ = Verifier::new(ring()).verify_at(&text, NOW);
    }

    #[test]
    fn propagator_never_panics_and_never_trusts_garbage(header in ".{0,200}", baggage in ".{0,300}") {
        let propagator = SyntheticPropagator::new().with_verifier(Verifier::new(ring()));
        let mut carrier = HashMap::new();
        carrier.insert("synthetic-traffic".to_owned(), header);
        carrier.insert("baggage".to_owned(), baggage);
        let cx = propagator.extract_with_context(&Context::new(), &carrier);
        prop_assert!(synth_ctx::from_context(&cx).is_none());
    }
}
