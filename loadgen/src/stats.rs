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

/// The statistics of a run, shared by its tasks.
#[derive(Debug)]
pub struct RunStats {
    steps: Vec<Mutex<StepStats>>,
    /// Shed answers of every step, readable without copying any step's statistics.
    shed: std::sync::atomic::AtomicU64,
}

/// What one request came to.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
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
    /// Statistics for `steps` steps.
    pub fn new(steps: usize) -> Self {
        RunStats {
            steps: (0..steps).map(|_| Mutex::new(StepStats::default())).collect(),
            shed: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn lock(&self, step: usize) -> Option<MutexGuard<'_, StepStats>> {
        self.steps.get(step).map(|m| m.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Records one request of `step`.
    pub fn record(&self, step: usize, o: Outcome) {
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
    pub fn shed_total(&self) -> u64 {
        self.shed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A copy of every step's statistics.
    pub fn snapshot(&self) -> Vec<StepStats> {
        (0..self.steps.len()).filter_map(|i| self.lock(i).map(|s| s.clone())).collect()
    }

    /// Takes the interval histograms and counters (resetting them) merged over all steps:
    /// (latency histogram, requests, errors).
    pub fn take_interval(&self) -> (Histogram<u64>, u64, u64) {
        let mut all = histogram();
        let (mut requests, mut errors) = (0, 0);
        for i in 0..self.steps.len() {
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
pub fn merge(steps: &[StepStats]) -> StepStats {
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
