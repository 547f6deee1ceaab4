//! Scenarios: the model, the YAML form and its validation.
//!
//! A scenario file is parsed once and compiled: templates, JSON paths, regexes, thresholds and
//! data files are all checked before the run starts, and every mistake is reported with the file,
//! line and column and a hint on how to fix it. `docs/scenarios.md` documents every key.

mod csv;
mod json_path;
pub mod template;
pub mod threshold;

use std::{collections::BTreeMap, fmt, path::Path, sync::Arc, time::Duration};

use http::{HeaderName, Method, Uri};
use serde::Deserialize;
use serde_saphyr::{Location, Spanned};
use synth_ctx::RunId;

pub use json_path::JsonPath;
pub mod signals;
pub use template::Template;
use template::{Scope, Var};
pub use threshold::Threshold;

/// A scenario that loaded and validated: ready to run.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Base URL every step's path is joined to.
    pub target: Uri,
    /// The run id from the file, if any.
    pub run: Option<RunId>,
    /// Load phases, in order.
    pub phases: Vec<Phase>,
    /// Data feeders.
    pub feeders: Vec<Feeder>,
    /// Weighted journeys.
    pub journeys: Vec<Journey>,
    /// Pass/fail conditions.
    pub thresholds: Vec<Threshold>,
    /// Step names, for statistics: a step's `stat` indexes this list.
    pub step_names: Vec<Arc<str>>,
    /// Connect and request timeouts.
    pub timeouts: Timeouts,
    /// Most requests in flight at once through the shared connection pool (open model); more
    /// wait for a slot, and the wait counts in their latency.
    pub max_connections: usize,
    /// Speak HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1; over TLS, offer only `h2`.
    pub http2: bool,
    /// Certificates for `https://` targets.
    pub tls: Tls,
    /// External signals and the controls they drive, if any.
    pub signals: Option<signals::Signals>,
    /// What shed answers do to the rate.
    pub on_shed: signals::OnShed,
    /// The highest rate factor the run accepts, live (`POST /rate?factor=`) or automatic: the
    /// written rates times this bound the arrival rate. From 1 to [`MAX_RATE_FACTOR_LIMIT`];
    /// default [`DEFAULT_MAX_RATE_FACTOR`].
    pub max_rate_factor: f64,
}

/// TLS settings for `https://` URLs. The system's roots are always trusted; `ca` adds more
/// (a private CA or a self-signed certificate). There is no "skip verification" switch: a load
/// test aimed at the wrong host must fail, not send signed markers to it.
#[derive(Clone, Debug, Default)]
pub struct Tls {
    /// Extra trusted certificates (DER), from `tls: { ca: FILE }`.
    pub extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
}

/// Default for [`Scenario::max_connections`]: well under common file-descriptor limits.
pub const DEFAULT_MAX_CONNECTIONS: usize = 2048;

/// Default for [`Scenario::max_rate_factor`]: an operator can push a run to ten times its
/// written rate, no further, unless the scenario says otherwise.
pub const DEFAULT_MAX_RATE_FACTOR: f64 = 10.0;

/// The largest `max_rate_factor` a scenario may set: beyond it a "live adjustment" is a
/// different test, and should be written as one.
pub const MAX_RATE_FACTOR_LIMIT: f64 = 1000.0;

/// The largest arrival rate (journeys/s) a phase may ask for: far beyond what one generator
/// can send, and low enough that the scheduler's arithmetic stays exact.
pub const MAX_ARRIVAL_RATE: f64 = 1_000_000.0;

impl Scenario {
    /// Requests a journey makes on average (weights and loops counted): converts requests/s
    /// into journeys/s for top-up.
    pub fn requests_per_journey(&self) -> f64 {
        fn count(steps: &[Step]) -> f64 {
            steps
                .iter()
                .map(|s| match s {
                    Step::Request(_) => 1.0,
                    Step::Think(_) => 0.0,
                    Step::Loop { count: n, steps } => f64::from(*n) * count(steps),
                })
                .sum()
        }
        let total: f64 = self.journeys.iter().map(|j| f64::from(j.weight)).sum();
        if total <= 0.0 {
            return 1.0;
        }
        let r: f64 = self.journeys.iter().map(|j| f64::from(j.weight) * count(&j.steps)).sum::<f64>() / total;
        r.max(1e-9)
    }

    /// The written arrival rate (journeys/s) `elapsed` into the run, and the phase's index
    /// (`None` after the last phase). Closed-model and pause phases have rate 0.
    pub fn planned_rate_at(&self, elapsed: Duration) -> (f64, Option<usize>) {
        crate::schedule::planned_rate_at(&self.phases, elapsed)
    }

    /// The total length of the scenario's phases.
    pub fn planned_duration(&self) -> Duration {
        crate::schedule::planned_duration(&self.phases)
    }

    /// Points every relative step at another base URL (`loadgen run --target`), e.g. the same
    /// journeys against staging, then production. Absolute step URLs keep their host.
    pub fn retarget(&mut self, target: Uri) {
        for j in &mut self.journeys {
            fix_uris(&mut j.steps, &target);
        }
        self.target = target;
    }

