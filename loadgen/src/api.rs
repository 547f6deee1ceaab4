//! The typed run API: a [`RunConfig`], one entry point [`run`], one [`RunOutcome`].
//!
//! `loadgen run` and `loadgen hit` are thin shells over it, so a Rust program (shop-demo, a
//! test) gets exactly what the command line does: preflight and the signal check, the control
//! and metrics servers, a stop handle, refreshed markers, the automatic controls, the reports.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use synth_ctx::{InvalidRunId, KeyRing, Origin, RunId, Signer};

use crate::{
    controls::{Record, SignalProblem},
    engine::{self, Control, Ending, Finished},
    report::{self, Point, Verdict},
    scenario::{Scenario, ScenarioError},
};

impl Scenario {
    /// Loads and validates a scenario file; its data files (`csv:`) are read relative to it.
    /// Errors name the file, line and column, with a hint.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Scenario, ScenarioError> {
        crate::scenario::load(path)
    }

    /// Parses and validates scenario YAML held in memory; its data files are read relative to
    /// the current directory. Errors name it `<yaml>`, with line and column.
    pub fn from_yaml(text: &str) -> Result<Scenario, ScenarioError> {
        crate::scenario::parse(text, "<yaml>", Path::new(""))
    }

    /// An empty scenario against `target`: add [`phase`](Self::phase)s and
    /// [`journey`](Self::journey)s. Defaults as in a YAML file: 5 s connect and 30 s request
    /// timeouts, HTTP/1.1, [`DEFAULT_MAX_RATE_FACTOR`](crate::scenario::DEFAULT_MAX_RATE_FACTOR).
    ///
    /// ```
    /// use std::time::Duration;
    /// use loadgen::{Journey, Phase, Scenario};
    ///
    /// let s = Scenario::new("http://127.0.0.1:8080".parse()?)
    ///     .phase(Phase::Load { duration: Duration::from_secs(30), rate: 50.0, ramp_to: 100.0, max_concurrent: None })
    ///     .journey(Journey::new("home").run(|user| async move {
    ///         user.get("/").await?;
    ///         Ok(())
    ///     }));
    /// assert_eq!(s.planned_duration(), Duration::from_secs(30));
    /// # Ok::<(), http::uri::InvalidUri>(())
    /// ```
    pub fn new(target: http::Uri) -> Scenario {
        let mut s = Scenario::single_request(
            target.clone(),
            http::Method::GET,
            crate::scenario::Phase::Pause { duration: Duration::ZERO },
        );
        s.phases.clear();
        s.journeys.clear();
        s.step_names.clear();
        // As given: `run` refuses a target that is not an http(s) URL with a host.
        s.target = target;
        s
    }

    /// Adds a phase after the others.
    #[must_use]
    pub fn phase(mut self, phase: crate::scenario::Phase) -> Scenario {
        self.phases.push(phase);
        self
    }

    /// Adds a data feeder: Rust journeys read a row with [`User::data`](crate::User::data).
    ///
    /// ```no_run
    /// use loadgen::{Feeder, Order, Scenario};
    ///
    /// let s = Scenario::new("http://127.0.0.1:8080".parse()?)
    ///     .data(Feeder::from_csv("users", "users.csv", Order::Sequential)?)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// The scenario already has a feeder of that name (YAML steps read it by position, so it
    /// cannot be swapped under them).
    pub fn data(mut self, feeder: crate::scenario::Feeder) -> Result<Scenario, ScenarioError> {
        if self.feeders.iter().any(|f| f.name == feeder.name) {
            return Err(ScenarioError {
                file: "<rust>".into(),
                line: 0,
                column: 0,
                message: format!("the scenario already has data `{}`", feeder.name),
                hint: Some("give the feeder another name".into()),
            });
        }
        self.feeders.push(feeder);
        Ok(self)
    }

    /// Adds a threshold: the run passes only if it holds. Unlike a YAML threshold, its step may
    /// name requests of Rust journeys (a step that nothing sent fails it, as nothing measured
    /// does).
    #[must_use]
    pub fn threshold(mut self, threshold: crate::scenario::Threshold) -> Scenario {
        self.thresholds.push(threshold);
        self
    }

    /// Adds a journey written in Rust. It shares the scenario's phases, weights, data feeders,
    /// thresholds, signals and reports with the journeys from YAML.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use loadgen::{Journey, Scenario};
    ///
    /// let signed = Journey::new("signed order").weight(2).run(|user| async move {
    ///     user.post("/orders").header("x-signature", "…").expect_status(201).await?;
    ///     Ok(())
    /// });
    /// let scenario = Scenario::from_file("journeys.yaml")?.journey(signed);
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn journey(mut self, journey: crate::Journey) -> Scenario {
        self.journeys.push(journey.into_model());
        self
    }
}

