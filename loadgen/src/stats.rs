//! Statistics: HDR latency histograms per step (whole run and per interval), error classes,
//! status codes, tagging coverage.

use std::{
    collections::BTreeMap,
    sync::{Mutex, MutexGuard, PoisonError},
};

use hdrhistogram::Histogram;

/// Why a request or a journey failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorClass {
    /// The connection could not be made.
    Connect,
    /// No complete answer within the request timeout.
    Timeout,
    /// The connection was closed or reset mid-request.
    Reset,
    /// The answer was not valid HTTP.
    Protocol,
    /// A status code the step does not accept.
    Status,
    /// A header or JSON expectation failed.
    Expectation,
    /// A capture found nothing.
    Capture,
    /// Stopped before it finished.
    Cancelled,
}

impl ErrorClass {
    /// Every class, in report order.
    pub const ALL: [ErrorClass; 8] = [
        ErrorClass::Connect,
        ErrorClass::Timeout,
        ErrorClass::Reset,
        ErrorClass::Protocol,
        ErrorClass::Status,
        ErrorClass::Expectation,
        ErrorClass::Capture,
        ErrorClass::Cancelled,
    ];

    /// A stable label.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Connect => "connect",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Reset => "reset",
            ErrorClass::Protocol => "protocol",
            ErrorClass::Status => "status",
            ErrorClass::Expectation => "expectation",
            ErrorClass::Capture => "capture",
            ErrorClass::Cancelled => "cancelled",
        }
    }
}

/// Counters and histograms of one step.
#[derive(Clone, Debug)]
pub struct StepStats {
    /// Latency in microseconds, whole run.
    pub latency: Histogram<u64>,
    /// Latency in microseconds, since the last interval report.
    pub interval: Histogram<u64>,
    /// Requests with an answer (any status).
    pub responses: u64,
    /// Failures by class.
    pub errors: BTreeMap<ErrorClass, u64>,
    /// Answers by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Answers that echoed `synthetic-traffic-seen` with this run's id.
    pub tagged: u64,
    /// Answers the target's synth layer shed (`synthetic-traffic-shed: 1`: kill switch or
    /// overload); also counted in `statuses` and as `status` errors.
    pub shed: u64,
    /// Requests sent in the current interval.
    pub interval_requests: u64,
    /// Failures in the current interval.
    pub interval_errors: u64,
}

/// 1 µs to 1 h, 3 significant digits: fixed memory per histogram.
#[allow(clippy::expect_used)] // constant, valid bounds: this cannot fail
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid constant bounds")
}

impl Default for StepStats {
    fn default() -> Self {
        StepStats {
            latency: histogram(),
            interval: histogram(),
            responses: 0,
            errors: BTreeMap::new(),
            statuses: BTreeMap::new(),
            tagged: 0,
            shed: 0,
            interval_requests: 0,
            interval_errors: 0,
        }
    }
}

impl StepStats {
    /// All failures.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Requests: answered ones plus those that failed without an answer.
    pub fn requests(&self) -> u64 {
        let unanswered: u64 = self
            .errors
            .iter()
            .filter(|(c, _)| {
                matches!(
                    c,
                    ErrorClass::Connect
                        | ErrorClass::Timeout
                        | ErrorClass::Reset
                        | ErrorClass::Protocol
                        | ErrorClass::Cancelled
                )
            })
            .map(|(_, n)| n)
            .sum();
        self.responses + unanswered
    }
}

/// The most request names a run keeps apart beyond its scenario's own steps: journeys written
/// in Rust name their requests as they go, and a name built from an id (`GET /orders/123`)
/// must not grow the statistics without bound. Requests past it share [`OTHER_REQUESTS`].
pub(crate) const MAX_DYNAMIC_NAMES: usize = 1000;

/// Where requests go once [`MAX_DYNAMIC_NAMES`] names are taken.
pub(crate) const OTHER_REQUESTS: &str = "(other request names)";