    /// A scenario of one request to `url`, repeated as `phase` says: `loadgen hit` builds this,
    /// and Rust callers can too (the same model as the YAML form).
    ///
    /// ```
    /// use std::time::Duration;
    /// use loadgen::scenario::{Phase, Scenario};
    ///
    /// let s = Scenario::single_request("http://127.0.0.1:8080/health".parse()?, http::Method::GET,
    ///     Phase::Load { duration: Duration::from_secs(10), rate: 100.0, ramp_to: 100.0, max_concurrent: None });
    /// assert_eq!(s.step_names.len(), 1);
    /// # Ok::<(), http::uri::InvalidUri>(())
    /// ```
    pub fn single_request(url: Uri, method: Method, phase: Phase) -> Scenario {
        let path = url.path_and_query().map_or("/", http::uri::PathAndQuery::as_str).to_owned();
        let mut base = url.into_parts();
        base.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        let target = Uri::from_parts(base).unwrap_or_else(|_| Uri::from_static("http://127.0.0.1/"));
        let name: Arc<str> = Arc::from(format!("{method} {path}"));
        let request = Request {
            stat: 0,
            method,
            fixed_uri: Some(join(&target, &path)),
            url: Template::literal(&path),
            headers: Vec::new(),
            body: Body::Empty,
            captures: Vec::new(),
            expect: Expect::default(),
            expect_path: Vec::new(),
            expect_guards: Vec::new(),
        };
        Scenario {
            target,
            run: None,
            phases: vec![phase],
            feeders: Vec::new(),
            journeys: vec![Journey {
                name: Arc::from("hit"),
                weight: 1,
                steps: vec![Step::Request(Box::new(request))],
                captures: Vec::new(),
                cookies: false,
                feeders_used: Vec::new(),
            }],
            thresholds: Vec::new(),
            step_names: vec![name],
            timeouts: Timeouts { connect: Duration::from_secs(5), request: Duration::from_secs(30) },
            max_connections: DEFAULT_MAX_CONNECTIONS,
            http2: false,
            tls: Tls::default(),
            signals: None,
            on_shed: signals::OnShed::default(),
            max_rate_factor: DEFAULT_MAX_RATE_FACTOR,
        }
    }
}

/// Timeouts for every request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// Whole request, from send to the end of the body.
    pub request: Duration,
}

/// One phase of the run.
#[derive(Clone, Debug, PartialEq)]
pub enum Phase {
    /// Journeys arrive at `rate` per second, ramping linearly to `ramp_to`.
    Load {
        /// How long.
        duration: Duration,
        /// Arrivals per second at the start.
        rate: f64,
        /// Arrivals per second at the end (default: `rate`).
        ramp_to: f64,
        /// At most this many journeys at once; arrivals beyond it are dropped and counted.
        max_concurrent: Option<usize>,
    },
    /// Closed model: `users` virtual users each run journeys back to back for the phase.
    Closed {
        /// How long.
        duration: Duration,
        /// How many users.
        users: usize,
    },
    /// No new journeys.
    Pause {
        /// How long.
        duration: Duration,
    },
}

impl Phase {
    /// The phase's length.
    pub fn duration(&self) -> Duration {
        match self {
            Phase::Load { duration, .. } | Phase::Closed { duration, .. } | Phase::Pause { duration } => {
                *duration
            }
        }
    }
}

/// How a feeder hands out rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// Row after row, wrapping around.
    Sequential,
    /// A random row each time.
    Random,
}

/// A data feeder: rows of a CSV file.
#[derive(Clone, Debug)]
pub struct Feeder {
    /// Its name (`users` in `{{ users.email }}`).
    pub name: String,
    /// Column names.
    pub columns: Vec<String>,
    /// Rows.
    pub rows: Arc<[Arc<[String]>]>,
    /// Row order.
    pub order: Order,
}

/// A journey: steps run in order by one virtual user.
#[derive(Clone, Debug)]
pub struct Journey {
    /// Its name.
    pub name: Arc<str>,
    /// Relative weight among journeys.
    pub weight: u32,
    /// The steps.
    pub steps: Vec<Step>,
    /// Names of its capture slots.
    pub captures: Vec<String>,
    /// Keep cookies across its steps.
    pub cookies: bool,
    /// Feeders its templates read (indexes into [`Scenario::feeders`]).
    pub feeders_used: Vec<usize>,
}

/// One step.
#[derive(Clone, Debug)]
pub enum Step {
    /// An HTTP request.
    Request(Box<Request>),
    /// Wait.
    Think(Duration),
    /// Repeat steps.
    Loop {
        /// How many times.
        count: u32,
        /// The steps.
        steps: Vec<Step>,
    },
}

