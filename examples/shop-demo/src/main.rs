//! `shop-demo`: the example shop under tagged load, in about a minute.
//!
//! 1. starts the shop (gateway, catalog over gRPC, orders, payments, fraud check, and the dark
//!    `catalog-v2`) on loopback, SQLite and `.eml` files in a fresh directory;
//! 2. runs a trickle of real users (no marker) while loadgen drives `examples/shop/journeys.yaml`
//!    (browse, search, login + basket + checkout, weighted, ramping up), every request signed;
//!    the gateway mirrors each real user's search (never a synthetic one) to `catalog-v2`, marked
//!    `dark`, and compares the answers;
//!    the gateway also captures every real user's `GET` (credentials dropped) to JSON Lines;
//! 3. sends one checkout with a forged marker by hand;
//! 4. replays that capture ×2 onto the gateway with a cap (50 % of the real traffic the capture
//!    recorded), every request marked `replay`, for a few seconds, with the capture still on:
//!    none of them may be captured again;
//! 5. runs synth-cleanup for the run, and for the dark run (`dark-catalog-v2`); the replay's
//!    `GET`s write no rows, which the table checks;
//! 6. prints what every service saw, real versus synthetic versus dark versus replayed, and
//!    exits 1 if any check fails.

use std::{
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::atomic::Ordering::Relaxed,
    time::Duration,
};

use anyhow::Context as _;
use clap::Parser;
use shop::{
    MailTarget, Shop, ShopConfig,
    traffic::{RealUsers, forged_probe, wait_for_capture},
    verify::{self, Observed, ReplayObserved},
};
use synth_ctx::{KeyRing, RunId, Verifier};

/// The example shop under tagged load: what a synthetic run touches, and what it must not.
#[derive(Debug, Parser)]
#[command(
    name = "shop-demo",
    version,
    about,
    after_help = "Exit codes: 0 every check passed, 1 a check failed, 2 the demo could not run."
)]
struct Cli {
    /// Where the database, the emails and the reports go (default: a new temporary directory).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The journeys loadgen runs.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../shop/journeys.yaml"))]
    scenario: PathBuf,
    /// Use this database instead of a new SQLite file (postgres://… or sqlite:…).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Send emails to this SMTP server (smtp://host:port) instead of writing .eml files.
    #[arg(long, env = "SMTP_URL")]
    smtp_url: Option<String>,
    /// Real users browsing and buying alongside the load.
    #[arg(long, default_value_t = 4)]
    real_users: usize,
}

/// Where `journeys.yaml`'s gRPC steps call the catalogue (`shop catalog --listen 127.0.0.1:7001`).
const CATALOG_PORT: &str = "http://127.0.0.1:7001";

/// Copies of each captured request the replay sends.
const REPLAY_AMPLIFY: f64 = 2.0;

/// The replay's cap: at most this share of the real traffic the capture recorded (it records
/// every real `GET`, so the recording's rate is real traffic's). ×2 at the recorded pace wants
/// twice real traffic: the cap holds it at half, visibly, and it still sends.
const REPLAY_CAP_SHARE: f64 = 0.5;