/// One named request's statistics, and how many of its requests are in flight.
#[derive(Debug)]
struct Slot {
    name: std::sync::Arc<str>,
    stats: Mutex<StepStats>,
    in_flight: std::sync::atomic::AtomicU64,
}

/// The statistics of a run, shared by its tasks: one slot per request name, the scenario's
/// first (in [`Scenario::step_names`](crate::Scenario) order), then names that Rust journeys
/// use, registered on first use.
#[derive(Debug)]
pub(crate) struct RunStats {
    /// Filled in order; `len` says how many are set. Never reallocated, so a slot's index
    /// stays valid and recording needs no lock but the slot's own.
    slots: Box<[std::sync::OnceLock<Slot>]>,
    len: std::sync::atomic::AtomicUsize,
    by_name: std::sync::RwLock<std::collections::HashMap<std::sync::Arc<str>, usize>>,
    /// Held while a new name is registered.
    register: Mutex<()>,
    /// Shed answers of every step, readable without copying any step's statistics.
    shed: std::sync::atomic::AtomicU64,
}

/// What one request came to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Outcome {
    /// Latency in microseconds (from the intended send time), if answered.
    pub latency_us: Option<u64>,
    /// Status code, if answered.
    pub status: Option<u16>,
    /// The failure, if any.
    pub error: Option<ErrorClass>,
    /// Whether the answer echoed this run's id.
    pub tagged: bool,
    /// Whether the target shed it (`synthetic-traffic-shed: 1`).
    pub shed: bool,
}

impl RunStats {
    /// Statistics for these request names (a scenario's steps), with room for
    /// [`MAX_DYNAMIC_NAMES`] more.
    pub(crate) fn new(names: &[std::sync::Arc<str>]) -> Self {
        let capacity = names.len() + MAX_DYNAMIC_NAMES + 1;
        let stats = RunStats {
            slots: (0..capacity).map(|_| std::sync::OnceLock::new()).collect(),
            len: std::sync::atomic::AtomicUsize::new(0),
            by_name: std::sync::RwLock::new(std::collections::HashMap::with_capacity(names.len())),
            register: Mutex::new(()),
            shed: std::sync::atomic::AtomicU64::new(0),
        };
        for name in names {
            // Steps of the same name share a slot in the scenario already; a duplicate here
            // still gets its own index, so `stat` indexes stay those of the scenario.
            stats.push(name.clone());
        }
        stats
    }

    /// Appends a slot; `None` when full. Callers hold `by_name`'s write lock, or are `new`.
    fn push(&self, name: std::sync::Arc<str>) -> Option<usize> {
        let i = self.len.load(std::sync::atomic::Ordering::Acquire);
        let slot = self.slots.get(i)?;
        let _ = slot.set(Slot {
            name: name.clone(),
            stats: Mutex::new(StepStats::default()),
            in_flight: std::sync::atomic::AtomicU64::new(0),
        });
        self.by_name.write().unwrap_or_else(PoisonError::into_inner).entry(name).or_insert(i);
        self.len.store(i + 1, std::sync::atomic::Ordering::Release);
        Some(i)
    }

    /// The index of the requests named `name`, registering it on first use; past
    /// [`MAX_DYNAMIC_NAMES`] new names, the index of [`OTHER_REQUESTS`].
    pub(crate) fn index_of(&self, name: &str) -> usize {
        if let Some(&i) = self.by_name.read().unwrap_or_else(PoisonError::into_inner).get(name) {
            return i;
        }
        // One registration at a time: two users naming the same request at once get one slot.
        let _one = self.register.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(&i) = self.by_name.read().unwrap_or_else(PoisonError::into_inner).get(name) {
            return i;
        }
        let last = self.slots.len() - 1;
        if self.len.load(std::sync::atomic::Ordering::Acquire) < last
            && let Some(i) = self.push(std::sync::Arc::from(name))
        {
            return i;
        }
        // Full: the last slot collects every further name.
        if let Some(&i) = self.by_name.read().unwrap_or_else(PoisonError::into_inner).get(OTHER_REQUESTS) {
            return i;
        }
        self.push(std::sync::Arc::from(OTHER_REQUESTS)).unwrap_or(last)
    }

