//! Command-line interface: options and the commands behind them.

use std::{io::Write, time::Duration};

use anyhow::Context as _;
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
    /// Replay recorded requests (synth captures, HAR 1.2, GoReplay .gor), each tagged with a
    /// signed marker of origin `replay`, at their recorded pace (or a fixed rate), amplified, and
    /// capped as a share of real traffic.
    #[command(after_help = REPLAY_HELP)]
    Replay(Box<ReplayArgs>),
    /// Check a scenario file (and its data files) without sending anything.
    #[command(after_help = "Example:\n  loadgen validate journeys.yaml")]
    Validate {
        /// The scenario file.
        file: std::path::PathBuf,
    },
    /// Write a starter scenario for a service (that `validate` accepts), then say what to run next.
    #[command(after_help = "Example:\n  loadgen init http://127.0.0.1:8080 checkout.yaml")]
    Init {
        /// The service's base URL (http:// or https://).
        url: String,
        /// Where to write it.
        #[arg(default_value = "scenario.yaml")]
        file: std::path::PathBuf,
        /// Replace the file if it exists.
        #[arg(long)]
        force: bool,
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
        /// How long the token stays valid, e.g. `10m`, `1h`. At most 24h: verifiers refuse longer
        /// ones by default.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
        /// Mint a token that lives longer than 24h (only services verifying with a longer
        /// `Verifier::with_max_ttl` accept it).
        #[arg(long)]
        allow_long: bool,
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
    /// The control API, the metrics server, the dead-man's switch, the marker's lifetime.
    #[command(flatten)]
    pub control: ControlArgs,
    /// Run id, reports, keys.
    #[command(flatten)]
    pub out: RunOutput,
}

/// What `run` and `replay` share to be steered while they go on.
#[derive(Debug, clap::Args)]
pub struct ControlArgs {
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
}