/// Process exit codes, and what a [`RunOutcome`] or a [`RunError`] maps to.
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

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e as u8)
    }
}

/// How long markers live by default; a fresh one is minted every third of it.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(600);

/// Everything a run needs besides its [`Scenario`]: keys, run id, reports, control servers,
/// signals of liveness. Required in [`new`](Self::new), the rest through `with_*`.
///
/// Nothing is open by default: no control or metrics server, no Ctrl-C handler (a library
/// must not take over the process's signals; [`with_ctrl_c`](Self::with_ctrl_c) opts in).
///
/// `Debug` shows key ids only and never the control token.
#[derive(Clone)]
pub struct RunConfig {
    keys: KeyRing,
    control: Control,
    target: Option<http::Uri>,
    run_id: Option<RunId>,
    report_json: Option<PathBuf>,
    report_html: Option<PathBuf>,
    control_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    control_token: Option<String>,
    heartbeat: Option<Duration>,
    token_ttl: Duration,
    seed: Option<u64>,
    observe: Vec<String>,
    settle: Duration,
    quiet: bool,
    no_preflight: bool,
    ctrl_c: bool,
}

impl std::fmt::Debug for RunConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunConfig")
            .field("keys", &self.keys)
            .field("target", &self.target)
            .field("run_id", &self.run_id)
            .field("report_json", &self.report_json)
            .field("report_html", &self.report_html)
            .field("control_addr", &self.control_addr)
            .field("metrics_addr", &self.metrics_addr)
            // A secret: whoever holds it can stop, pause or re-rate the run.
            .field("control_token", &self.control_token.as_ref().map(|_| "<redacted>"))
            .field("heartbeat", &self.heartbeat)
            .field("token_ttl", &self.token_ttl)
            .field("seed", &self.seed)
            .field("observe", &self.observe)
            .field("settle", &self.settle)
            .field("quiet", &self.quiet)
            .field("no_preflight", &self.no_preflight)
            .field("ctrl_c", &self.ctrl_c)
            .finish_non_exhaustive()
    }
}

impl RunConfig {
    /// A run signed with `keys`' first key; everything else at its default (the scenario's
    /// target and run id, no reports, no servers, markers of [`DEFAULT_TOKEN_TTL`], live lines
    /// on standard error, preflight when a step declares expectations).
    pub fn new(keys: KeyRing) -> Self {
        RunConfig {
            keys,
            control: Control::new(),
            target: None,
            run_id: None,
            report_json: None,
            report_html: None,
            control_addr: None,
            metrics_addr: None,
            control_token: None,
            heartbeat: None,
            token_ttl: DEFAULT_TOKEN_TTL,
            seed: None,
            observe: Vec::new(),
            settle: crate::observe::DEFAULT_SETTLE,
            quiet: false,
            no_preflight: false,
            ctrl_c: false,
        }
    }

    /// The handle that stops, pauses or re-rates this run from another task. Take it before
    /// calling [`run`]; every clone controls the same run. A control serves one run: once
    /// stopped it stays stopped, so a second run with it ends at once.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// Where the JSON report goes, if anywhere.
    pub fn report_json(&self) -> Option<&Path> {
        self.report_json.as_deref()
    }

    /// Where the HTML report goes, if anywhere.
    pub fn report_html(&self) -> Option<&Path> {
        self.report_html.as_deref()
    }

    /// Uses `control` as the run's handle instead of the one [`new`](Self::new) made. The run
    /// bounds it by the scenario's `max_rate_factor` and holds it while signals are unread.
    #[must_use]
    pub fn with_control(mut self, control: Control) -> Self {
        self.control = control;
        self
    }

    /// Sends the journeys to this base URL instead of the scenario's `target:`.
    #[must_use]
    pub fn with_target(mut self, target: http::Uri) -> Self {
        self.target = Some(target);
        self
    }

    /// The run id the markers carry (default: the scenario's `run:`, else generated).
    #[must_use]
    pub fn with_run_id(mut self, run_id: RunId) -> Self {
        self.run_id = Some(run_id);
        self
    }

