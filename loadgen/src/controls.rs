//! The production-safety controls that run beside the engine: external signals from a
//! Prometheus-compatible query API (abort, back off, pause when the source goes quiet, top-up),
//! back-off on shed answers, and the dead-man's switch. Every decision is recorded.
//!
//! A run with signals sends nothing before the source's first good answer, whatever
//! `on_unavailable` says; a query whose answer can never be read ([`PollError::WrongType`],
//! [`PollError::Rejected`], and at the start [`PollError::Unreadable`]) is a scenario mistake
//! that stops the run ([`check_signals`]) or aborts it, never a warning.
//!
//! The controls never touch the operator's rate factor: they set the engine's *automatic*
//! factor (back-off × top-up) and the automatic pause, so an operator's `resume` cannot make a
//! run ramp while its signals are blind.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use serde::Serialize;

use crate::{
    engine::{AbortReason, Bounded, Control, HttpClient, MAX_READ_BODY},
    scenario::{
        Scenario,
        signals::{Action, OnUnavailable, Signals},
    },
};

/// One decision of the controls.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Decision {
    /// Seconds since the run started.
    pub t_s: f64,
    /// What decided: a condition's name, `shed`, `signal source`, `heartbeat`, `top-up`.
    pub source: String,
    /// The value that decided, if any.
    pub value: Option<f64>,
    /// What it did.
    pub action: DecisionAction,
    /// Arrival rate (journeys/s) before.
    pub old_rate: f64,
    /// Arrival rate (journeys/s) after.
    pub new_rate: f64,
    /// In words.
    pub detail: String,
}

/// What a decision of the controls did (`action` in the JSON report).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DecisionAction {
    /// Aborted the run (a condition, or a signal source silent for too long).
    Abort,
    /// Lowered the rate (a condition, or shed answers).
    BackOff,
    /// Raised the rate again after a back-off.
    Recover,
    /// Held arrivals: the signal source stopped answering.
    Pause,
    /// Let arrivals go on: the signal source answers again.
    Resume,
    /// Went on without answers (`on_unavailable: continue`).
    Continue,
    /// Stopped the run as if Ctrl-C (no heartbeat).
    Stop,
    /// Changed the top-up rate.
    TopUp,
    /// Changed a replay's cap, or the cap began or stopped holding the replay back.
    Cap,
}

impl DecisionAction {
    /// Every action, in declaration order.
    pub const ALL: [DecisionAction; 9] = [
        DecisionAction::Abort,
        DecisionAction::BackOff,
        DecisionAction::Recover,
        DecisionAction::Pause,
        DecisionAction::Resume,
        DecisionAction::Continue,
        DecisionAction::Stop,
        DecisionAction::TopUp,
        DecisionAction::Cap,
    ];

    /// The name in the JSON report and the summary: `back_off`, `top_up`, ….
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionAction::Abort => "abort",
            DecisionAction::BackOff => "back_off",
            DecisionAction::Recover => "recover",
            DecisionAction::Pause => "pause",
            DecisionAction::Resume => "resume",
            DecisionAction::Continue => "continue",
            DecisionAction::Stop => "stop",
            DecisionAction::TopUp => "top_up",
            DecisionAction::Cap => "cap",
        }
    }
}

impl std::fmt::Display for DecisionAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One polled value.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SignalPoint {
    /// Seconds since the run started.
    pub t_s: f64,
    /// Condition name, or `real rate` for top-up.
    pub name: String,
    /// The value (`None`: no data or no answer).
    pub value: Option<f64>,
}

/// What the controls did, for the reports.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Record {
    /// Every decision, in order.
    pub decisions: Vec<Decision>,
    /// Every polled value, in order.
    pub signals: Vec<SignalPoint>,
    /// Whether the signal source ever gave a good answer (a run with signals sends nothing
    /// before it does).
    #[serde(skip)]
    pub answered: bool,
}

/// Shared handle on a [`Record`].
pub(crate) type SharedRecord = Arc<Mutex<Record>>;

/// Options the scenario does not hold.
#[derive(Clone, Debug, Default)]
pub(crate) struct Options {
    /// Stop the run when no heartbeat came for this long.
    pub heartbeat: Option<Duration>,
    /// Print decisions to standard error.
    pub print: bool,
    /// A replay's cap.
    pub cap: Option<Cap>,
}

