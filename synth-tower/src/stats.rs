//! Counters of what the server layer saw.

use std::{
    fmt::Write as _,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
};

use synth_ctx::{Origin, VerifyError};

/// Refusal reasons, as [`VerifyError::reason`] labels them; the last bucket catches reasons a
/// newer synth-ctx may add.
pub const REFUSAL_REASONS: [&str; 8] = [
    "oversized",
    "malformed",
    "unknown_key",
    "bad_signature",
    "expired",
    "ttl_too_long",
    "conflicting_markers",
    "other",
];

/// Why a synthetic request was shed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShedCause {
    /// The kill switch is on.
    KillSwitch,
    /// The user's shedding predicate said so.
    Predicate,
    /// Too many synthetic requests in flight.
    InFlightCap,
}

impl ShedCause {
    /// Every cause, in the order of [`StatsSnapshot::shed`].
    pub const ALL: [ShedCause; 3] = [ShedCause::KillSwitch, ShedCause::Predicate, ShedCause::InFlightCap];

    /// A stable label: `kill_switch`, `predicate` or `in_flight_cap`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ShedCause::KillSwitch => "kill_switch",
            ShedCause::Predicate => "predicate",
            ShedCause::InFlightCap => "in_flight_cap",
        }
    }
}

/// Shared counters of one server layer (all services it wraps). Cheap to clone.
///
/// Counting must not slow the requests it counts: each thread adds into its own cache-line
/// aligned stripe, so cores never contend on a counter; [`snapshot`](Self::snapshot) sums them.
#[derive(Clone, Debug, Default)]
pub struct SyntheticStats(Arc<Shared>);

pub(crate) const STRIPES: usize = 16;

#[derive(Debug, Default)]
struct Shared {
    stripes: [Stripe; STRIPES],
    /// Exact count of synthetic requests in flight, kept only when a cap needs it.
    capped_in_flight: AtomicUsize,
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe {
    real: AtomicU64,
    accepted: [AtomicU64; 3],
    rejected: [AtomicU64; REFUSAL_REASONS.len()],
    treated_as_real: AtomicU64,
    shed: [AtomicU64; 3],
    entered: AtomicU64,
    left: AtomicU64,
}

pub(crate) fn stripe_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Relaxed) % STRIPES;
    }
    INDEX.try_with(|i| *i).unwrap_or(0)
}

/// A point-in-time copy of [`SyntheticStats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Requests without a marker (plus refused ones treated as real).
    pub real: u64,
    /// Verified synthetic requests, by origin, in [`Origin::ALL`] order.
    pub accepted: [u64; 3],
    /// Refused markers, by reason, in [`REFUSAL_REASONS`] order.
    pub rejected: [u64; REFUSAL_REASONS.len()],
    /// Of the refused markers, how many went on as real requests (policy "treat as real").
    pub treated_as_real: u64,
    /// Shed synthetic requests, by cause, in [`ShedCause::ALL`] order.
    pub shed: [u64; 3],
    /// Synthetic requests being served right now.
    pub in_flight: usize,
}

impl StatsSnapshot {
    /// Verified synthetic requests of one origin.
    pub fn accepted(&self, origin: Origin) -> u64 {
        self.accepted[origin_index(origin)]
    }

    /// Refusals with a given reason label.
    pub fn rejected(&self, reason: &str) -> u64 {
        REFUSAL_REASONS.iter().position(|r| *r == reason).map_or(0, |i| self.rejected[i])
    }