    /// Writes the JSON report here when the run ends.
    #[must_use]
    pub fn with_report_json(mut self, path: impl Into<PathBuf>) -> Self {
        self.report_json = Some(path.into());
        self
    }

    /// Writes the HTML report here when the run ends.
    #[must_use]
    pub fn with_report_html(mut self, path: impl Into<PathBuf>) -> Self {
        self.report_html = Some(path.into());
        self
    }

    /// Serves the control API (and `/metrics`) here; port 0 picks one.
    #[must_use]
    pub fn with_control_addr(mut self, addr: SocketAddr) -> Self {
        self.control_addr = Some(addr);
        self
    }

    /// Serves Prometheus metrics (`GET /metrics`) here; port 0 picks one.
    #[must_use]
    pub fn with_metrics_addr(mut self, addr: SocketAddr) -> Self {
        self.metrics_addr = Some(addr);
        self
    }

    /// Requires `Authorization: Bearer TOKEN` on both servers. Needed with a heartbeat and on
    /// any non-loopback address.
    #[must_use]
    pub fn with_control_token(mut self, token: impl Into<String>) -> Self {
        self.control_token = Some(token.into());
        self
    }

    /// Dead-man's switch: the run stops unless `POST /heartbeat` reaches the control API at
    /// least this often. Needs a control address and token.
    #[must_use]
    pub fn with_heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = Some(every);
        self
    }

    /// Lifetime of each marker (at least 1 s); capped by the run's length plus 15 minutes and
    /// by 23 hours.
    #[must_use]
    pub fn with_token_ttl(mut self, ttl: Duration) -> Self {
        self.token_ttl = ttl;
        self
    }

    /// Seeds journey choice and templates, for repeatable runs.
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Services' `/metrics` pages the preflight reads, and how long it waits after each
    /// journey for effects that come after the response.
    #[must_use]
    pub fn with_observe(mut self, urls: Vec<String>, settle: Duration) -> Self {
        self.observe = urls;
        self.settle = settle;
        self
    }

    /// No live lines, no decisions printed, no passing preflight report on standard error.
    #[must_use]
    pub fn with_quiet(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        self
    }

    /// Skips the preflight (the signal check still runs: an unreadable safety signal is never
    /// skipped).
    #[must_use]
    pub fn with_no_preflight(mut self, no_preflight: bool) -> Self {
        self.no_preflight = no_preflight;
        self
    }

    /// Stops the run on Ctrl-C (a second one exits the process with [`Exit::Stopped`]). Off by
    /// default: a library does not take over the process's signals.
    #[must_use]
    pub fn with_ctrl_c(mut self, ctrl_c: bool) -> Self {
        self.ctrl_c = ctrl_c;
        self
    }
}

/// Which server a [`RunError`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Listener {
    /// The control API (`--control-addr`).
    Control,
    /// The metrics server (`--metrics-addr`).
    Metrics,
}

impl std::fmt::Display for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Listener::Control => "--control-addr",
            Listener::Metrics => "--metrics-addr",
        })
    }
}

