//! What the mirror did: counters, the two latency histograms, and bounded samples.

use std::{
    collections::VecDeque,
    fmt::Write as _,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::compare::Difference;
use crate::stats::{STRIPES, stripe_index};

/// What the mirror did with a real request it looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Decision {
    /// A copy went into the queue for the dark target.
    Queued,
    /// Not in the sampled share.
    NotSampled,
    /// Outside the route or method filters, or a `CONNECT` or `Upgrade` request (a tunnel or a
    /// protocol switch, never copied).
    Filtered,
    /// Already synthetic (a marker in any form, or a synthetic scope): never mirrored unless
    /// [`mirror_synthetic`](super::MirrorBuilder::mirror_synthetic) asks for it.
    Synthetic,
    /// Mirroring is switched off, or the kill switch is on.
    Disabled,
    /// The request body is over the limit: no copy (the real request is untouched).
    BodyTooLarge,
    /// The real handler did not read the whole request body, so there is no complete copy.
    BodyIncomplete,
    /// The queue or the byte budget was full: the copy was dropped. The budget counts every byte
    /// a copy holds: the request head, the body (also while it streams), and in compare mode the
    /// real answer kept until it is compared.
    QueueFull,
    /// No tokio runtime to send copies from, or the sender task has ended.
    NoSender,
}

impl Decision {
    /// Every decision, in the order of [`MirrorSnapshot::decisions`].
    pub const ALL: [Decision; 9] = [
        Decision::Queued,
        Decision::NotSampled,
        Decision::Filtered,
        Decision::Synthetic,
        Decision::Disabled,
        Decision::BodyTooLarge,
        Decision::BodyIncomplete,
        Decision::QueueFull,
        Decision::NoSender,
    ];

    /// A stable label for metrics and JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            Decision::Queued => "queued",
            Decision::NotSampled => "not_sampled",
            Decision::Filtered => "filtered",
            Decision::Synthetic => "synthetic",
            Decision::Disabled => "disabled",
            Decision::BodyTooLarge => "body_too_large",
            Decision::BodyIncomplete => "body_incomplete",
            Decision::QueueFull => "queue_full",
            Decision::NoSender => "no_sender",
        }
    }
}

/// What became of a queued copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DarkResult {
    /// The dark target answered (any status).
    Answered,
    /// The dark target could not be reached, reset, or answered something that is not HTTP.
    Error,
    /// No whole answer within the timeout.
    Timeout,
    /// Dropped before or while sending because mirroring was switched off or the kill switch
    /// went on.
    Stopped,
}

impl DarkResult {
    /// Every result, in the order of [`MirrorSnapshot::dark`].
    pub const ALL: [DarkResult; 4] =
        [DarkResult::Answered, DarkResult::Error, DarkResult::Timeout, DarkResult::Stopped];

    /// A stable label for metrics and JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            DarkResult::Answered => "answered",
            DarkResult::Error => "error",
            DarkResult::Timeout => "timeout",
            DarkResult::Stopped => "stopped",
        }
    }
}

/// The outcome of comparing a real answer with the dark one (compare mode only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CompareResult {
    /// Same status, chosen headers and body (ignored paths aside).
    Match,
    /// At least one difference.
    Mismatch,
    /// The real answer did not complete (the client went away, the handler failed) in time.
    RealIncomplete,
    /// One of the bodies was over the compare limit, or keeping the real answer would have gone
    /// over the byte budget.
    TooLarge,
}

impl CompareResult {
    /// Every result, in the order of [`MirrorSnapshot::compared`].
    pub const ALL: [CompareResult; 4] = [
        CompareResult::Match,
        CompareResult::Mismatch,
        CompareResult::RealIncomplete,
        CompareResult::TooLarge,
    ];

    /// A stable label for metrics and JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            CompareResult::Match => "match",
            CompareResult::Mismatch => "mismatch",
            CompareResult::RealIncomplete => "real_incomplete",
            CompareResult::TooLarge => "too_large",
        }
    }
}

/// Upper bounds of the latency histogram buckets, in seconds (Prometheus `le`).
pub const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Debug, Default)]
pub(crate) struct Histogram {
    /// One per bucket plus `+Inf`.
    counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub(crate) fn record(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS.iter().position(|b| secs <= *b).unwrap_or(LATENCY_BUCKETS.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    fn snapshot(&self) -> HistogramSnapshot {
        let mut counts = [0; LATENCY_BUCKETS.len() + 1];
        for (o, c) in counts.iter_mut().zip(&self.counts) {
            *o = c.load(Relaxed);
        }
        HistogramSnapshot { counts, sum: Duration::from_micros(self.sum_micros.load(Relaxed)) }
    }
}

/// A copy of a latency histogram.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HistogramSnapshot {
    /// Observations per bucket of [`LATENCY_BUCKETS`] (not cumulative), then over the last bound.
    pub counts: [u64; LATENCY_BUCKETS.len() + 1],
    /// The sum of all observations.
    pub sum: Duration,
}

impl HistogramSnapshot {
    /// How many observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// An upper bound of the `q` quantile (0.0-1.0): the bound of the bucket it falls in, or
    /// `None` without observations (or when it falls over the last bound).
    pub fn quantile_upper_bound(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        // The rank of the quantile, 1-based; q outside 0..=1 is clamped.
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return LATENCY_BUCKETS.get(i).map(|b| Duration::from_secs_f64(*b));
            }
        }
        None
    }
}