/// Why a poll gave no value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum PollError {
    /// No answer in time, or a transport failure.
    #[error("no answer ({0})")]
    Transport(String),
    /// The source is there but cannot answer now: an error from the query API (`timeout`,
    /// `execution`, `unavailable`), or a 5xx / 429 from whatever is in front of it.
    #[error("bad answer: {0}")]
    Answer(String),
    /// An answer that is not the query API's JSON (a login page, a UI, another API), or one
    /// too large to read: the URL or its credentials are wrong. Stops the run at the start;
    /// mid-run it counts like an unanswered poll.
    #[error("{0}")]
    Unreadable(String),
    /// The source cannot run the query (`bad_data`: a typo, or a range query).
    #[error("{0}")]
    Rejected(String),
    /// The query returns a type a condition cannot compare (a range vector such as
    /// `errors[5m]`, a string): a mistake in the scenario, never an outage.
    #[error("{0}")]
    WrongType(String),
    /// The source answered, but the query returned no series (or only NaN).
    #[error("no data: {0}")]
    NoData(String),
}

impl PollError {
    /// A mistake in the scenario that no retry can mend: the run does not start, or aborts.
    fn is_mistake(&self) -> bool {
        matches!(self, PollError::Rejected(_) | PollError::WrongType(_))
    }
}

/// Why a query that returns nothing is suspect, for the messages that name it.
const NO_DATA_CAUSES: &str = "a misspelt metric or label, a summary where the query needs a histogram \
    (histogram_quantile needs _bucket series), a relabelled job, or no traffic of that kind yet; \
    set `allow_no_data: true` on the condition if no series is a healthy reading";

/// Each signal query's answer, with "no data" turned into [`PollError::NoData`] unless the
/// condition allows it: a condition that reads nothing is blind, never healthy. The last entry
/// is top-up's real rate, when the scenario has one (it always needs data).
async fn poll_all(
    client: &HttpClient,
    signals: &Signals,
    cap_query: Option<&str>,
) -> Vec<(String, Result<Vec<f64>, PollError>)> {
    let mut queries: Vec<(&str, &str, bool)> =
        signals.conditions.iter().map(|c| (c.name.as_str(), c.query.as_str(), c.allow_no_data)).collect();
    if let Some(t) = &signals.top_up {
        queries.push((TOP_UP_QUERY, t.real_rate.as_str(), false));
    }
    if let Some(q) = cap_query {
        queries.push((CAP_QUERY, q, false));
    }
    let answers =
        futures_util::future::join_all(queries.iter().map(|(_, q, _)| query(client, signals, q))).await;
    queries
        .iter()
        .zip(answers)
        .map(|(&(name, _, allow_no_data), answer)| {
            let answer = match answer {
                Ok(values) if !allow_no_data && values.iter().all(|v| v.is_nan()) => {
                    Err(PollError::NoData(format!("`{name}` returned no series")))
                }
                other => other,
            };
            (name.to_owned(), answer)
        })
        .collect()
}

/// The name top-up's real-rate query goes by in decisions and problems.
const TOP_UP_QUERY: &str = "top_up.real_rate";

/// The name a replay cap's real-rate query goes by in decisions and problems.
pub(crate) const CAP_QUERY: &str = "cap.real_rate";

/// A replay's cap: replayed requests per second at most `share` times real traffic's.
#[derive(Clone, Debug)]
pub(crate) struct Cap {
    /// The most replayed traffic, as a share of real traffic (0.25: a quarter).
    pub(crate) share: f64,
    /// Where real traffic's rate comes from.
    pub(crate) source: CapSource,
}

/// Where a replay's cap reads real traffic's rate.
#[derive(Clone, Debug)]
pub(crate) enum CapSource {
    /// A query (requests/s) asked of the run's signal source at each poll.
    Query(String),
    /// The recording's own rate where the replay is in it, divided by the share of real traffic
    /// the capture recorded.
    Recording {
        /// The recording's rate per second.
        scan: Arc<crate::replay::plan::Scan>,
        /// The share of real requests the capture recorded (1 when unknown: the cap is then as
        /// low as it can be).
        recorded_share: f64,
    },
}

impl Cap {
    fn query(&self) -> Option<&str> {
        match &self.source {
            CapSource::Query(q) => Some(q),
            CapSource::Recording { .. } => None,
        }
    }
}

/// A signal query that cannot guard the run, found before it starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignalProblem {
    /// The condition's name, or `top_up.real_rate`.
    pub name: String,
    /// The query.
    pub query: String,
    /// What is wrong, and the likely causes.
    pub why: String,
}

/// What the check before a run found: problems that stop it, warnings that do not.
#[derive(Clone, Debug, Default)]
pub(crate) struct SignalCheck {
    /// Queries that returned no data (and do not allow it), that the source refused, that return
    /// a type a condition cannot read, or whose answer is not the query API's.
    pub problems: Vec<SignalProblem>,
    /// Queries that allow no data and returned none; and a source that did not answer (the run
    /// then sends nothing until it does, whatever `on_unavailable` says).
    pub warnings: Vec<String>,
}

