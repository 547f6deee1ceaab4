//! The general side-effect guard: the real effect for real traffic, a stub for synthetic traffic.
//!
//! # Example: a payment charge
//!
//! ```
//! use synth_guards::{Guard, Suppression};
//!
//! #[derive(Debug, PartialEq)]
//! enum Charge { Captured { id: String }, Stubbed }
//!
//! async fn charge(card: &str, cents: u64) -> Charge {
//!     # async fn call_the_card_network(_: &str, _: u64) -> String { "ch_123".into() }
//!     let guard = Guard::new("payment.charge");
//!     // A test card number means the request is synthetic even if the context was lost.
//!     let looks_synthetic = card.starts_with("4000000000000");
//!     guard
//!         .run_checked(looks_synthetic, async { Charge::Captured { id: call_the_card_network(card, cents).await } }, |why| {
//!             // Synthetic (or context lost): no money moves.
//!             let _ = matches!(why, Suppression::Synthetic(_) | Suppression::ContextLost);
//!             Charge::Stubbed
//!         })
//!         .await
//! }
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! assert_eq!(charge("4242424242424242", 500).await, Charge::Captured { id: "ch_123".into() });
//! assert_eq!(charge("4000000000000002", 500).await, Charge::Stubbed); // looks synthetic: refused
//! # });
//! ```
//!
//! Every decision is counted ([`Guard::stats`], [`render_prometheus`]: `synth_guard_executed_total`,
//! `synth_guard_suppressed_total`, `synth_guard_context_lost_total`, labelled `guard`), traced, and a
//! suppression adds the guard's name to the request's trail, so the response's
//! `synthetic-traffic-guards` header names it.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    future::Future,
    sync::{
        Arc, Mutex, OnceLock, PoisonError,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use synth_ctx::Synthetic;

/// Why a guard gave the stub outcome.
#[derive(Clone, Copy, Debug)]
pub enum Suppression<'a> {
    /// The request is synthetic.
    Synthetic(&'a Synthetic),
    /// The context says real, but the input is clearly synthetic (a reserved test identity):
    /// the synthetic context was lost somewhere. Fail closed: no real effect.
    ContextLost,
}

#[derive(Debug, Default)]
struct Counters {
    executed: AtomicU64,
    suppressed: AtomicU64,
    context_lost: AtomicU64,
}

/// Counts of one guard name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GuardStats {
    /// Real effects run.
    pub executed: u64,
    /// Effects suppressed because the request was synthetic.
    pub suppressed: u64,
    /// Effects refused because the input was synthetic while the context said real.
    pub context_lost: u64,
}

fn registry() -> &'static Mutex<BTreeMap<Arc<str>, Arc<Counters>>> {
    static REGISTRY: OnceLock<Mutex<BTreeMap<Arc<str>, Arc<Counters>>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// A named guard for one kind of side effect. Guards with the same name share their counters.
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct Guard {
    name: Arc<str>,
    counters: Arc<Counters>,
}

impl Guard {
    /// The guard called `name` (e.g. `payment.charge`, `email`). Use `A-Z a-z 0-9 - _ .` so the
    /// name can appear in the `synthetic-traffic-guards` report.
    pub fn new(name: &str) -> Self {
        let mut registry = registry().lock().unwrap_or_else(PoisonError::into_inner);
        let (name, counters) = match registry.get_key_value(name) {
            Some((k, v)) => (k.clone(), v.clone()),
            None => {
                let name: Arc<str> = Arc::from(name);
                let counters = Arc::new(Counters::default());
                registry.insert(name.clone(), counters.clone());
                (name, counters)
            }
        };
        if !synth_ctx::trail::is_valid_name(&name) {
            tracing::warn!(guard = %name, "guard name cannot appear in the synthetic-traffic-guards report");
        }
        Guard { name, counters }
    }