/// Why [`run`] sent nothing, or could not finish its reports.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The target override is not an http(s) URL with a host.
    #[error(
        "target `{0}`: give an http:// or https:// URL with a host (--target, RunConfig::with_target, or the scenario's own)"
    )]
    Target(String),
    /// The generated run id was refused.
    #[error("run id: {0}")]
    RunId(#[from] InvalidRunId),
    /// The marker lifetime is under a second.
    #[error("--token-ttl must be at least 1s (verifiers allow 30s of clock skew, so use a minute or more)")]
    TokenTtl,
    /// The control token is empty or blank.
    #[error(
        "--control-token is empty: give a long random secret (e.g. `openssl rand -hex 32`), or leave it out"
    )]
    EmptyControlToken,
    /// A heartbeat without a control server to receive it.
    #[error("--heartbeat needs --control-addr: nothing could receive the heartbeat")]
    HeartbeatWithoutServer,
    /// A heartbeat without a token: anyone who reaches the API could keep the run alive.
    #[error(
        "--heartbeat needs --control-token (or LOADGEN_CONTROL_TOKEN): without one, anyone who can reach the control API could keep the run alive"
    )]
    HeartbeatWithoutToken,
    /// A server on a non-loopback address without a token.
    #[error(
        "{listener} {addr} is not a loopback address and needs --control-token (or LOADGEN_CONTROL_TOKEN); Prometheus sends it with `authorization: {{ credentials: … }}` in its scrape config"
    )]
    OpenListener {
        /// Which server.
        listener: Listener,
        /// Where it would listen.
        addr: SocketAddr,
    },
    /// A server could not listen.
    #[error("{listener} {addr}: {source}")]
    Listen {
        /// Which server.
        listener: Listener,
        /// Where it tried.
        addr: SocketAddr,
        /// Why not.
        source: std::io::Error,
    },
    /// The preflight found a missing hop or guard; the run did not start.
    #[error("preflight failed: the run did not start (fix the hops and guards above, or --no-preflight)")]
    PreflightFailed(Box<crate::preflight::Report>),
    /// A safety signal cannot be read; the run did not start.
    #[error("the run did not start: its safety signals cannot be read: {}", problems_text(.0))]
    SignalsUnreadable(Vec<SignalProblem>),
    /// The config's control already drives another run (configs cloned with their control):
    /// the two would send each other's marker.
    #[error(
        "this Control already drives a run: give each run its own (RunConfig::with_control(Control::new()), or a RunConfig of its own)"
    )]
    ControlInUse,
    /// The scenario has no journey of weight 1 or more: nothing could be sent.
    #[error(
        "the scenario has no journey with a weight of 1 or more: add one (Scenario::journey, or `journeys:` in YAML)"
    )]
    NoJourney,
    /// The run was stopped before it started (during its checks or preflight); nothing more was
    /// sent.
    #[error("stopped before the run started")]
    StoppedBeforeStart,
    /// A replay's options or recordings: nothing was sent.
    #[error("replay: {0}")]
    Replay(crate::replay::ReplayError),
    /// The replay's reader could not start.
    #[error("replay: cannot start the thread that reads the recording: {0}")]
    ReplayReader(std::io::Error),
    /// The run happened but a report could not be written.
    #[error("writing {}: {source}", path.display())]
    WriteReport {
        /// The report's path.
        path: PathBuf,
        /// Why not.
        source: std::io::Error,
    },
}

fn problems_text(problems: &[SignalProblem]) -> String {
    let each: Vec<String> =
        problems.iter().map(|p| format!("`{}` (query `{}`): {}", p.name, p.query, p.why)).collect();
    each.join("; ")
}

impl RunError {
    /// The exit code the command line gives this error: [`Exit::PreflightFailed`] when the
    /// run did not start for safety, [`Exit::Usage`] otherwise.
    pub fn exit(&self) -> Exit {
        match self {
            RunError::PreflightFailed(_) | RunError::SignalsUnreadable(_) => Exit::PreflightFailed,
            RunError::StoppedBeforeStart => Exit::Stopped,
            _ => Exit::Usage,
        }
    }
}

/// A finished run: what the summary, the JSON report and the HTML report all render.
#[derive(Debug)]
#[non_exhaustive]
pub struct RunOutcome {
    /// The scenario that ran (its target and step names label the reports).
    pub scenario: Arc<Scenario>,
    /// The run id its markers carried.
    pub run_id: RunId,
    /// The engine's counts and histograms per step, journey counts, length and ending.
    pub finished: Finished,
    /// One point per interval (about a second).
    pub series: Vec<Point>,
    /// Every threshold and how the run did against it.
    pub verdicts: Vec<Verdict>,
    /// What the automatic controls decided and the signals they read.
    pub controls: Record,
    /// For a replay (`loadgen replay`): what it read and how it sent it.
    pub replay: Option<crate::ReplaySummary>,
}

impl RunOutcome {
    /// Whether the run had signals that never answered: it held its arrivals for its whole
    /// length and tested nothing.
    pub fn signals_never_answered(&self) -> bool {
        self.scenario.signals.is_some() && !self.controls.answered
    }

    /// The exit code this outcome maps to: stopped, aborted or blind runs are
    /// [`Exit::Stopped`], a failed threshold [`Exit::THRESHOLD_FAILED`], else [`Exit::Ok`].
    pub fn exit(&self) -> Exit {
        // Held for its whole length because its signals never answered: it tested nothing, and
        // CI must not read that as a pass.
        if self.signals_never_answered() && self.finished.ending == Ending::Completed {
            return Exit::Stopped;
        }
        // A replay that sent nothing (held by its cap, amplified to nothing, stopped at once)
        // tested nothing either.
        if self.replay.is_some() && self.finished.journeys.started == 0 {
            return Exit::Stopped;
        }
        match self.finished.ending {
            Ending::Stopped | Ending::Aborted(_) => Exit::Stopped,
            Ending::Completed if self.verdicts.iter().any(|v| !v.passed) => Exit::THRESHOLD_FAILED,
            Ending::Completed => Exit::Ok,
        }
    }

