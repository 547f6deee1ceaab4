//! The example against its demo server on loopback, real sockets: the binary's scenario run
//! in-process (tagging, names, counts, a wrong HMAC secret failing the run), then the built
//! binary as a process (exit 0 with SYNTH_KEYS, the hint without).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::{process::Command, sync::Arc, time::Duration};

use custom_journey::{BodySigner, DEMO_HMAC_SECRET, Settings, scenario, server};
use loadgen::{Exit, RunConfig, RunOutcome};
use synth_ctx::{KeyRing, RunId, Verifier};

const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

fn keys() -> KeyRing {
    KeyRing::parse(KEYS).unwrap()
}

async fn demo_server() -> server::DemoServer {
    server::serve(Verifier::new(keys()), BodySigner::new(DEMO_HMAC_SECRET).unwrap()).await.unwrap()
}

/// The binary's scenario with `secret`, 20 journeys over one second. With `preflight` (as the
/// binary runs), loadgen first sends the journey once on its own, so the server sees one more.
async fn run(shop: &server::DemoServer, run: &str, secret: &[u8], preflight: bool) -> RunOutcome {
    try_run(shop, run, secret, preflight).await.unwrap()
}

/// [`run`], or why it did not start.
async fn try_run(
    shop: &server::DemoServer,
    run: &str,
    secret: &[u8],
    preflight: bool,
) -> Result<RunOutcome, loadgen::RunError> {
    let settings =
        Settings { duration: Duration::from_secs(1), rate: 20.0, signer: BodySigner::new(secret).unwrap() };
    let scenario = scenario(shop.url().parse().unwrap(), &settings).unwrap();
    let config = RunConfig::new(keys())
        .with_run_id(RunId::new(run).unwrap())
        .with_seed(7)
        .with_quiet(true)
        .with_no_preflight(!preflight);
    loadgen::run(Arc::new(scenario), config).await
}

fn step<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step `{name}` in {:#}", report["steps"]))
}

fn errors(step: &serde_json::Value) -> u64 {
    step["errors"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journey_passes_with_every_request_tagged_and_each_name_counted() {
    let shop = demo_server().await;
    let outcome = run(&shop, "custom-ok", DEMO_HMAC_SECRET, false).await;
    assert_eq!(outcome.exit(), Exit::Ok, "{}", outcome.summary());
    assert!(outcome.verdicts.iter().all(|v| v.passed), "{:?}", outcome.verdicts);

    let report = outcome.to_json();
    let seen = shop.counts();
    // Each named request has its own row, counted as the server counted it.
    for (name, served) in
        [("login", seen.logins), ("view product", seen.product_views), ("place order", seen.orders)]
    {
        let s = step(&report, name);
        assert_eq!(s["requests"].as_u64(), Some(served), "{name}: {s:#}");
        assert_eq!(s["tagged"], s["requests"], "{name}: every answer echoed the run id");
        assert_eq!(errors(s), 0, "{name}: {s:#}");
    }
    assert_eq!(seen.logins, 20, "one login per arrival");
    assert_eq!(seen.product_views, 20);
    // The branch: an order for every product seen in stock, none for the others, and both
    // branches ran (9 products, 3 out of stock, 20 seeded picks).
    assert_eq!(seen.orders, seen.in_stock_views);
    assert!(0 < seen.orders && seen.orders < 20, "{seen:?}");
    assert_eq!(report["total"]["requests"].as_u64(), Some(seen.total));
    assert_eq!(seen.synthetic, seen.total, "every request verified and scoped as synthetic");
    assert_eq!(seen.bad_signatures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_hmac_secret_fails_the_preflight_and_the_threshold() {
    let shop = demo_server().await;
    // As the binary runs it, with the preflight: the journey's login is refused, the journey
    // fails, so the preflight fails and the run does not start (exit 4).
    let err =
        try_run(&shop, "custom-bad-hmac-preflight", b"not the service's secret", true).await.unwrap_err();
    assert_eq!(err.exit(), Exit::PreflightFailed, "{err}");
    let seen = shop.counts();
    assert_eq!(seen.bad_signatures, 1, "only the preflight's login was sent: {seen:?}");

    // Without the preflight, the error-rate threshold fails the run (exit 1).
    let outcome = run(&shop, "custom-bad-hmac", b"not the service's secret", false).await;
    assert_eq!(outcome.exit(), Exit::THRESHOLD_FAILED, "{}", outcome.summary());
    let error_rate = outcome.verdicts.iter().find(|v| v.threshold.contains("error_rate")).unwrap();
    assert!(!error_rate.passed, "{error_rate:?}");

    let seen = shop.counts();
    assert_eq!(seen.bad_signatures, 21, "every login was refused for its signature: {seen:?}");
    assert_eq!((seen.total, seen.logins, seen.orders), (0, 0, 0), "no handler ran: {seen:?}");
    let report = outcome.to_json();
    assert_eq!(step(&report, "login")["errors"]["status"], 20, "{:#}", report["steps"]);
}

/// Runs the built binary with `args`; `keys` is `SYNTH_KEYS` (or unset).
async fn binary(args: &[&str], keys: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_custom-journey"));
    cmd.args(args).env_remove("CUSTOM_JOURNEY_HMAC_SECRET");
    match keys {
        Some(k) => cmd.env("SYNTH_KEYS", k),
        None => cmd.env_remove("SYNTH_KEYS"),
    };
    // The server answers on this test's runtime while the process runs.
    tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exits_0_when_the_run_passes() {
    let shop = demo_server().await;
    let out = binary(&[&shop.url(), "--duration", "1s", "--rate", "5"], Some(KEYS)).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("place order"), "the summary names the requests: {stdout}");
    let seen = shop.counts();
    assert_eq!(seen.logins, 1 + 5, "the preflight's journey, then 5 arrivals: {seen:?}");
    assert_eq!(seen.synthetic, seen.total, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_without_usable_keys_sends_nothing_and_says_how_to_make_one() {
    let shop = demo_server().await;
    for keys in [None, Some("k1:too-short")] {
        let out = binary(&[&shop.url(), "--duration", "1s"], keys).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{keys:?}: {stderr}");
        assert!(stderr.contains("loadgen keygen --kid k1"), "{keys:?}: {stderr}");
    }
    let seen = shop.counts();
    assert_eq!((seen.total, seen.bad_signatures), (0, 0), "nothing reached the server");
}