/// Asks every signal query once before the run: each must return data, unless its condition
/// says `allow_no_data: true`. A run whose safety signals read nothing does not start; neither
/// does one whose query returns a type a condition cannot read or whose source answers with
/// something that is not the query API (a login page).
pub(crate) async fn check_signals(scenario: &Scenario, cap: Option<&Cap>) -> SignalCheck {
    let mut check = SignalCheck::default();
    let Some(signals) = &scenario.signals else { return check };
    let client = HttpClient::new(signals.timeout, signals.timeout, 16, false, &scenario.tls);
    let cap_query = cap.and_then(Cap::query);
    let query_of = |name: &str| match name {
        TOP_UP_QUERY => signals.top_up.as_ref().map(|t| t.real_rate.clone()).unwrap_or_default(),
        CAP_QUERY => cap_query.unwrap_or_default().to_owned(),
        _ => signals.conditions.iter().find(|c| c.name == name).map(|c| c.query.clone()).unwrap_or_default(),
    };
    for (name, answer) in poll_all(&client, signals, cap_query).await {
        let query = query_of(&name);
        let problem = |why: String| SignalProblem { name: name.clone(), query: query.clone(), why };
        match answer {
            Ok(values) if values.iter().all(|v| v.is_nan()) => {
                check.warnings.push(format!("condition `{name}` has no data yet (allowed by allow_no_data)"));
            }
            Ok(_) => {}
            Err(PollError::NoData(_)) => check
                .problems
                .push(problem(format!("the query returned no series. Likely causes: {NO_DATA_CAUSES}"))),
            Err(PollError::Rejected(why)) => {
                check.problems.push(problem(format!("the source refused it: {why}")));
            }
            Err(PollError::WrongType(why)) => check.problems.push(problem(why)),
            Err(PollError::Unreadable(why)) => check.problems.push(problem(format!(
                "{why}. `signals.prometheus` must be the base URL of a Prometheus-compatible query \
                 API (not a UI or a login page in front of it), reachable with `signals.headers`"
            ))),
            Err(e) => {
                // Nothing is sent before the first good answer, whatever on_unavailable says.
                let then = match signals.on_unavailable {
                    OnUnavailable::Pause => "nothing is sent until it answers",
                    OnUnavailable::Abort => {
                        "nothing is sent until it answers; the run aborts if it stays silent"
                    }
                    OnUnavailable::Continue => {
                        "nothing is sent until it answers (`continue` applies only to an outage after \
                         the first answer)"
                    }
                };
                check.warnings.push(format!("the signal source did not answer `{name}` ({e}): {then}"));
            }
        }
    }
    check
}

/// Asks a Prometheus-compatible API (`/api/v1/query`) one instant query; returns every
/// series' value (an empty vector: no data).
pub(crate) async fn query(
    client: &HttpClient,
    signals: &Signals,
    promql: &str,
) -> Result<Vec<f64>, PollError> {
    let base = signals.prometheus.to_string();
    let endpoint = format!("{}/api/v1/query", base.trim_end_matches('/'));
    let url = format!("{endpoint}?query={}", encode(promql));
    let mut req = http::Request::get(url.as_str());
    for (k, v) in &signals.headers {
        req = req.header(k, v);
    }
    let req = req.body(Full::new(Bytes::new())).map_err(|e| PollError::Transport(e.to_string()))?;
    let res = tokio::time::timeout(signals.timeout, client.send_bounded(req, MAX_READ_BODY))
        .await
        .map_err(|_| PollError::Transport(format!("timeout after {:?}", signals.timeout)))?
        .map_err(|e| match e {
            Bounded::TooLarge(_) => PollError::Unreadable(format!("{endpoint}: {e}")),
            _ => PollError::Transport(e.to_string()),
        })?;
    let status = res.status();
    // What came back, for a message that lets the operator recognise it (a login page).
    let described = || {
        let content_type =
            res.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("none");
        let head: String = String::from_utf8_lossy(&res.body()[..res.body().len().min(80)]).into_owned();
        format!("{endpoint} answered HTTP {status}, content type {content_type}, starting {head:?}")
    };
    // A proxy's 5xx or 429 in front of the source: it is there but cannot answer now.
    let outage = status.is_server_error() || status == http::StatusCode::TOO_MANY_REQUESTS;
    let body: serde_json::Value = match serde_json::from_slice(res.body()) {
        Ok(body) => body,
        Err(_) if outage => return Err(PollError::Answer(described())),
        Err(_) => return Err(PollError::Unreadable(format!("{}: not the query API's JSON", described()))),
    };
    match body.get("status").and_then(|s| s.as_str()) {
        Some("success") => {}
        Some("error") => {
            let why = body.get("error").and_then(|e| e.as_str()).unwrap_or("no reason given");
            if body.get("errorType").and_then(|e| e.as_str()) == Some("bad_data") {
                return Err(PollError::Rejected(why.to_owned()));
            }
            return Err(PollError::Answer(format!("HTTP {status}: {why}")));
        }
        _ if outage => return Err(PollError::Answer(described())),
        _ => {
            return Err(PollError::Unreadable(format!(
                "{}: JSON without the query API's `status`",
                described()
            )));
        }
    }
    let data = &body["data"];
    let sample =
        |v: &serde_json::Value| v.get(1).and_then(|x| x.as_str()).and_then(|x| x.parse::<f64>().ok());
    match data.get("resultType").and_then(|t| t.as_str()) {
        Some("vector") => Ok(data["result"]
            .as_array()
            .map(|a| a.iter().filter_map(|s| sample(&s["value"])).collect())
            .unwrap_or_default()),
        Some("scalar") => Ok(sample(&data["result"]).into_iter().collect()),
        Some(other) => Err(PollError::WrongType(format!(
            "the query returns a {other}, which a condition cannot compare with its bound: use an \
             instant vector or a scalar (a range selector such as `x[5m]` needs a function around \
             it, e.g. `rate(x[5m])`)"
        ))),
        None => Err(PollError::Unreadable(format!("{}: no `data.resultType`", described()))),
    }
}

