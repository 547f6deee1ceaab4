//! The engine: open-model scheduling of journeys, their steps, and the run's life cycle.
//!
//! Journeys arrive at each phase's rate (ramping linearly), independent of how fast the target
//! answers: that is how production load behaves. A journey's first request is timed from its
//! intended arrival, so a scheduler or target that falls behind shows up in the latencies
//! instead of hiding (coordinated omission). Later steps are timed from their own send.

mod client;
pub(crate) mod grpc;
mod h1;
mod journey;
pub(crate) mod replay;
pub(crate) mod user;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

pub(crate) use client::{Bounded, HttpClient, MAX_READ_BODY};
use tokio::{sync::Notify, task::JoinSet, time::Instant};

use crate::{
    rng::Rng,
    scenario::{DEFAULT_MAX_RATE_FACTOR, Phase, Scenario},
    schedule::{arrivals_between, clamp_rate, rate_at, seconds_until},
    stats::{RunStats, StepStats},
};

/// Controls a running run: stop it, pause and resume arrivals, change the arrival rate.
/// Cheap to clone; every clone controls the same run.
#[derive(Clone)]
pub struct Control(Arc<ControlInner>);

/// Never prints the marker it holds: it is a live signed token while the run goes on.
impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("stopped", &self.is_stopped())
            .field("paused", &self.is_paused())
            .field("rate_factor", &self.rate_factor())
            .field("max_rate_factor", &self.max_rate_factor())
            .finish_non_exhaustive()
    }
}

struct ControlInner {
    /// The running run's shared state, once it started (for live views).
    live: std::sync::OnceLock<Arc<Shared>>,
    /// Shared with the run's journeys, which check it before each request they send.
    stopped: Arc<AtomicBool>,
    paused: AtomicBool,
    /// Multiplier on every phase's rate, as f64 bits (the operator's).
    factor: AtomicU64,
    /// A second multiplier, the automatic controls' (back-off, top-up), as f64 bits.
    auto_factor: AtomicU64,
    /// The highest factor accepted, and the bound on the product of both, as f64 bits: the
    /// scenario's `max_rate_factor` once a run starts.
    max_factor: AtomicU64,
    /// Paused by the automatic controls (a signal source that stopped answering); the
    /// operator's `resume` does not lift it.
    auto_paused: AtomicBool,
    /// A run took this control: it holds that run's marker, so it can drive no other.
    claimed: AtomicBool,
    /// Why the run was aborted, if it was.
    abort_reason: std::sync::Mutex<Option<AbortReason>>,
    /// The marker requests carry; replaced when the token is refreshed.
    marker: Arc<std::sync::RwLock<http::HeaderValue>>,
    /// When someone last said "keep going" (the dead-man's switch).
    heartbeat: std::sync::Mutex<std::time::Instant>,
    /// A replay's cap: the most replayed requests per second, as f64 bits (infinite: none).
    cap: AtomicU64,
    /// When the request a replay is at was recorded, unix seconds (f64 bits): the recorded-rate cap
    /// reads it.
    position: AtomicU64,
    /// A replay is being held back by its cap.
    capped: AtomicBool,
    notify: Notify,
}

impl Default for Control {
    fn default() -> Self {
        Control(Arc::new(ControlInner {
            live: std::sync::OnceLock::new(),
            stopped: Arc::new(AtomicBool::new(false)),
            paused: AtomicBool::new(false),
            factor: AtomicU64::new(1.0f64.to_bits()),
            auto_factor: AtomicU64::new(1.0f64.to_bits()),
            max_factor: AtomicU64::new(DEFAULT_MAX_RATE_FACTOR.to_bits()),
            auto_paused: AtomicBool::new(false),
            claimed: AtomicBool::new(false),
            abort_reason: std::sync::Mutex::new(None),
            marker: Arc::new(std::sync::RwLock::new(http::HeaderValue::from_static("unset"))),
            heartbeat: std::sync::Mutex::new(std::time::Instant::now()),
            cap: AtomicU64::new(f64::INFINITY.to_bits()),
            position: AtomicU64::new(0.0f64.to_bits()),
            capped: AtomicBool::new(false),
            notify: Notify::new(),
        }))
    }
}

impl Control {
    /// A control for a run that is neither stopped nor paused, at the scenario's rates. Its
    /// factor bound is [`DEFAULT_MAX_RATE_FACTOR`] until a run starts with it; use
    /// [`for_scenario`](Self::for_scenario) if the control API opens before that.
    pub fn new() -> Self {
        Self::default()
    }

    /// A control bounded by `scenario`'s `max_rate_factor` from the start: a `/rate` call that
    /// comes before the run starts is checked against the right bound.
    ///
    /// A scenario with `signals:` starts held ([`is_auto_paused`](Self::is_auto_paused)): nothing
    /// is sent until the run's automatic controls have read its source once, even if the
    /// engine gets to its first arrival before the controls get to run.
    pub fn for_scenario(scenario: &Scenario) -> Self {
        let control = Self::default();
        control.set_max_rate_factor(scenario.max_rate_factor);
        control.set_auto_paused(scenario.signals.is_some());
        control
    }

    /// Takes this control for one run; `false` if a run already took it. A control holds its
    /// run's marker: two runs sharing one would send each other's run id.
    pub(crate) fn claim(&self) -> bool {
        !self.0.claimed.swap(true, Ordering::SeqCst)
    }

    /// Stops the run: no new request starts; in-flight ones are cancelled and counted.
    pub fn stop(&self) {
        self.0.stopped.store(true, Ordering::SeqCst);
        self.0.notify.notify_waiters();
    }

    /// Ends the run's sending for good (its end, however it came): what a stop does, without
    /// being a stop of the run's ending.
    pub(crate) fn end(&self) {
        self.0.stopped.store(true, Ordering::SeqCst);
        self.0.notify.notify_waiters();
    }

