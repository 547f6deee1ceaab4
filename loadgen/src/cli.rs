//! Command-line interface: options and the commands behind them.

use std::{io::Write, process::ExitCode, time::Duration};

use anyhow::Context as _;
use base64::Engine as _;
use clap::{Parser, Subcommand};
use synth_ctx::{KeyId, KeyRing, Origin, RunId, Signer, Verifier};

const AFTER_HELP: &str = "\
Examples:
  # Make a key and share it with the services under test
  export SYNTH_KEYS=$(loadgen keygen --kid k1)

  # Send one synthetic request by hand
  curl -H \"synthetic-traffic: $(loadgen token mint --run manual-1 --ttl 10m)\" http://127.0.0.1:8080/

  # Find out why a service refused a marker
  loadgen token verify 'v1.load.manual-1.1764250000.k1.…'

Exit codes: 0 success, 1 marker refused or threshold failed, 2 bad usage or configuration,
3 run stopped or aborted, 4 preflight failed or a signal query cannot be read (no data, refused, a matrix, not the
query API; the run did not start).";

/// A load generator for production: every request tagged with a signed synthetic-traffic marker.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// loadgen's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a fresh `kid:secret` entry for SYNTH_KEYS (32 random bytes, base64url).
    #[command(
        after_help = "Example:\n  export SYNTH_KEYS=$(loadgen keygen --kid k2),$SYNTH_KEYS   # rotate: new key first"
    )]
    Keygen {
        /// Key id: 1-32 characters of A-Z a-z 0-9 - _. Defaults to `k` and today's date.
        #[arg(long)]
        kid: Option<String>,
    },
    /// Mint or verify synthetic-traffic tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Run a scenario: every request carries a synthetic-traffic marker minted from SYNTH_KEYS.
    #[command(
        after_help = "Example:\n  SYNTH_KEYS=... loadgen run journeys.yaml --report-json report.json\n\nCtrl-C stops at once and still writes the reports (exit 3); a second Ctrl-C exits immediately."
    )]
    Run(RunArgs),
    /// Send every journey once, tagged, and show per step which services saw it and which
    /// guards engaged, against the steps' `expect_path` and `expect_guards`.
    #[command(
        after_help = "Example:\n  SYNTH_KEYS=... loadgen preflight journeys.yaml --target https://staging.example\n\nExit codes: 0 passed, 4 a hop or guard is missing or a signal query reads no data, 2 bad input.\n`loadgen run` does this first when a step declares expectations (--no-preflight skips it)."
    )]
    Preflight(PreflightArgs),
    /// Load one URL: at a fixed request rate (--rate, open model, like wrk2 / oha -q) or as fast
    /// as N looping users allow (--users, closed model, like wrk / oha).
    #[command(
        after_help = "Examples:\n  loadgen hit http://127.0.0.1:8080/ --rate 5000 --duration 10s\n  loadgen hit http://127.0.0.1:8080/ --users 50 --duration 10s"
    )]
    Hit(HitArgs),
    /// Check a scenario file (and its data files) without sending anything.
    #[command(after_help = "Example:\n  loadgen validate journeys.yaml")]
    Validate {
        /// The scenario file.
        file: std::path::PathBuf,
    },
}

/// `loadgen token …`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a token signed with the first key of SYNTH_KEYS.
    #[command(after_help = "Example:\n  loadgen token mint --run checkout-1 --origin load --ttl 1h")]
    Mint {
        /// Run id: 1-64 characters of A-Z a-z 0-9 - _.
        #[arg(long)]
        run: String,
        /// Why the traffic is synthetic.
        #[arg(long, default_value = "load", value_parser = ["load", "replay", "dark"])]
        origin: String,
        /// How long the token stays valid, e.g. `10m`, `1h`. Verifiers refuse more than 24h by default.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
        /// Where the keys come from.
        #[command(flatten)]
        keys: KeySource,
    },
    /// Check a token against SYNTH_KEYS: exit 0 and print its fields, or exit 1 and print why it is refused.
    #[command(after_help = "Example:\n  loadgen token verify \"$TOKEN\"")]
    Verify {
        /// The token (`-` reads it from standard input).
        token: String,
        /// Longest lifetime to accept, as a service would.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        max_ttl: Duration,
        /// Where the keys come from.
        #[command(flatten)]
        keys: KeySource,
    },
}

