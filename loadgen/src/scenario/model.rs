//! The compiled scenario: what a run executes, however it was written (a YAML file through
//! [`parse`](super::parse), or built in Rust).

use std::{sync::Arc, time::Duration};

use http::{HeaderName, Method, Uri};
use serde::Deserialize;
use synth_ctx::RunId;

use super::{JsonPath, Template, Threshold, signals, walk};

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
    ///
    /// A journey written in Rust counts as one request: what it sends is known only as it runs.
    /// (Top-up never asks for more than the written rate, so a journey that sends more only
    /// makes top-up reach its target at a lower rate.)
    pub fn requests_per_journey(&self) -> f64 {
        fn count(j: &Journey) -> f64 {
            if j.code.is_some() {
                return 1.0;
            }
            walk::steps(&j.steps).filter(|v| v.sent().is_some()).map(|v| v.runs as f64).sum()
        }
        let total: f64 = self.journeys.iter().map(|j| f64::from(j.weight)).sum();
        if total <= 0.0 {
            return 1.0;
        }
        let r: f64 = self.journeys.iter().map(|j| f64::from(j.weight) * count(j)).sum::<f64>() / total;
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

    /// Points the gRPC steps whose own `target:` is `from`'s origin at `to` instead, and
    /// returns how many it changed: a scenario written for fixed ports (`http://127.0.0.1:7001`)
    /// run against services that listen elsewhere, as shop-demo does with its catalogue.
    /// Steps without a `target:` follow [`retarget`](Self::retarget) instead.
    pub fn retarget_grpc(&mut self, from: &Uri, to: &Uri) -> usize {
        let origin = |u: &Uri| (u.scheme().cloned(), u.authority().cloned());
        let mut changed = 0;
        for j in &mut self.journeys {
            for g in walk::grpc_mut(&mut j.steps) {
                if g.target.as_ref().is_some_and(|t| origin(t) == origin(from)) {
                    g.target = Some(to.clone());
                    changed += 1;
                }
            }
        }
        changed
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
                code: None,
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

impl Feeder {
    /// Reads a CSV file (a header line, then rows) as the feeder `name`: what `data:` in a
    /// scenario file does, for a scenario built in Rust ([`Scenario::data`]).
    ///
    /// # Errors
    ///
    /// The file cannot be read, is not CSV as loadgen reads it, or has no rows.
    pub fn from_csv(
        name: impl Into<String>,
        path: impl AsRef<std::path::Path>,
        order: Order,
    ) -> Result<Feeder, super::ScenarioError> {
        let (name, path) = (name.into(), path.as_ref());
        let error = |message: String| super::ScenarioError {
            file: path.display().to_string(),
            line: 0,
            column: 0,
            message,
            hint: None,
        };
        let (columns, rows) = super::csv::read(path).map_err(|e| error(format!("data `{name}`: {e}")))?;
        if rows.is_empty() {
            return Err(error(format!("data `{name}`: no rows")));
        }
        Ok(Feeder { name, columns, rows: rows.into(), order })
    }
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
    /// A journey written in Rust ([`crate::Journey`]) runs this instead of `steps`.
    pub(crate) code: Option<crate::engine::user::Code>,
}

/// One step.
#[derive(Clone, Debug)]
pub enum Step {
    /// An HTTP request.
    Request(Box<Request>),
    /// A unary gRPC call.
    Grpc(Box<GrpcCall>),
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

/// A unary gRPC call step (`grpc:` in YAML): a message built from a JSON template, sent over
/// HTTP/2 to `target` (or the scenario's target) with the run's marker in its metadata.
///
/// ```
/// use std::path::Path;
///
/// use loadgen::scenario::{self, Step};
///
/// let yaml = "
/// target: http://127.0.0.1:8080
/// phases: [{ duration: 1s, arrival_rate: 1 }]
/// journeys:
///   - name: find
///     steps:
///       - grpc: { proto: catalog.proto, call: shop.catalog.v1.Catalog/Search, message: { query: hats } }
/// ";
/// // The .proto is read relative to the scenario's directory.
/// let dir = Path::new("../examples/shop/proto");
/// let s = scenario::parse(yaml, "inline.yaml", dir)?;
/// let Step::Grpc(call) = &s.journeys[0].steps[0] else { unreachable!("a gRPC step") };
/// assert_eq!(call.path.as_str(), "/shop.catalog.v1.Catalog/Search");
/// assert_eq!(&*s.step_names[call.stat], "find: grpc Catalog/Search");
///
/// // An unknown method is an error at the step's line, with a suggestion.
/// let e = scenario::parse(&yaml.replace("/Search", "/Serch"), "inline.yaml", dir).err();
/// assert_eq!(e.as_ref().map(|e| e.line), Some(7));
/// assert_eq!(e.and_then(|e| e.hint), Some("did you mean `Search`?".to_owned()));
/// # Ok::<(), loadgen::scenario::ScenarioError>(())
/// ```
#[derive(Clone, Debug)]
pub struct GrpcCall {
    /// Index into [`Scenario::step_names`].
    pub stat: usize,
    /// The origin to call (`grpc: { target: … }`); `None` calls the scenario's target, and
    /// follows it when it is changed ([`Scenario::retarget`]).
    pub target: Option<Uri>,
    /// The method, from the `.proto` compiled when the scenario loaded: its input and output
    /// descriptors encode and decode the messages.
    pub method: prost_reflect::MethodDescriptor,
    /// The request path, `/package.Service/Method`.
    pub path: http::uri::PathAndQuery,
    /// The method streams its answer (server streaming): the call reads every message until
    /// the stream ends, and counts them ([`StepStats::grpc_messages`](crate::stats::StepStats)).
    pub server_streaming: bool,
    /// The request message as JSON (protobuf's JSON mapping), with templates in its strings.
    pub message: JsonTemplate,
    /// The request message encoded once, when `message` has no templates (every call sends
    /// these bytes); `None` renders `message` for each call.
    pub encoded: Option<bytes::Bytes>,
    /// Request metadata (ASCII keys; `synthetic-traffic` is always the run's marker).
    pub metadata: Vec<(tonic::metadata::AsciiMetadataKey, Template)>,
    /// Captures into slots: JSON paths over the answer (the first message of a stream) rendered
    /// as JSON (proto field names), metadata keys (`header:`), or a regex over that JSON text.
    pub captures: Vec<(usize, Capture)>,
    /// Statuses the step accepts (default: `OK` only).
    pub expect_status: Vec<crate::stats::GrpcCode>,
    /// Answer metadata that must have these values.
    pub expect_metadata: Vec<(HeaderName, String)>,
    /// JSON values the answer must hold.
    pub expect_json: Vec<(JsonPath, serde_json::Value)>,
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

/// Parses, once, the URL of every request whose URL has no expressions.
pub(super) fn fix_uris(steps: &mut [Step], target: &Uri) {
    for r in walk::requests_mut(steps) {
        r.fixed_uri = r.url.as_literal().and_then(|p| {
            if p.starts_with("http://") || p.starts_with("https://") {
                p.parse().ok()
            } else {
                Some(join(target, p))
            }
        });
    }
}

/// `target` + `path`, as a URI (the target itself if that does not parse).
pub(super) fn join(target: &Uri, path: &str) -> Uri {
    let base = target.to_string();
    let base = base.trim_end_matches('/');
    let sep = if path.starts_with('/') { "" } else { "/" };
    format!("{base}{sep}{path}").parse().unwrap_or_else(|_| target.clone())
}