    fn slot(&self, step: usize) -> Option<&Slot> {
        self.slots.get(step).and_then(std::sync::OnceLock::get)
    }

    fn lock(&self, step: usize) -> Option<MutexGuard<'_, StepStats>> {
        self.slot(step).map(|s| s.stats.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Requests of `step` in flight (counted by the engine while they run).
    pub(crate) fn in_flight(&self, step: usize) -> Option<&std::sync::atomic::AtomicU64> {
        self.slot(step).map(|s| &s.in_flight)
    }

    fn count(&self) -> usize {
        self.len.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The name of `step`.
    pub(crate) fn name(&self, step: usize) -> Option<std::sync::Arc<str>> {
        self.slot(step).map(|s| s.name.clone())
    }

    /// Request names so far, in statistics order.
    pub(crate) fn names(&self) -> Vec<std::sync::Arc<str>> {
        (0..self.count()).filter_map(|i| self.slot(i).map(|s| s.name.clone())).collect()
    }

    /// Records one request of `step`.
    pub(crate) fn record(&self, step: usize, o: Outcome) {
        let Some(mut s) = self.lock(step) else { return };
        s.interval_requests += 1;
        if let Some(us) = o.latency_us {
            let us = us.clamp(1, 3_600_000_000);
            let _ = s.latency.record(us);
            let _ = s.interval.record(us);
        }
        if let Some(code) = o.status {
            s.responses += 1;
            *s.statuses.entry(code).or_default() += 1;
        }
        if let Some(e) = o.error {
            *s.errors.entry(e).or_default() += 1;
            s.interval_errors += 1;
        }
        if o.tagged {
            s.tagged += 1;
        }
        if o.shed {
            s.shed += 1;
            self.shed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Shed answers so far, all steps (cheap: no copy, no lock).
    pub(crate) fn shed_total(&self) -> u64 {
        self.shed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A copy of every step's statistics, in [`names`](Self::names) order.
    pub(crate) fn snapshot(&self) -> Vec<StepStats> {
        (0..self.count()).filter_map(|i| self.lock(i).map(|s| s.clone())).collect()
    }

    /// Names and statistics, taken together (`names[i]` is `steps[i]`'s).
    pub(crate) fn snapshot_named(&self) -> (Vec<std::sync::Arc<str>>, Vec<StepStats>) {
        let n = self.count();
        (0..n)
            .filter_map(|i| {
                self.slot(i)
                    .map(|s| (s.name.clone(), s.stats.lock().unwrap_or_else(PoisonError::into_inner).clone()))
            })
            .unzip()
    }

    /// Takes the interval histograms and counters (resetting them) merged over all steps:
    /// (latency histogram, requests, errors).
    pub(crate) fn take_interval(&self) -> (Histogram<u64>, u64, u64) {
        let mut all = histogram();
        let (mut requests, mut errors) = (0, 0);
        for i in 0..self.count() {
            if let Some(mut s) = self.lock(i) {
                let _ = all.add(&s.interval);
                s.interval.reset();
                requests += std::mem::take(&mut s.interval_requests);
                errors += std::mem::take(&mut s.interval_errors);
            }
        }
        (all, requests, errors)
    }
}

/// Merges step statistics (for totals).
pub(crate) fn merge(steps: &[StepStats]) -> StepStats {
    let mut total = StepStats::default();
    for s in steps {
        let _ = total.latency.add(&s.latency);
        total.responses += s.responses;
        total.tagged += s.tagged;
        total.shed += s.shed;
        for (k, v) in &s.errors {
            *total.errors.entry(*k).or_default() += v;
        }
        for (k, v) in &s.statuses {
            *total.statuses.entry(*k).or_default() += v;
        }
    }
    total
}