/// Percent-encodes a query string value.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The top-up controller: a first-order filter towards `target - real`, bounded by the share
/// of real traffic. A first-order filter follows a step without overshoot, so the synthetic
/// rate never swings past its new goal.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TopUpController {
    /// Current synthetic requests/s.
    pub rate: f64,
}

impl TopUpController {
    /// The goal for a real rate: `target - real`, at least 0, at most `max_share × real`.
    pub(crate) fn goal(target: f64, max_share: f64, real: f64) -> f64 {
        (target - real).clamp(0.0, (max_share * real).max(0.0))
    }

    /// Moves towards the goal over `dt` with time constant `tau`; returns the new rate.
    pub(crate) fn update(&mut self, goal: f64, dt: Duration, tau: Duration) -> f64 {
        let a = if tau.is_zero() { 1.0 } else { 1.0 - (-dt.as_secs_f64() / tau.as_secs_f64()).exp() };
        self.rate += (goal - self.rate) * a;
        self.rate
    }
}

struct State {
    backoff: f64,
    hold_until: Option<Instant>,
    next_recover: Option<Instant>,
    breach_since: Vec<Option<Instant>>,
    failures: u32,
    /// Arrivals held because the source does not answer (or has not answered yet).
    unavailable: bool,
    /// The source has answered at least once.
    answered: bool,
    /// The current outage was acted on and recorded.
    outage_reported: bool,
    shed_seen: u64,
    last_shed_at: Option<Instant>,
    top_up: Option<TopUpController>,
    top_up_at: Option<Instant>,
    /// The replay's cap in force (requests/s), once known.
    cap: Option<f64>,
    /// The cap last put on the record, and when.
    cap_recorded: Option<(f64, Instant)>,
    /// The cap is holding the replay back (as last recorded), and since when it has not been.
    cap_binding: bool,
    cap_free_since: Option<Instant>,
}

/// Recovery when the scenario has no `signals:` (after shed back-offs): the documented default.
const DEFAULT_RECOVER: crate::scenario::signals::Recover =
    crate::scenario::signals::Recover { step: 0.1, every: Duration::from_secs(10) };