/// An HTTP request step.
#[derive(Clone, Debug)]
pub struct Request {
    /// Index into [`Scenario::step_names`].
    pub stat: usize,
    /// Method.
    pub method: Method,
    /// Path (and query) joined to the target, or an absolute URL.
    pub url: Template,
    /// The full URL when `url` has no expressions, parsed once.
    pub fixed_uri: Option<Uri>,
    /// Headers.
    pub headers: Vec<(HeaderName, Template)>,
    /// Body.
    pub body: Body,
    /// Captures into slots.
    pub captures: Vec<(usize, Capture)>,
    /// Expectations.
    pub expect: Expect,
    /// Services the answer's `synthetic-traffic-path` must name (checked by preflight).
    pub expect_path: Vec<String>,
    /// Guards the answer's `synthetic-traffic-guards` must name (checked by preflight).
    pub expect_guards: Vec<String>,
}

/// A request body.
#[derive(Clone, Debug)]
pub enum Body {
    /// None.
    Empty,
    /// JSON, with templates in its strings.
    Json(JsonTemplate),
    /// Text.
    Text(Template),
}

/// A JSON value whose strings are templates.
#[derive(Clone, Debug)]
pub enum JsonTemplate {
    /// A value without strings to render.
    Fixed(serde_json::Value),
    /// A string template.
    String(Template),
    /// An array.
    Array(Vec<JsonTemplate>),
    /// An object.
    Object(Vec<(String, JsonTemplate)>),
}

/// Where a capture reads from.
#[derive(Clone, Debug)]
pub enum Capture {
    /// A JSON path into the response body.
    Json(JsonPath),
    /// A response header.
    Header(HeaderName),
    /// The first group (or the whole match) of a regex over the body.
    Regex(regex_lite::Regex),
}

/// What a response must be.
#[derive(Clone, Debug, Default)]
pub struct Expect {
    /// Allowed status codes (default: any 2xx/3xx).
    pub status: Option<Vec<u16>>,
    /// Headers that must have these values.
    pub headers: Vec<(HeaderName, String)>,
    /// JSON values the body must hold.
    pub json: Vec<(JsonPath, serde_json::Value)>,
}

/// A scenario file that does not load, with where and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ScenarioError {
    /// The file.
    pub file: String,
    /// 1-based line, 0 if unknown.
    pub line: u64,
    /// 1-based column, 0 if unknown.
    pub column: u64,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}:{}: {}", self.file, self.line, self.column, self.message)?;
        } else {
            write!(f, "{}: {}", self.file, self.message)?;
        }
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