    /// The end-of-run summary table (and the controls' decisions), for people.
    pub fn summary(&self) -> String {
        report::summary(self)
    }

    /// The JSON report (`schema_version` 1).
    pub fn to_json(&self) -> serde_json::Value {
        report::json_report(self)
    }

    /// The HTML report: one self-contained document.
    pub fn to_html(&self) -> String {
        crate::html::render(self)
    }
}

/// Runs `scenario` with `config`: checks the options, runs the preflight when a step declares
/// expectations and asks every signal query once, opens the control and metrics servers,
/// starts the marker refresher and the automatic controls, runs the engine, writes the
/// reports. Returns the outcome whatever its ending; errors mean nothing was sent (or, for
/// [`RunError::WriteReport`], that a report is missing).
pub async fn run(scenario: Arc<Scenario>, config: RunConfig) -> Result<RunOutcome, RunError> {
    execute(scenario, config, None).await
}

/// Replays recorded requests as [`Replay`](crate::Replay) says, with `config` (keys, run id,
/// reports, control servers, …; its [`with_target`](RunConfig::with_target) does not apply: the
/// replay has its own target): what `loadgen replay` does. The recordings are read whole first,
/// so a bad record is an error before anything is sent.
///
/// Every request carries a signed marker of origin `replay`, refreshed as in [`run`].
pub async fn replay(replay: crate::Replay, config: RunConfig) -> Result<RunOutcome, RunError> {
    let (job, scenario, warnings) = crate::replay::prepare(replay).await.map_err(RunError::Replay)?;
    if !config.quiet {
        for warning in warnings {
            eprintln!("warning: {warning}");
        }
    }
    execute(Arc::new(scenario), config, Some(job)).await
}