    /// Whether the run was stopped (or has ended).
    pub fn is_stopped(&self) -> bool {
        self.0.stopped.load(Ordering::SeqCst)
    }

    /// Completes when the run is stopped.
    pub async fn stopped(&self) {
        loop {
            let notified = self.0.notify.notified();
            if self.is_stopped() {
                return;
            }
            notified.await;
        }
    }

    /// Completes at the next change (stop, pause, resume, rate) after this call. Create it
    /// before reading the state it guards: a change in between is then not missed.
    fn next_change(&self) -> tokio::sync::futures::Notified<'_> {
        self.0.notify.notified()
    }

    /// No new journeys until [`resume`](Self::resume); journeys in flight go on. Phases keep
    /// their wall-clock schedule: the arrivals of a paused stretch are skipped, not deferred.
    pub fn pause(&self) {
        self.0.paused.store(true, Ordering::SeqCst);
        self.0.notify.notify_waiters();
    }

    /// Arrivals again.
    pub fn resume(&self) {
        self.0.paused.store(false, Ordering::SeqCst);
        self.0.notify.notify_waiters();
    }

    /// Whether arrivals are paused.
    pub fn is_paused(&self) -> bool {
        self.0.paused.load(Ordering::SeqCst)
    }

    /// Multiplies every phase's arrival rate by `factor` (1 = as written; 0.5 = half; 0 = no
    /// arrivals).
    ///
    /// # Errors
    ///
    /// `factor` is not a number from 0 to [`max_rate_factor`](Self::max_rate_factor) (NaN,
    /// infinite, negative or too large): the factor stays as it was.
    pub fn set_rate_factor(&self, factor: f64) -> Result<(), RateFactorError> {
        let max = self.max_rate_factor();
        if !(0.0..=max).contains(&factor) {
            return Err(RateFactorError::OutOfRange { given: factor, max });
        }
        // `-0.0` is in range; store it as 0 so reports never show a negative zero.
        self.0.factor.store((factor + 0.0).to_bits(), Ordering::SeqCst);
        self.0.notify.notify_waiters();
        Ok(())
    }

    /// The highest factor [`set_rate_factor`](Self::set_rate_factor) accepts: the running
    /// scenario's `max_rate_factor` ([`DEFAULT_MAX_RATE_FACTOR`] before a run starts).
    pub fn max_rate_factor(&self) -> f64 {
        f64::from_bits(self.0.max_factor.load(Ordering::SeqCst))
    }

    /// Bounds the factors by `max` (a scenario's validated `max_rate_factor`); a factor above
    /// it comes down to it.
    pub(crate) fn set_max_rate_factor(&self, max: f64) {
        let max = if max.is_finite() && max >= 0.0 { max } else { DEFAULT_MAX_RATE_FACTOR };
        self.0.max_factor.store(max.to_bits(), Ordering::SeqCst);
        if self.rate_factor() > max {
            self.0.factor.store(max.to_bits(), Ordering::SeqCst);
        }
        self.0.notify.notify_waiters();
    }

    /// The factor the arrival loop applies: the operator's times the automatic controls',
    /// never above [`max_rate_factor`](Self::max_rate_factor), 0 while arrivals are held.
    fn effective_factor(&self) -> f64 {
        if self.holding() {
            return 0.0;
        }
        let f = self.rate_factor() * self.auto_factor();
        // NaN cannot get in through the setters; the comparison keeps it out regardless.
        if f > 0.0 { f.min(self.max_rate_factor()) } else { 0.0 }
    }

    /// The current rate factor.
    pub fn rate_factor(&self) -> f64 {
        f64::from_bits(self.0.factor.load(Ordering::SeqCst))
    }

    /// Sets the automatic controls' multiplier (back-off, top-up); it multiplies the
    /// operator's [`rate_factor`](Self::rate_factor), and the product never exceeds
    /// [`max_rate_factor`](Self::max_rate_factor). Negative or non-finite values count as 0
    /// (the automatic controls only ever lower the rate).
    pub(crate) fn set_auto_factor(&self, factor: f64) {
        let f = if factor.is_finite() && factor > 0.0 { factor.min(self.max_rate_factor()) } else { 0.0 };
        self.0.auto_factor.store(f.to_bits(), Ordering::SeqCst);
        self.0.notify.notify_waiters();
    }

    /// The automatic controls' multiplier.
    pub fn auto_factor(&self) -> f64 {
        f64::from_bits(self.0.auto_factor.load(Ordering::SeqCst))
    }

    /// Holds arrivals for the automatic controls (`true`) or lets them go on (`false`),
    /// independently of the operator's pause.
    pub(crate) fn set_auto_paused(&self, paused: bool) {
        self.0.auto_paused.store(paused, Ordering::SeqCst);
        self.0.notify.notify_waiters();
    }

    /// Whether the automatic controls hold arrivals.
    pub fn is_auto_paused(&self) -> bool {
        self.0.auto_paused.load(Ordering::SeqCst)
    }

    /// Stops the run and records why, in words: the run ends as aborted
    /// ([`AbortReason::Requested`], exit code 3).
    pub fn abort(&self, reason: impl Into<String>) {
        self.abort_with(AbortReason::Requested(reason.into()));
    }

    /// Stops the run and records why: the run ends as aborted (exit code 3). The first reason
    /// given is kept.
    pub fn abort_with(&self, reason: AbortReason) {
        let mut r = self.0.abort_reason.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if r.is_none() {
            *r = Some(reason);
        }
        drop(r);
        self.stop();
    }

    /// Why the run was aborted, if it was.
    pub fn abort_reason(&self) -> Option<AbortReason> {
        self.0.abort_reason.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Replaces the marker every request carries from now on (a refreshed token).
    ///
    /// # Errors
    ///
    /// The token is not a valid header value (a signer never makes such a token).
    pub(crate) fn set_token(&self, token: &str) -> Result<(), http::header::InvalidHeaderValue> {
        let value = http::HeaderValue::from_str(token)?;
        *self.0.marker.write().unwrap_or_else(std::sync::PoisonError::into_inner) = value;
        Ok(())
    }

    /// Records a heartbeat: someone wants the run to go on (see `--heartbeat`).
    pub fn heartbeat(&self) {
        *self.0.heartbeat.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            std::time::Instant::now();
    }

    /// Time since the last heartbeat (or since the control was made).
    pub fn since_heartbeat(&self) -> Duration {
        self.0.heartbeat.lock().unwrap_or_else(std::sync::PoisonError::into_inner).elapsed()
    }

    /// Sets a replay's cap, in replayed requests per second (negative or NaN counts as 0;
    /// infinite lifts it).
    pub(crate) fn set_cap(&self, rate: f64) {
        let rate = if rate > 0.0 { rate } else { 0.0 };
        self.0.cap.store(rate.to_bits(), Ordering::SeqCst);
        self.0.notify.notify_waiters();
    }

    /// A replay's cap, in replayed requests per second (infinite: none).
    pub(crate) fn cap(&self) -> f64 {
        f64::from_bits(self.0.cap.load(Ordering::SeqCst))
    }

    /// When the request a replay is at was recorded, unix seconds.
    pub(crate) fn position(&self) -> f64 {
        f64::from_bits(self.0.position.load(Ordering::Relaxed))
    }

    pub(crate) fn set_position(&self, seconds: f64) {
        self.0.position.store(seconds.to_bits(), Ordering::Relaxed);
    }

    /// Whether a replay is being held back by its cap.
    pub(crate) fn is_capped(&self) -> bool {
        self.0.capped.load(Ordering::Relaxed)
    }

    pub(crate) fn set_capped(&self, capped: bool) {
        self.0.capped.store(capped, Ordering::Relaxed);
    }

    /// Whether new arrivals are held, by the operator or by the automatic controls.
    fn holding(&self) -> bool {
        self.is_paused() || self.is_auto_paused()
    }

    /// Answers shed by the target so far (0 before the run starts).
    pub fn shed_total(&self) -> u64 {
        self.0.live.get().map_or(0, |s| s.stats.shed_total())
    }

    /// What the run has done so far, once it has started.
    pub fn live(&self) -> Option<Live> {
        let shared = self.0.live.get()?;
        Some(Live {
            steps: shared.stats.snapshot(),
            step_names: shared.stats.names(),
            active: shared.active.load(Ordering::Relaxed),
            completed: shared.completed.load(Ordering::Relaxed),
            failed: shared.failed.load(Ordering::Relaxed),
            run_id: shared.run_id.clone(),
        })
    }
}