/// Runs the controls until the run stops. `started` is when the engine started.
pub(crate) async fn run(
    scenario: Arc<Scenario>,
    control: Control,
    options: Options,
    record: SharedRecord,
    started: Instant,
) {
    let signals = scenario.signals.clone();
    let client = signals.as_ref().map(|s| HttpClient::new(s.timeout, s.timeout, 16, false, &scenario.tls));
    let conditions = signals.as_ref().map_or(0, |s| s.conditions.len());
    // Nothing is sent until the source has answered once, whatever `on_unavailable` says: a run
    // never starts blind (`abort` and `continue` are about an outage after that).
    let gate = signals.is_some();
    let mut st = State {
        backoff: 1.0,
        hold_until: None,
        next_recover: None,
        breach_since: vec![None; conditions],
        failures: 0,
        unavailable: gate,
        answered: false,
        outage_reported: false,
        shed_seen: 0,
        last_shed_at: None,
        top_up: signals.as_ref().and_then(|s| s.top_up.as_ref()).map(|_| TopUpController { rate: 0.0 }),
        top_up_at: None,
        cap: None,
        cap_recorded: None,
        cap_binding: false,
        cap_free_since: None,
    };
    // A capped replay sends nothing until the cap is known.
    if options.cap.is_some() {
        control.set_cap(0.0);
    }
    control.set_auto_paused(gate);
    control.heartbeat();
    let mut next_poll = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ctx = Ctx {
        scenario: &scenario,
        control: &control,
        record: &record,
        started,
        print: options.print,
        requests_per_journey: scenario.requests_per_journey(),
        cap: options.cap.as_ref(),
    };
    apply(&ctx, &st);
    loop {
        // The dead-man's switch fires at its deadline, not at the next tick, and a signal poll
        // (which may wait its whole timeout) cannot hold it back.
        tokio::select! {
            biased;
            () = control.stopped() => return,
            () = heartbeat_lapsed(&control, options.heartbeat) => {}
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        if let Some(hb) = options.heartbeat
            && control.since_heartbeat() > hb
        {
            let before = ctx.snap(&st);
            ctx.decide(
                "heartbeat",
                None,
                DecisionAction::Stop,
                before,
                Snap::STOPPED,
                format!("no heartbeat for {hb:?}: stopping as if Ctrl-C"),
            );
            control.stop();
            return;
        }

        // Shed answers: the service asks for less.
        if scenario.on_shed.back_off {
            let shed = control.shed_total();
            if shed > st.shed_seen {
                let new = shed - st.shed_seen;
                st.shed_seen = shed;
                st.last_shed_at = Some(now);
                if st.hold_until.is_none_or(|h| now >= h) {
                    let before = ctx.snap(&st);
                    st.backoff = (st.backoff * scenario.on_shed.factor).max(0.01);
                    st.hold_until = Some(now + scenario.on_shed.hold);
                    st.next_recover = None;
                    let after = ctx.snap(&st);
                    ctx.decide(
                        "shed",
                        Some(new as f64),
                        DecisionAction::BackOff,
                        before,
                        after,
                        format!("{new} answers shed by the target"),
                    );
                }
            }
        }

        if let Some(cap) = ctx.cap
            && let CapSource::Recording { scan, recorded_share } = &cap.source
        {
            let real = scan.recorded_rate_at(control.position()) / recorded_share;
            update_cap(&ctx, &mut st, real, now, "the recording's own rate");
        }
        if ctx.cap.is_some() {
            cap_binding(&ctx, &mut st, now);
        }

        if let (Some(signals), Some(client)) = (&signals, &client)
            && now >= next_poll
        {
            next_poll = now + signals.interval;
            tokio::select! {
                biased;
                () = control.stopped() => return,
                // Lapsed mid-poll: the top of the loop stops the run (the poll changed nothing
                // yet: it only writes its state once every answer is in).
                () = heartbeat_lapsed(&control, options.heartbeat) => continue,
                () = poll(&ctx, signals, client, &mut st, now) => {}
            }
            if control.is_stopped() {
                return;
            }
        }

        // Recovery: the source answers, nothing breaches, the hold is over, no recent shed.
        let healthy = st.failures == 0
            && !st.unavailable
            && st.breach_since.iter().all(Option::is_none)
            && st.last_shed_at.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(2));
        if st.backoff < 1.0 && healthy && st.hold_until.is_none_or(|h| now >= h) {
            let recover = signals.as_ref().map_or(DEFAULT_RECOVER, |s| s.recover);
            match st.next_recover {
                None => st.next_recover = Some(now + recover.every),
                Some(t) if now >= t => {
                    let before = ctx.snap(&st);
                    st.backoff = (st.backoff + recover.step).min(1.0);
                    st.next_recover = Some(now + recover.every);
                    let after = ctx.snap(&st);
                    ctx.decide(
                        "recover",
                        None,
                        DecisionAction::Recover,
                        before,
                        after,
                        "healthy: rate rises".into(),
                    );
                }
                Some(_) => {}
            }
        } else if !healthy {
            st.next_recover = None;
        }
        apply(&ctx, &st);
    }
}

/// Completes once no heartbeat came for `heartbeat` (never without one).
async fn heartbeat_lapsed(control: &Control, heartbeat: Option<Duration>) {
    let Some(hb) = heartbeat else { return std::future::pending().await };
    loop {
        let since = control.since_heartbeat();
        if since > hb {
            return;
        }
        // A heartbeat in the meantime moves the deadline: look again when this one is due.
        tokio::time::sleep(hb - since + Duration::from_millis(1)).await;
    }
}

struct Ctx<'a> {
    scenario: &'a Scenario,
    control: &'a Control,
    record: &'a SharedRecord,
    started: Instant,
    print: bool,
    /// Converts top-up's requests/s into journeys/s.
    requests_per_journey: f64,
    /// A replay's cap.
    cap: Option<&'a Cap>,
}

/// What the arrival rate depends on, to report it before and after a decision.
#[derive(Clone, Copy, Debug)]
struct Snap {
    factor: f64,
    paused: bool,
    /// Top-up's journeys/s, if top-up is on.
    top_up: Option<f64>,
    /// A replay's cap, requests/s.
    cap: Option<f64>,
}

