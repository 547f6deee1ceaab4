//! An operator mints a token with `loadgen token mint` and sends it by hand, as header or as
//! baggage; a service reading `http` headers with synth-ctx's adapters and propagator sees a
//! synthetic request, and passes the marker on.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use clap::Parser;
use http::{HeaderMap, HeaderValue};
use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use synth_ctx::{
    KeyRing, SyntheticPropagator, Verifier,
    http::{HeaderExtractor, HeaderInjector, find_marker},
};

const KEYS: &str = "ops:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

fn mint(run: &str) -> String {
    let dir = std::env::temp_dir().join(format!("synth-e2e-{}-{run}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let keys = dir.join("keys");
    std::fs::write(&keys, KEYS).unwrap();
    let cli = loadgen::cli::Cli::parse_from([
        "loadgen",
        "token",
        "mint",
        "--run",
        run,
        "--ttl",
        "5m",
        "--keys-file",
        keys.to_str().unwrap(),
    ]);
    let mut out = Vec::new();
    assert_eq!(loadgen::cli::run(cli, &mut out).unwrap(), loadgen::cli::Exit::Ok);
    String::from_utf8(out).unwrap().trim().to_owned()
}

fn service_propagator() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
        Box::new(SyntheticPropagator::new().with_verifier(Verifier::new(KeyRing::parse(KEYS).unwrap()))),
    ])
}

#[test]
fn a_minted_token_sent_as_header_or_baggage_makes_the_request_synthetic() {
    let token = mint("by-hand-1");
    for as_baggage in [false, true] {
        let mut request = HeaderMap::new();
        if as_baggage {
            request.insert(
                "baggage",
                HeaderValue::from_str(&format!("team=checkout,synthetic={token}")).unwrap(),
            );
        } else {
            request.insert("synthetic-traffic", HeaderValue::from_str(&token).unwrap());
        }
        assert_eq!(find_marker(&request).unwrap().value, token.as_str());

        let cx = service_propagator().extract(&HeaderExtractor(&request));
        let synthetic = synth_ctx::from_context(&cx).expect("the service sees a synthetic request");
        assert_eq!(synthetic.run().as_str(), "by-hand-1");

        // The service's outgoing call carries it on, with the other baggage member.
        let mut outgoing = HeaderMap::new();
        service_propagator().inject_context(&cx, &mut HeaderInjector(&mut outgoing));
        assert_eq!(outgoing["synthetic-traffic"], token.as_str());
        let baggage = outgoing["baggage"].to_str().unwrap();
        assert!(baggage.contains(&format!("synthetic={token}")), "{baggage}");
        assert_eq!(baggage.contains("team=checkout"), as_baggage, "{baggage}");
    }
}

#[test]
fn a_token_from_another_key_ring_is_refused() {
    let token = mint("by-hand-2");
    let mut request = HeaderMap::new();
    request.insert("synthetic-traffic", HeaderValue::from_str(&token).unwrap());
    let other = Verifier::new(KeyRing::parse("ops:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8").unwrap());
    let found = find_marker(&request).unwrap();
    assert_eq!(other.verify(&found.value).unwrap_err().reason(), "bad_signature");
}