/// One compared request whose answers differed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MismatchSample {
    /// When it was compared (unix milliseconds).
    pub at_unix_ms: u64,
    /// The request's method.
    pub method: String,
    /// The request's path, without the query (queries often carry personal data).
    pub path: String,
    /// The real answer's status.
    pub real_status: u16,
    /// The dark answer's status.
    pub dark_status: u16,
    /// The differences, at most [`MirrorBuilder::max_differences`](super::MirrorBuilder::max_differences).
    pub differences: Vec<Difference>,
    /// Whether there were more differences than kept.
    pub truncated: bool,
}

/// One copy that failed at the dark target.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ErrorSample {
    /// When (unix milliseconds).
    pub at_unix_ms: u64,
    /// The request's method.
    pub method: String,
    /// The request's path, without the query.
    pub path: String,
    /// [`DarkResult::Error`] or [`DarkResult::Timeout`].
    pub result: DarkResult,
    /// What went wrong.
    pub error: String,
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe {
    decisions: [AtomicU64; Decision::ALL.len()],
}

#[derive(Debug)]
pub(crate) struct Stats {
    stripes: [Stripe; STRIPES],
    dark: [AtomicU64; DarkResult::ALL.len()],
    compared: [AtomicU64; CompareResult::ALL.len()],
    pub(crate) real_latency: Histogram,
    pub(crate) dark_latency: Histogram,
    /// Bytes of copies queued or being sent (the byte budget).
    pub(crate) pending_bytes: AtomicU64,
    /// Copies queued or being sent.
    pub(crate) pending: AtomicU64,
    mismatches: Mutex<VecDeque<MismatchSample>>,
    errors: Mutex<VecDeque<ErrorSample>>,
    sample_cap: usize,
}

impl Stats {
    pub(crate) fn new(sample_cap: usize) -> Self {
        Stats {
            stripes: Default::default(),
            dark: Default::default(),
            compared: Default::default(),
            real_latency: Histogram::default(),
            dark_latency: Histogram::default(),
            pending_bytes: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            mismatches: Mutex::new(VecDeque::new()),
            errors: Mutex::new(VecDeque::new()),
            sample_cap,
        }
    }

    #[inline]
    pub(crate) fn decided(&self, d: Decision) {
        self.stripes[stripe_index()].decisions[d as usize].fetch_add(1, Relaxed);
    }

    pub(crate) fn dark(&self, r: DarkResult) {
        self.dark[r as usize].fetch_add(1, Relaxed);
    }

    pub(crate) fn compared(&self, r: CompareResult) {
        self.compared[r as usize].fetch_add(1, Relaxed);
    }

    pub(crate) fn mismatch(&self, sample: MismatchSample) {
        push_capped(&self.mismatches, sample, self.sample_cap);
    }

    pub(crate) fn error(&self, sample: ErrorSample) {
        push_capped(&self.errors, sample, self.sample_cap);
    }

    pub(crate) fn snapshot(&self) -> MirrorSnapshot {
        let mut decisions = [0; Decision::ALL.len()];
        for st in &self.stripes {
            for (o, c) in decisions.iter_mut().zip(&st.decisions) {
                *o += c.load(Relaxed);
            }
        }
        let load = |a: &[AtomicU64], out: &mut [u64]| {
            for (o, c) in out.iter_mut().zip(a) {
                *o = c.load(Relaxed);
            }
        };
        let mut dark = [0; DarkResult::ALL.len()];
        load(&self.dark, &mut dark);
        let mut compared = [0; CompareResult::ALL.len()];
        load(&self.compared, &mut compared);
        MirrorSnapshot {
            decisions,
            dark,
            compared,
            pending: self.pending.load(Relaxed),
            pending_bytes: self.pending_bytes.load(Relaxed),
            real_latency: self.real_latency.snapshot(),
            dark_latency: self.dark_latency.snapshot(),
        }
    }

    pub(crate) fn mismatch_samples(&self) -> Vec<MismatchSample> {
        self.mismatches.lock().map(|q| q.iter().cloned().collect()).unwrap_or_default()
    }

    pub(crate) fn error_samples(&self) -> Vec<ErrorSample> {
        self.errors.lock().map(|q| q.iter().cloned().collect()).unwrap_or_default()
    }
}

fn push_capped<T>(queue: &Mutex<VecDeque<T>>, item: T, cap: usize) {
    if cap == 0 {
        return;
    }
    // A poisoned lock only means another thread panicked mid-push; the queue is still usable.
    let mut q = queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    while q.len() >= cap {
        q.pop_front();
    }
    q.push_back(item);
}