impl Snap {
    /// A stopped run: rate 0.
    const STOPPED: Snap = Snap { factor: 0.0, paused: true, top_up: None, cap: None };
}

impl Ctx<'_> {
    fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn snap(&self, st: &State) -> Snap {
        let rpj = self.requests_per_journey;
        Snap {
            factor: st.backoff,
            paused: st.unavailable,
            top_up: st.top_up.as_ref().map(|t| t.rate / rpj),
            cap: st.cap,
        }
    }

    /// The arrival rate (journeys/s) now, for a snapshot.
    fn rate(&self, s: Snap) -> f64 {
        if s.paused {
            return 0.0;
        }
        let (written, _) = self.scenario.planned_rate_at(self.elapsed());
        let base = s.top_up.map_or(written, |t| t.min(written));
        let rate = base * s.factor * self.control.rate_factor();
        s.cap.map_or(rate, |cap| rate.min(cap))
    }

    fn decide(
        &self,
        source: &str,
        value: Option<f64>,
        action: DecisionAction,
        before: Snap,
        after: Snap,
        detail: String,
    ) {
        let d = Decision {
            t_s: self.elapsed().as_secs_f64(),
            source: source.to_owned(),
            value,
            action,
            old_rate: self.rate(before),
            new_rate: self.rate(after),
            detail,
        };
        if self.print {
            let value = d.value.map(|v| format!(" = {v:.4}")).unwrap_or_default();
            eprintln!(
                "[{:>5.1}s] {}: {}{value}: {}; rate {:.1} -> {:.1} journeys/s",
                d.t_s, d.action, d.source, d.detail, d.old_rate, d.new_rate
            );
        }
        self.record.lock().unwrap_or_else(PoisonError::into_inner).decisions.push(d);
    }

    fn point(&self, name: &str, value: Option<f64>) {
        let p = SignalPoint { t_s: self.elapsed().as_secs_f64(), name: name.to_owned(), value };
        self.record.lock().unwrap_or_else(PoisonError::into_inner).signals.push(p);
    }
}

/// The top-up part of the automatic factor: the wanted journeys/s over the written rate.
fn top_up_factor(ctx: &Ctx<'_>, st: &State) -> f64 {
    let Some(t) = &st.top_up else { return 1.0 };
    let (written, _) = ctx.scenario.planned_rate_at(ctx.elapsed());
    if written <= 0.0 {
        return 0.0;
    }
    (t.rate / ctx.requests_per_journey / written).clamp(0.0, 1.0)
}

/// Sets the replay's cap from real traffic's rate; records it when it is the first, or moved by
/// a tenth or more since the last one recorded (at most once a second, unless it fell by half).
fn update_cap(ctx: &Ctx<'_>, st: &mut State, real: f64, now: Instant, source: &str) {
    let Some(cap) = ctx.cap else { return };
    let real = if real.is_finite() { real.max(0.0) } else { 0.0 };
    let before = ctx.snap(st);
    let new = cap.share * real;
    st.cap = Some(new);
    ctx.control.set_cap(new);
    let record = match st.cap_recorded {
        None => true,
        Some((old, at)) => {
            let moved = (new - old).abs() >= 0.1 * old.max(1.0);
            let halved = new < old * 0.5;
            moved && (halved || now.duration_since(at) >= Duration::from_secs(1))
        }
    };
    if record {
        st.cap_recorded = Some((new, now));
        let after = ctx.snap(st);
        let detail = format!(
            "real traffic {real:.1} req/s ({source}) × share {}: replay at most {new:.1} req/s",
            cap.share
        );
        ctx.decide("cap", Some(real), DecisionAction::Cap, before, after, detail);
    }
}

/// Records when the cap begins to hold the replay back, and when it has not for 2 s.
fn cap_binding(ctx: &Ctx<'_>, st: &mut State, now: Instant) {
    let capped = ctx.control.is_capped();
    let snap = ctx.snap(st);
    let cap = st.cap.unwrap_or(0.0);
    if capped {
        st.cap_free_since = None;
        if !st.cap_binding {
            st.cap_binding = true;
            let detail = format!("the replay wants more than the cap: held at {cap:.1} req/s");
            ctx.decide("cap", None, DecisionAction::Cap, snap, snap, detail);
        }
    } else if st.cap_binding {
        let since = *st.cap_free_since.get_or_insert(now);
        if now.duration_since(since) >= Duration::from_secs(2) {
            st.cap_binding = false;
            st.cap_free_since = None;
            let detail = format!("the replay is below the cap of {cap:.1} req/s again");
            ctx.decide("cap", None, DecisionAction::Cap, snap, snap, detail);
        }
    }
}

fn apply(ctx: &Ctx<'_>, st: &State) {
    ctx.control.set_auto_factor(st.backoff * top_up_factor(ctx, st));
}

