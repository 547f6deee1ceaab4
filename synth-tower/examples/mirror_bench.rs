//! Servers for `scripts/bench-mirror`: a hello-world bare or behind `MirrorLayer`, and dark
//! targets that hang, reset or answer 500.
//!
//! ```sh
//! cargo build --release -p synth-tower --features mirror,axum --example mirror_bench
//! B=target/release/examples/mirror_bench
//! $B hang 127.0.0.1:3020 &                              # a dark target that never answers
//! $B bare 127.0.0.1:3021 &                              # the real service without the layer
//! $B mirror 127.0.0.1:3022 http://127.0.0.1:3020 1.0 &  # with it (Router::layer), every request copied
//! $B mirror-outer 127.0.0.1:3023 http://127.0.0.1:3020 1.0 &  # the layer around the whole router
//! ```
//!
//! `GET /count` answers how many `GET /` were served (benchmarks count at the server), and
//! `GET /mirror` what the mirror did (JSON). Keys are the fixed test key `k1`: a benchmark.

#![allow(clippy::unwrap_used, clippy::expect_used)] // an example: fail loudly

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{Router, http::StatusCode, routing::get};
use synth_ctx::{KeyRing, RunId, Signer};
use synth_tower::mirror::{DarkTarget, MirrorLayer};

fn keys() -> KeyRing {
    KeyRing::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8").unwrap()
}

fn usage() -> ! {
    eprintln!(
        "usage: mirror_bench (bare ADDR | mirror ADDR DARK_URL [SHARE] | hang ADDR | reset ADDR | error ADDR)"
    );
    std::process::exit(2);
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(addr)) = (args.get(1), args.get(2)) else { usage() };
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    eprintln!("{mode} on http://{addr}/");
    match mode.as_str() {
        "hang" => {
            let mut held = Vec::new();
            loop {
                held.push(listener.accept().await.unwrap().0);
            }
        }
        "reset" => loop {
            let (conn, _) = listener.accept().await.unwrap();
            // Linger 0: close with a reset.
            #[allow(deprecated)]
            let _ = conn.set_linger(Some(Duration::ZERO));
            drop(conn);
        },
        "error" => {
            let app = Router::new().fallback(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") });
            axum::serve(listener, app).await.unwrap();
            return;
        }
        "bare" | "mirror" | "mirror-outer" => {}
        _ => usage(),
    }
    let served = Arc::new(AtomicU64::new(0));
    let count = served.clone();
    let app = Router::new().route(
        "/",
        get(move || {
            served.fetch_add(1, Ordering::Relaxed);
            async { "hello" }
        }),
    );
    let count = move || std::future::ready(count.load(Ordering::Relaxed).to_string());
    if mode == "bare" {
        let app = app.route("/count", get(count));
        axum::serve(listener, app).await.unwrap();
        return;
    }
    let dark = args.get(3).unwrap_or_else(|| usage());
    let share = args.get(4).map_or(1.0, |s| s.parse().unwrap_or_else(|_| usage()));
    let layer = MirrorLayer::builder(
        DarkTarget::url(dark).unwrap(),
        Signer::new(keys()),
        RunId::new("bench").unwrap(),
    )
    .share(share)
    .routes(["/"])
    // loadgen marks every request; copy them anyway, as if they were real.
    .mirror_synthetic(true)
    .build()
    .unwrap();
    let handle = layer.handle();
    let report = move || std::future::ready(format!("{:?}", handle.snapshot()));
    if mode == "mirror" {
        // `Router::layer`: the layer wraps each route (axum boxes its bodies once more).
        let app = app.layer(layer).route("/count", get(count)).route("/mirror", get(report));
        axum::serve(listener, app).await.unwrap();
        return;
    }
    // `mirror-outer`: the layer wraps the whole router, served by hyper directly.
    let app = app.route("/count", get(count)).route("/mirror", get(report));
    let service = tower::ServiceBuilder::new().layer(layer).service(app);
    loop {
        let (tcp, _) = listener.accept().await.unwrap();
        let _ = tcp.set_nodelay(true);
        let service = service.clone();
        tokio::spawn(async move {
            let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(
                    hyper_util::rt::TokioIo::new(tcp),
                    hyper_util::service::TowerToHyperService::new(service),
                )
                .await;
        });
    }
}