/// Why [`Control::set_rate_factor`] refused a factor.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RateFactorError {
    /// NaN, infinite, negative or above the run's `max_rate_factor`.
    #[error(
        "{given:?} is not a rate factor: give a number from 0 to {max} (1 = as written, 0 = no arrivals; the scenario's max_rate_factor sets the upper end)"
    )]
    OutOfRange {
        /// What was asked for.
        given: f64,
        /// The largest factor accepted.
        max: f64,
    },
}

/// A live view of a run.
#[derive(Debug)]
pub struct Live {
    /// Step names, in statistics order.
    pub step_names: Vec<Arc<str>>,
    /// Statistics per step so far.
    pub steps: Vec<StepStats>,
    /// Journeys in flight.
    pub active: usize,
    /// Journeys completed.
    pub completed: u64,
    /// Journeys failed.
    pub failed: u64,
    /// The run id.
    pub run_id: String,
}

/// Counts of journeys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JourneyCounts {
    /// Started.
    pub started: u64,
    /// Ran every step.
    pub completed: u64,
    /// Ended on an error.
    pub failed: u64,
    /// Arrivals not started: a phase's `max_concurrent` was reached, or the scheduler fell
    /// more than 100,000 arrivals (or a second's worth) behind.
    pub dropped: u64,
    /// Cancelled by a stop.
    pub cancelled: u64,
}

/// Shared state of a running run.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) scenario: Arc<Scenario>,
    pub(crate) client: HttpClient,
    /// gRPC channels, one per origin.
    pub(crate) grpc: grpc::Channels,
    pub(crate) stats: RunStats,
    pub(crate) marker: Arc<std::sync::RwLock<http::HeaderValue>>,
    /// The target without its trailing `/`, to put paths after.
    pub(crate) base: String,
    pub(crate) run_id: String,
    pub(crate) feeder_cursors: Vec<AtomicUsize>,
    pub(crate) completed: AtomicU64,
    pub(crate) failed: AtomicU64,
    /// Journeys started by closed-model users (the scheduler counts open-model ones itself).
    pub(crate) started: AtomicU64,
    pub(crate) active: AtomicUsize,
    /// The run was stopped, or has ended: no request may start any more.
    pub(crate) stopped: Arc<AtomicBool>,
    /// The run's phases are over (or a preflight journey spent its budget): journeys finish
    /// what they are doing, and a journey that loops until the end (`User::is_stopped`) ends.
    pub(crate) draining: AtomicBool,
    /// Preflight only: requests the journey being checked may still send.
    pub(crate) budget: Option<AtomicU64>,
    /// Per journey, in [`Scenario::journeys`] order.
    pub(crate) journeys: Vec<JourneyTally>,
    /// Held (shared) while a request's outcome is recorded and it leaves `in_flight`; held
    /// (exclusive) for the final snapshot, so the two agree.
    pub(crate) settle: std::sync::RwLock<()>,
    /// Preflight only: every answer's synth headers, in order.
    pub(crate) observe: Option<std::sync::Mutex<Vec<Observation>>>,
}