async fn poll(ctx: &Ctx<'_>, signals: &Signals, client: &HttpClient, st: &mut State, now: Instant) {
    let polled = poll_all(client, signals, ctx.cap.and_then(Cap::query)).await;
    let (names, answers): (Vec<String>, Vec<Result<Vec<f64>, PollError>>) = polled.into_iter().unzip();
    let answer_of = |name: &str| names.iter().position(|n| n == name).and_then(|i| answers[i].as_ref().ok());
    // A query the source cannot run, or whose result no condition can read, is a mistake in
    // the scenario, not an outage: say so and stop.
    if let Some((i, e)) = answers
        .iter()
        .enumerate()
        .find_map(|(i, a)| a.as_ref().err().filter(|e| e.is_mistake()).map(|e| (i, e)))
    {
        let name = names[i].as_str();
        let why = match e {
            PollError::Rejected(why) => format!("the source refused the query: {why}"),
            other => other.to_string(),
        };
        let before = ctx.snap(st);
        ctx.decide(name, None, DecisionAction::Abort, before, Snap::STOPPED, why.clone());
        let detail = match e {
            PollError::Rejected(why) => format!("was refused: {why}"),
            other => format!("cannot be read: {other}"),
        };
        ctx.control.abort_with(AbortReason::SignalQuery { name: name.to_owned(), detail });
        return;
    }
    // No data counts like no answer: a condition that reads nothing cannot see a breach.
    let failed = answers.iter().find_map(|a| a.as_ref().err().map(ToString::to_string));
    let before = ctx.snap(st);
    match failed {
        // An outage is acted on (and recorded) once, when it reaches `unavailable_after`.
        Some(why) => {
            st.failures += 1;
            if st.failures >= signals.unavailable_after && !st.outage_reported {
                st.outage_reported = true;
                let polls = format!(
                    "{} failed polls{}: {why}",
                    st.failures,
                    if st.answered { "" } else { " since the start" }
                );
                match signals.on_unavailable {
                    OnUnavailable::Pause => {
                        st.unavailable = true;
                        ctx.control.set_auto_paused(true);
                        let after = ctx.snap(st);
                        let detail = format!("{polls}; holding arrivals until it answers");
                        ctx.decide("signal source", None, DecisionAction::Pause, before, after, detail);
                    }
                    OnUnavailable::Abort => {
                        ctx.decide(
                            "signal source",
                            None,
                            DecisionAction::Abort,
                            before,
                            Snap::STOPPED,
                            polls,
                        );
                        ctx.control.abort_with(AbortReason::SignalsUnavailable { detail: why });
                        return;
                    }
                    // Before the first answer the start gate holds: nothing was ever read, so
                    // there is nothing to go on from.
                    OnUnavailable::Continue if !st.answered => {
                        let detail = format!(
                            "{polls}; holding arrivals until it answers once (on_unavailable: continue \
                             applies only after the first answer)"
                        );
                        ctx.decide("signal source", None, DecisionAction::Pause, before, before, detail);
                    }
                    OnUnavailable::Continue => {
                        let detail = format!("{polls}; going on blind as configured");
                        ctx.decide("signal source", None, DecisionAction::Continue, before, before, detail);
                    }
                }
            }
        }
        None => {
            st.failures = 0;
            if !st.answered {
                ctx.record.lock().unwrap_or_else(PoisonError::into_inner).answered = true;
            }
            st.answered = true;
            if st.unavailable {
                // The gate at the start lifts silently; a recorded pause gets its resume.
                st.unavailable = false;
                ctx.control.set_auto_paused(false);
                if st.outage_reported {
                    let after = ctx.snap(st);
                    ctx.decide(
                        "signal source",
                        None,
                        DecisionAction::Resume,
                        before,
                        after,
                        "answering again".into(),
                    );
                }
            }
            st.outage_reported = false;
        }
    }
    for (i, c) in signals.conditions.iter().enumerate() {
        let answer = match &answers[i] {
            Ok(values) => values,
            Err(_) => {
                // No answer is not a reading: keep the breach state (and its window) as it was.
                ctx.point(&c.name, None);
                continue;
            }
        };
        let value = c.bound.pick(answer);
        ctx.point(&c.name, value);
        let Some(value) = value else {
            st.breach_since[i] = None;
            continue;
        };
        if !c.bound.breached(value) {
            st.breach_since[i] = None;
            continue;
        }
        let since = *st.breach_since[i].get_or_insert(now);
        if now.duration_since(since) < c.window {
            continue;
        }
        let bound = match c.bound {
            crate::scenario::signals::Bound::Above(b) => format!("above {b}"),
            crate::scenario::signals::Bound::Below(b) => format!("below {b}"),
        };
        let detail = format!("{bound} for {:?}", c.window);
        match c.action {
            Action::Abort => {
                let before = ctx.snap(st);
                ctx.decide(
                    &c.name,
                    Some(value),
                    DecisionAction::Abort,
                    before,
                    Snap::STOPPED,
                    detail.clone(),
                );
                ctx.control.abort_with(AbortReason::Condition { name: c.name.clone(), value, detail });
                return;
            }
            Action::BackOff { .. } if st.hold_until.is_some_and(|h| now < h) => {
                // Holding after a back-off: the breach is expected to fade; do not compound.
            }
            Action::BackOff { factor, hold } => {
                let before = ctx.snap(st);
                st.backoff = (st.backoff * factor).max(0.01);
                st.hold_until = Some(now + hold);
                st.next_recover = None;
                // A breach that goes on backs off again after another window.
                st.breach_since[i] = Some(now);
                let after = ctx.snap(st);
                ctx.decide(&c.name, Some(value), DecisionAction::BackOff, before, after, detail);
            }
        }
    }
    if ctx.cap.and_then(Cap::query).is_some() {
        let real =
            answer_of(CAP_QUERY).and_then(|v| v.iter().copied().filter(|x| !x.is_nan()).reduce(f64::max));
        ctx.point("real rate", real);
        // No answer: the cap stays as it was until the source counts as unavailable (then the
        // replay is held, as any run with signals).
        if let Some(real) = real {
            update_cap(ctx, st, real, now, "the signal source");
        }
    }
    if let Some(t) = &signals.top_up
        && st.top_up.is_some()
    {
        let real =
            answer_of(TOP_UP_QUERY).and_then(|v| v.iter().copied().filter(|x| !x.is_nan()).reduce(f64::max));
        ctx.point("real rate", real);
        if let Some(real) = real {
            let dt = st.top_up_at.map_or(signals.interval, |at| now.duration_since(at));
            st.top_up_at = Some(now);
            let goal = TopUpController::goal(t.target, t.max_share, real);
            let before = ctx.snap(st);
            let Some(ctrl) = st.top_up.as_mut() else { return };
            let old = ctrl.rate;
            let new = ctrl.update(goal, dt, t.smoothing);
            if (new - old).abs() >= 0.05 * old.max(1.0) {
                let after = ctx.snap(st);
                let detail = format!(
                    "real {real:.1} req/s, target {}: synthetic {old:.1} -> {new:.1} req/s",
                    t.target
                );
                ctx.decide("top-up", Some(real), DecisionAction::TopUp, before, after, detail);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The report's `action` is exactly the enum: each name serialises as the summary prints
    /// it, and the committed schema lists every one and nothing else.
    #[test]
    fn decision_actions_match_their_names_and_the_schema() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../docs/report.schema.json")).expect("the schema is JSON");
        let listed = schema
            .pointer("/properties/decisions/items/properties/action/enum")
            .and_then(serde_json::Value::as_array)
            .expect("the schema lists the actions");
        let names: Vec<serde_json::Value> = DecisionAction::ALL
            .iter()
            .map(|a| {
                let json = serde_json::to_value(a).expect("an enum serialises");
                assert_eq!(json, a.as_str());
                assert_eq!(a.to_string(), a.as_str());
                json
            })
            .collect();
        assert_eq!(&names, listed);
    }

    #[test]
    fn encode_keeps_unreserved_and_escapes_the_rest() {
        assert_eq!(encode(r#"rate(x{a="b"}[1m])"#), "rate%28x%7Ba%3D%22b%22%7D%5B1m%5D%29");
    }

    #[test]
    fn top_up_follows_a_step_without_overshoot() {
        let mut c = TopUpController { rate: 0.0 };
        let tau = Duration::from_secs(10);
        let dt = Duration::from_secs(1);
        // Real traffic 100 req/s, target 400, share 3: goal 300.
        let goal = TopUpController::goal(400.0, 3.0, 100.0);
        assert_eq!(goal, 300.0);
        let mut prev = 0.0;
        for _ in 0..60 {
            let r = c.update(goal, dt, tau);
            assert!(r >= prev && r <= goal, "rises monotonically to the goal, never past it: {r}");
            prev = r;
        }
        assert!((prev - 300.0).abs() < 1.0);
        // Real traffic steps up to 300: goal 100; the rate falls to it without going under.
        let goal = TopUpController::goal(400.0, 3.0, 300.0);
        for _ in 0..60 {
            let r = c.update(goal, dt, tau);
            assert!(r <= prev && r >= goal, "falls monotonically to the goal, never past it: {r}");
            prev = r;
        }
        // The share bound: real 50, share 1 → at most 50 even if the target wants 350.
        assert_eq!(TopUpController::goal(400.0, 1.0, 50.0), 50.0);
        assert_eq!(TopUpController::goal(400.0, 1.0, 500.0), 0.0);
    }
}
