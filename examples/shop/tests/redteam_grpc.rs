//! Red-team findings on Rust journeys' gRPC calls (issue 16): each test reproduced, on main
//! f8d93fa, something `user.grpc()` / `user.call()` let through, and guards its fix.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use loadgen::{Ending, Journey, Phase, RunConfig, Scenario, User};
use shop::{
    common::{Shutdown, serve},
    proto::{SearchRequest, catalog_client::CatalogClient},
};
use synth_ctx::{KeyRing, RunId, Verifier};

const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

/// The catalogue on a loopback port, every call held `delay` before it reaches it; the counter
/// counts the calls that arrived.
async fn slow_catalog(delay: Duration) -> (SocketAddr, Shutdown, Arc<AtomicU64>) {
    let verifier = Verifier::new(KeyRing::parse(KEYS).unwrap());
    let (app, _base) = shop::catalog::router(verifier);
    let arrived = Arc::new(AtomicU64::new(0));
    let counter = arrived.clone();
    let app = app.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(delay).await;
                next.run(req).await
            }
        },
    ));
    let shutdown = Shutdown::new();
    let addr = serve("127.0.0.1:0".parse().unwrap(), app, &shutdown).await.unwrap();
    (addr, shutdown, arrived)
}

fn config(run: &str) -> RunConfig {
    RunConfig::new(KeyRing::parse(KEYS).unwrap())
        .with_run_id(RunId::new(run).unwrap())
        .with_quiet(true)
        .with_no_preflight(true)
}

/// FINDING 7. `max_connections` bounds YAML gRPC steps' calls in flight (they take a slot of
/// the pool, see `max_connections_bounds_calls_in_flight`), but not a Rust journey's calls
/// through `user.grpc()` / `user.call()`: against a slow service the scenario's concurrency
/// bound is silently off and every arrival's call piles onto it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_max_connections_bounds_a_rust_journeys_grpc_calls_in_flight() {
    let (addr, shutdown, arrived) = slow_catalog(Duration::from_secs(5)).await;
    let search = Journey::new("search").run(|user: User| async move {
        let mut client = CatalogClient::new(user.grpc()?);
        user.call("search", client.search(SearchRequest { query: "hats".into(), limit: 1 })).await?;
        Ok(())
    });
    let mut scenario = Scenario::new(format!("http://{addr}").parse().unwrap())
        .phase(Phase::Load {
            duration: Duration::from_secs(60),
            rate: 50.0,
            ramp_to: 50.0,
            max_concurrent: None,
        })
        .journey(search);
    scenario.max_connections = 3;
    let cfg = config("rt-grpc-bound");
    let control = cfg.control();
    let run = tokio::spawn(loadgen::run(Arc::new(scenario), cfg));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let in_flight = arrived.load(Ordering::SeqCst);
    control.stop();
    let _ = run.await.unwrap().unwrap();
    shutdown.fire();
    assert!(in_flight <= 3, "{in_flight} calls in flight at once with max_connections: 3");
}

/// FINDING 1c (gRPC). A channel from `user.grpc()` kept by a task past its journey refuses
/// calls after a stop, but not after a run that simply completed: the run never sets its stop
/// flag, so the task's calls go on reaching the catalogue, verified as synthetic, after
/// `loadgen::run` returned, uncounted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_a_grpc_channel_kept_past_a_completed_run_calls_nothing_after_it() {
    let (addr, shutdown, arrived) = slow_catalog(Duration::ZERO).await;
    let once = Arc::new(AtomicBool::new(false));
    let journey = Journey::new("beacon").run(move |user: User| {
        let once = once.clone();
        async move {
            let mut client = CatalogClient::new(user.grpc()?);
            if !once.swap(true, Ordering::SeqCst) {
                let mut late = client.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(800)).await;
                    let _ = late.search(SearchRequest { query: "late".into(), limit: 1 }).await;
                });
            }
            user.call("search", client.search(SearchRequest { query: "hats".into(), limit: 1 })).await?;
            Ok(())
        }
    });
    let scenario = Scenario::new(format!("http://{addr}").parse().unwrap())
        .phase(Phase::Load {
            duration: Duration::from_millis(300),
            rate: 10.0,
            ramp_to: 10.0,
            max_concurrent: None,
        })
        .journey(journey);
    let outcome = loadgen::run(Arc::new(scenario), config("rt-grpc-after")).await.unwrap();
    assert_eq!(outcome.finished.ending, Ending::Completed);
    let at_end = arrived.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let after = arrived.load(Ordering::SeqCst) - at_end;
    shutdown.fire();
    assert_eq!(after, 0, "{after} gRPC call(s) reached the catalogue after the run ended");
}