/// How long the replay sends: enough for a few dozen requests, a few seconds on the demo's time.
const REPLAY_FOR: Duration = Duration::from_secs(4);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shop-demo: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(demo(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("shop-demo: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn demo(cli: Cli) -> anyhow::Result<bool> {
    let run = RunId::new(format!("demo-{}", std::process::id()))?;
    let out = match cli.out {
        Some(dir) => dir,
        None => std::env::temp_dir().join(format!("shop-demo-{run}")),
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let out = out.canonicalize().unwrap_or(out);

    // A fresh signing key for this demo, shared by loadgen (signs) and the shop (verifies).
    let key = loadgen::new_key(&synth_ctx::KeyId::new("demo")?)?;
    let keys_file = out.join("synth-keys");
    std::fs::write(&keys_file, format!("{key}\n"))?;
    let verifier = Verifier::new(KeyRing::parse(&key)?);

    let database_url =
        cli.database_url.clone().unwrap_or_else(|| format!("sqlite://{}", out.join("shop.db").display()));
    let mail_dir = out.join("mail");
    // A reused --out must not lend this replay an earlier run's capture.
    let capture_dir = out.join("capture");
    let _ = std::fs::remove_dir_all(&capture_dir);
    let mail = match &cli.smtp_url {
        Some(url) => MailTarget::Smtp(url.clone()),
        None => MailTarget::Dir(mail_dir.clone()),
    };
    let shop = Shop::start(ShopConfig {
        verifier,
        database_url: database_url.clone(),
        mail,
        admin_token: String::new(),
        capture_dir: Some(capture_dir.clone()),
    })
    .await
    .context("starting the shop")?;
    let services = shop.services();
    eprintln!(
        "shop: gateway http://{}, catalog (gRPC) http://{}, orders http://{}, payments http://{}, fraud-check http://{}, dark catalog-v2 http://{}",
        shop.gateway, shop.catalog, shop.orders, shop.payments, shop.fraud, shop.catalog_v2
    );
    let db_start = shop.store.counts(run.as_str()).await?;
    let dark_rows_start = shop.store.search_rows(shop::catalog_v2::RUN).await?;
    let mail_before = shop::mail::count_eml(&mail_dir).unwrap_or(0);

    // Real users: no marker, real emails, a real-looking card.
    let real_users = RealUsers::start(&format!("http://{}", shop.gateway), cli.real_users);

    eprintln!("loadgen: {} against the gateway, run {run}", cli.scenario.display());
    let report_json = out.join("report.json");
    let report_html = out.join("report.html");
    let replay_json = out.join("replay.json");
    let replay_html = out.join("replay.html");
    // A reused --out must not lend this run an earlier run's report or mail.
    for report in [&report_json, &report_html, &replay_json, &replay_html] {
        let _ = std::fs::remove_file(report);
    }
    let mut scenario = loadgen::Scenario::from_file(&cli.scenario)?;
    // The journeys' gRPC steps call the catalogue's documented port; this one listens elsewhere.
    scenario.retarget_grpc(&CATALOG_PORT.parse()?, &format!("http://{}", shop.catalog).parse()?);
    let config = loadgen::RunConfig::new(KeyRing::parse(&key)?)
        .with_target(format!("http://{}", shop.gateway).parse()?)
        .with_run_id(run.clone())
        .with_report_json(&report_json)
        .with_report_html(&report_html)
        // The confirmation e-mail is sent after the response: preflight reads its guard here.
        .with_observe(vec![format!("http://{}/metrics", shop.orders)], loadgen::DEFAULT_SETTLE)
        .with_ctrl_c(true);
    let exit = match loadgen::run(std::sync::Arc::new(scenario), config).await {
        Ok(outcome) => {
            print!("{}", outcome.summary());
            outcome.exit()
        }
        // The run did not start for safety: say why, and still show what the shop saw.
        Err(e) if e.exit() == loadgen::Exit::PreflightFailed => {
            println!("{e}");
            e.exit()
        }
        Err(e) => return Err(e.into()),
    };

    let real = real_users.stop().await;
    let forged = forged_probe(&format!("http://{}", shop.gateway), &services, "demo", &run).await?;
    eprintln!("forged marker at the gateway: HTTP {}", forged.status);
    eprintln!(
        "real users: {} requests, {} checkouts, {} errors",
        real.requests.load(Relaxed),
        real.checkouts.load(Relaxed),
        real.errors.load(Relaxed)
    );
    eprintln!(
        "real users' searches mirrored to catalog-v2: {} copies sent (share {}, run {})",
        shop::common::mirror_stats(&shop.mirror)["requests"]["queued"],
        shop.mirror.share(),
        shop.mirror.run()
    );

    // The real users have stopped: whatever the capture records from now on came from the
    // replay, which it must not record.
    let replay_run = RunId::new(format!("replay-{run}"))?;
    let replay_reports = (replay_json.as_path(), replay_html.as_path());
    let (replayed, replay_exit) =
        replay(shop.gateway, &services, &key, &capture_dir, &replay_run, replay_reports).await?;
    // No synth-cleanup for the replay's run: its requests are GETs, which write no rows (the
    // table's "replayed requests" line checks that none is tagged with its run id).
    let replayed = ReplayObserved {
        rows_tagged: shop.store.counts(replay_run.as_str()).await?.tagged_by_run
            + shop.store.search_rows(replay_run.as_str()).await?.tagged_by_run,
        ..replayed
    };
    eprintln!(
        "replay: {} requests sent, {} written to the capture meanwhile; no cleanup for run {replay_run}: {} rows tagged",
        replayed.sent,
        replayed.recaptured(),
        replayed.rows_tagged
    );
    eprintln!(
        "cleanup: synth-cleanup --database-url {} --tables {} --run {run}",
        redact(&database_url),
        shop::store::TABLES.join(",")
    );
    eprintln!(
        "cleanup: synth-cleanup --database-url {} --tables {} --run {}",
        redact(&database_url),
        shop::store::DARK_TABLES.join(","),
        shop::catalog_v2::RUN
    );
    let after = verify::after_load(&services, &shop.store, &database_url, &run).await?;
    shop.stop();

    let loadgen_report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report_json)?)?;
    let observed = Observed {
        db_start,
        // With SMTP the demo cannot see the server's mailbox; the orders service's counts remain.
        emails_arrived: match cli.smtp_url {
            Some(_) => None,
            None => Some(shop::mail::count_eml(&mail_dir)?.saturating_sub(mail_before)),
        },
        forged: Some(forged),
        loadgen: Some(loadgen_report),
        real_users: Some((real.errors.load(Relaxed), real.checkouts.load(Relaxed))),
        real_searches: Some((real.searches.load(Relaxed), real.searches_differing.load(Relaxed))),
        dark_rows_start,
        replay: Some(replayed),
        ..Observed::from(after)
    };
    let checks = verify::checks(&observed);
    let ok = checks.iter().all(|c| c.ok);
    let mut o = std::io::stdout().lock();
    writeln!(o, "\n{}", verify::table(&checks))?;
    writeln!(o, "reports: {} and {}", report_html.display(), report_json.display())?;
    writeln!(
        o,
        "replay: {} and {}; capture: {}",
        replay_html.display(),
        replay_json.display(),
        capture_dir.display()
    )?;
    match &cli.smtp_url {
        Some(url) => writeln!(o, "database: {}  emails: sent to {url}", redact(&database_url))?,
        None => writeln!(o, "database: {}  emails: {}", redact(&database_url), mail_dir.display())?,
    }
    if !matches!(exit, loadgen::Exit::Ok) {
        writeln!(o, "loadgen: thresholds or run did not pass (exit code {})", exit as u8)?;
    }
    if !matches!(replay_exit, loadgen::Exit::Ok) {
        writeln!(o, "loadgen replay: the replay did not pass (exit code {})", replay_exit as u8)?;
    }
    writeln!(o, "{}", if ok { "every check passed" } else { "SOME CHECKS FAILED" })?;
    Ok(ok && matches!(exit, loadgen::Exit::Ok) && matches!(replay_exit, loadgen::Exit::Ok))
}

/// Replays the gateway's capture (`dir`) onto the gateway ×[`REPLAY_AMPLIFY`], capped at
/// [`REPLAY_CAP_SHARE`] of the recorded real traffic, for [`REPLAY_FOR`], as run `run` signed
/// with `key`; reads the capture's counters before and after. An empty capture replays nothing
/// (and the table's replay lines fail).
async fn replay(
    gateway: SocketAddr,
    services: &[(&'static str, String)],
    key: &str,
    dir: &Path,
    run: &RunId,
    (report_json, report_html): (&Path, &Path),
) -> anyhow::Result<(ReplayObserved, loadgen::Exit)> {
    // Settled first: the replay reads the files whole, and "during the replay" starts here.
    let capture_before =
        wait_for_capture(services).await.context("the gateway's capture counters (/stats) did not answer")?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading the capture directory {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    let cap = format!("{}% of real traffic", REPLAY_CAP_SHARE * 100.0);
    let mut observed = ReplayObserved {
        amplify: REPLAY_AMPLIFY,
        cap,
        capture_before: capture_before.clone(),
        ..Default::default()
    };
    if files.is_empty() {
        eprintln!("replay: the gateway captured nothing to replay in {}", dir.display());
        observed.capture_after = capture_before;
        return Ok((observed, loadgen::Exit::Ok));
    }
    eprintln!(
        "loadgen replay: {} capture file(s) ×{REPLAY_AMPLIFY} onto the gateway, cap {}, for {REPLAY_FOR:?}, run {run}",
        files.len(),
        observed.cap
    );
    let replay = loadgen::Replay::new(files, format!("http://{gateway}").parse()?)
        .amplify(REPLAY_AMPLIFY)
        .duration(REPLAY_FOR)
        // The capture records every real GET: the recording's rate is real traffic's.
        .cap(loadgen::ReplayCap::Recording { share: REPLAY_CAP_SHARE, recorded_share: 1.0 });
    let config = loadgen::RunConfig::new(KeyRing::parse(key)?)
        .with_run_id(run.clone())
        .with_report_json(report_json)
        .with_report_html(report_html)
        .with_ctrl_c(true);
    let outcome = loadgen::replay(replay, config).await?;
    print!("{}", outcome.summary());
    observed.recorded = outcome.replay.as_ref().map_or(0, |r| r.replayed_records);
    observed.sent = outcome.finished.journeys.started;
    observed.tagged = outcome.finished.total().tagged;
    // If the cap held the replay back: the cap at its last reading of real traffic.
    let decisions = &outcome.controls.decisions;
    let capped = decisions
        .iter()
        .any(|d| matches!(d.action, loadgen::DecisionAction::Cap) && d.detail.contains("held at"));
    observed.held_at = capped
        .then(|| {
            decisions
                .iter()
                .rev()
                .filter(|d| matches!(d.action, loadgen::DecisionAction::Cap))
                .find_map(|d| d.value)
                .map(|real| real * REPLAY_CAP_SHARE)
        })
        .flatten();
    observed.capture_after =
        wait_for_capture(services).await.context("the gateway's capture counters (/stats) did not answer")?;
    Ok((observed, outcome.exit()))
}

/// The URL without its password, for printing.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}