const REPLAY_HELP: &str = "\
Examples:
  # Replay a capture ×3 at its recorded pace, never above 25% of real traffic (from Prometheus)
  SYNTH_KEYS=... loadgen replay captures/*.jsonl --target http://127.0.0.1:8080 --amplify 3 \\
      --cap-share 0.25 --prometheus http://127.0.0.1:9090 \\
      --real-rate 'sum(rate(http_requests_total{synthetic=\"false\"}[1m]))'

  # A browser's HAR export at 200 req/s for one minute, with a test credential
  loadgen replay session.har --target https://staging.example --rate 200 --duration 1m --no-cap \\
      --host shop.example --header 'authorization: Bearer {{ env(\"TEST_TOKEN\") }}'

Only GET, HEAD and OPTIONS are replayed unless --methods widens it. Credentials a HAR or .gor file
recorded (authorization, cookie, …) are dropped unless --keep-credentials. Without a Prometheus
source the cap follows the recording's own rate (divided by --recorded-share). A replay without a
cap needs --no-cap. Exit codes as `loadgen run`.";

/// `loadgen replay` options.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("cap").required(true).args(["cap_share", "no_cap"])))]
pub struct ReplayArgs {
    /// The recordings: synth capture files (JSON Lines), HAR 1.2 exports, GoReplay .gor files
    /// (the format is told from the content), replayed together in time order.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<std::path::PathBuf>,
    /// Base URL the recorded paths are sent to, e.g. http://127.0.0.1:8080.
    #[arg(long, value_name = "URL")]
    pub target: String,
    /// Play the recorded inter-arrival times this many times as fast.
    #[arg(long, default_value = "1", conflicts_with = "rate")]
    pub speed: f64,
    /// Send this many requests per second (copies included), ignoring the recorded times.
    #[arg(long, value_name = "REQ/S")]
    pub rate: Option<f64>,
    /// Send each record this many times (1.5: every other one twice).
    #[arg(long, default_value = "1", value_name = "N")]
    pub amplify: f64,
    /// Start again at the end of the recording (until --duration or a stop).
    #[arg(long = "loop")]
    pub looped: bool,
    /// Stop sending after this long (e.g. 10m).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Cut every silence in the recordings longer than this to it (files recorded days apart
    /// replay one after the other).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub max_gap: Duration,
    /// Methods to replay, comma-separated. Anything beyond GET, HEAD, OPTIONS changes data: the
    /// services' guards must cover every side effect.
    #[arg(long, value_delimiter = ',', default_value = "GET,HEAD,OPTIONS")]
    pub methods: Vec<String>,
    /// Only records sent to this host (`host` or `host:port`; repeatable): a HAR export holds
    /// requests to other sites too.
    #[arg(long = "host", value_name = "HOST")]
    pub hosts: Vec<String>,
    /// Set a header on every request (repeatable), e.g. 'authorization: Bearer {{ env("TOKEN") }}';
    /// templates: env('NAME'), uuid(), random_int(a, b), pick('a', 'b'), run.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Remove a header from every request (repeatable).
    #[arg(long = "drop-header", value_name = "NAME")]
    pub drop_headers: Vec<String>,
    /// Send the credentials a HAR or .gor file recorded (authorization, cookie, x-api-key, …):
    /// the replay then acts as the users it recorded.
    #[arg(long)]
    pub keep_credentials: bool,
    /// Count bad records and go on, instead of refusing the replay at the first one.
    #[arg(long)]
    pub skip_bad: bool,
    /// Send records whose body the capture left out (over its limit) without a body.
    #[arg(long)]
    pub send_omitted: bool,
    /// A route pattern for the report's rows (repeatable), e.g. '/users/{id}/orders'. Paths no
    /// pattern matches have their numbers, UUIDs and long hex ids folded into placeholders.
    #[arg(long = "route", value_name = "PATTERN")]
    pub routes: Vec<String>,
    /// Keep replayed traffic at or below this share of real traffic (0.25 = a quarter).
    #[arg(long, value_name = "SHARE")]
    pub cap_share: Option<f64>,
    /// Replay without a cap.
    #[arg(long, conflicts_with_all = ["cap_share", "prometheus", "real_rate", "recorded_share"])]
    pub no_cap: bool,
    /// A Prometheus-compatible query API for real traffic's rate (with --real-rate).
    #[arg(long, value_name = "URL", requires = "real_rate", conflicts_with = "signals")]
    pub prometheus: Option<String>,
    /// The query for real traffic, in requests/s (e.g. the services' requests not labelled synthetic).
    #[arg(long, value_name = "QUERY")]
    pub real_rate: Option<String>,
    /// The `signals:` block of this file (a scenario, or only that block): its conditions guard
    /// the replay as they guard a run; its `top_up.real_rate` is the cap's query unless --real-rate.
    #[arg(long, value_name = "FILE")]
    pub signals: Option<std::path::PathBuf>,
    /// Without a Prometheus source the cap follows the recording's own rate: the share of real
    /// requests the capture recorded (its sampling share) turns that into real traffic's rate.
    #[arg(long, value_name = "SHARE")]
    pub recorded_share: Option<f64>,
    /// A pass/fail threshold (repeatable), e.g. 'p95 < 300ms', 'error_rate < 1%'.
    #[arg(long = "threshold", value_name = "THRESHOLD")]
    pub thresholds: Vec<String>,
    /// Whole-request timeout.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Most replayed requests in flight; beyond it, copies are dropped and counted.
    #[arg(long, default_value = "4096")]
    pub max_in_flight: usize,
    /// The control API, the metrics server, the dead-man's switch, the marker's lifetime.
    #[command(flatten)]
    pub control: ControlArgs,
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

pub use crate::api::Exit;

/// Runs a parsed command, writing its output to `out`. Errors are configuration problems the
/// caller reports (exit code [`Exit::Usage`]). `loadgen run` needs a tokio runtime: use
/// [`run_async`] from inside one.
pub fn run(cli: Cli, out: &mut dyn Write) -> anyhow::Result<Exit> {
    if matches!(cli.command, Command::Run(_) | Command::Hit(_) | Command::Preflight(_) | Command::Replay(_)) {
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
        Command::Replay(args) => replay(*args, out).await,
        other => run_sync(Cli { command: other }, out),
    }
}

fn run_sync(cli: Cli, out: &mut dyn Write) -> anyhow::Result<Exit> {
    match cli.command {
        Command::Run(_) | Command::Hit(_) | Command::Preflight(_) | Command::Replay(_) => {
            anyhow::bail!("`loadgen run`, `hit`, `preflight` and `replay` need a runtime: use run_async")
        }
        Command::Keygen { kid } => keygen(kid, out),
        Command::Token(TokenCommand::Mint { run, origin, ttl, allow_long, keys }) => {
            mint(&run, &origin, ttl, allow_long, &keys, out)
        }
        Command::Token(TokenCommand::Verify { token, max_ttl, keys }) => verify(&token, max_ttl, &keys, out),
        Command::Validate { file } => validate(&file, out),
        Command::Init { url, file, force } => init(&url, &file, force, out),
    }
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
    let config = output_config(&args.out)?.with_no_preflight(true);
    finish(std::sync::Arc::new(scenario), config, out).await
}

/// The options every run has ([`RunOutput`]) as a [`crate::RunConfig`]: keys, run id,
/// reports, quiet; Ctrl-C stops the run, as an operator at a terminal expects.
fn output_config(args: &RunOutput) -> anyhow::Result<crate::RunConfig> {
    let mut config = crate::RunConfig::new(args.keys.load()?).with_quiet(args.quiet).with_ctrl_c(true);
    if let Some(run_id) = &args.run_id {
        config = config.with_run_id(RunId::new(run_id).context("--run-id")?);
    }
    if let Some(path) = &args.report_json {
        config = config.with_report_json(path);
    }
    if let Some(path) = &args.report_html {
        config = config.with_report_html(path);
    }
    Ok(config)
}

fn load_scenario(file: &std::path::Path, target: Option<&str>) -> anyhow::Result<crate::scenario::Scenario> {
    let mut scenario = crate::scenario::load(file)?;
    if let Some(target) = target {
        scenario.retarget(parse_target(target)?);
    }
    Ok(scenario)
}

/// The control options `run` and `replay` share, onto a config.
fn control_config(mut config: crate::RunConfig, c: &ControlArgs) -> crate::RunConfig {
    config = config.with_token_ttl(c.token_ttl);
    if let Some(addr) = c.control_addr {
        config = config.with_control_addr(addr);
    }
    if let Some(addr) = c.metrics_addr {
        config = config.with_metrics_addr(addr);
    }
    if let Some(token) = &c.control_token {
        config = config.with_control_token(token.clone());
    }
    if let Some(every) = c.heartbeat {
        config = config.with_heartbeat(every);
    }
    config
}

async fn replay(args: ReplayArgs, out: &mut dyn Write) -> anyhow::Result<Exit> {
    let replay = replay_of(&args)?;
    let config = control_config(output_config(&args.out)?, &args.control);
    let (json, html) =
        (config.report_json().map(ToOwned::to_owned), config.report_html().map(ToOwned::to_owned));
    conclude(crate::replay(replay, config).await, json, html, out)
}

/// `loadgen replay`'s options as a [`crate::Replay`].
fn replay_of(args: &ReplayArgs) -> anyhow::Result<crate::Replay> {
    use crate::replay::ReplayCap;
    let mut r = crate::Replay::new(args.files.clone(), parse_target(&args.target)?)
        .speed(args.speed)
        .amplify(args.amplify)
        .looped(args.looped)
        .keep_credentials(args.keep_credentials)
        .skip_bad(args.skip_bad)
        .send_omitted(args.send_omitted)
        .timeout(args.timeout)
        .max_in_flight(args.max_in_flight)
        .max_gap(args.max_gap);
    if let Some(rate) = args.rate {
        r = r.rate(rate);
    }
    if let Some(d) = args.duration {
        r = r.duration(d);
    }
    let mut methods = Vec::new();
    for m in &args.methods {
        let m = m.trim().to_ascii_uppercase();
        methods.push(
            http::Method::from_bytes(m.as_bytes())
                .map_err(|_| anyhow::anyhow!("--methods: `{m}` is not a method"))?,
        );
    }
    r = r.methods(methods);
    for h in &args.hosts {
        r = r.host(h);
    }
    for h in &args.headers {
        let (name, value) =
            h.split_once(':').with_context(|| format!("--header `{h}`: write it as 'name: value'"))?;
        r = r.header(name, value);
    }
    for h in &args.drop_headers {
        r = r.drop_header(h);
    }
    for p in &args.routes {
        r = r.route(p);
    }
    for t in &args.thresholds {
        r = r.threshold(crate::Threshold::parse(t).with_context(|| format!("--threshold `{t}`"))?);
    }
    let mut signals = match &args.signals {
        Some(path) => Some(crate::scenario::load_signals(path)?),
        None => None,
    };
    if let Some(url) = &args.prometheus {
        let prometheus = parse_target(url).map_err(|_| {
            anyhow::anyhow!("--prometheus `{url}`: give the http:// or https:// base URL of a Prometheus-compatible query API")
        })?;
        signals = Some(crate::scenario::signals::Signals {
            prometheus,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            headers: Vec::new(),
            on_unavailable: crate::scenario::signals::OnUnavailable::Pause,
            unavailable_after: 2,
            recover: crate::scenario::signals::Recover { step: 0.1, every: Duration::from_secs(10) },
            conditions: Vec::new(),
            top_up: None,
        });
    }
    match (args.no_cap, args.cap_share) {
        (true, _) => r = r.no_cap(),
        (false, Some(share)) => {
            let from_file = signals.as_ref().and_then(|s| s.top_up.as_ref()).map(|t| t.real_rate.clone());
            let query = args.real_rate.clone().or(from_file);
            r = r.cap(match (&signals, query) {
                (Some(_), Some(query)) => ReplayCap::Query { share, query },
                (Some(_), None) => anyhow::bail!(
                    "--cap-share with --signals: give --real-rate QUERY, or `top_up.real_rate` in the file's signals block"
                ),
                (None, Some(_)) => anyhow::bail!("--real-rate needs a source: --prometheus URL, or --signals FILE"),
                (None, None) => ReplayCap::Recording { share, recorded_share: args.recorded_share.unwrap_or(1.0) },
            });
            if args.recorded_share.is_some() && signals.is_some() {
                anyhow::bail!(
                    "--recorded-share is for a cap from the recording's own rate (--cap-share without --prometheus or --signals)"
                );
            }
        }
        // clap requires one of the two.
        (false, None) => {}
    }
    if let Some(s) = signals {
        r = r.signals(s);
    }
    Ok(r)
}

async fn run_scenario(args: RunArgs, out: &mut dyn Write) -> anyhow::Result<Exit> {
    let scenario = load_scenario(&args.file, None)?;
    // Input first: a bad --target is reported whether or not the keys can be read.
    let target = args.target.as_deref().map(parse_target).transpose()?;
    let mut config = output_config(&args.out)?
        .with_observe(args.observe.urls, args.observe.settle)
        .with_no_preflight(args.no_preflight);
    if let Some(target) = target {
        config = config.with_target(target);
    }
    if let Some(seed) = args.seed {
        config = config.with_seed(seed);
    }
    let config = control_config(config, &args.control);
    finish(std::sync::Arc::new(scenario), config, out).await
}

/// Runs through [`crate::run`] and prints what it says: the summary and the reports' paths,
/// or why the run did not start.
async fn finish(
    scenario: std::sync::Arc<crate::scenario::Scenario>,
    config: crate::RunConfig,
    out: &mut dyn Write,
) -> anyhow::Result<Exit> {
    let (json, html) =
        (config.report_json().map(ToOwned::to_owned), config.report_html().map(ToOwned::to_owned));
    conclude(crate::run(scenario, config).await, json, html, out)
}

/// Prints what a run (or replay) came to: the summary and the reports' paths, or why it did not
/// start.
fn conclude(
    result: Result<crate::RunOutcome, crate::RunError>,
    json: Option<std::path::PathBuf>,
    html: Option<std::path::PathBuf>,
    out: &mut dyn Write,
) -> anyhow::Result<Exit> {
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(e @ crate::RunError::PreflightFailed(_)) => {
            writeln!(out, "{e}")?;
            return Ok(e.exit());
        }
        Err(crate::RunError::SignalsUnreadable(problems)) => {
            write_signal_problems(&problems, out)?;
            writeln!(out, "the run did not start: its safety signals cannot be read (see above)")?;
            return Ok(Exit::PreflightFailed);
        }
        Err(e) => return Err(e.into()),
    };
    write!(out, "{}", outcome.summary())?;
    for (kind, path) in [("JSON", json), ("HTML", html)] {
        if let Some(path) = path {
            writeln!(out, "{kind} report: {}", path.display())?;
        }
    }
    Ok(outcome.exit())
}

fn parse_target(target: &str) -> anyhow::Result<http::Uri> {
    let uri: http::Uri = target.parse().with_context(|| format!("--target `{target}` is not a URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
        anyhow::bail!("--target `{target}`: give an http:// or https:// URL with a host");
    }
    Ok(uri)
}

fn run_id_of(given: Option<&String>, scenario: &crate::scenario::Scenario) -> anyhow::Result<RunId> {
    Ok(match (given, &scenario.run) {
        (Some(r), _) => RunId::new(r).context("--run-id")?,
        (None, Some(r)) => r.clone(),
        (None, None) => RunId::new(crate::api::generated_run_id())?,
    })
}

async fn preflight_command(args: PreflightArgs, out: &mut dyn Write) -> anyhow::Result<Exit> {
    let scenario = std::sync::Arc::new(load_scenario(&args.file, args.target.as_deref())?);
    let mut config =
        crate::RunConfig::new(args.keys.load()?).with_observe(args.observe.urls.clone(), args.observe.settle);
    let run_id = run_id_of(args.run_id.as_ref(), &scenario)?;
    let generated = args.run_id.is_none() && scenario.run.is_none();
    config = config.with_run_id(run_id.clone());
    let outcome = crate::api::preflight(scenario, &config).await?;
    write!(out, "{}", outcome.render())?;
    // What the preflight wrote is tagged with its run id: say which, and how to purge it.
    writeln!(
        out,
        "run id {run_id}{}: rows the preflight wrote are tagged with it; purge them with
  synth-cleanup --database-url URL --tables TABLE[,TABLE] --run {run_id}",
        if generated { " (generated; --run-id chooses it)" } else { "" }
    )?;
    Ok(outcome.exit())
}

fn write_signal_problems(
    problems: &[crate::controls::SignalProblem],
    out: &mut dyn Write,
) -> std::io::Result<()> {
    for p in problems {
        writeln!(out, "signal `{}` cannot guard the run: {}\n  query: {}", p.name, p.why, p.query)?;
    }
    Ok(())
}

/// The starter scenario `loadgen init` writes; `{target}` is replaced by the service's URL.
const STARTER: &str = r#"# A starter scenario: `loadgen validate` checks it, docs/scenarios.md has every key.
target: {target}
run: first-test            # the run id in every marker: what synth-cleanup purges by
phases:
  - { duration: 30s, arrival_rate: 1, ramp_to: 5 }   # journeys per second, ramping up
journeys:
  - name: home
    steps:
      - get: /
        name: home page
        # The preflight (`loadgen preflight`, and `loadgen run` first) checks what each step
        # reached: the services that verified the marker (their `with_service_name`) and the
        # guards that engaged. Uncomment and name yours:
        # expect_path: [gateway, orders]
        # expect_guards: [payment.charge, email]
thresholds:
  - "p95 < 500ms"
  - "error_rate < 1%"
"#;

fn init(url: &str, file: &std::path::Path, force: bool, out: &mut dyn Write) -> anyhow::Result<Exit> {
    let target: http::Uri = url
        .parse()
        .ok()
        .filter(|u: &http::Uri| matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some())
        .with_context(|| {
            format!("`{url}`: give the service's http:// or https:// URL, e.g. http://127.0.0.1:8080")
        })?;
    // `symlink_metadata`: a dangling link "exists" too (writing would follow it elsewhere).
    if !force && std::fs::symlink_metadata(file).is_ok() {
        anyhow::bail!("{} exists: choose another file, or --force to replace it", file.display());
    }
    let text = STARTER.replace("{target}", &target.to_string());
    // What it writes must be what `validate` accepts.
    crate::scenario::parse(&text, &file.display().to_string(), std::path::Path::new("."))?;
    let mut open = std::fs::OpenOptions::new();
    open.write(true);
    // Without --force, only a file that does not exist yet (no race with another writer).
    if force {
        open.create(true).truncate(true)
    } else {
        open.create_new(true)
    };
    open.open(file)
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
        .with_context(|| format!("writing {}", file.display()))?;
    let f = file.display();
    writeln!(out, "wrote {f}: one journey against {target}. Next:")?;
    writeln!(out, "  export SYNTH_KEYS=$(loadgen keygen --kid k1)   # and give the services the same")?;
    writeln!(out, "  loadgen validate {f}")?;
    writeln!(out, "  loadgen preflight {f}                           # each journey once: hops and guards")?;
    writeln!(out, "  loadgen run {f} --report-html report.html")?;
    Ok(Exit::Ok)
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
    crate::scenario::walk::steps(steps).filter(|v| v.sent().is_some()).count()
}

fn keygen(kid: Option<String>, out: &mut dyn Write) -> anyhow::Result<Exit> {
    let kid = match kid {
        Some(kid) => KeyId::new(&kid).context("--kid")?,
        None => KeyId::new(format!("k{}", civil_date(unix_now()).replace('-', "")))?,
    };
    writeln!(out, "{}", crate::api::new_key(&kid)?)?;
    Ok(Exit::Ok)
}

fn mint(
    run: &str,
    origin: &str,
    ttl: Duration,
    allow_long: bool,
    keys: &KeySource,
    out: &mut dyn Write,
) -> anyhow::Result<Exit> {
    let run = RunId::new(run).context("--run")?;
    let origin: Origin = origin.parse()?;
    if ttl.is_zero() {
        anyhow::bail!("--ttl must be more than 0s");
    }
    // A token every service would refuse is no use to anyone: say so now, not at the first 403.
    if ttl > synth_ctx::DEFAULT_MAX_TTL && !allow_long {
        anyhow::bail!(
            "--ttl {}s: services refuse markers that live longer than 24h (Verifier's default max TTL); give 24h or less, or --allow-long if your services verify with a longer Verifier::with_max_ttl",
            ttl.as_secs()
        );
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

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `YYYY-MM-DD` for unix seconds (UTC), by Howard Hinnant's days-to-civil algorithm.
pub(crate) fn civil_date(secs: u64) -> String {
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