    /// All refusals.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().sum()
    }

    /// Shed requests with a given cause.
    pub fn shed(&self, cause: ShedCause) -> u64 {
        self.shed[cause as usize]
    }

    /// All shed requests.
    pub fn shed_total(&self) -> u64 {
        self.shed.iter().sum()
    }

    /// The counters in the Prometheus text format, labelled with `service`.
    pub fn to_prometheus(&self, service: &str) -> String {
        let service: String = service.chars().filter(|c| !matches!(c, '"' | '\\' | '\n')).collect();
        let mut out = String::new();
        let _ = writeln!(out, "# HELP synth_requests_total Requests seen by the synth-tower server layer.");
        let _ = writeln!(out, "# TYPE synth_requests_total counter");
        let _ =
            writeln!(out, "synth_requests_total{{service=\"{service}\",synthetic=\"false\"}} {}", self.real);
        for origin in Origin::ALL {
            let _ = writeln!(
                out,
                "synth_requests_total{{service=\"{service}\",synthetic=\"true\",origin=\"{origin}\"}} {}",
                self.accepted(origin)
            );
        }
        let _ = writeln!(out, "# HELP synth_marker_rejected_total Markers refused, by reason.");
        let _ = writeln!(out, "# TYPE synth_marker_rejected_total counter");
        for (i, reason) in REFUSAL_REASONS.iter().enumerate() {
            let _ = writeln!(
                out,
                "synth_marker_rejected_total{{service=\"{service}\",reason=\"{reason}\"}} {}",
                self.rejected[i]
            );
        }
        let _ = writeln!(out, "# HELP synth_shed_total Synthetic requests shed, by cause.");
        let _ = writeln!(out, "# TYPE synth_shed_total counter");
        for cause in ShedCause::ALL {
            let _ = writeln!(
                out,
                "synth_shed_total{{service=\"{service}\",cause=\"{}\"}} {}",
                cause.as_str(),
                self.shed(cause)
            );
        }
        let _ = writeln!(out, "# HELP synth_in_flight Synthetic requests being served.");
        let _ = writeln!(out, "# TYPE synth_in_flight gauge");
        let _ = writeln!(out, "synth_in_flight{{service=\"{service}\"}} {}", self.in_flight);
        out
    }
}

fn origin_index(origin: Origin) -> usize {
    match origin {
        Origin::Load => 0,
        Origin::Replay => 1,
        Origin::Dark => 2,
    }
}

impl SyntheticStats {
    /// Fresh counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of the counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let mut out = StatsSnapshot::default();
        let (mut entered, mut left) = (0u64, 0u64);
        for st in &self.0.stripes {
            out.real += st.real.load(Relaxed);
            for (o, c) in out.accepted.iter_mut().zip(&st.accepted) {
                *o += c.load(Relaxed);
            }
            for (o, c) in out.rejected.iter_mut().zip(&st.rejected) {
                *o += c.load(Relaxed);
            }
            out.treated_as_real += st.treated_as_real.load(Relaxed);
            for (o, c) in out.shed.iter_mut().zip(&st.shed) {
                *o += c.load(Relaxed);
            }
            entered += st.entered.load(Relaxed);
            left += st.left.load(Relaxed);
        }
        out.in_flight = usize::try_from(entered.saturating_sub(left)).unwrap_or(usize::MAX);
        out
    }

    fn stripe(&self) -> &Stripe {
        &self.0.stripes[stripe_index()]
    }

    pub(crate) fn real(&self) {
        self.stripe().real.fetch_add(1, Relaxed);
    }

    pub(crate) fn accepted(&self, origin: Origin) {
        self.stripe().accepted[origin_index(origin)].fetch_add(1, Relaxed);
    }

    pub(crate) fn rejected(&self, error: &VerifyError) {
        let i =
            REFUSAL_REASONS.iter().position(|r| *r == error.reason()).unwrap_or(REFUSAL_REASONS.len() - 1);
        self.stripe().rejected[i].fetch_add(1, Relaxed);
    }

    pub(crate) fn treated_as_real(&self) {
        let stripe = self.stripe();
        stripe.treated_as_real.fetch_add(1, Relaxed);
        stripe.real.fetch_add(1, Relaxed);
    }

    pub(crate) fn shed(&self, cause: ShedCause) {
        self.stripe().shed[cause as usize].fetch_add(1, Relaxed);
    }

    /// Counts one more synthetic request in flight if that stays within `cap`.
    pub(crate) fn try_enter(&self, cap: Option<usize>) -> Option<InFlight> {
        if let Some(cap) = cap {
            let now = self.0.capped_in_flight.fetch_add(1, Relaxed) + 1;
            if now > cap {
                self.0.capped_in_flight.fetch_sub(1, Relaxed);
                return None;
            }
        }
        self.stripe().entered.fetch_add(1, Relaxed);
        Some(InFlight { shared: self.0.clone(), capped: cap.is_some() })
    }
}

/// One synthetic request in flight; leaving is counted on drop (on whichever thread drops it).
#[derive(Debug)]
pub(crate) struct InFlight {
    shared: Arc<Shared>,
    capped: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.shared.stripes[stripe_index()].left.fetch_add(1, Relaxed);
        if self.capped {
            self.shared.capped_in_flight.fetch_sub(1, Relaxed);
        }
    }
}