/// What [`run`] does, for a scenario's phases (`replay: None`) or a replay: the same checks,
/// servers, markers (of origin `replay` for a replay), controls and reports.
pub(crate) async fn execute(
    scenario: Arc<Scenario>,
    config: RunConfig,
    replay: Option<crate::replay::Job>,
) -> Result<RunOutcome, RunError> {
    let scenario = if replay.is_some() { scenario } else { retarget(scenario, config.target.as_ref())? };
    let origin = if replay.is_some() { Origin::Replay } else { Origin::Load };
    let cap = replay.as_ref().and_then(|r| r.cap.clone());
    check_scenario(&scenario)?;
    check_control_options(&config)?;
    let run_id = match (&config.run_id, &scenario.run) {
        (Some(r), _) | (None, Some(r)) => r.clone(),
        (None, None) => RunId::new(generated_run_id())?,
    };
    // Short-lived markers, refreshed while the run is alive (below): never longer than the run
    // plus a margin, nor than a verifier's default maximum (24 h).
    if config.token_ttl < Duration::from_secs(1) {
        return Err(RunError::TokenTtl);
    }
    let ttl = config
        .token_ttl
        .min(report::planned(&scenario).saturating_add(Duration::from_secs(15 * 60)))
        .min(Duration::from_secs(23 * 3600));
    // One run per control: it will hold this run's marker.
    let control = config.control.clone();
    if !control.claim() {
        return Err(RunError::ControlInUse);
    }
    // Every check that can refuse the run comes before anything is sent: the signals first,
    // then the servers (a busy port), then the preflight, which sends.
    let check = crate::controls::check_signals(&scenario, cap.as_ref()).await;
    for warning in &check.warnings {
        eprintln!("warning: {warning}");
    }
    if !check.problems.is_empty() {
        return Err(RunError::SignalsUnreadable(check.problems));
    }
    // Bounded before the control API opens: a `/rate` call during the preflight is checked
    // against this scenario's max_rate_factor too.
    control.set_max_rate_factor(scenario.max_rate_factor);
    if scenario.signals.is_some() {
        control.set_auto_paused(true);
    }
    // A capped replay sends nothing until its controls know the cap.
    if cap.is_some() {
        control.set_cap(0.0);
    }
    // Closed when the run ends (dropped with `servers`), and on an early return below.
    let mut servers = Tasks(Vec::new());
    if let Some(addr) = config.control_addr {
        let (at, task) =
            serve(addr, &control, crate::control::Routes::All, &config, Listener::Control).await?;
        servers.0.push(Some(task));
        eprintln!(
            "control API on http://{at} (POST /stop, /pause, /resume, /rate?factor=F; GET /status, /metrics)"
        );
    }
    if let Some(addr) = config.metrics_addr {
        let (at, task) =
            serve(addr, &control, crate::control::Routes::MetricsOnly, &config, Listener::Metrics).await?;
        servers.0.push(Some(task));
        eprintln!("Prometheus metrics on http://{at}/metrics");
    }
    // Ctrl-C (and the control API's stop) reach the preflight too.
    let interrupt = Tasks(vec![config.ctrl_c.then(|| tokio::spawn(ctrl_c(control.clone())))]);
    let signer = Signer::new(config.keys.clone());
    if !config.no_preflight && crate::preflight::declares_expectations(&scenario) {
        let token = signer.mint(Origin::Load, &run_id, ttl);
        let report =
            preflight_report(&scenario, &run_id, token, &config.observe, config.settle, &control).await;
        if control.is_stopped() {
            return Err(RunError::StoppedBeforeStart);
        }
        if !config.quiet || !report.passed() {
            eprint!("{}", report.render());
        }
        if !report.passed() {
            return Err(RunError::PreflightFailed(Box::new(report)));
        }
    }
    if control.is_stopped() {
        return Err(RunError::StoppedBeforeStart);
    }
    // A fresh marker for the run itself: the preflight may have taken a while.
    let token = signer.mint(origin, &run_id, ttl);

    let tasks = Tasks(vec![Some({
        let (control, run_id) = (control.clone(), run_id.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 3).await;
                let _ = control.set_token(&signer.mint(origin, &run_id, ttl));
            }
        })
    })]);
    let quiet = config.quiet;
    let record = crate::controls::SharedRecord::default();
    let controls = Tasks(vec![Some(tokio::spawn(crate::controls::run(
        scenario.clone(),
        control.clone(),
        crate::controls::Options { heartbeat: config.heartbeat, print: !quiet, cap },
        record.clone(),
        std::time::Instant::now(),
    )))]);
    if let Some(hb) = config.heartbeat
        && !quiet
    {
        eprintln!("dead-man's switch: POST /heartbeat at least every {}s or the run stops", hb.as_secs_f64());
    }
    let (workload, summary) = match replay {
        None => {
            if !quiet {
                eprintln!(
                    "run {run_id}: {} journeys against {}, {}s planned",
                    scenario.journeys.len(),
                    scenario.target,
                    report::planned(&scenario).as_secs()
                );
            }
            (engine::Workload::Phases, None)
        }
        Some(job) => {
            if !quiet {
                eprintln!("replay {run_id}: {}", job.summary.headline());
            }
            let summary = job.summary.clone();
            (engine::Workload::Replay(job.start(run_id.as_str())?), Some(summary))
        }
    };
    let options = engine::RunOptions { token, run_id: run_id.to_string(), seed: config.seed };
    let series = Mutex::new(Vec::new());
    let finished = engine::run(scenario.clone(), options, control, workload, |interval| {
        if !quiet {
            eprintln!("{}", report::interval_line(interval));
        }
        series.lock().unwrap_or_else(PoisonError::into_inner).push(Point::of(interval));
        let (names, steps) = interval.stats.snapshot_named();
        report::verdicts(&scenario, &names, &steps)
            .into_iter()
            .zip(&scenario.thresholds)
            .find(|(v, t)| t.abort_on_fail && v.value.is_some() && !v.passed)
            .map(|(v, _)| engine::AbortReason::Threshold { threshold: v.threshold })
    })
    .await;
    drop(tasks);
    drop(interrupt);
    drop(controls);
    drop(servers);
    let controls = record.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let verdicts = report::verdicts(&scenario, &finished.step_names, &finished.steps);
    let series = series.into_inner().unwrap_or_else(PoisonError::into_inner);
    let outcome = RunOutcome { scenario, run_id, finished, series, verdicts, controls, replay: summary };
    if let Some(path) = &config.report_json {
        // Serialising a `serde_json::Value` does not fail; if it ever did, no file beats an
        // empty one that reads as a report.
        let json = serde_json::to_vec_pretty(&outcome.to_json())
            .map_err(|e| RunError::WriteReport { path: path.clone(), source: std::io::Error::other(e) })?;
        write_report(path, &json)?;
    }
    if let Some(path) = &config.report_html {
        write_report(path, outcome.to_html().as_bytes())?;
    }
    Ok(outcome)
}