/// One journey's counts while the run goes on.
#[derive(Debug, Default)]
pub(crate) struct JourneyTally {
    pub(crate) started: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    /// Failures by message (a YAML journey's: its failing step and class; a Rust journey's: its
    /// error), at most [`MAX_FAILURE_MESSAGES`] of them, the rest under [`OTHER_FAILURES`].
    failures: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

/// The most distinct failure messages kept per journey: a message with an id in it must not
/// grow a report without bound.
pub(crate) const MAX_FAILURE_MESSAGES: usize = 50;

/// Where failures go once a journey has [`MAX_FAILURE_MESSAGES`] messages.
pub(crate) const OTHER_FAILURES: &str = "(other messages)";

/// The longest failure message kept, in characters; longer ones are cut.
const MAX_MESSAGE_CHARS: usize = 200;

impl JourneyTally {
    /// One run of the journey ended: `None` if it did what it should, or why not.
    pub(crate) fn finish(&self, failure: Option<String>) {
        let Some(message) = failure else {
            self.completed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut message = message;
        if message.chars().count() > MAX_MESSAGE_CHARS {
            message = message.chars().take(MAX_MESSAGE_CHARS - 1).chain(['…']).collect();
        }
        let mut f = self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !f.contains_key(&message) && f.len() >= MAX_FAILURE_MESSAGES {
            message = OTHER_FAILURES.to_owned();
        }
        *f.entry(message).or_default() += 1;
    }

    fn report(&self, name: &Arc<str>) -> JourneyStats {
        let started = self.started.load(Ordering::Relaxed);
        let completed = self.completed.load(Ordering::Relaxed);
        let failed = self.failed.load(Ordering::Relaxed);
        JourneyStats {
            name: name.clone(),
            started,
            completed,
            failed,
            cancelled: started.saturating_sub(completed + failed),
            failures: self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone(),
        }
    }
}

/// What one journey of the scenario came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JourneyStats {
    /// Its name.
    pub name: Arc<str>,
    /// Runs started.
    pub started: u64,
    /// Runs that did everything.
    pub completed: u64,
    /// Runs that ended on an error.
    pub failed: u64,
    /// Runs a stop cut short.
    pub cancelled: u64,
    /// Failures by message: a YAML journey's failing step and error class
    /// (`POST /orders: status`), a Rust journey's error message.
    pub failures: std::collections::BTreeMap<String, u64>,
}

impl Shared {
    /// Whether a request may be sent now: not after a stop or the run's end, and in a
    /// preflight not past the journey's budget (which tells the journey to finish).
    pub(crate) fn may_send(&self) -> bool {
        if self.stopped.load(Ordering::SeqCst) {
            return false;
        }
        let Some(budget) = &self.budget else { return true };
        let took = budget.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        if !took {
            self.draining.store(true, Ordering::SeqCst);
        }
        took
    }

    /// Whether journeys should finish: the run was stopped or its phases are over.
    pub(crate) fn ending(&self) -> bool {
        self.stopped.load(Ordering::SeqCst) || self.draining.load(Ordering::SeqCst)
    }
}

/// The most requests a journey written in Rust may send in a preflight (a YAML journey may send
/// its steps, loops unrolled): one that loops until the run ends is told to finish
/// (`User::is_stopped`) and sends nothing more past it.
pub const PREFLIGHT_MAX_SENDS: u64 = 40;

/// How long a preflight waits for one journey; one still going then fails the preflight.
pub const PREFLIGHT_JOURNEY_LIMIT: Duration = Duration::from_secs(30);

/// How long a run waits, once its phases are over, for the journeys still going; those still
/// going then are cancelled (and counted so).
pub const DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// What one request of a preflight saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// The step's name.
    pub step: Arc<str>,
    /// The status, if answered.
    pub status: Option<u16>,
    /// The failure, if any.
    pub error: Option<crate::stats::ErrorClass>,
    /// Whether the answer echoed the run id in `synthetic-traffic-seen`.
    pub seen: bool,
    /// `synthetic-traffic-path`, if present.
    pub path: Option<String>,
    /// `synthetic-traffic-guards`, if present.
    pub guards: Option<String>,
    /// What the step expects: services on the path.
    pub expect_path: Vec<String>,
    /// What the step expects: guards.
    pub expect_guards: Vec<String>,
}

/// What to run with.
#[derive(Clone)]
pub(crate) struct RunOptions {
    /// The marker every request carries (`synthetic-traffic`).
    pub token: String,
    /// The run id the marker carries (responses echoing it count as tagged).
    pub run_id: String,
    /// Seed for journey choice and templates (random if `None`).
    pub seed: Option<u64>,
}

/// Never prints the token: it is a live signed marker.
impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("run_id", &self.run_id)
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

/// Why a run ended.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Ending {
    /// Every phase ran.
    Completed,
    /// Stopped by the operator (Ctrl-C, control API, a stop handle) or by the dead-man's switch
    /// (the decisions say which).
    Stopped,
    /// Aborted: a threshold or a safety condition failed.
    Aborted(AbortReason),
}

/// Why a run was aborted.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum AbortReason {
    /// A threshold with `abort_on_fail` failed while the run went on.
    #[error("threshold `{threshold}` failed")]
    Threshold {
        /// The threshold, as written.
        threshold: String,
    },
    /// A signal condition with `action: abort` held for its window.
    #[error("condition `{name}`: {value} {detail}")]
    Condition {
        /// The condition's name.
        name: String,
        /// The value that breached it.
        value: f64,
        /// Its bound and window.
        detail: String,
    },
    /// The signal source stopped answering, and the scenario says to abort then.
    #[error("signal source unavailable: {detail}")]
    SignalsUnavailable {
        /// The last failure.
        detail: String,
    },
    /// A signal query the source refuses, or whose answer no condition can read: a mistake in
    /// the scenario.
    #[error("signal query `{name}` {detail}")]
    SignalQuery {
        /// The condition (or `top_up.real_rate`).
        name: String,
        /// What was wrong.
        detail: String,
    },
    /// [`Control::abort`] was called with this reason.
    #[error("{0}")]
    Requested(String),
    /// A replay could not read on in its recording (a file that changed or went away since the
    /// replay started).
    #[error("replay input: {0}")]
    Replay(String),
}