// ----- The YAML form -----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    target: Spanned<String>,
    #[serde(default)]
    run: Option<Spanned<String>>,
    #[serde(default)]
    timeouts: Option<RawTimeouts>,
    #[serde(default)]
    max_connections: Option<Spanned<usize>>,
    #[serde(default)]
    http2: bool,
    #[serde(default)]
    tls: Option<RawTls>,
    #[serde(default)]
    signals: Option<Spanned<signals::RawSignals>>,
    #[serde(default)]
    on_shed: Option<signals::RawOnShed>,
    #[serde(default)]
    max_rate_factor: Option<Spanned<f64>>,
    phases: Spanned<Vec<RawPhase>>,
    #[serde(default)]
    data: BTreeMap<String, Spanned<RawFeeder>>,
    journeys: Spanned<Vec<Spanned<RawJourney>>>,
    #[serde(default)]
    thresholds: Vec<Spanned<RawThreshold>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    #[serde(default)]
    ca: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    #[serde(default)]
    connect: Option<Spanned<String>>,
    #[serde(default)]
    request: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPhase {
    #[serde(default)]
    duration: Option<Spanned<String>>,
    #[serde(default)]
    arrival_rate: Option<Spanned<f64>>,
    #[serde(default)]
    ramp_to: Option<Spanned<f64>>,
    #[serde(default)]
    pause: Option<Spanned<String>>,
    #[serde(default)]
    max_concurrent: Option<usize>,
    #[serde(default)]
    users: Option<Spanned<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeeder {
    csv: Spanned<String>,
    #[serde(default = "default_order")]
    order: Order,
}

fn default_order() -> Order {
    Order::Sequential
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJourney {
    name: Spanned<String>,
    #[serde(default = "one")]
    weight: Spanned<u32>,
    #[serde(default = "yes")]
    cookies: bool,
    steps: Spanned<Vec<Spanned<RawStep>>>,
}

fn one() -> Spanned<u32> {
    Spanned::new(1, Location::UNKNOWN, Location::UNKNOWN)
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    get: Option<Spanned<String>>,
    #[serde(default)]
    post: Option<Spanned<String>>,
    #[serde(default)]
    put: Option<Spanned<String>>,
    #[serde(default)]
    patch: Option<Spanned<String>>,
    #[serde(default)]
    delete: Option<Spanned<String>>,
    #[serde(default)]
    head: Option<Spanned<String>>,
    #[serde(default)]
    headers: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    json: Option<Spanned<serde_json::Value>>,
    #[serde(default)]
    body: Option<Spanned<String>>,
    #[serde(default)]
    capture: BTreeMap<String, Spanned<RawCapture>>,
    #[serde(default)]
    expect: Option<RawExpect>,
    #[serde(default)]
    think: Option<Spanned<String>>,
    #[serde(default, rename = "loop")]
    repeat: Option<Spanned<RawLoop>>,
    #[serde(default)]
    expect_path: Vec<Spanned<String>>,
    #[serde(default)]
    expect_guards: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLoop {
    count: u32,
    steps: Vec<Spanned<RawStep>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCapture {
    #[serde(default)]
    json: Option<String>,
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    regex: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpect {
    #[serde(default)]
    status: Option<Spanned<RawStatus>>,
    #[serde(default)]
    header: BTreeMap<String, String>,
    #[serde(default)]
    json: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawStatus {
    One(u16),
    Many(Vec<u16>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawThreshold {
    Text(String),
    Full(RawThresholdFull),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawThresholdFull {
    threshold: String,
    #[serde(default)]
    step: Option<String>,
    #[serde(default)]
    abort_on_fail: bool,
}

// ----- Loading -----

/// Loads and validates a scenario file. Data files are read relative to it.
pub fn load(path: impl AsRef<Path>) -> Result<Scenario, ScenarioError> {
    let path = path.as_ref();
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
        file: file.clone(),
        line: 0,
        column: 0,
        message: format!("cannot read the scenario: {e}"),
        hint: None,
    })?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    parse(&text, &file, &dir)
}

const TOP_KEYS: [&str; 11] = [
    "target",
    "run",
    "timeouts",
    "max_connections",
    "max_rate_factor",
    "http2",
    "tls",
    "phases",
    "data",
    "journeys",
    "thresholds",
];
const PHASE_KEYS: [&str; 6] = ["duration", "arrival_rate", "ramp_to", "pause", "max_concurrent", "users"];
const STEP_KEYS: [&str; 17] = [
    "name",
    "get",
    "post",
    "put",
    "patch",
    "delete",
    "head",
    "headers",
    "json",
    "body",
    "capture",
    "expect",
    "think",
    "loop",
    "steps",
    "expect_path",
    "expect_guards",
];
const JOURNEY_KEYS: [&str; 4] = ["name", "weight", "cookies", "steps"];

/// Parses and validates scenario `text`; `file` names it in errors, `dir` resolves data files.
pub fn parse(text: &str, file: &str, dir: &Path) -> Result<Scenario, ScenarioError> {
    let raw: RawScenario = serde_saphyr::from_str(text).map_err(|e| yaml_error(&e, file))?;
    Compiler { file, dir }.compile(raw)
}

fn yaml_error(e: &serde_saphyr::Error, file: &str) -> ScenarioError {
    let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
    let full = e.to_string();
    // The first line is the message; the rest is a snippet of the file.
    let first = full.lines().next().unwrap_or(&full);
    let message = first.split_once(": ").filter(|(p, _)| p.contains("line")).map_or(first, |(_, m)| m);
    let message = message.strip_prefix("error: ").unwrap_or(message).to_owned();
    let hint = unknown_key(&message).map(|key| {
        let all: Vec<&str> = TOP_KEYS
            .iter()
            .chain(&PHASE_KEYS)
            .chain(&STEP_KEYS)
            .chain(&JOURNEY_KEYS)
            .chain(&signals::KEYS)
            .copied()
            .collect();
        match template::suggest(key, &all) {
            Some(s) => format!("did you mean `{s}`? (docs/scenarios.md lists every key)"),
            None => "remove it; docs/scenarios.md lists every key".to_owned(),
        }
    });
    ScenarioError { file: file.to_owned(), line, column, message, hint }
}

fn unknown_key(message: &str) -> Option<&str> {
    let rest = message.split_once("unknown field `")?.1;
    Some(&rest[..rest.find('`')?])
}

struct Compiler<'a> {
    file: &'a str,
    dir: &'a Path,
}

/// Variables a journey's templates can see at a given step.
struct JourneyScope<'a> {
    feeders: &'a [Feeder],
    captures: &'a [String],
    used: std::cell::RefCell<Vec<usize>>,
}

impl Scope for JourneyScope<'_> {
    fn resolve(&self, name: &str) -> Option<Var> {
        if name == "run" {
            return Some(Var::Run);
        }
        if let Some(slot) = self.captures.iter().position(|c| c == name) {
            return Some(Var::Capture(slot));
        }
        let (feeder, column) = name.split_once('.')?;
        let f = self.feeders.iter().position(|f| f.name == feeder)?;
        let c = self.feeders[f].columns.iter().position(|c| c == column)?;
        let mut used = self.used.borrow_mut();
        if !used.contains(&f) {
            used.push(f);
        }
        Some(Var::Data(f, c))
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.captures.to_vec();
        for f in self.feeders {
            names.extend(f.columns.iter().map(|c| format!("{}.{c}", f.name)));
        }
        names.push("run".into());
        names
    }
}

impl Compiler<'_> {
    fn at(&self, loc: &Location, message: impl Into<String>, hint: Option<String>) -> ScenarioError {
        ScenarioError {
            file: self.file.to_owned(),
            line: loc.line(),
            column: loc.column(),
            message: message.into(),
            hint,
        }
    }

    /// Service or guard names for preflight expectations.
    fn names(&self, names: &[Spanned<String>], what: &str) -> Result<Vec<String>, ScenarioError> {
        names
            .iter()
            .map(|n| {
                if synth_ctx::trail::is_valid_name(&n.value) {
                    Ok(n.value.clone())
                } else {
                    Err(self.at(
                        &n.referenced,
                        format!("{what}: `{}` is not a service or guard name", n.value),
                        Some("names are letters, digits, `.`, `_`, `-`, e.g. `payment.charge`".into()),
                    ))
                }
            })
            .collect()
    }

    fn duration(&self, s: &Spanned<String>, what: &str) -> Result<Duration, ScenarioError> {
        crate::duration::parse(&s.value).map_err(|e| {
            self.at(
                &s.referenced,
                format!("{what}: {e}"),
                Some("write a number and a unit: 500ms, 30s, 10m, 1h".into()),
            )
        })
    }

    fn compile(&self, raw: RawScenario) -> Result<Scenario, ScenarioError> {
        let target: Uri = raw.target.value.parse().map_err(|_| {
            self.at(
                &raw.target.referenced,
                format!("`{}` is not a URL", raw.target.value),
                Some("e.g. `target: http://127.0.0.1:8080`".into()),
            )
        })?;
        if target.scheme_str().is_none_or(|s| s != "http" && s != "https") || target.authority().is_none() {
            return Err(self.at(
                &raw.target.referenced,
                "the target must be an http:// or https:// URL with a host",
                Some("e.g. `target: http://127.0.0.1:8080`".into()),
            ));
        }
        let run = match &raw.run {
            Some(r) => Some(RunId::new(&r.value).map_err(|e| self.at(&r.referenced, e.to_string(), None))?),
            None => None,
        };
        let timeouts = Timeouts {
            connect: match raw.timeouts.as_ref().and_then(|t| t.connect.as_ref()) {
                Some(d) => self.duration(d, "timeouts.connect")?,
                None => Duration::from_secs(5),
            },
            request: match raw.timeouts.as_ref().and_then(|t| t.request.as_ref()) {
                Some(d) => self.duration(d, "timeouts.request")?,
                None => Duration::from_secs(30),
            },
        };

        let tls = self.tls(raw.tls.as_ref())?;
        let signals = match &raw.signals {
            Some(s) => Some(self.signals(&s.value, &s.referenced)?),
            None => None,
        };
        let on_shed = self.on_shed(raw.on_shed.as_ref())?;
        let max_connections = match &raw.max_connections {
            Some(m) if m.value == 0 => {
                return Err(self.at(
                    &m.referenced,
                    "max_connections: 0 would send nothing",
                    Some("use 1 or more".into()),
                ));
            }
            Some(m) => m.value,
            None => DEFAULT_MAX_CONNECTIONS,
        };
        let max_rate_factor = match &raw.max_rate_factor {
            Some(m) if !(1.0..=MAX_RATE_FACTOR_LIMIT).contains(&m.value) => {
                return Err(self.at(
                    &m.referenced,
                    format!("max_rate_factor: {:?} is out of range", m.value),
                    Some(format!(
                        "a number from 1 to {MAX_RATE_FACTOR_LIMIT}: how far `POST /rate?factor=` may push the written rates (default {DEFAULT_MAX_RATE_FACTOR})"
                    )),
                ));
            }
            Some(m) => m.value,
            None => DEFAULT_MAX_RATE_FACTOR,
        };
        if raw.phases.value.is_empty() {
            return Err(self.at(
                &raw.phases.referenced,
                "no phases",
                Some("add one, e.g. `- { duration: 30s, arrival_rate: 10 }`".into()),
            ));
        }
        let mut phases = Vec::new();
        for p in &raw.phases.value {
            phases.push(self.phase(p, &raw.phases.referenced)?);
        }

        let mut feeders = Vec::new();
        for (name, f) in &raw.data {
            let path = self.dir.join(&f.value.csv.value);
            let (columns, rows) = csv::read(&path).map_err(|e| {
                self.at(
                    &f.value.csv.referenced,
                    format!("data `{name}`: {e}"),
                    Some(format!("the path is relative to the scenario file: {}", self.dir.display())),
                )
            })?;
            if rows.is_empty() {
                return Err(self.at(
                    &f.value.csv.referenced,
                    format!("data `{name}`: {} has no rows", path.display()),
                    None,
                ));
            }
            feeders.push(Feeder { name: name.clone(), columns, rows: rows.into(), order: f.value.order });
        }

        if raw.journeys.value.is_empty() {
            return Err(self.at(
                &raw.journeys.referenced,
                "no journeys",
                Some("add at least one journey with steps".into()),
            ));
        }
        let mut step_names = Vec::new();
        let mut journeys = Vec::new();
        for j in &raw.journeys.value {
            journeys.push(self.journey(j, &feeders, &mut step_names)?);
        }

        let mut thresholds = Vec::new();
        for t in &raw.thresholds {
            let (text, step, abort) = match &t.value {
                RawThreshold::Text(s) => (s.as_str(), None, false),
                RawThreshold::Full(f) => (f.threshold.as_str(), f.step.clone(), f.abort_on_fail),
            };
            let mut th = Threshold::parse(text).map_err(|e| {
                self.at(
                    &t.referenced,
                    e,
                    Some("e.g. `p95 < 300ms`, `error_rate < 1%`, `mean <= 50ms`".into()),
                )
            })?;
            if let Some(step) = &step
                && !step_names.iter().any(|n| &**n == step)
            {
                let names: Vec<&str> = step_names.iter().map(|n| &**n).collect();
                let hint = template::suggest(step, &names).map(|s| format!("did you mean `{s}`?"));
                return Err(self.at(
                    &t.referenced,
                    format!("threshold on unknown step `{step}`"),
                    hint.or(Some(format!("steps: {}", names.join(", ")))),
                ));
            }
            th.step = step;
            th.abort_on_fail = abort;
            thresholds.push(th);
        }
        for j in &mut journeys {
            fix_uris(&mut j.steps, &target);
        }
        Ok(Scenario {
            target,
            run,
            phases,
            feeders,
            journeys,
            thresholds,
            step_names,
            timeouts,
            max_connections,
            http2: raw.http2,
            tls,
            signals,
            on_shed,
            max_rate_factor,
        })
    }

    fn tls(&self, raw: Option<&RawTls>) -> Result<Tls, ScenarioError> {
        use rustls::pki_types::{CertificateDer, pem::PemObject as _};
        let Some(ca) = raw.and_then(|t| t.ca.as_ref()) else { return Ok(Tls::default()) };
        let path = self.dir.join(&ca.value);
        let hint = Some("give a PEM file with one or more certificates, e.g. `tls: { ca: ca.pem }`".into());
        let certs =
            CertificateDer::pem_file_iter(&path).and_then(Iterator::collect::<Result<Vec<_>, _>>).map_err(
                |e| self.at(&ca.referenced, format!("tls.ca `{}`: {e}", path.display()), hint.clone()),
            )?;
        if certs.is_empty() {
            return Err(self.at(
                &ca.referenced,
                format!("tls.ca `{}` holds no certificate", path.display()),
                hint,
            ));
        }
        let mut roots = rustls::RootCertStore::empty();
        for (i, cert) in certs.iter().enumerate() {
            roots.add(cert.clone()).map_err(|e| {
                self.at(
                    &ca.referenced,
                    format!("tls.ca `{}`: certificate {}: {e}", path.display(), i + 1),
                    None,
                )
            })?;
        }
        Ok(Tls { extra_roots: certs })
    }

    fn phase(&self, p: &RawPhase, list: &Location) -> Result<Phase, ScenarioError> {
        if let Some(pause) = &p.pause {
            if p.duration.is_some() || p.arrival_rate.is_some() || p.ramp_to.is_some() {
                return Err(self.at(
                    &pause.referenced,
                    "a pause phase has only `pause`",
                    Some("split it: `- { pause: 5s }` then a load phase".into()),
                ));
            }
            return Ok(Phase::Pause { duration: self.duration(pause, "pause")? });
        }
        let Some(d) = &p.duration else {
            return Err(self.at(
                list,
                "a phase needs `duration` and `arrival_rate` (or is `- { pause: 5s }`)",
                None,
            ));
        };
        let duration = self.duration(d, "duration")?;
        if duration.is_zero() {
            return Err(self.at(
                &d.referenced,
                "a phase of 0s does nothing",
                Some("give it a duration, e.g. 30s".into()),
            ));
        }
        if let Some(users) = &p.users {
            if p.arrival_rate.is_some() || p.ramp_to.is_some() || p.max_concurrent.is_some() {
                return Err(self.at(
                    &users.referenced,
                    "a phase is open (`arrival_rate`) or closed (`users`), not both",
                    Some("split it into two phases".into()),
                ));
            }
            if users.value == 0 {
                return Err(self.at(
                    &users.referenced,
                    "a closed phase of 0 users does nothing",
                    Some("use users: 1 or more, or `- { pause: … }`".into()),
                ));
            }
            return Ok(Phase::Closed { duration, users: users.value });
        }
        let Some(rate) = &p.arrival_rate else {
            return Err(self.at(
                &d.referenced,
                "the phase has no `arrival_rate` (open model) or `users` (closed model)",
                Some(
                    "add journeys per second, e.g. `arrival_rate: 10`, or looping users, e.g. `users: 50`"
                        .into(),
                ),
            ));
        };
        let ramp_to = p.ramp_to.as_ref().map_or(rate.value, |r| r.value);
        for (v, loc) in [
            (rate.value, &rate.referenced),
            (ramp_to, p.ramp_to.as_ref().map_or(&rate.referenced, |r| &r.referenced)),
        ] {
            if !(0.0..=MAX_ARRIVAL_RATE).contains(&v) {
                return Err(self.at(
                    loc,
                    format!("{v:?} is not a rate"),
                    Some(format!("journeys per second: a number from 0 to {MAX_ARRIVAL_RATE}")),
                ));
            }
        }
        Ok(Phase::Load { duration, rate: rate.value, ramp_to, max_concurrent: p.max_concurrent })
    }

    fn journey(
        &self,
        j: &Spanned<RawJourney>,
        feeders: &[Feeder],
        step_names: &mut Vec<Arc<str>>,
    ) -> Result<Journey, ScenarioError> {
        let raw = &j.value;
        let name: Arc<str> = Arc::from(raw.name.value.as_str());
        if raw.weight.value == 0 {
            return Err(self.at(
                &raw.weight.referenced,
                format!("journey `{name}` has weight 0, so it would never run"),
                Some("give it a weight of 1 or more, or remove it".into()),
            ));
        }
        if raw.steps.value.is_empty() {
            return Err(self.at(
                &raw.steps.referenced,
                format!("journey `{name}` has no steps"),
                Some("add at least one request".into()),
            ));
        }
        let mut captures = Vec::new();
        let scope_used = std::cell::RefCell::new(Vec::new());
        let steps = self.steps(&raw.steps.value, &name, feeders, &mut captures, &scope_used, step_names)?;
        if !has_request(&steps) {
            return Err(self.at(
                &raw.steps.referenced,
                format!("journey `{name}` makes no request"),
                Some("add a `get:` or `post:` step".into()),
            ));
        }
        Ok(Journey {
            name,
            weight: raw.weight.value,
            steps,
            captures,
            cookies: raw.cookies,
            feeders_used: scope_used.into_inner(),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn steps(
        &self,
        raw: &[Spanned<RawStep>],
        journey: &str,
        feeders: &[Feeder],
        captures: &mut Vec<String>,
        used: &std::cell::RefCell<Vec<usize>>,
        step_names: &mut Vec<Arc<str>>,
    ) -> Result<Vec<Step>, ScenarioError> {
        let mut out = Vec::new();
        for s in raw {
            let loc = &s.referenced;
            let r = &s.value;
            if let Some(think) = &r.think {
                out.push(Step::Think(self.duration(think, "think")?));
                continue;
            }
            if let Some(l) = &r.repeat {
                if l.value.count == 0 {
                    return Err(self.at(
                        &l.referenced,
                        "a loop of 0 times",
                        Some("use count: 1 or more, or remove the loop".into()),
                    ));
                }
                let inner = self.steps(&l.value.steps, journey, feeders, captures, used, step_names)?;
                out.push(Step::Loop { count: l.value.count, steps: inner });
                continue;
            }
            let methods = [
                (Method::GET, &r.get),
                (Method::POST, &r.post),
                (Method::PUT, &r.put),
                (Method::PATCH, &r.patch),
                (Method::DELETE, &r.delete),
                (Method::HEAD, &r.head),
            ];
            let given: Vec<(Method, &Spanned<String>)> =
                methods.iter().filter_map(|(m, u)| u.as_ref().map(|u| (m.clone(), u))).collect();
            let (method, url) = match given.as_slice() {
                [(m, u)] => (m.clone(), *u),
                [] => {
                    return Err(self.at(
                        loc,
                        "a step needs a request (`get: /path`, `post: …`), a `think:` or a `loop:`",
                        None,
                    ));
                }
                _ => {
                    return Err(self.at(
                        loc,
                        "a step makes one request: give only one of get, post, put, patch, delete, head",
                        Some("split it into two steps".into()),
                    ));
                }
            };
            let scope = JourneyScope { feeders, captures, used: std::cell::RefCell::new(Vec::new()) };
            let tpl = |text: &str, at: &Location| {
                Template::compile(text, &scope).map_err(|e| self.at(at, e.message, e.hint))
            };
            let url_t = tpl(&url.value, &url.referenced)?;
            let mut headers = Vec::new();
            for (k, v) in &r.headers {
                let name = HeaderName::try_from(k.as_str())
                    .map_err(|_| self.at(&v.referenced, format!("`{k}` is not a header name"), None))?;
                headers.push((name, tpl(&v.value, &v.referenced)?));
            }
            let body = match (&r.json, &r.body) {
                (Some(_), Some(b)) => {
                    return Err(self.at(&b.referenced, "give `json` or `body`, not both", None));
                }
                (Some(j), None) => Body::Json(self.json(&j.value, &j.referenced, &scope)?),
                (None, Some(b)) => Body::Text(tpl(&b.value, &b.referenced)?),
                (None, None) => Body::Empty,
            };
            let expect = match &r.expect {
                Some(e) => self.expect(e)?,
                None => Expect::default(),
            };
            for f in scope.used.into_inner() {
                let mut u = used.borrow_mut();
                if !u.contains(&f) {
                    u.push(f);
                }
            }
            // Captures become visible to later steps only.
            let mut caps = Vec::new();
            for (name, c) in &r.capture {
                let cap = self.capture(name, c)?;
                let slot = match captures.iter().position(|n| n == name) {
                    Some(slot) => slot,
                    None => {
                        captures.push(name.clone());
                        captures.len() - 1
                    }
                };
                caps.push((slot, cap));
            }
            let step_name = r.name.clone().unwrap_or_else(|| format!("{journey}: {method} {}", url.value));
            let stat = match step_names.iter().position(|n| **n == *step_name) {
                Some(i) => i,
                None => {
                    step_names.push(Arc::from(step_name.as_str()));
                    step_names.len() - 1
                }
            };
            out.push(Step::Request(Box::new(Request {
                stat,
                method,
                url: url_t,
                fixed_uri: None,
                headers,
                body,
                captures: caps,
                expect,
                expect_path: self.names(&r.expect_path, "expect_path")?,
                expect_guards: self.names(&r.expect_guards, "expect_guards")?,
            })));
        }
        Ok(out)
    }

    fn json(
        &self,
        v: &serde_json::Value,
        at: &Location,
        scope: &JourneyScope<'_>,
    ) -> Result<JsonTemplate, ScenarioError> {
        Ok(match v {
            serde_json::Value::String(s) => {
                let t = Template::compile(s, scope).map_err(|e| self.at(at, e.message, e.hint))?;
                match t.as_literal() {
                    Some(_) => JsonTemplate::Fixed(v.clone()),
                    None => JsonTemplate::String(t),
                }
            }
            serde_json::Value::Array(a) => {
                JsonTemplate::Array(a.iter().map(|x| self.json(x, at, scope)).collect::<Result<_, _>>()?)
            }
            serde_json::Value::Object(o) => JsonTemplate::Object(
                o.iter()
                    .map(|(k, x)| Ok((k.clone(), self.json(x, at, scope)?)))
                    .collect::<Result<_, ScenarioError>>()?,
            ),
            other => JsonTemplate::Fixed(other.clone()),
        })
    }

    fn capture(&self, name: &str, c: &Spanned<RawCapture>) -> Result<Capture, ScenarioError> {
        if !name
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
            || name.contains('.')
        {
            return Err(self.at(
                &c.referenced,
                format!("`{name}` cannot be a variable name"),
                Some("use letters, digits and `_`".into()),
            ));
        }
        let r = &c.value;
        match (&r.json, &r.header, &r.regex) {
            (Some(p), None, None) => Ok(Capture::Json(JsonPath::parse(p).map_err(|e| {
                self.at(
                    &c.referenced,
                    format!("capture `{name}`: {e}"),
                    Some("e.g. `$.token` or `$.items[0].id`".into()),
                )
            })?)),
            (None, Some(h), None) => Ok(Capture::Header(HeaderName::try_from(h.as_str()).map_err(|_| {
                self.at(&c.referenced, format!("capture `{name}`: `{h}` is not a header name"), None)
            })?)),
            (None, None, Some(re)) => {
                Ok(Capture::Regex(regex_lite::Regex::new(re).map_err(|e| {
                    self.at(&c.referenced, format!("capture `{name}`: bad regex: {e}"), None)
                })?))
            }
            _ => Err(self.at(
                &c.referenced,
                format!("capture `{name}` needs exactly one of json, header, regex"),
                Some("e.g. `token: { json: \"$.token\" }`".into()),
            )),
        }
    }

    fn expect(&self, e: &RawExpect) -> Result<Expect, ScenarioError> {
        let status = match &e.status {
            None => None,
            Some(s) => {
                let codes = match &s.value {
                    RawStatus::One(c) => vec![*c],
                    RawStatus::Many(c) => c.clone(),
                };
                if codes.iter().any(|c| !(100..=599).contains(c)) || codes.is_empty() {
                    return Err(self.at(&s.referenced, "expect.status: status codes are 100 to 599", None));
                }
                Some(codes)
            }
        };
        let mut headers = Vec::new();
        for (k, v) in &e.header {
            headers.push((
                HeaderName::try_from(k.as_str()).map_err(|_| ScenarioError {
                    file: self.file.to_owned(),
                    line: 0,
                    column: 0,
                    message: format!("expect.header: `{k}` is not a header name"),
                    hint: None,
                })?,
                v.clone(),
            ));
        }
        let mut json = Vec::new();
        for (p, v) in &e.json {
            json.push((
                JsonPath::parse(p).map_err(|m| ScenarioError {
                    file: self.file.to_owned(),
                    line: 0,
                    column: 0,
                    message: format!("expect.json: {m}"),
                    hint: Some("e.g. `$.status: ok`".into()),
                })?,
                v.clone(),
            ));
        }
        Ok(Expect { status, headers, json })
    }
}

/// Parses, once, the URL of every request whose URL has no expressions.
fn fix_uris(steps: &mut [Step], target: &Uri) {
    for step in steps {
        match step {
            Step::Request(r) => {
                r.fixed_uri = r.url.as_literal().and_then(|p| {
                    if p.starts_with("http://") || p.starts_with("https://") {
                        p.parse().ok()
                    } else {
                        Some(join(target, p))
                    }
                });
            }
            Step::Loop { steps, .. } => fix_uris(steps, target),
            Step::Think(_) => {}
        }
    }
}

/// `target` + `path`, as a URI (the target itself if that does not parse).
fn join(target: &Uri, path: &str) -> Uri {
    let base = target.to_string();
    let base = base.trim_end_matches('/');
    let sep = if path.starts_with('/') { "" } else { "/" };
    format!("{base}{sep}{path}").parse().unwrap_or_else(|_| target.clone())
}

fn has_request(steps: &[Step]) -> bool {
    steps.iter().any(|s| match s {
        Step::Request(_) => true,
        Step::Think(_) => false,
        Step::Loop { steps, .. } => has_request(steps),
    })
}
