//! Runs N in-process requests through an axum hello-world, bare or layered, so that
//! `valgrind --tool=callgrind` can count the instructions each variant costs: a measure that,
//! unlike time, does not move with the machine's noise.
//!
//! ```sh
//! cargo build --release -p synth-tower --example layer_cost
//! for v in bare identity layered identity-marker layered-marker; do
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/layer_cost $v 20000 2>&1 | grep refs
//! done
//! ```
//! Subtract a run with N=0 of the same variant to remove start-up, then divide by N.

#![allow(clippy::unwrap_used, clippy::expect_used)] // an example: fail loudly

use std::time::Duration;

use axum::{Router, body::Body, routing::get};
use http::Request;
use synth_ctx::{KeyRing, Origin, RunId, Signer, Verifier};
use synth_tower::VerifySyntheticLayer;
use tower::ServiceExt;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let variant = args.get(1).cloned().unwrap_or_default();
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let keys = KeyRing::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8").unwrap();
    let token = Signer::new(keys.clone()).mint(
        Origin::Load,
        &RunId::new("bench").unwrap(),
        Duration::from_secs(3600),
    );
    let bare: Router = Router::new().route("/", get(|| async { "hello" }));
    let app = match variant.trim_end_matches("-marker") {
        "bare" => bare,
        // What any layer costs through `Router::layer` (axum boxes the layered service).
        "identity" => bare.layer(tower::layer::util::Identity::new()),
        "layered" => bare.layer(VerifySyntheticLayer::new(Verifier::new(keys)).with_service_name("bench")),
        _ => {
            eprintln!("usage: layer_cost (bare|identity|layered)[-marker] N");
            std::process::exit(2);
        }
    };
    let marker = variant.ends_with("-marker");
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        for _ in 0..n {
            let mut req = Request::get("/").header("user-agent", "bench");
            if marker {
                req = req.header("synthetic-traffic", &token);
            }
            let res = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
            assert_eq!(res.status(), 200);
            // A server polls the body too (and a synthetic one is polled in its scope).
            let body = http_body_util::BodyExt::collect(res.into_body()).await.unwrap().to_bytes();
            assert_eq!(&body[..], b"hello");
        }
    });
}
