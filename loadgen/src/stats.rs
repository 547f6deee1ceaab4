//! Statistics: HDR latency histograms per step (whole run and per interval), error classes,
//! status codes (HTTP, and gRPC by name), tagging coverage.

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
    /// gRPC answers by status (`OK`, `PERMISSION_DENIED`, …); also counted in `responses`.
    pub grpc_statuses: BTreeMap<GrpcCode, u64>,
    /// Messages received by server-streaming gRPC calls (a call's stream counts however many
    /// messages it carried, also when it ended with an error status).
    pub grpc_messages: u64,
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
            grpc_statuses: BTreeMap::new(),
            grpc_messages: 0,
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
    /// gRPC status, if a gRPC call was answered (then `status` is `None`).
    pub grpc_status: Option<GrpcCode>,
    /// The failure, if any.
    pub error: Option<ErrorClass>,
    /// Whether the answer echoed this run's id.
    pub tagged: bool,
    /// Whether the target shed it (`synthetic-traffic-shed: 1`).
    pub shed: bool,
}

impl Outcome {
    /// A request that got no answer: failed as `class` before or while it was sent.
    pub(crate) const fn unanswered(class: ErrorClass) -> Outcome {
        Outcome {
            latency_us: None,
            status: None,
            grpc_status: None,
            error: Some(class),
            tagged: false,
            shed: false,
        }
    }
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
        if let Some(code) = o.grpc_status {
            s.responses += 1;
            *s.grpc_statuses.entry(code).or_default() += 1;
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

    /// Adds `n` streamed gRPC messages to `step`.
    pub(crate) fn record_messages(&self, step: usize, n: u64) {
        if let Some(mut s) = self.lock(step) {
            s.grpc_messages += n;
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
        for (k, v) in &s.grpc_statuses {
            *total.grpc_statuses.entry(*k).or_default() += v;
        }
        total.grpc_messages += s.grpc_messages;
    }
    total
}

/// A gRPC status code, as reports name it (`OK`, `PERMISSION_DENIED`, …): the closed set of
/// codes the gRPC protocol defines. A code a server sends outside it is `UNKNOWN`, as gRPC
/// clients read it.
///
/// ```
/// use loadgen::GrpcCode;
///
/// assert_eq!(GrpcCode::from_name("PERMISSION_DENIED"), Some(GrpcCode::PermissionDenied));
/// assert_eq!(GrpcCode::PermissionDenied.as_str(), "PERMISSION_DENIED");
/// assert_eq!(GrpcCode::from_name("permission_denied"), None);
/// assert!(GrpcCode::ALL.iter().all(|c| GrpcCode::from_name(c.as_str()) == Some(*c)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum GrpcCode {
    /// `OK` (0).
    Ok,
    /// `CANCELLED` (1).
    Cancelled,
    /// `UNKNOWN` (2).
    Unknown,
    /// `INVALID_ARGUMENT` (3).
    InvalidArgument,
    /// `DEADLINE_EXCEEDED` (4).
    DeadlineExceeded,
    /// `NOT_FOUND` (5).
    NotFound,
    /// `ALREADY_EXISTS` (6).
    AlreadyExists,
    /// `PERMISSION_DENIED` (7).
    PermissionDenied,
    /// `RESOURCE_EXHAUSTED` (8).
    ResourceExhausted,
    /// `FAILED_PRECONDITION` (9).
    FailedPrecondition,
    /// `ABORTED` (10).
    Aborted,
    /// `OUT_OF_RANGE` (11).
    OutOfRange,
    /// `UNIMPLEMENTED` (12).
    Unimplemented,
    /// `INTERNAL` (13).
    Internal,
    /// `UNAVAILABLE` (14).
    Unavailable,
    /// `DATA_LOSS` (15).
    DataLoss,
    /// `UNAUTHENTICATED` (16).
    Unauthenticated,
}

impl GrpcCode {
    /// Every code, in numeric order.
    pub const ALL: [GrpcCode; 17] = [
        GrpcCode::Ok,
        GrpcCode::Cancelled,
        GrpcCode::Unknown,
        GrpcCode::InvalidArgument,
        GrpcCode::DeadlineExceeded,
        GrpcCode::NotFound,
        GrpcCode::AlreadyExists,
        GrpcCode::PermissionDenied,
        GrpcCode::ResourceExhausted,
        GrpcCode::FailedPrecondition,
        GrpcCode::Aborted,
        GrpcCode::OutOfRange,
        GrpcCode::Unimplemented,
        GrpcCode::Internal,
        GrpcCode::Unavailable,
        GrpcCode::DataLoss,
        GrpcCode::Unauthenticated,
    ];

    /// The name the gRPC specification gives it, as reports show it.
    pub const fn as_str(self) -> &'static str {
        match self {
            GrpcCode::Ok => "OK",
            GrpcCode::Cancelled => "CANCELLED",
            GrpcCode::Unknown => "UNKNOWN",
            GrpcCode::InvalidArgument => "INVALID_ARGUMENT",
            GrpcCode::DeadlineExceeded => "DEADLINE_EXCEEDED",
            GrpcCode::NotFound => "NOT_FOUND",
            GrpcCode::AlreadyExists => "ALREADY_EXISTS",
            GrpcCode::PermissionDenied => "PERMISSION_DENIED",
            GrpcCode::ResourceExhausted => "RESOURCE_EXHAUSTED",
            GrpcCode::FailedPrecondition => "FAILED_PRECONDITION",
            GrpcCode::Aborted => "ABORTED",
            GrpcCode::OutOfRange => "OUT_OF_RANGE",
            GrpcCode::Unimplemented => "UNIMPLEMENTED",
            GrpcCode::Internal => "INTERNAL",
            GrpcCode::Unavailable => "UNAVAILABLE",
            GrpcCode::DataLoss => "DATA_LOSS",
            GrpcCode::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    /// The code named `name` exactly as [`as_str`](Self::as_str) writes it.
    pub fn from_name(name: &str) -> Option<GrpcCode> {
        GrpcCode::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

impl From<tonic::Code> for GrpcCode {
    fn from(code: tonic::Code) -> Self {
        match code {
            tonic::Code::Ok => GrpcCode::Ok,
            tonic::Code::Cancelled => GrpcCode::Cancelled,
            tonic::Code::Unknown => GrpcCode::Unknown,
            tonic::Code::InvalidArgument => GrpcCode::InvalidArgument,
            tonic::Code::DeadlineExceeded => GrpcCode::DeadlineExceeded,
            tonic::Code::NotFound => GrpcCode::NotFound,
            tonic::Code::AlreadyExists => GrpcCode::AlreadyExists,
            tonic::Code::PermissionDenied => GrpcCode::PermissionDenied,
            tonic::Code::ResourceExhausted => GrpcCode::ResourceExhausted,
            tonic::Code::FailedPrecondition => GrpcCode::FailedPrecondition,
            tonic::Code::Aborted => GrpcCode::Aborted,
            tonic::Code::OutOfRange => GrpcCode::OutOfRange,
            tonic::Code::Unimplemented => GrpcCode::Unimplemented,
            tonic::Code::Internal => GrpcCode::Internal,
            tonic::Code::Unavailable => GrpcCode::Unavailable,
            tonic::Code::DataLoss => GrpcCode::DataLoss,
            tonic::Code::Unauthenticated => GrpcCode::Unauthenticated,
        }
    }
}