impl AbortReason {
    /// A stable label for reports: `threshold`, `condition`, `signals_unavailable`,
    /// `signal_query`, `requested` or `replay_input`.
    pub const fn kind(&self) -> &'static str {
        match self {
            AbortReason::Threshold { .. } => "threshold",
            AbortReason::Condition { .. } => "condition",
            AbortReason::SignalsUnavailable { .. } => "signals_unavailable",
            AbortReason::SignalQuery { .. } => "signal_query",
            AbortReason::Requested(_) => "requested",
            AbortReason::Replay(_) => "replay_input",
        }
    }
}

/// The outcome of a run.
#[derive(Debug)]
pub struct Finished {
    /// The request names (the scenario's steps, then those Rust journeys used), in `steps` order.
    pub step_names: Vec<Arc<str>>,
    /// Statistics per request name.
    pub steps: Vec<StepStats>,
    /// Per journey, in the scenario's order.
    pub by_journey: Vec<JourneyStats>,
    /// Journey counts.
    pub journeys: JourneyCounts,
    /// How long it ran.
    pub elapsed: Duration,
    /// Why it ended.
    pub ending: Ending,
}

impl Finished {
    /// Every request name's statistics merged into one: the run's total requests, errors by
    /// class, statuses and latency (what the summary's and the JSON report's `total` show).
    ///
    /// ```
    /// use loadgen::{Ending, ErrorClass, Finished, JourneyCounts, StepStats};
    ///
    /// let mut a = StepStats::default();
    /// a.responses = 3;
    /// a.errors.insert(ErrorClass::Timeout, 1);
    /// let mut b = StepStats::default();
    /// b.responses = 2;
    /// b.errors.insert(ErrorClass::Timeout, 2);
    /// let f = Finished {
    ///     step_names: vec!["home".into(), "order".into()],
    ///     steps: vec![a, b],
    ///     by_journey: Vec::new(),
    ///     journeys: JourneyCounts::default(),
    ///     elapsed: std::time::Duration::from_secs(1),
    ///     ending: Ending::Completed,
    /// };
    /// let total = f.total();
    /// assert_eq!(total.responses, 5);
    /// assert_eq!(total.errors[&ErrorClass::Timeout], 3);
    /// assert_eq!(total.requests(), 8);
    /// ```
    pub fn total(&self) -> StepStats {
        crate::stats::merge(&self.steps)
    }
}

/// Most arrivals the scheduler starts in one pass; with more due it yields and goes on, so a
/// stop, pause or rate change is seen between passes however much is owed.
pub(crate) const MAX_ARRIVALS_PER_PASS: u64 = 256;

/// Most arrivals the scheduler owes at once; beyond it (and beyond a second's worth at the
/// current rate) arrivals are dropped and counted instead of sent later in one burst.
pub(crate) const MAX_BACKLOG: u64 = 100_000;

/// What drives a run's arrivals.
pub(crate) enum Workload {
    /// The scenario's phases.
    Phases,
    /// A recording, replayed.
    Replay(replay::Feed),
}

/// A run's arrival loop and what it shares with the run around it: the journeys it started,
/// their counts, the once-a-second interval report.
struct Driver<F> {
    shared: Arc<Shared>,
    stop: Control,
    rng: Rng,
    journeys: JoinSet<()>,
    counts: JourneyCounts,
    started: Instant,
    next_report: Instant,
    last_report: Instant,
    on_interval: F,
}

impl<F: FnMut(&Interval<'_>) -> Option<AbortReason> + Send> Driver<F> {
    /// The interval report, once its second is over: `Some(reason)` aborts the run.
    fn report(&mut self, now: Instant) -> Option<AbortReason> {
        if now < self.next_report {
            return None;
        }
        let interval = interval(&self.shared, now - self.last_report, now - self.started);
        self.last_report = now;
        self.next_report = now + Duration::from_secs(1);
        (self.on_interval)(&interval)
    }
}