    /// The guard's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `real` for real traffic; for synthetic traffic returns `stub(Suppression::Synthetic)`
    /// without running it.
    pub async fn run<T>(&self, real: impl Future<Output = T>, stub: impl FnOnce(Suppression<'_>) -> T) -> T {
        self.run_checked(false, real, stub).await
    }

    /// Like [`run`](Self::run), and fails closed when the caller can see that the input is
    /// synthetic (`looks_synthetic`: a reserved test identity, a test card) while the context says
    /// real: the stub runs with [`Suppression::ContextLost`], and the mismatch is counted and
    /// logged as an error, because it is a propagation bug the operator must fix.
    pub async fn run_checked<T>(
        &self,
        looks_synthetic: bool,
        real: impl Future<Output = T>,
        stub: impl FnOnce(Suppression<'_>) -> T,
    ) -> T {
        match self.decide(looks_synthetic) {
            Decision::Real => real.await,
            Decision::Synthetic(s) => stub(Suppression::Synthetic(&s)),
            Decision::ContextLost => stub(Suppression::ContextLost),
        }
    }

    /// Decides, counts and records, for callers that cannot wrap the effect in a future.
    pub fn decide(&self, looks_synthetic: bool) -> Decision {
        if let Some(s) = synth_ctx::current() {
            self.suppressed(&s);
            return Decision::Synthetic(s);
        }
        if looks_synthetic {
            self.context_lost("the input is a synthetic identity");
            return Decision::ContextLost;
        }
        self.executed();
        tracing::trace!(guard = %self.name, "side effect runs: real traffic");
        Decision::Real
    }

    pub(crate) fn executed(&self) {
        self.counters.executed.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("synth_guard_executed_total", "guard" => self.name.to_string()).increment(1);
    }

    pub(crate) fn suppressed(&self, s: &Synthetic) {
        self.counters.suppressed.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("synth_guard_suppressed_total", "guard" => self.name.to_string()).increment(1);
        synth_ctx::trail::record_guard(&self.name);
        tracing::debug!(guard = %self.name, synthetic.run = %s.run(), "side effect suppressed for synthetic traffic");
    }

    /// Counts and logs a "context lost" mismatch found by the caller.
    pub fn context_lost(&self, detail: &str) {
        self.counters.context_lost.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("synth_guard_context_lost_total", "guard" => self.name.to_string()).increment(1);
        tracing::error!(
            guard = %self.name,
            detail,
            "context lost: synthetic input in a request without a synthetic context; the effect was refused. \
             Check that every hop propagates the synthetic-traffic marker."
        );
    }

    /// This guard's counters (shared by every guard of the same name).
    pub fn stats(&self) -> GuardStats {
        stats_of(&self.counters)
    }
}

/// What a guard decided.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Decision {
    /// Real traffic: run the effect.
    Real,
    /// Synthetic traffic: do not.
    Synthetic(Synthetic),
    /// Synthetic input without a synthetic context: do not, and fix the propagation.
    ContextLost,
}

impl Decision {
    /// Whether the real effect may run.
    pub fn allows_effect(&self) -> bool {
        matches!(self, Decision::Real)
    }
}

fn stats_of(c: &Counters) -> GuardStats {
    GuardStats {
        executed: c.executed.load(Relaxed),
        suppressed: c.suppressed.load(Relaxed),
        context_lost: c.context_lost.load(Relaxed),
    }
}

/// Counts of every guard of this process, by name.
pub fn all_stats() -> BTreeMap<String, GuardStats> {
    let registry = registry().lock().unwrap_or_else(PoisonError::into_inner);
    registry.iter().map(|(k, v)| (k.to_string(), stats_of(v))).collect()
}

/// Every guard's counters in the Prometheus text format.
pub fn render_prometheus() -> String {
    let stats = all_stats();
    let mut out = String::new();
    type Family = (&'static str, &'static str, fn(&GuardStats) -> u64);
    let families: [Family; 3] = [
        ("synth_guard_executed_total", "Side effects run for real traffic.", |s| s.executed),
        ("synth_guard_suppressed_total", "Side effects suppressed for synthetic traffic.", |s| s.suppressed),
        (
            "synth_guard_context_lost_total",
            "Synthetic input seen without a synthetic context (refused).",
            |s| s.context_lost,
        ),
    ];
    for (family, help, value) in families {
        let _ = writeln!(out, "# HELP {family} {help}\n# TYPE {family} counter");
        for (name, s) in &stats {
            let name: String = name.chars().filter(|c| !matches!(c, '"' | '\\' | '\n')).collect();
            let _ = writeln!(out, "{family}{{guard=\"{name}\"}} {}", value(s));
        }
    }
    out
}
