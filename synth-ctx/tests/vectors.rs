//! The test vectors of `docs/marker-spec.md`, read from the document itself.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use synth_ctx::{KeyRing, Origin, Token, Verifier};

const SPEC: &str = include_str!("../../docs/marker-spec.md");
const NOW: u64 = 4_102_441_200;
const KEYS: &str =
    "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8,k2:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8";

struct Vector {
    token: String,
    result: String,
    why: String,
}

fn vectors() -> Vec<Vector> {
    let table = SPEC
        .split("<!-- vectors:start -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- vectors:end -->").next())
        .expect("vector table markers in docs/marker-spec.md");
    table
        .lines()
        .filter(|l| l.starts_with("| `") || l.starts_with("| (empty)"))
        .map(|line| {
            let line = line.strip_prefix("| ").unwrap().strip_suffix(" |").unwrap();
            let (token, rest) = if let Some(rest) = line.strip_prefix("(empty) | ") {
                (String::new(), rest)
            } else {
                let inner = line.strip_prefix('`').unwrap();
                let end = inner.find("` | ").unwrap();
                (inner[..end].to_owned(), &inner[end + 4..])
            };
            let (result, why) = rest.split_once(" | ").unwrap();
            Vector { token, result: result.to_owned(), why: why.to_owned() }
        })
        .collect()
}

#[test]
fn every_vector_in_the_spec_gives_its_result() {
    let vectors = vectors();
    assert!(vectors.len() >= 30, "the table was not read: {} rows", vectors.len());
    assert!(vectors.iter().filter(|v| v.result == "valid").count() >= 5);
    let verifier = Verifier::new(KeyRing::parse(KEYS).unwrap()).with_cache_capacity(0);
    for v in &vectors {
        let got = match verifier.verify_at(&v.token, NOW) {
            Ok(s) => {
                // The verified fields are the token's own.
                let t = Token::parse(&v.token).unwrap();
                assert_eq!(
                    (s.origin(), s.run().as_str(), s.expires_at(), s.key_id().as_str()),
                    (t.origin(), t.run(), t.expires_at(), t.key_id())
                );
                assert_eq!(s.token(), v.token);
                "valid"
            }
            Err(e) => e.reason(),
        };
        assert_eq!(got, v.result, "{} ({})", v.token, v.why);
    }
}

#[test]
fn the_design_vectors_verify_with_their_fields() {
    let verifier = Verifier::new(KeyRing::parse(KEYS).unwrap());
    let s = verifier
        .verify_at(
            "v1.dark.checkout-2026-11-27.4102444800.k1.jDswJXcwlhoB_rZ52PXPiiD4AsO-bGyCoSdkuX9crWs",
            NOW,
        )
        .unwrap();
    assert_eq!(s.origin(), Origin::Dark);
    assert_eq!(s.run().as_str(), "checkout-2026-11-27");
    assert_eq!(s.expires_at(), 4_102_444_800);
    assert_eq!(s.key_id().as_str(), "k1");
}

#[test]
fn a_cached_token_still_expires() {
    let verifier = Verifier::new(KeyRing::parse(KEYS).unwrap());
    let t = "v1.load.r42.4102444800.k1.tIWragboMd7Ioyrggq-3wEKFkUN56JM0LU_J-5XHBDU";
    assert!(verifier.verify_at(t, NOW).is_ok());
    assert_eq!(verifier.cached_tokens(), 1);
    assert!(verifier.verify_at(t, 4_102_444_800 + 30).is_ok(), "inside the skew");
    let late = verifier.verify_at(t, 4_102_444_800 + 31).unwrap_err();
    assert_eq!(late.reason(), "expired");
    assert_eq!(verifier.cached_tokens(), 0, "the expired entry is dropped");
}

#[test]
fn the_mint_command_signs_what_the_verifier_checks() {
    // Signer output for the vector's fields is byte-for-byte the vector.
    use synth_ctx::{RunId, Signer};
    let signer = Signer::new(KeyRing::parse(KEYS).unwrap());
    let t = signer.mint_until(Origin::Load, &RunId::new("r42").unwrap(), 4_102_444_800);
    assert_eq!(t, "v1.load.r42.4102444800.k1.tIWragboMd7Ioyrggq-3wEKFkUN56JM0LU_J-5XHBDU");
}

#[test]
fn insecure_mode_accepts_unsigned_but_still_checks_shape_and_time() {
    let verifier = Verifier::new(KeyRing::parse(KEYS).unwrap()).insecure_accept_unsigned_markers();
    assert!(verifier.accepts_unsigned_markers());
    let unsigned = "v1.load.dev-run.4102444800.dev.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let s = verifier.verify_at(unsigned, NOW).unwrap();
    assert_eq!((s.run().as_str(), s.key_id().as_str()), ("dev-run", "dev"));
    let bad_sig = "v1.load.r42.4102444800.k1.AIWragboMd7Ioyrggq-3wEKFkUN56JM0LU_J-5XHBDU";
    assert!(verifier.verify_at(bad_sig, NOW).is_ok());
    assert_eq!(verifier.verify_at("v1.load.dev.123", NOW).unwrap_err().reason(), "malformed");
    assert_eq!(verifier.verify_at(unsigned, 4_102_444_800 + 31).unwrap_err().reason(), "expired");
    // The default is strict.
    let strict = Verifier::new(KeyRing::parse(KEYS).unwrap());
    assert!(!strict.accepts_unsigned_markers());
    assert_eq!(strict.verify_at(unsigned, NOW).unwrap_err().reason(), "unknown_key");
}