/// Options every run has: its id, its reports, its keys.
#[derive(Debug, clap::Args)]
pub struct RunOutput {
    /// Run id for the marker (default: the scenario's `run:`, else generated).
    #[arg(long)]
    pub run_id: Option<String>,
    /// Write the JSON report here.
    #[arg(long, value_name = "FILE")]
    pub report_json: Option<std::path::PathBuf>,
    /// Write the HTML report (one self-contained file) here.
    #[arg(long, value_name = "FILE")]
    pub report_html: Option<std::path::PathBuf>,
    /// No live lines.
    #[arg(long, short)]
    pub quiet: bool,
    /// Where the keys come from.
    #[command(flatten)]
    pub keys: KeySource,
}

/// `loadgen run` options.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The scenario file.
    pub file: std::path::PathBuf,
    /// Services' `/metrics` pages its preflight watches.
    #[command(flatten)]
    pub observe: ObserveArgs,
    /// Seed journey choice and templates, for repeatable runs.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Send the journeys to this base URL instead of the file's `target:`.
    #[arg(long, value_name = "URL")]
    pub target: Option<String>,
    /// Start without the preflight (which runs when a step declares expect_path/expect_guards).
    #[arg(long)]
    pub no_preflight: bool,
    /// Serve the control API (and /metrics) here, e.g. 127.0.0.1:9090: stop, pause, resume,
    /// change the rate while the run goes on.
    #[arg(long, value_name = "ADDR")]
    pub control_addr: Option<std::net::SocketAddr>,
    /// Dead-man's switch: the run goes on only while `POST /heartbeat` reaches the control API
    /// at least this often (e.g. 30s); otherwise it stops as if Ctrl-C. Needs --control-addr
    /// and --control-token (a heartbeat anyone can send keeps nothing safe).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "control_addr")]
    pub heartbeat: Option<Duration>,
    /// Lifetime of the signed marker; a fresh one is minted every third of it while the run is
    /// alive, so a killed generator's markers stop working soon after.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub token_ttl: Duration,
    /// Require `Authorization: Bearer TOKEN` on every route of the control API and the metrics
    /// server (401 without). Required with --heartbeat, and to listen on a non-loopback address.
    #[arg(long, env = "LOADGEN_CONTROL_TOKEN", hide_env_values = true)]
    pub control_token: Option<String>,
    /// Serve Prometheus metrics (GET /metrics) here, e.g. 127.0.0.1:9091.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Run id, reports, keys.
    #[command(flatten)]
    pub out: RunOutput,
}

/// `loadgen preflight` options.
#[derive(Debug, clap::Args)]
pub struct PreflightArgs {
    /// The scenario file.
    pub file: std::path::PathBuf,
    /// Send the journeys to this base URL instead of the file's `target:`.
    #[arg(long, value_name = "URL")]
    pub target: Option<String>,
    /// Run id for the marker (default: the scenario's `run:`, else generated).
    #[arg(long)]
    pub run_id: Option<String>,
    /// Where the keys come from.
    #[command(flatten)]
    pub keys: KeySource,
    /// Services' `/metrics` pages to watch.
    #[command(flatten)]
    pub observe: ObserveArgs,
}

/// `--observe`: the services' `/metrics` pages preflight reads to see guards that engage after
/// the response (an e-mail from a spawned task).
#[derive(Debug, Clone, clap::Args)]
pub struct ObserveArgs {
    /// A service's /metrics page (repeatable): guards whose suppressed counter moves during a
    /// journey count as engaged by it ("after the response").
    #[arg(long = "observe", value_name = "URL")]
    pub urls: Vec<String>,
    /// How long to wait after each journey for effects that come after its response.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_settle)]
    pub settle: Duration,
}