/// Background tasks of a run, aborted when the run ends (or its future is dropped).
struct Tasks(Vec<Option<tokio::task::JoinHandle<()>>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in self.0.iter().flatten() {
            task.abort();
        }
    }
}

async fn ctrl_c(control: Control) {
    if tokio::signal::ctrl_c().await.is_ok() {
        eprintln!("\nstopping: no new requests; in-flight ones are cancelled (Ctrl-C again to exit now)");
        control.stop();
        if tokio::signal::ctrl_c().await.is_ok() {
            std::process::exit(Exit::Stopped as i32);
        }
    }
}

async fn serve(
    addr: SocketAddr,
    control: &Control,
    routes: crate::control::Routes,
    config: &RunConfig,
    listener: Listener,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), RunError> {
    crate::control::serve_with_handle(addr, control.clone(), routes, config.control_token.clone())
        .await
        .map_err(|source| RunError::Listen { listener, addr, source })
}

fn write_report(path: &Path, bytes: &[u8]) -> Result<(), RunError> {
    std::fs::write(path, bytes).map_err(|source| RunError::WriteReport { path: path.to_owned(), source })
}

/// The scenario with its requests sent to `target`, after checking it is an http(s) URL.
fn retarget(scenario: Arc<Scenario>, target: Option<&http::Uri>) -> Result<Arc<Scenario>, RunError> {
    let Some(target) = target else { return Ok(scenario) };
    if !matches!(target.scheme_str(), Some("http" | "https")) || target.authority().is_none() {
        return Err(RunError::Target(target.to_string()));
    }
    let mut scenario = Arc::unwrap_or_clone(scenario);
    scenario.retarget(target.clone());
    Ok(Arc::new(scenario))
}

/// What a scenario built in Rust can get wrong that a file cannot: a target that is not an
/// http(s) URL with a host, no journey that can be picked.
fn check_scenario(scenario: &Scenario) -> Result<(), RunError> {
    let target = &scenario.target;
    if !matches!(target.scheme_str(), Some("http" | "https")) || target.host().is_none_or(str::is_empty) {
        return Err(RunError::Target(target.to_string()));
    }
    if !scenario.journeys.iter().any(|j| j.weight > 0) {
        return Err(RunError::NoJourney);
    }
    Ok(())
}

/// Nothing is open by default: a heartbeat needs a server and a token (or anyone who reaches
/// the API keeps the run alive), a token cannot be empty, and only loopback listeners go
/// without one.
fn check_control_options(config: &RunConfig) -> Result<(), RunError> {
    let token = config.control_token.as_deref();
    if token.is_some_and(|t| t.trim().is_empty()) {
        return Err(RunError::EmptyControlToken);
    }
    if config.heartbeat.is_some() && config.control_addr.is_none() {
        return Err(RunError::HeartbeatWithoutServer);
    }
    if config.heartbeat.is_some() && token.is_none() {
        return Err(RunError::HeartbeatWithoutToken);
    }
    for (listener, addr) in
        [(Listener::Control, config.control_addr), (Listener::Metrics, config.metrics_addr)]
    {
        if let Some(addr) = addr
            && !addr.ip().is_loopback()
            && token.is_none()
        {
            return Err(RunError::OpenListener { listener, addr });
        }
    }
    Ok(())
}

/// What [`preflight()`] found: the hops and guards each request reached, and the safety signals
/// that cannot be read.
#[derive(Debug)]
pub struct PreflightOutcome {
    /// Each journey's requests against what their steps expect.
    pub report: crate::preflight::Report,
    /// Signal queries that would stop the run before it starts (no data, refused, unreadable).
    pub signals: Vec<SignalProblem>,
}

impl PreflightOutcome {
    /// No missing hop or guard, and every signal reads.
    pub fn passed(&self) -> bool {
        self.report.passed() && self.signals.is_empty()
    }

    /// [`Exit::Ok`], or [`Exit::PreflightFailed`] (what `loadgen preflight` exits with).
    pub fn exit(&self) -> Exit {
        if self.passed() { Exit::Ok } else { Exit::PreflightFailed }
    }

