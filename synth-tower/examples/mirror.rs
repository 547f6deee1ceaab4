//! Dark traffic in one small service: `GET /` and `GET /products/{n}` behind
//! `VerifySyntheticLayer` and `MirrorLayer`, copying a share of its real requests to a dark
//! service, each copy marked `dark`, and comparing the answers.
//!
//! ```text
//! mirror LISTEN DARK_URL SHARE
//! ```
//!
//! Try it with two terminals: the dark service is a copy of this example (share 0: it mirrors
//! nothing itself), the real one copies every fifth request to it.
//!
//! ```sh
//! export SYNTH_KEYS=$(cargo run -q -p loadgen -- keygen --kid k1)   # in both terminals
//! # terminal 1: the dark copy
//! cargo run -p synth-tower --example mirror --features mirror,axum -- 127.0.0.1:3100 http://127.0.0.1:9 0
//! # terminal 2: the real service, its admin routes on their own port
//! SYNTH_ADMIN_TOKEN=change-me MIRROR_ADMIN_LISTEN=127.0.0.1:3001 \
//!   cargo run -p synth-tower --example mirror --features mirror,axum -- 127.0.0.1:3000 http://127.0.0.1:3100 0.2
//! # then
//! for n in $(seq 1 100); do curl -s localhost:3000/products/$n >/dev/null; done
//! curl -s localhost:3100/metrics | grep 'origin="dark"'     # about 20 copies, marked dark
//! curl -s localhost:3000/metrics | grep synth_mirror_        # what the mirror sent and compared
//! curl -s -H 'authorization: Bearer change-me' localhost:3001/synthetic/mirror   # the report
//! curl -s -H 'authorization: Bearer change-me' -d '{"share": 0.05}' localhost:3001/synthetic/mirror
//! curl -s -X POST -H 'authorization: Bearer change-me' localhost:3001/synthetic/stop  # stops it
//! ```
//!
//! - `SYNTH_KEYS` (required): the key ring; the real service signs the copies' `dark` markers
//!   with it and the dark one verifies them, so both need it.
//! - `SYNTH_MIRROR_RUN` (default `dark-example`): the run id of the copies, what the dark
//!   service's rows are tagged with and `synth-cleanup --run` purges.
//! - `SYNTH_ADMIN_TOKEN`: serves the admin routes (the kill switch's `/synthetic/stop`,
//!   `/synthetic/resume`, `/synthetic/status`, and the mirror's `/synthetic/mirror`) with this
//!   bearer token on `MIRROR_ADMIN_LISTEN` (default `127.0.0.1:0`, printed), an internal port,
//!   not the public one. Without a token (or with an empty one) no admin routes are served.
//!
//! Each answer names the instance that served it (`served_by`); compare mode ignores that path,
//! so the real and the dark answers match. `GET /metrics` (not mirrored) serves the mirror's
//! series and the verify layer's (`synth_requests_total{..,origin="dark"}` on the dark side).
//! Bad arguments exit with code 2 and the usage.

use std::{net::SocketAddr, process::ExitCode};

use axum::{Json, Router, extract::Path, routing::get};
use serde_json::{Value, json};
use synth_ctx::{KeyRing, RunId, Signer, Verifier};
use synth_tower::{
    VerifySyntheticLayer,
    admin::admin_router,
    mirror::{self, CompareSpec, DarkTarget, JsonPath, MirrorLayer},
};

