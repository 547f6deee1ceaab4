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
    /// gRPC status, if a gRPC call was answered (then `status` is `None`).
    pub grpc_status: Option<GrpcCode>,
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
    pub fn record_messages(&self, step: usize, n: u64) {
        if let Some(mut s) = self.lock(step) {
            s.grpc_messages += n;
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
/// use loadgen::stats::GrpcCode;
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