pub(crate) fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A point-in-time copy of a mirror's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MirrorSnapshot {
    /// Real requests by what the mirror did with them, in [`Decision::ALL`] order.
    pub decisions: [u64; Decision::ALL.len()],
    /// Queued copies by what became of them, in [`DarkResult::ALL`] order.
    pub dark: [u64; DarkResult::ALL.len()],
    /// Comparisons by outcome, in [`CompareResult::ALL`] order.
    pub compared: [u64; CompareResult::ALL.len()],
    /// Copies queued or being sent now.
    pub pending: u64,
    /// Their bytes.
    pub pending_bytes: u64,
    /// Latency of the mirrored requests' real answers (to the response head).
    pub real_latency: HistogramSnapshot,
    /// Latency of the dark answers (to the response head).
    pub dark_latency: HistogramSnapshot,
}

impl MirrorSnapshot {
    /// Requests with one decision.
    pub fn decided(&self, d: Decision) -> u64 {
        self.decisions[d as usize]
    }

    /// Copies with one result at the dark target.
    pub fn dark(&self, r: DarkResult) -> u64 {
        self.dark[r as usize]
    }

    /// Comparisons with one outcome.
    pub fn compared(&self, r: CompareResult) -> u64 {
        self.compared[r as usize]
    }

    /// The counters in the Prometheus text format, labelled with `service`.
    pub fn to_prometheus(&self, service: &str) -> String {
        let service: String = service.chars().filter(|c| !matches!(c, '"' | '\\' | '\n')).collect();
        let mut out = String::new();
        family(
            &mut out,
            "synth_mirror_requests_total",
            "counter",
            "Real requests the mirror looked at, by what it did with them.",
        );
        for d in Decision::ALL {
            let _ = writeln!(
                out,
                "synth_mirror_requests_total{{service=\"{service}\",decision=\"{}\"}} {}",
                d.as_str(),
                self.decided(d)
            );
        }
        family(&mut out, "synth_mirror_dark_total", "counter", "Copies sent to the dark target, by result.");
        for r in DarkResult::ALL {
            let _ = writeln!(
                out,
                "synth_mirror_dark_total{{service=\"{service}\",result=\"{}\"}} {}",
                r.as_str(),
                self.dark(r)
            );
        }
        family(
            &mut out,
            "synth_mirror_compared_total",
            "counter",
            "Real and dark answers compared, by outcome.",
        );
        for r in CompareResult::ALL {
            let _ = writeln!(
                out,
                "synth_mirror_compared_total{{service=\"{service}\",result=\"{}\"}} {}",
                r.as_str(),
                self.compared(r)
            );
        }
        family(&mut out, "synth_mirror_pending", "gauge", "Copies queued or being sent.");
        let _ = writeln!(out, "synth_mirror_pending{{service=\"{service}\"}} {}", self.pending);
        family(&mut out, "synth_mirror_pending_bytes", "gauge", "Bytes of the copies queued or being sent.");
        let _ = writeln!(out, "synth_mirror_pending_bytes{{service=\"{service}\"}} {}", self.pending_bytes);
        family(
            &mut out,
            "synth_mirror_latency_seconds",
            "histogram",
            "Time to the response head of mirrored requests: the real answer and the dark one.",
        );
        for (side, h) in [("real", &self.real_latency), ("dark", &self.dark_latency)] {
            let mut cumulative = 0;
            for (i, c) in h.counts.iter().enumerate() {
                cumulative += c;
                let le = LATENCY_BUCKETS.get(i).map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
                let _ = writeln!(
                    out,
                    "synth_mirror_latency_seconds_bucket{{service=\"{service}\",side=\"{side}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "synth_mirror_latency_seconds_sum{{service=\"{service}\",side=\"{side}\"}} {}",
                h.sum.as_secs_f64()
            );
            let _ = writeln!(
                out,
                "synth_mirror_latency_seconds_count{{service=\"{service}\",side=\"{side}\"}} {cumulative}"
            );
        }
        out
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantile_bounds() {
        let h = Histogram::default();
        for ms in [1, 2, 3, 40, 2000] {
            h.record(Duration::from_millis(ms));
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 5);
        assert_eq!(s.quantile_upper_bound(0.2), Some(Duration::from_secs_f64(0.001)));
        assert_eq!(s.quantile_upper_bound(0.6), Some(Duration::from_secs_f64(0.005)));
        assert_eq!(s.quantile_upper_bound(1.0), Some(Duration::from_secs_f64(2.5)));
        assert_eq!(HistogramSnapshot::default().quantile_upper_bound(0.5), None);
    }

    #[test]
    fn samples_are_capped_oldest_first_out() {
        let stats = Stats::new(2);
        for i in 0..5u64 {
            stats.error(ErrorSample {
                at_unix_ms: i,
                method: "GET".into(),
                path: "/".into(),
                result: DarkResult::Error,
                error: String::new(),
            });
        }
        let kept: Vec<u64> = stats.error_samples().iter().map(|s| s.at_unix_ms).collect();
        assert_eq!(kept, [3, 4]);
    }
}