const USAGE: &str = "usage: mirror LISTEN DARK_URL SHARE
  LISTEN    address to serve on, e.g. 127.0.0.1:3000
  DARK_URL  base URL of the dark service (http://, https:// or h2c://), e.g. http://127.0.0.1:3100
  SHARE     share of real requests to copy there, 0.0 to 1.0 (0 mirrors nothing)
environment: SYNTH_KEYS (required), SYNTH_MIRROR_RUN (default dark-example),
  SYNTH_ADMIN_TOKEN and MIRROR_ADMIN_LISTEN (admin routes, off without a token)";

/// The command line and the environment, checked before anything starts.
struct Args {
    listen: SocketAddr,
    dark: DarkTarget,
    share: f64,
    keys: KeyRing,
    run: RunId,
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let [listen, dark, share] = args else {
        return Err(format!("expected 3 arguments, got {}", args.len()));
    };
    let listen = listen
        .parse()
        .map_err(|e| format!("LISTEN `{listen}` is not an address such as 127.0.0.1:3000 ({e})"))?;
    let dark = DarkTarget::url(dark).map_err(|e| format!("DARK_URL: {e}"))?;
    let share = share
        .parse::<f64>()
        .ok()
        .filter(|s| (0.0..=1.0).contains(s))
        .ok_or_else(|| format!("SHARE `{share}` is not a number from 0.0 to 1.0"))?;
    let keys = KeyRing::from_env().map_err(|e| e.to_string())?;
    let run = std::env::var("SYNTH_MIRROR_RUN").unwrap_or_else(|_| "dark-example".to_owned());
    let run = RunId::new(&run).map_err(|e| format!("SYNTH_MIRROR_RUN `{run}`: {e}"))?;
    Ok(Args { listen, dark, share, keys, run })
}

/// What the service answers: the same for the real and the dark instance but `served_by`.
fn product(n: u64, served_by: &str) -> Value {
    json!({ "id": n, "name": format!("product {n}"), "price_cents": n * 100, "served_by": served_by })
}

async fn serve(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let Args { listen, dark, share, keys, run } = args;
    // Outermost: scopes marked requests (the dark copies, on the dark instance) and owns the
    // kill switch, which the mirror shares so that one stop ends all synthetic traffic.
    let verify = VerifySyntheticLayer::new(Verifier::new(keys.clone())).with_service_name("mirror-example");
    let (kill, stats) = (verify.kill_switch().clone(), verify.stats().clone());
    let mirror = MirrorLayer::builder(dark, Signer::new(keys), run)
        .share(share)
        .compare(CompareSpec {
            headers: vec![http::header::CONTENT_TYPE],
            ignore: vec![JsonPath::parse("$.served_by")?],
        })
        .kill_switch(kill.clone())
        .service_name("mirror-example")
        .build()?;
    let handle = mirror.handle();

    let listener =
        tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("binding {listen}: {e}"))?;
    let me = listener.local_addr()?.to_string();
    let page = {
        let handle = handle.clone();
        let stats = stats.clone();
        move || {
            std::future::ready(format!(
                "{}{}",
                handle.to_prometheus(),
                stats.snapshot().to_prometheus("mirror-example")
            ))
        }
    };
    let app = Router::new()
        .route("/", get(|| async { "mirror example: try GET /products/7\n" }))
        .route("/products/{n}", get(move |Path(n): Path<u64>| std::future::ready(Json(product(n, &me)))))
        .layer(mirror)
        .layer(verify)
        // Added after the layers: neither verified nor mirrored.
        .route("/metrics", get(page));
    println!("mirror listening on http://{}", listener.local_addr()?);

    match std::env::var("SYNTH_ADMIN_TOKEN").ok().filter(|t| !t.trim().is_empty()) {
        Some(token) => {
            let addr = std::env::var("MIRROR_ADMIN_LISTEN").unwrap_or_else(|_| "127.0.0.1:0".to_owned());
            let admin =
                tokio::net::TcpListener::bind(&addr).await.map_err(|e| format!("binding {addr}: {e}"))?;
            println!("admin listening on http://{}", admin.local_addr()?);
            let routes = admin_router(kill, stats, token.clone()).merge(mirror::admin_router(handle, token));
            tokio::spawn(axum::serve(admin, routes).into_future());
        }
        // A token-less admin would lock every route: no stop button at all. Say so instead.
        None => println!("admin off: set SYNTH_ADMIN_TOKEN to a secret (not empty) to serve it"),
    }
    axum::serve(listener, app).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&args) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("mirror: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match serve(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mirror: {e}");
            ExitCode::FAILURE
        }
    }
}