/// Runs `scenario` until its phases (or the replayed recording) end or `stop` fires.
/// `on_interval` is called about once a second from the run's own task (for live reporting and
/// `abort_on_fail` thresholds); returning `Some(reason)` aborts the run.
pub(crate) async fn run(
    scenario: Arc<Scenario>,
    options: RunOptions,
    stop: Control,
    workload: Workload,
    on_interval: impl FnMut(&Interval<'_>) -> Option<AbortReason> + Send,
) -> Finished {
    let started = Instant::now();
    stop.set_max_rate_factor(scenario.max_rate_factor);
    if stop.set_token(&options.token).is_err() {
        let _ = stop.set_token("invalid");
    }
    let marker = stop.0.marker.clone();
    let shared = new_shared(&scenario, &options, marker, stop.0.stopped.clone(), false);
    let _ = stop.0.live.set(shared.clone());
    let mut d = Driver {
        shared: shared.clone(),
        stop: stop.clone(),
        rng: options.seed.map_or_else(Rng::from_entropy, Rng::new),
        journeys: JoinSet::new(),
        counts: JourneyCounts::default(),
        started,
        next_report: started + Duration::from_secs(1),
        last_report: started,
        on_interval,
    };
    let mut ending = match workload {
        Workload::Phases => phases(&scenario, &mut d).await,
        Workload::Replay(feed) => replay::drive(&mut d, feed).await,
    };
    let Driver { mut journeys, mut counts, mut next_report, mut last_report, mut on_interval, .. } = d;

    // Let the journeys in flight finish, unless the run was stopped or aborted, for at most
    // the drain limit: a journey that loops until the end is told it has come.
    shared.draining.store(true, Ordering::SeqCst);
    if ending == Ending::Completed {
        let now = tokio::time::Instant::now();
        let drained = now
            .checked_add(DRAIN_LIMIT.max(scenario.timeouts.request))
            .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 86_400));
        loop {
            tokio::select! {
                biased;
                () = stop.stopped() => { ending = stopped_ending(&stop); break; }
                joined = journeys.join_next() => if joined.is_none() { break },
                () = tokio::time::sleep_until(drained) => break,
                () = tokio::time::sleep_until(next_report) => {
                    let now = Instant::now();
                    let interval = interval(&shared, now - last_report, now - started);
                    last_report = now;
                    next_report = now + Duration::from_secs(1);
                    if let Some(reason) = on_interval(&interval) {
                        ending = Ending::Aborted(reason);
                        break;
                    }
                }
            }
        }
    }
    if !journeys.is_empty() {
        // Dropping a journey's future records its request in flight as cancelled. Each one
        // costs a poll and maybe a socket to close: with thousands in flight on a busy machine
        // that takes longer than a stop may (2000 took up to 230 ms on two loaded cores). So the
        // run does not wait for them: aborted journeys send nothing more, and the requests of
        // those not dropped yet are counted from `in_flight` below.
        journeys.abort_all();
        while journeys.try_join_next().is_some() {}
    }
    counts.started += shared.started.load(Ordering::Relaxed);
    counts.completed = shared.completed.load(Ordering::Relaxed);
    counts.failed = shared.failed.load(Ordering::Relaxed);
    // Every journey that started and neither completed nor failed was cut short by the stop
    // (aborted, or told to end before its next request): one count, as `by_journey` has it, that
    // does not depend on whether an ended task was joined yet.
    counts.cancelled = counts.started.saturating_sub(counts.completed + counts.failed);
    let steps = {
        let _settle = shared.settle.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut steps = shared.stats.snapshot();
        // Requests of aborted journeys not dropped yet: they will be recorded as cancelled
        // when they are, after this snapshot; count them here instead.
        for (i, s) in steps.iter_mut().enumerate() {
            let n = shared.stats.in_flight(i).map_or(0, |n| n.load(Ordering::SeqCst));
            if n > 0 {
                *s.errors.entry(crate::stats::ErrorClass::Cancelled).or_default() += n;
            }
        }
        steps
    };
    // Already aborted: whatever is left is dropped by the runtime after the run has ended.
    drop(journeys);
    // The run is over: whatever a journey left behind (a task holding its user or its gRPC
    // channel) sends nothing more.
    stop.end();
    let by_journey = scenario.journeys.iter().zip(&shared.journeys).map(|(j, t)| t.report(&j.name)).collect();
    Finished {
        step_names: shared.stats.names(),
        steps,
        by_journey,
        journeys: counts,
        elapsed: started.elapsed(),
        ending,
    }
}