fn parse_settle(s: &str) -> Result<Duration, String> {
    crate::duration::parse(s).map_err(|e| e.to_string())
}

/// `loadgen hit` options.
#[derive(Debug, clap::Args)]
pub struct HitArgs {
    /// The URL.
    pub url: String,
    /// Requests per second (open model). Without it, --users loop as fast as they can.
    #[arg(long, conflicts_with = "users")]
    pub rate: Option<f64>,
    /// Looping users (closed model); default 50.
    #[arg(long)]
    pub users: Option<usize>,
    /// How long.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Run id, reports, keys.
    #[command(flatten)]
    pub out: RunOutput,
}

/// Where signing keys come from.
#[derive(Debug, clap::Args)]
pub struct KeySource {
    /// Read keys from this file (`kid:secret` entries, one per line) instead of the SYNTH_KEYS
    /// environment variable.
    #[arg(long, env = "SYNTH_KEYS_FILE", value_name = "PATH")]
    pub keys_file: Option<std::path::PathBuf>,
}

impl KeySource {
    fn load(&self) -> anyhow::Result<KeyRing> {
        match &self.keys_file {
            Some(path) => KeyRing::from_file(path).context("reading signing keys"),
            None => KeyRing::from_env().context("reading signing keys"),
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::duration::parse(s).map_err(|e| e.to_string())
}

/// Process exit codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Success.
    Ok = 0,
    /// A token was refused, or a threshold failed.
    Refused = 1,
    /// Bad usage, configuration or input.
    Usage = 2,
    /// The run was stopped or aborted.
    Stopped = 3,
    /// The preflight found a missing hop or guard; the run did not start.
    PreflightFailed = 4,
}

impl Exit {
    /// The exit code for a failed threshold (the same number as [`Exit::Refused`]).
    pub const THRESHOLD_FAILED: Exit = Exit::Refused;
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

/// Runs a parsed command, writing its output to `out`. Errors are configuration problems the
/// caller reports (exit code [`Exit::Usage`]). `loadgen run` needs a tokio runtime: use
/// [`run_async`] from inside one.
pub fn run(cli: Cli, out: &mut dyn Write) -> anyhow::Result<Exit> {
    if matches!(cli.command, Command::Run(_) | Command::Hit(_) | Command::Preflight(_)) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the runtime")?;
        return rt.block_on(run_async(cli, out));
    }
    run_sync(cli, out)
}

/// [`run`] for callers already inside a tokio runtime.
pub async fn run_async(cli: Cli, out: &mut dyn Write) -> anyhow::Result<Exit> {
    match cli.command {
        Command::Run(args) => run_scenario(args, out).await,
        Command::Hit(args) => hit(args, out).await,
        Command::Preflight(args) => preflight_command(args, out).await,
        other => run_sync(Cli { command: other }, out),
    }
}

fn run_sync(cli: Cli, out: &mut dyn Write) -> anyhow::Result<Exit> {
    match cli.command {
        Command::Run(_) | Command::Hit(_) | Command::Preflight(_) => {
            anyhow::bail!("`loadgen run`, `hit` and `preflight` need a runtime: use run_async")
        }
        Command::Keygen { kid } => keygen(kid, out),
        Command::Token(TokenCommand::Mint { run, origin, ttl, keys }) => mint(&run, &origin, ttl, &keys, out),
        Command::Token(TokenCommand::Verify { token, max_ttl, keys }) => verify(&token, max_ttl, &keys, out),
        Command::Validate { file } => validate(&file, out),
    }
}

fn generated_run_id() -> String {
    let mut b = [0u8; 3];
    let _ = getrandom::fill(&mut b);
    let now = unix_now();
    let s = now % 86_400;
    format!(
        "run-{}-{:02}{:02}{:02}-{:02x}{:02x}{:02x}",
        civil_date(now).replace('-', ""),
        s / 3600,
        s / 60 % 60,
        s % 60,
        b[0],
        b[1],
        b[2]
    )
}

async fn hit(args: HitArgs, out: &mut dyn Write) -> anyhow::Result<Exit> {
    let url: http::Uri = args.url.parse().with_context(|| format!("`{}` is not a URL", args.url))?;
    if !matches!(url.scheme_str(), Some("http" | "https")) || url.authority().is_none() {
        anyhow::bail!("`{}`: give an http:// or https:// URL with a host", args.url);
    }
    let phase = match args.rate {
        Some(rate) if rate.is_finite() && rate > 0.0 && rate <= crate::scenario::MAX_ARRIVAL_RATE => {
            crate::scenario::Phase::Load {
                duration: args.duration,
                rate,
                ramp_to: rate,
                max_concurrent: None,
            }
        }
        Some(_) => {
            anyhow::bail!("--rate must be a number above 0 and at most {}", crate::scenario::MAX_ARRIVAL_RATE)
        }
        None => {
            crate::scenario::Phase::Closed { duration: args.duration, users: args.users.unwrap_or(50).max(1) }
        }
    };
    let scenario = crate::scenario::Scenario::single_request(url, http::Method::GET, phase);
    let run = RunArgs {
        file: std::path::PathBuf::from(&args.url),
        observe: ObserveArgs { urls: Vec::new(), settle: crate::observe::DEFAULT_SETTLE },
        seed: None,
        target: None,
        no_preflight: true,
        heartbeat: None,
        token_ttl: Duration::from_secs(600),
        control_addr: None,
        control_token: None,
        metrics_addr: None,
        out: args.out,
    };
    execute(std::sync::Arc::new(scenario), run, out).await
}

fn load_scenario(file: &std::path::Path, target: Option<&str>) -> anyhow::Result<crate::scenario::Scenario> {
    let mut scenario = crate::scenario::load(file)?;
    if let Some(target) = target {
        let uri: http::Uri = target.parse().with_context(|| format!("--target `{target}` is not a URL"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
            anyhow::bail!("--target `{target}`: give an http:// or https:// URL with a host");
        }
        scenario.retarget(uri);
    }
    Ok(scenario)
}

async fn run_scenario(args: RunArgs, out: &mut dyn Write) -> anyhow::Result<Exit> {
    let scenario = load_scenario(&args.file, args.target.as_deref())?;
    execute(std::sync::Arc::new(scenario), args, out).await
}

fn run_id_of(given: Option<&String>, scenario: &crate::scenario::Scenario) -> anyhow::Result<RunId> {
    Ok(match (given, &scenario.run) {
        (Some(r), _) => RunId::new(r).context("--run-id")?,
        (None, Some(r)) => r.clone(),
        (None, None) => RunId::new(generated_run_id())?,
    })
}

async fn preflight_command(args: PreflightArgs, out: &mut dyn Write) -> anyhow::Result<Exit> {
    let scenario = std::sync::Arc::new(load_scenario(&args.file, args.target.as_deref())?);
    let run_id = run_id_of(args.run_id.as_ref(), &scenario)?;
    let token = Signer::new(args.keys.load()?).mint(Origin::Load, &run_id, Duration::from_secs(15 * 60));
    let report = preflight(&scenario, &run_id, token, &args.observe).await;
    write!(out, "{}", report.render())?;
    if !report.declared {
        writeln!(out, "(no step declares expect_path or expect_guards: nothing to compare)")?;
    }
    let signals_ok = signals_have_data(&scenario, out).await?;
    Ok(if report.passed() && signals_ok { Exit::Ok } else { Exit::PreflightFailed })
}

/// Asks every signal query once; prints what stops the run (a query with no data, refused,
/// of a type no condition can read, or a source that is not the query API)
/// and what does not. Returns whether the run may start.
async fn signals_have_data(
    scenario: &crate::scenario::Scenario,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let check = crate::controls::check_signals(scenario).await;
    for warning in &check.warnings {
        eprintln!("warning: {warning}");
    }
    for p in &check.problems {
        writeln!(out, "signal `{}` cannot guard the run: {}\n  query: {}", p.name, p.why, p.query)?;
    }
    Ok(check.problems.is_empty())
}

async fn preflight(
    scenario: &std::sync::Arc<crate::scenario::Scenario>,
    run_id: &RunId,
    token: String,
    observe: &ObserveArgs,
) -> crate::preflight::Report {
    let options = crate::engine::RunOptions { token, run_id: run_id.to_string(), seed: None };
    let observer = (!observe.urls.is_empty())
        .then(|| crate::observe::Observer::new(observe.urls.clone(), observe.settle, &scenario.tls));
    let seen = crate::engine::preflight(scenario.clone(), options, observer.as_ref()).await;
    crate::preflight::check(scenario, seen)
}

async fn execute(
    scenario: std::sync::Arc<crate::scenario::Scenario>,
    args: RunArgs,
    out: &mut dyn Write,
) -> anyhow::Result<Exit> {
    use crate::{engine, report};

    check_control_options(&args)?;
    let run_id = run_id_of(args.out.run_id.as_ref(), &scenario)?;
    let keys = args.out.keys.load()?;
    // Short-lived markers, refreshed while the run is alive (below): never longer than the run
    // plus a margin, nor than a verifier's default maximum (24 h).
    if args.token_ttl < Duration::from_secs(1) {
        anyhow::bail!(
            "--token-ttl must be at least 1s (verifiers allow 30s of clock skew, so use a minute or more)"
        );
    }
    let ttl = args
        .token_ttl
        .min(report::planned(&scenario) + Duration::from_secs(15 * 60))
        .min(Duration::from_secs(23 * 3600));
    let signer = Signer::new(keys);
    let token = signer.mint(Origin::Load, &run_id, ttl);
    if !args.no_preflight && crate::preflight::declares_expectations(&scenario) {
        let report = preflight(&scenario, &run_id, token.clone(), &args.observe).await;
        if !args.out.quiet || !report.passed() {
            eprint!("{}", report.render());
        }
        if !report.passed() {
            writeln!(
                out,
                "preflight failed: the run did not start (fix the hops and guards above, or --no-preflight)"
            )?;
            return Ok(Exit::PreflightFailed);
        }
    }
    if !signals_have_data(&scenario, out).await? {
        writeln!(out, "the run did not start: its safety signals cannot be read (see above)")?;
        return Ok(Exit::PreflightFailed);
    }
    // A fresh marker for the run itself: the preflight may have taken a while.
    let token = signer.mint(Origin::Load, &run_id, ttl);

    // Bounded before the control API opens: a `/rate` call during the preflight is checked
    // against this scenario's max_rate_factor too.
    let stop = engine::Control::for_scenario(&scenario);
    if let Some(addr) = args.control_addr {
        let at = crate::control::serve(
            addr,
            stop.clone(),
            crate::control::Routes::All,
            args.control_token.clone(),
        )
        .await
        .with_context(|| format!("--control-addr {addr}"))?;
        eprintln!(
            "control API on http://{at} (POST /stop, /pause, /resume, /rate?factor=F; GET /status, /metrics)"
        );
    }
    if let Some(addr) = args.metrics_addr {
        let at = crate::control::serve(
            addr,
            stop.clone(),
            crate::control::Routes::MetricsOnly,
            args.control_token.clone(),
        )
        .await
        .with_context(|| format!("--metrics-addr {addr}"))?;
        eprintln!("Prometheus metrics on http://{at}/metrics");
    }
    let ctrl_c = {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!(
                    "\nstopping: no new requests; in-flight ones are cancelled (Ctrl-C again to exit now)"
                );
                stop.stop();
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(Exit::Stopped as i32);
                }
            }
        })
    };
    let quiet = args.out.quiet;
    let series = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let series_in = series.clone();
    let scenario_for_thresholds = scenario.clone();
    let options = engine::RunOptions { token, run_id: run_id.to_string(), seed: args.seed };
    let refresher = {
        let (control, run_id) = (stop.clone(), run_id.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 3).await;
                let _ = control.set_token(&signer.mint(Origin::Load, &run_id, ttl));
            }
        })
    };
    let record = crate::controls::SharedRecord::default();
    let controls = tokio::spawn(crate::controls::run(
        scenario.clone(),
        stop.clone(),
        crate::controls::Options { heartbeat: args.heartbeat, print: !quiet },
        record.clone(),
        std::time::Instant::now(),
    ));
    if let Some(hb) = args.heartbeat
        && !quiet
    {
        eprintln!("dead-man's switch: POST /heartbeat at least every {}s or the run stops", hb.as_secs_f64());
    }
    if !quiet {
        eprintln!(
            "run {run_id}: {} journeys against {}, {}s planned",
            scenario.journeys.len(),
            scenario.target,
            report::planned(&scenario).as_secs()
        );
    }
    let finished = engine::run(scenario.clone(), options, stop, move |interval| {
        if !quiet {
            eprintln!("{}", report::interval_line(interval));
        }
        series_in.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(report::Point::of(interval));
        let steps = interval.stats.snapshot();
        report::verdicts(&scenario_for_thresholds, &steps)
            .into_iter()
            .zip(&scenario_for_thresholds.thresholds)
            .find(|(v, t)| t.abort_on_fail && v.value.is_some() && !v.passed)
            .map(|(v, _)| format!("threshold `{}` failed", v.threshold))
    })
    .await;
    ctrl_c.abort();
    controls.abort();
    refresher.abort();
    let record = record.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let verdicts = report::verdicts(&scenario, &finished.steps);
    write!(out, "{}", report::summary(&scenario, run_id.as_str(), &finished, &verdicts))?;
    if !record.decisions.is_empty() {
        writeln!(out, "controls: {} decisions", record.decisions.len())?;
        for d in &record.decisions {
            writeln!(
                out,
                "  [{:>6.1}s] {} ({}): {}; {:.1} -> {:.1} journeys/s",
                d.t_s, d.action, d.source, d.detail, d.old_rate, d.new_rate
            )?;
        }
    }
    let series = series.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    if let Some(path) = &args.out.report_json {
        let json = report::json_report(&scenario, run_id.as_str(), &finished, &verdicts, &series, &record);
        std::fs::write(path, serde_json::to_vec_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
        writeln!(out, "JSON report: {}", path.display())?;
    }
    if let Some(path) = &args.out.report_html {
        let html = crate::html::render(&scenario, run_id.as_str(), &finished, &verdicts, &series, &record);
        std::fs::write(path, html).with_context(|| format!("writing {}", path.display()))?;
        writeln!(out, "HTML report: {}", path.display())?;
    }
    // Held for its whole length because its signals never answered: it tested nothing, and
    // CI must not read that as a pass.
    let never_answered = scenario.signals.is_some() && !record.answered;
    if never_answered && finished.ending == engine::Ending::Completed {
        writeln!(
            out,
            "the signal source never answered: the run held its arrivals for its whole length and tested nothing (exit 3)"
        )?;
        return Ok(Exit::Stopped);
    }
    Ok(match finished.ending {
        engine::Ending::Stopped | engine::Ending::Aborted(_) => Exit::Stopped,
        engine::Ending::Completed if verdicts.iter().any(|v| !v.passed) => Exit::THRESHOLD_FAILED,
        engine::Ending::Completed => Exit::Ok,
    })
}

