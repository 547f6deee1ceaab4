//! An axum hello-world, bare or behind the synth server layer, for socket-level comparisons.
//!
//! ```sh
//! cargo build --release -p synth-tower --example hello
//! target/release/examples/hello bare 127.0.0.1:3001 &
//! target/release/examples/hello layered 127.0.0.1:3002 &
//! TOKEN=$(target/release/examples/hello token)
//! wrk -t2 -c64 -d10s http://127.0.0.1:3001/                                   # bare
//! wrk -t2 -c64 -d10s http://127.0.0.1:3002/                                   # layered, real
//! wrk -t2 -c64 -d10s -H "synthetic-traffic: $TOKEN" http://127.0.0.1:3002/    # layered, synthetic
//! ```
//!
//! `GET /count` answers how many `GET /` it served (not counted itself): benchmarks count
//! requests at the server, not at the generator.
//!
//! Keys are the fixed test key `k1` of `docs/marker-spec.md`: this is a benchmark, not a service.

#![allow(clippy::unwrap_used, clippy::expect_used)] // an example: fail loudly

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{Router, routing::get};
use synth_ctx::{KeyRing, Origin, RunId, Signer, Verifier};
use synth_tower::VerifySyntheticLayer;

fn keys() -> KeyRing {
    KeyRing::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8").unwrap()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("help");
    let addr = args.get(2).cloned().unwrap_or_else(|| "127.0.0.1:3000".to_owned());
    let served = Arc::new(AtomicU64::new(0));
    let count = served.clone();
    let app = Router::new().route(
        "/",
        get(move || {
            served.fetch_add(1, Ordering::Relaxed);
            async { "hello" }
        }),
    );
    let app = match mode {
        "bare" => app,
        "layered" => app.layer(VerifySyntheticLayer::new(Verifier::new(keys())).with_service_name("hello")),
        "token" => {
            println!(
                "{}",
                Signer::new(keys()).mint(
                    Origin::Load,
                    &RunId::new("bench").unwrap(),
                    Duration::from_secs(3600)
                )
            );
            return;
        }
        _ => {
            eprintln!("usage: hello (bare|layered) [ADDR] | hello token");
            std::process::exit(2);
        }
    };
    let app = app.route("/count", get(move || std::future::ready(count.load(Ordering::Relaxed).to_string())));
    let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
    eprintln!("{mode} on http://{addr}/");
    axum::serve(listener, app).await.unwrap();
}
