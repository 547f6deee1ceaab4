//! The verified-token cache: bounded, never holding a forged token, safe under concurrency.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::{sync::Arc, thread};

use synth_ctx::{KeyRing, Origin, RunId, Signer, Verifier};

const NOW: u64 = 4_102_441_200;

fn keys() -> KeyRing {
    KeyRing::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8").unwrap()
}

#[test]
fn a_flood_of_forged_tokens_never_enters_the_cache() {
    let verifier = Verifier::new(keys());
    let signer = Signer::new(keys());
    for i in 0..20_000u32 {
        let good = signer.mint_until(Origin::Load, &RunId::new(format!("r{i}")).unwrap(), NOW + 60);
        // Same shape, signature of another run: forged.
        let forged = format!("v1.load.x{i}.{}.k1.{}", NOW + 60, &good[good.len() - 43..]);
        assert_eq!(verifier.verify_at(&forged, NOW).unwrap_err().reason(), "bad_signature");
    }
    assert_eq!(verifier.cached_tokens(), 0);
}

#[test]
fn distinct_valid_tokens_stay_within_capacity() {
    let verifier = Verifier::new(keys()).with_cache_capacity(256);
    let signer = Signer::new(keys());
    for i in 0..5_000u32 {
        let t = signer.mint_until(Origin::Load, &RunId::new(format!("r{i}")).unwrap(), NOW + 60);
        verifier.verify_at(&t, NOW).unwrap();
    }
    // Sharded: each of the 16 shards holds at most ceil(256 / 16).
    assert!(verifier.cached_tokens() <= 256, "{}", verifier.cached_tokens());
    assert!(verifier.cached_tokens() >= 128, "the cache is used: {}", verifier.cached_tokens());
}

#[test]
fn concurrent_verification_agrees() {
    let verifier = Arc::new(Verifier::new(keys()).with_cache_capacity(64));
    let signer = Signer::new(keys());
    let tokens: Arc<Vec<String>> = Arc::new(
        (0..200)
            .map(|i| signer.mint_until(Origin::Dark, &RunId::new(format!("c{i}")).unwrap(), NOW + 60))
            .collect(),
    );
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let (verifier, tokens) = (verifier.clone(), tokens.clone());
            thread::spawn(move || {
                for round in 0..20 {
                    for (i, token) in tokens.iter().enumerate().skip((t + round) % 3) {
                        let s = verifier.verify_at(token, NOW).unwrap();
                        assert_eq!(s.run().as_str(), format!("c{i}"));
                        let forged = format!("{}A", &token[..token.len() - 1]);
                        if forged != *token {
                            assert!(verifier.verify_at(&forged, NOW).is_err());
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert!(verifier.cached_tokens() <= 64);
}

/// A token nobody signed: right shape, key id `dev` that no key ring holds.
fn unsigned(run: &str) -> String {
    format!("v1.load.{run}.{}.dev.{}", NOW + 60, "A".repeat(43))
}

#[test]
fn a_development_clone_never_lends_its_cache_to_the_strict_original() {
    let strict = Verifier::new(keys());
    let dev = strict.clone().insecure_accept_unsigned_markers();
    let token = unsigned("forged");
    assert_eq!(dev.verify_at(&token, NOW).unwrap().run().as_str(), "forged");
    // Same thread: the per-thread front must not answer for the strict verifier.
    assert_eq!(strict.verify_at(&token, NOW).unwrap_err().reason(), "unknown_key");
    // Another thread: the shared shards must not answer either.
    let other = strict.clone();
    let t = token.clone();
    let from_thread = thread::spawn(move || other.verify_at(&t, NOW).map_err(|e| e.reason())).join().unwrap();
    assert_eq!(from_thread.unwrap_err(), "unknown_key");
    assert_eq!(strict.cached_tokens(), 0);
    // The development clone keeps what it verified.
    assert_eq!(dev.cached_tokens(), 1);
}

#[test]
fn a_clone_with_a_shorter_ttl_refuses_what_the_original_cached() {
    let original = Verifier::new(keys());
    let token = Signer::new(keys()).mint_until(Origin::Load, &RunId::new("long").unwrap(), NOW + 3 * 3600);
    original.verify_at(&token, NOW).unwrap();
    assert_eq!(original.cached_tokens(), 1);
    let short = original.clone().with_max_ttl(std::time::Duration::from_secs(3600));
    assert_eq!(short.verify_at(&token, NOW).unwrap_err().reason(), "ttl_too_long");
    let other = short.clone();
    let t = token.clone();
    let from_thread = thread::spawn(move || other.verify_at(&t, NOW).map_err(|e| e.reason())).join().unwrap();
    assert_eq!(from_thread.unwrap_err(), "ttl_too_long");
    // A clone with a tighter clock skew is another configuration too.
    let expired_at = NOW - 20;
    let late = Signer::new(keys()).mint_until(Origin::Load, &RunId::new("late").unwrap(), expired_at);
    original.verify_at(&late, NOW).unwrap();
    let no_skew = original.clone().with_clock_skew(std::time::Duration::ZERO);
    assert_eq!(no_skew.verify_at(&late, NOW).unwrap_err().reason(), "expired");
    // Clones with the same configuration still share: that is what the cache is for.
    assert_eq!(original.clone().cached_tokens(), 2);
}
