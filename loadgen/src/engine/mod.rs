//! The engine: open-model scheduling of journeys, their steps, and the run's life cycle.
//!
//! Journeys arrive at each phase's rate (ramping linearly), independent of how fast the target
//! answers: that is how production load behaves. A journey's first request is timed from its
//! intended arrival, so a scheduler or target that falls behind shows up in the latencies
//! instead of hiding (coordinated omission). Later steps are timed from their own send.

mod client;
mod journey;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

pub use client::HttpClient;
use tokio::{sync::Notify, task::JoinSet, time::Instant};

use crate::{
    rng::Rng,
    scenario::{Phase, Scenario},
    stats::{RunStats, StepStats},
};

/// Stops a run: no new journey starts, in-flight ones are cancelled and counted. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct StopHandle(Arc<StopInner>);

#[derive(Debug, Default)]
struct StopInner {
    stopped: AtomicBool,
    notify: Notify,
}

impl StopHandle {
    /// A handle that has not stopped.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stops the run.
    pub fn stop(&self) {
        self.0.stopped.store(true, Ordering::SeqCst);
        self.0.notify.notify_waiters();
    }

    /// Whether the run was stopped.
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
    /// Arrivals not started because of a phase's `max_concurrent`.
    pub dropped: u64,
    /// Cancelled by a stop.
    pub cancelled: u64,
}

/// Shared state of a running run.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) scenario: Arc<Scenario>,
    pub(crate) client: HttpClient,
    pub(crate) stats: RunStats,
    pub(crate) marker: http::HeaderValue,
    pub(crate) run_id: String,
    pub(crate) feeder_cursors: Vec<AtomicUsize>,
    pub(crate) completed: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) active: AtomicUsize,
}

/// What to run with.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The marker every request carries (`synthetic-traffic`).
    pub token: String,
    /// The run id the marker carries (responses echoing it count as tagged).
    pub run_id: String,
    /// Seed for journey choice and templates (random if `None`).
    pub seed: Option<u64>,
}

/// Why a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Every phase ran.
    Completed,
    /// Stopped by the operator (Ctrl-C, control API).
    Stopped,
    /// A threshold with `abort_on_fail` failed.
    Aborted(String),
}

/// The outcome of a run.
#[derive(Debug)]
pub struct Finished {
    /// Statistics per step, in [`Scenario::step_names`] order.
    pub steps: Vec<StepStats>,
    /// Journey counts.
    pub journeys: JourneyCounts,
    /// How long it ran.
    pub elapsed: Duration,
    /// Why it ended.
    pub ending: Ending,
}

/// The arrival time (seconds into the phase) of the `k`-th journey (k >= 1) of a phase ramping
/// linearly from `r0` to `r1` journeys/s over `t` seconds, or `None` past the phase's end.
pub fn arrival_time(k: u64, r0: f64, r1: f64, t: f64) -> Option<f64> {
    let k = k as f64;
    let at = if (r1 - r0).abs() < 1e-12 {
        if r0 <= 0.0 {
            return None;
        }
        k / r0
    } else {
        // N(x) = r0 x + (r1 - r0) x² / 2t; solve N(x) = k.
        let a = (r1 - r0) / (2.0 * t);
        let disc = r0 * r0 + 4.0 * a * k;
        if disc < 0.0 {
            return None;
        }
        (-r0 + disc.sqrt()) / (2.0 * a)
    };
    (at.is_finite() && at >= 0.0 && at < t).then_some(at)
}

/// Runs `scenario` until its phases end or `stop` fires. `on_interval` is called about once a
/// second from the run's own task (for live reporting and `abort_on_fail` thresholds); returning
/// `Some(reason)` aborts the run.
pub async fn run(
    scenario: Arc<Scenario>,
    options: RunOptions,
    stop: StopHandle,
    mut on_interval: impl FnMut(&Interval<'_>) -> Option<String> + Send,
) -> Finished {
    let started = Instant::now();
    let marker = http::HeaderValue::from_str(&options.token)
        .unwrap_or_else(|_| http::HeaderValue::from_static("invalid"));
    let shared = Arc::new(Shared {
        client: HttpClient::new(scenario.timeouts.connect, scenario.timeouts.request),
        stats: RunStats::new(scenario.step_names.len()),
        marker,
        run_id: options.run_id.clone(),
        feeder_cursors: scenario.feeders.iter().map(|_| AtomicUsize::new(0)).collect(),
        completed: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        active: AtomicUsize::new(0),
        scenario: scenario.clone(),
    });
    let mut rng = options.seed.map_or_else(Rng::from_entropy, Rng::new);
    let total_weight: u64 = scenario.journeys.iter().map(|j| u64::from(j.weight)).sum();
    let mut journeys: JoinSet<()> = JoinSet::new();
    let mut counts = JourneyCounts::default();
    let mut ending = Ending::Completed;
    let mut next_report = started + Duration::from_secs(1);
    let mut last_report = started;

    'phases: for phase in &scenario.phases {
        let phase_start = Instant::now();
        let phase_end = phase_start + phase.duration();
        let (r0, r1, cap) = match phase {
            Phase::Load { rate, ramp_to, max_concurrent, .. } => (*rate, *ramp_to, *max_concurrent),
            Phase::Pause { .. } => (0.0, 0.0, None),
        };
        let t = phase.duration().as_secs_f64();
        let mut k = 1u64;
        loop {
            let next_arrival = arrival_time(k, r0, r1, t).map(|s| phase_start + Duration::from_secs_f64(s));
            let wake = next_arrival.unwrap_or(phase_end).min(next_report);
            tokio::select! {
                biased;
                () = stop.stopped() => { ending = Ending::Stopped; break 'phases; }
                () = tokio::time::sleep_until(wake) => {}
            }
            while journeys.try_join_next().is_some() {}
            let now = Instant::now();
            if now >= next_report {
                let interval = interval(&shared, now - last_report, now - started);
                last_report = now;
                next_report = now + Duration::from_secs(1);
                if let Some(reason) = on_interval(&interval) {
                    ending = Ending::Aborted(reason);
                    break 'phases;
                }
            }
            match next_arrival {
                Some(at) if at <= now => {
                    k += 1;
                    if cap.is_some_and(|c| shared.active.load(Ordering::Relaxed) >= c) {
                        counts.dropped += 1;
                        continue;
                    }
                    counts.started += 1;
                    let j = pick(&scenario, total_weight, &mut rng);
                    let seed = rng.next_u64();
                    shared.active.fetch_add(1, Ordering::Relaxed);
                    journeys.spawn(journey::run(shared.clone(), j, at, Rng::new(seed)));
                }
                Some(_) => {}
                None if now >= phase_end => break,
                None => {}
            }
        }
    }

    // Let the journeys in flight finish, unless the run was stopped or aborted.
    if ending == Ending::Completed {
        loop {
            tokio::select! {
                biased;
                () = stop.stopped() => { ending = Ending::Stopped; break; }
                joined = journeys.join_next() => if joined.is_none() { break },
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
        counts.cancelled = journeys.len() as u64;
        // Dropping a journey's future records its request in flight as cancelled.
        journeys.abort_all();
        while journeys.join_next().await.is_some() {}
    }
    counts.completed = shared.completed.load(Ordering::Relaxed);
    counts.failed = shared.failed.load(Ordering::Relaxed);
    Finished { steps: shared.stats.snapshot(), journeys: counts, elapsed: started.elapsed(), ending }
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
pub struct Interval<'a> {
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