/// Nothing is open by default: a heartbeat needs a token (or anyone who reaches the API keeps
/// the run alive), a token cannot be empty, and only loopback listeners go without one.
fn check_control_options(args: &RunArgs) -> anyhow::Result<()> {
    let token = args.control_token.as_deref();
    if token.is_some_and(|t| t.trim().is_empty()) {
        anyhow::bail!(
            "--control-token is empty: give a long random secret (e.g. `openssl rand -hex 32`), or leave it out"
        );
    }
    if args.heartbeat.is_some() && token.is_none() {
        anyhow::bail!(
            "--heartbeat needs --control-token (or LOADGEN_CONTROL_TOKEN): without one, anyone who can reach the control API could keep the run alive"
        );
    }
    for (flag, addr) in [("--control-addr", args.control_addr), ("--metrics-addr", args.metrics_addr)] {
        if let Some(addr) = addr
            && !addr.ip().is_loopback()
            && token.is_none()
        {
            anyhow::bail!(
                "{flag} {addr} is not a loopback address and needs --control-token (or LOADGEN_CONTROL_TOKEN); Prometheus sends it with `authorization: {{ credentials: … }}` in its scrape config"
            );
        }
    }
    Ok(())
}

fn validate(file: &std::path::Path, out: &mut dyn Write) -> anyhow::Result<Exit> {
    let s = crate::scenario::load(file)?;
    let requests: usize = s.journeys.iter().map(|j| count_requests(&j.steps)).sum();
    let total: std::time::Duration = s.phases.iter().map(crate::scenario::Phase::duration).sum();
    writeln!(
        out,
        "{}: ok: {} journeys, {} request steps, {} phases ({}s), {} data feeders, {} thresholds",
        file.display(),
        s.journeys.len(),
        requests,
        s.phases.len(),
        total.as_secs(),
        s.feeders.len(),
        s.thresholds.len()
    )?;
    Ok(Exit::Ok)
}