/// The scenario's phases: open-model arrivals and closed-model users.
async fn phases<F: FnMut(&Interval<'_>) -> Option<AbortReason> + Send>(
    scenario: &Arc<Scenario>,
    d: &mut Driver<F>,
) -> Ending {
    let (shared, stop) = (d.shared.clone(), d.stop.clone());
    let stop = &stop;
    let total_weight: u64 = scenario.journeys.iter().map(|j| u64::from(j.weight)).sum();
    for phase in &scenario.phases {
        let phase_start = Instant::now();
        // A phase built in code may be "until stopped" (`Duration::MAX`): it ends in 30 years.
        let phase_end = phase_start
            .checked_add(phase.duration())
            .unwrap_or_else(|| phase_start + Duration::from_secs(30 * 365 * 86_400));
        let (r0, r1, cap) = match phase {
            // A scenario file cannot ask for more than MAX_ARRIVAL_RATE; a phase built in code
            // is held to it by `clamp_rate`, so the credit below stays an exact count.
            Phase::Load { rate, ramp_to, max_concurrent, .. } => {
                (clamp_rate(*rate), clamp_rate(*ramp_to), *max_concurrent)
            }
            Phase::Closed { users, .. } => {
                // Closed model: the users run journeys back to back until the phase ends.
                for i in 0..*users {
                    if i % MAX_ARRIVALS_PER_PASS as usize == 0 {
                        tokio::task::yield_now().await;
                        if stop.is_stopped() {
                            return stopped_ending(stop);
                        }
                    }
                    let seed = d.rng.next_u64();
                    shared.active.fetch_add(1, Ordering::Relaxed);
                    d.journeys.spawn(closed_user(
                        shared.clone(),
                        total_weight,
                        phase_end,
                        stop.clone(),
                        Rng::new(seed),
                    ));
                }
                (0.0, 0.0, None)
            }
            Phase::Pause { .. } => (0.0, 0.0, None),
        };
        let t = phase.duration().as_secs_f64();
        // Arrivals owed so far: the rate integrated over time (times the control's factor),
        // minus the journeys started. One is due each time it reaches 1.
        let mut credit = 0.0f64;
        let mut last = phase_start;
        // The factor in force since `last`: a change applies from when it is made, so a pause
        // or a low factor is not paid back as a burst when it is lifted.
        let mut factor = stop.effective_factor();
        loop {
            if stop.is_stopped() {
                return stopped_ending(stop);
            }
            let changed = stop.next_change();
            let now = Instant::now();
            let (a, b) =
                ((last - phase_start).as_secs_f64(), (now.min(phase_end) - phase_start).as_secs_f64());
            credit += factor * arrivals_between(a, b, r0, r1, t);
            last = now;
            factor = stop.effective_factor();
            let rate_now = factor * rate_at(b, r0, r1, t);
            // A scheduler far behind (a stalled machine) drops what it cannot send in time
            // rather than sending it all at once later.
            let backlog = (rate_now.min(MAX_BACKLOG as f64)).max(MAX_ARRIVALS_PER_PASS as f64);
            if credit > backlog {
                d.counts.dropped = d.counts.dropped.saturating_add((credit - backlog) as u64);
                credit = backlog;
            }
            let mut owed = crate::schedule::take_whole(&mut credit);
            let mut spawned = 0;
            while owed > 0 && spawned < MAX_ARRIVALS_PER_PASS {
                if cap.is_some_and(|c| shared.active.load(Ordering::Relaxed) >= c) {
                    d.counts.dropped += owed;
                    owed = 0;
                    break;
                }
                owed -= 1;
                spawned += 1;
                // When this arrival was due: back from now by what is still owed after it.
                // At a tiny (or zero) rate that is no duration at all: then it is due now.
                let behind = credit + owed as f64;
                let due = Duration::try_from_secs_f64(behind / rate_now)
                    .ok()
                    .and_then(|d| now.checked_sub(d))
                    .unwrap_or(now);
                d.counts.started += 1;
                let j = pick(scenario, total_weight, &mut d.rng);
                let seed = d.rng.next_u64();
                shared.active.fetch_add(1, Ordering::Relaxed);
                d.journeys.spawn(journey::run(shared.clone(), j, due, Rng::new(seed), None));
            }
            // Not started in this pass: still owed, first in the next one.
            credit += owed as f64;
            while d.journeys.try_join_next().is_some() {}
            if let Some(reason) = d.report(now) {
                return Ending::Aborted(reason);
            }
            if owed > 0 {
                // More due than one pass starts: let everything else run, then go on.
                tokio::task::yield_now().await;
                continue;
            }
            if now >= phase_end {
                break;
            }
            let next_due = match seconds_until(b, (1.0 - credit) / factor.max(1e-12), r0, r1, t) {
                Some(dt) if factor > 0.0 => now + Duration::from_secs_f64(dt.clamp(0.0, 3600.0)),
                // Paused, or no arrival left in this phase: wait for the phase end or a change.
                _ => phase_end,
            };
            let wake = next_due.min(phase_end).min(d.next_report);
            tokio::select! {
                biased;
                () = stop.stopped() => return stopped_ending(stop),
                () = changed => {}
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    Ending::Completed
}

fn new_shared(
    scenario: &Arc<Scenario>,
    options: &RunOptions,
    marker: Arc<std::sync::RwLock<http::HeaderValue>>,
    stopped: Arc<AtomicBool>,
    observe: bool,
) -> Arc<Shared> {
    Arc::new(Shared {
        client: HttpClient::new(
            scenario.timeouts.connect,
            scenario.timeouts.request,
            scenario.max_connections,
            scenario.http2,
            &scenario.tls,
        ),
        grpc: grpc::Channels::new(scenario.timeouts.connect, &scenario.tls),
        stats: RunStats::new(&scenario.step_names),
        marker,
        base: scenario.target.to_string().trim_end_matches('/').to_owned(),
        run_id: options.run_id.clone(),
        feeder_cursors: scenario.feeders.iter().map(|_| AtomicUsize::new(0)).collect(),
        completed: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        started: AtomicU64::new(0),
        active: AtomicUsize::new(0),
        stopped,
        draining: AtomicBool::new(false),
        budget: observe.then(|| AtomicU64::new(0)),
        journeys: scenario.journeys.iter().map(|_| JourneyTally::default()).collect(),
        settle: std::sync::RwLock::new(()),
        observe: observe.then(|| std::sync::Mutex::new(Vec::new())),
        scenario: scenario.clone(),
    })
}

/// Runs every journey once, one after the other, tagged like the run, and returns what each
/// request's answer said about the hops and guards it went through (`loadgen preflight`).
/// A stop of `stop` ends it: no journey starts and no request is sent after it.
pub(crate) async fn preflight(
    scenario: Arc<Scenario>,
    options: RunOptions,
    observer: Option<&crate::observe::Observer>,
    stop: &Control,
) -> crate::preflight::Seen {
    let marker = match http::HeaderValue::from_str(&options.token) {
        Ok(v) => v,
        Err(_) => http::HeaderValue::from_static("invalid"),
    };
    let marker = Arc::new(std::sync::RwLock::new(marker));
    // The preflight's own end: set by a stop of the run's control, and when the preflight is
    // over, so that nothing a journey left behind sends after it.
    let ended = Arc::new(AtomicBool::new(stop.is_stopped()));
    let shared = new_shared(&scenario, &options, marker, ended.clone(), true);
    let forward = {
        let (stop, ended) = (stop.clone(), ended.clone());
        tokio::spawn(async move {
            stop.stopped().await;
            ended.store(true, Ordering::SeqCst);
        })
    };
    let mut rng = options.seed.map_or_else(Rng::from_entropy, Rng::new);
    let mut seen = crate::preflight::Seen { observed: observer.is_some(), ..Default::default() };
    // Counters that move with no journey in flight cannot be attributed to one: say so, and
    // attribute nothing.
    let mut watch = None;
    if let Some(o) = observer {
        match quiet_check(o).await {
            Ok(noise) if noise.is_empty() => watch = Some(o),
            Ok(noise) => seen.noise = noise,
            Err(e) => seen.observe_error = Some(e.to_string()),
        }
    }
    for (j, journey) in scenario.journeys.iter().enumerate() {
        if stop.is_stopped() {
            seen.stopped = true;
            break;
        }
        // Weight 0: never picked, so never sent, not even here.
        if journey.weight == 0 {
            continue;
        }
        let before = match watch {
            Some(o) => match o.counts().await {
                Ok(c) => Some(c),
                Err(e) => {
                    seen.observe_error = Some(e.to_string());
                    watch = None;
                    None
                }
            },
            None => None,
        };
        if let Some(budget) = &shared.budget {
            let planned = if journey.code.is_some() {
                PREFLIGHT_MAX_SENDS
            } else {
                crate::scenario::walk::run_order(&journey.steps).filter(|v| v.sent().is_some()).count() as u64
            };
            budget.store(planned, Ordering::SeqCst);
        }
        shared.draining.store(false, Ordering::SeqCst);
        let failed_before = shared.journeys.get(j).map_or(0, |t| t.failed.load(Ordering::Relaxed));
        shared.active.fetch_add(1, Ordering::Relaxed);
        // In a task of its own: a panic in a journey is its failure, not the caller's; a stop
        // ends it wherever it waits; a journey still going at the limit fails the preflight.
        let mut task =
            tokio::spawn(journey::run(shared.clone(), j, Instant::now(), Rng::new(rng.next_u64()), None));
        let mut failure = None;
        tokio::select! {
            biased;
            () = stop.stopped() => {
                task.abort();
                seen.stopped = true;
            }
            done = &mut task => if done.is_err() {
                failure = Some("the journey panicked".to_owned());
            },
            () = tokio::time::sleep(PREFLIGHT_JOURNEY_LIMIT) => {
                task.abort();
                failure = Some(format!(
                    "the journey did not end within {}s: a journey that loops until the run ends must check user.is_stopped()",
                    PREFLIGHT_JOURNEY_LIMIT.as_secs()
                ));
            }
        }
        if seen.stopped {
            break;
        }
        // A Rust journey says what it expects only as it goes: one that failed may have
        // stopped before a request that expects a hop or guard, so its failure fails the
        // preflight. (A YAML journey's unreached expectations are known from its steps.)
        if failure.is_none()
            && journey.code.is_some()
            && let Some(t) = shared.journeys.get(j)
            && t.failed.load(Ordering::Relaxed) > failed_before
        {
            let failures = t.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let why = failures.keys().next().cloned().unwrap_or_else(|| "failed".to_owned());
            drop(failures);
            // Told to finish at its share of requests, and failed for it: say so.
            let spent = shared.budget.as_ref().is_some_and(|b| b.load(Ordering::SeqCst) == 0);
            failure = Some(if spent {
                format!(
                    "{why} (it sent its preflight share of {PREFLIGHT_MAX_SENDS} requests: a journey that loops until the run ends checks user.is_stopped())"
                )
            } else {
                why
            });
        }
        let requests = shared
            .observe
            .as_ref()
            .map(|o| std::mem::take(&mut *o.lock().unwrap_or_else(std::sync::PoisonError::into_inner)))
            .unwrap_or_default();
        let mut after_response = std::collections::BTreeMap::new();
        if let (Some(o), Some(before)) = (watch, before) {
            // Deferred effects (a spawned task's e-mail) land after the last response.
            tokio::time::sleep(o.settle()).await;
            match o.counts().await {
                Ok(after) => after_response = o.rises(&before, &after),
                Err(e) => {
                    seen.observe_error = Some(e.to_string());
                    watch = None;
                }
            }
        }
        seen.journeys.push(crate::preflight::JourneySeen {
            journey: j,
            name: journey.name.clone(),
            requests,
            after_response,
            failure,
        });
    }
    ended.store(true, Ordering::SeqCst);
    forward.abort();
    seen
}

/// Reads the observed pages twice, a settle time apart, with nothing in flight: what moved.
async fn quiet_check(
    o: &crate::observe::Observer,
) -> Result<Vec<(String, String)>, crate::observe::ObserveError> {
    let first = o.counts().await?;
    tokio::time::sleep(o.settle()).await;
    let second = o.counts().await?;
    Ok(o.moved(&first, &second))
}

fn stopped_ending(control: &Control) -> Ending {
    control.abort_reason().map_or(Ending::Stopped, Ending::Aborted)
}

/// A closed-model user: journeys back to back until `until` (or a stop, or a pause).
async fn closed_user(shared: Arc<Shared>, total_weight: u64, until: Instant, control: Control, mut rng: Rng) {
    // This task counts as one active journey-runner for `max_concurrent`-style views; each
    // journey it runs counts itself too.
    shared.active.fetch_sub(1, Ordering::Relaxed);
    // The user's own connection, kept across its journeys (a Rust journey's requests take it
    // one at a time).
    let conn = Arc::new(std::sync::Mutex::new(None));
    while Instant::now() < until && !control.is_stopped() {
        // A journey that fails before sending (a template that renders an invalid URL) never
        // waits on anything: without this, such a user would never give its thread back.
        tokio::task::coop::consume_budget().await;
        if control.holding() {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let j = pick(&shared.scenario, total_weight, &mut rng);
        let seed = rng.next_u64();
        shared.active.fetch_add(1, Ordering::Relaxed);
        shared.started.fetch_add(1, Ordering::Relaxed);
        journey::run(shared.clone(), j, Instant::now(), Rng::new(seed), Some(conn.clone())).await;
    }
}

fn pick(scenario: &Scenario, total_weight: u64, rng: &mut Rng) -> usize {
    let mut x = rng.below(total_weight);
    for (i, j) in scenario.journeys.iter().enumerate() {
        let w = u64::from(j.weight);
        if x < w {
            return i;
        }
        x -= w;
    }
    0
}

/// One interval of a run, for live reporting.
#[derive(Debug)]
pub(crate) struct Interval<'a> {
    /// Time since the run started.
    pub elapsed: Duration,
    /// Length of this interval.
    pub length: Duration,
    /// Requests finished in this interval.
    pub requests: u64,
    /// Of which failed.
    pub errors: u64,
    /// Latency histogram of this interval (µs).
    pub latency: hdrhistogram::Histogram<u64>,
    /// Journeys in flight.
    pub active: usize,
    /// The run's statistics so far (for thresholds).
    pub stats: &'a RunStats,
}

fn interval(shared: &Shared, length: Duration, elapsed: Duration) -> Interval<'_> {
    let (latency, requests, errors) = shared.stats.take_interval();
    Interval {
        elapsed,
        length,
        requests,
        errors,
        latency,
        active: shared.active.load(Ordering::Relaxed),
        stats: &shared.stats,
    }
}