    /// The table and the verdict, then the signals that cannot guard a run.
    pub fn render(&self) -> String {
        let mut out = self.report.render();
        if !self.report.declared {
            out.push_str("(no step declares expect_path or expect_guards: nothing to compare)\n");
        }
        for p in &self.signals {
            out.push_str(&format!(
                "signal `{}` cannot guard the run: {}\n  query: {}\n",
                p.name, p.why, p.query
            ));
        }
        out
    }
}

/// Sends every journey once, tagged with `config`'s keys and run id, and compares what the
/// services answered (and, with [`RunConfig::with_observe`], what their `/metrics` pages moved)
/// with what the steps expect; asks every signal query once. What `loadgen preflight` does.
/// A stop of the config's [`Control`] ends it before the next journey.
///
/// # Errors
///
/// The target override is not an http(s) URL; the scenario has no journey that can run.
pub async fn preflight(scenario: Arc<Scenario>, config: &RunConfig) -> Result<PreflightOutcome, RunError> {
    let scenario = retarget(scenario, config.target.as_ref())?;
    check_scenario(&scenario)?;
    let run_id = match (&config.run_id, &scenario.run) {
        (Some(r), _) | (None, Some(r)) => r.clone(),
        (None, None) => RunId::new(generated_run_id())?,
    };
    let token = Signer::new(config.keys.clone()).mint(Origin::Load, &run_id, Duration::from_secs(15 * 60));
    let report =
        preflight_report(&scenario, &run_id, token, &config.observe, config.settle, &config.control).await;
    let check = crate::controls::check_signals(&scenario, None).await;
    for warning in &check.warnings {
        eprintln!("warning: {warning}");
    }
    Ok(PreflightOutcome { report, signals: check.problems })
}

/// Sends every journey once, tagged, and compares what the services saw with the steps'
/// expectations.
pub(crate) async fn preflight_report(
    scenario: &Arc<Scenario>,
    run_id: &RunId,
    token: String,
    observe: &[String],
    settle: Duration,
    stop: &Control,
) -> crate::preflight::Report {
    let options = engine::RunOptions { token, run_id: run_id.to_string(), seed: None };
    let observer =
        (!observe.is_empty()).then(|| crate::observe::Observer::new(observe.to_vec(), settle, &scenario.tls));
    let seen = engine::preflight(scenario.clone(), options, observer.as_ref(), stop).await;
    crate::preflight::check(scenario, seen)
}

/// The operating system gave no randomness: no key can be made.
#[derive(Debug, thiserror::Error)]
#[error("no randomness from the operating system: {0}")]
pub struct NoRandomness(String);

/// A fresh signing key as `SYNTH_KEYS` takes it (`kid:secret`, 32 random bytes in unpadded
/// URL-safe base64): what `loadgen keygen` prints.
///
/// ```
/// let spec = loadgen::new_key(&synth_ctx::KeyId::new("k1")?)?;
/// assert!(spec.starts_with("k1:"));
/// let keys = synth_ctx::KeyRing::parse(&spec)?;
/// assert_eq!(keys.signing_key_id().as_str(), "k1");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn new_key(kid: &synth_ctx::KeyId) -> Result<String, NoRandomness> {
    use base64::Engine as _;
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| NoRandomness(e.to_string()))?;
    Ok(format!("{kid}:{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)))
}

/// `run-YYYYMMDD-HHMMSS-xxxxxx`: the date and a random suffix.
pub(crate) fn generated_run_id() -> String {
    let mut b = [0u8; 3];
    let _ = getrandom::fill(&mut b);
    let now = crate::cli::unix_now();
    let s = now % 86_400;
    format!(
        "run-{}-{:02}{:02}{:02}-{:02x}{:02x}{:02x}",
        crate::cli::civil_date(now).replace('-', ""),
        s / 3600,
        s / 60 % 60,
        s % 60,
        b[0],
        b[1],
        b[2]
    )
}

#[cfg(test)]
mod tests {
    /// The engine's options and a control hold a live marker: their `Debug` prints (logs are
    /// where tokens leak) leave it out.
    #[test]
    fn the_engines_options_and_a_control_never_print_the_marker() {
        let token = "v1.load.r1.4102444800.k1.SECRETSIGNATUREaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        let options = crate::engine::RunOptions { token: token.to_owned(), run_id: "r1".into(), seed: None };
        let control = crate::Control::new();
        control.set_token(token).unwrap();
        for printed in [format!("{options:?}"), format!("{control:?}")] {
            assert!(!printed.contains("SECRET"), "{printed}");
        }
        assert!(format!("{options:?}").contains("r1"));
    }
}