fn count_requests(steps: &[crate::scenario::Step]) -> usize {
    crate::scenario::walk::steps(steps).filter(|v| v.request().is_some()).count()
}

fn keygen(kid: Option<String>, out: &mut dyn Write) -> anyhow::Result<Exit> {
    let kid = match kid {
        Some(kid) => KeyId::new(&kid).context("--kid")?,
        None => KeyId::new(format!("k{}", civil_date(unix_now()).replace('-', "")))?,
    };
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    writeln!(out, "{kid}:{secret}")?;
    Ok(Exit::Ok)
}

fn mint(
    run: &str,
    origin: &str,
    ttl: Duration,
    keys: &KeySource,
    out: &mut dyn Write,
) -> anyhow::Result<Exit> {
    let run = RunId::new(run).context("--run")?;
    let origin: Origin = origin.parse()?;
    if ttl.is_zero() {
        anyhow::bail!("--ttl must be more than 0s");
    }
    let token = Signer::new(keys.load()?).mint(origin, &run, ttl);
    writeln!(out, "{token}")?;
    Ok(Exit::Ok)
}

fn verify(token: &str, max_ttl: Duration, keys: &KeySource, out: &mut dyn Write) -> anyhow::Result<Exit> {
    let token = if token == "-" {
        let mut buf = String::new();
        std::io::stdin().read_line(&mut buf).context("reading the token from standard input")?;
        buf.trim().to_owned()
    } else {
        token.trim().to_owned()
    };
    let verifier = Verifier::new(keys.load()?).with_max_ttl(max_ttl).with_cache_capacity(0);
    let now = unix_now();
    match verifier.verify_at(&token, now) {
        Ok(s) => {
            writeln!(out, "valid")?;
            writeln!(out, "origin:     {}", s.origin())?;
            writeln!(out, "run:        {}", s.run())?;
            writeln!(
                out,
                "expires_at: {} ({}, in {}s)",
                s.expires_at(),
                civil_time(s.expires_at()),
                s.expires_at().saturating_sub(now)
            )?;
            writeln!(out, "key_id:     {}", s.key_id())?;
            Ok(Exit::Ok)
        }
        Err(e) => {
            writeln!(out, "refused ({}): {e}", e.reason())?;
            Ok(Exit::Refused)
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `YYYY-MM-DD` for unix seconds (UTC), by Howard Hinnant's days-to-civil algorithm.
fn civil_date(secs: u64) -> String {
    let z = i64::try_from(secs / 86_400).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// RFC 3339 UTC time for unix seconds.
fn civil_time(secs: u64) -> String {
    let s = secs % 86_400;
    format!("{}T{:02}:{:02}:{:02}Z", civil_date(secs), s / 3600, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(civil_time(4_102_444_800), "2100-01-01T00:00:00Z");
        assert_eq!(civil_time(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(civil_time(1_796_303_999), "2026-12-03T13:19:59Z");
    }
}
