//! The token parser and verifier on arbitrary bytes: never panic; never accept without the key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use synth_ctx::{KeyRing, Token, Verifier};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(token) = Token::parse(&text) {
        // A parsed token re-assembles to exactly its input.
        assert_eq!(token.as_str(), &*text);
        assert!(token.signed_part().len() < text.len());
    }
    let keys = KeyRing::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8").unwrap();
    // The fuzzer cannot forge an HMAC: anything it finds that verifies is a bug.
    assert!(Verifier::new(keys).with_cache_capacity(0).verify_at(&text, 4_102_441_200).is_err());
});
