//! The general side-effect guard: the real effect for real traffic, a stub for synthetic traffic,
//! and an error when the input is synthetic but the request is not.
//!
//! # Example: a payment charge
//!
//! ```
//! use synth_guards::{ContextLost, Guard};
//! # use std::time::Duration;
//! # use synth_ctx::{KeyRing, Origin, RunId, Signer, SyntheticFutureExt as _};
//!
//! #[derive(Debug, PartialEq)]
//! enum Charge { Captured { id: String }, Stubbed }
//!
//! async fn charge(card: &str, cents: u64) -> Result<Charge, ContextLost> {
//!     # async fn call_the_card_network(_: &str, _: u64) -> String { "ch_123".into() }
//!     let guard = Guard::new("payment.charge");
//!     // A test card number is synthetic input: in a real request it means the marker was lost
//!     // on the way, and the charge is refused with an error (never stubbed as a success).
//!     let test_card = card.starts_with("4000000000000");
//!     guard
//!         .run_checked(
//!             test_card,
//!             async { Charge::Captured { id: call_the_card_network(card, cents).await } },
//!             |_synthetic| Charge::Stubbed, // only for synthetic requests: no money moves
//!         )
//!         .await
//! }
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! # let marker = Signer::new(KeyRing::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8")?)
//! #     .mint_synthetic(Origin::Load, &RunId::new("r1")?, Duration::from_secs(60));
//! assert_eq!(charge("4242424242424242", 500).await, Ok(Charge::Captured { id: "ch_123".into() }));
//! // A synthetic request (its marker verified, see synth-tower): stubbed.
//! assert_eq!(charge("4000000000000002", 500).in_synthetic_scope(&marker).await, Ok(Charge::Stubbed));
//! // A test card in a real request: refused, counted, logged; the caller answers with an error.
//! let lost = charge("4000000000000002", 500).await.unwrap_err();
//! assert_eq!(lost.guard(), "payment.charge");
//! assert!(Guard::new("payment.charge").stats().context_lost >= 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! **Never share a guard's outcome between requests.** Work that one request starts and others
//! await (a `OnceCell`, a cache's `get_with`, a shared future) runs in the first caller's scope: if
//! that caller is synthetic, the stub ends up in the cache and real requests get it as if the
//! effect had happened. Key such caches by [`synth_ctx::current`] (or keep one per kind of
//! traffic), or fill them outside any request.
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

/// A guard refused an effect because its input is synthetic (a reserved test identity, a test
/// card) while the request carries no synthetic context: the marker was lost on the way. Nothing
/// ran; the caller must answer with an error, never with a stand-in success, because a real
/// request that looks like a test would otherwise "succeed" without its effect.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "context lost at guard `{guard}`: the input is a synthetic identity but the request carries no \
     synthetic-traffic marker, so the effect was refused. Propagate the marker on every hop (and into \
     spawned tasks) up to this guard, or send real input"
)]
pub struct ContextLost {
    guard: Arc<str>,
}

impl ContextLost {
    /// The name of the guard that refused.
    pub fn guard(&self) -> &str {
        &self.guard
    }
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

/// The guards of one service, by name: whose counters its `/metrics` page shows.
///
/// [`Guard::new`] uses the process-wide [`GuardRegistry::global`]; a process that hosts several
/// services gives each one a registry of its own, so each page reports that service's guards
/// only. Guards of the same name in one registry share their counters. Cheap to clone.
///
/// The counters are exported **only** through [`render_prometheus`](Self::render_prometheus)
/// (and [`stats`](Self::stats)), never also through the `metrics` facade: a page that joins
/// the two would otherwise carry each family twice, and Prometheus drops such a scrape whole.
///
/// ```
/// use synth_guards::GuardRegistry;
///
/// let orders = GuardRegistry::new();
/// let charge = orders.guard("payment.charge");
/// assert!(charge.decide(false).allows_effect());
/// assert_eq!(orders.stats()["payment.charge"].executed, 1);
/// assert!(orders.render_prometheus().contains("synth_guard_executed_total{guard=\"payment.charge\"} 1"));
/// assert!(!GuardRegistry::new().render_prometheus().contains("payment.charge"), "another service's page");
/// ```
#[derive(Clone, Debug, Default)]
pub struct GuardRegistry {
    guards: Arc<Mutex<BTreeMap<Arc<str>, Arc<Counters>>>>,
}

impl GuardRegistry {
    /// An empty registry, for one service.
    pub fn new() -> Self {
        Self::default()
    }

    /// The process-wide registry that [`Guard::new`] uses.
    pub fn global() -> &'static GuardRegistry {
        static GLOBAL: OnceLock<GuardRegistry> = OnceLock::new();
        GLOBAL.get_or_init(GuardRegistry::new)
    }

    /// The guard called `name` in this registry (see [`Guard::new`] for names).
    pub fn guard(&self, name: &str) -> Guard {
        let mut guards = self.guards.lock().unwrap_or_else(PoisonError::into_inner);
        let (name, counters) = match guards.get_key_value(name) {
            Some((k, v)) => (k.clone(), v.clone()),
            None => {
                let name: Arc<str> = Arc::from(name);
                let counters = Arc::new(Counters::default());
                guards.insert(name.clone(), counters.clone());
                (name, counters)
            }
        };
        if !synth_ctx::trail::is_valid_name(&name) {
            tracing::warn!(guard = %name, "guard name cannot appear in the synthetic-traffic-guards report");
        }
        Guard { name, counters }
    }

    /// Counts of every guard in this registry, by name.
    pub fn stats(&self) -> BTreeMap<String, GuardStats> {
        let guards = self.guards.lock().unwrap_or_else(PoisonError::into_inner);
        guards.iter().map(|(k, v)| (k.to_string(), stats_of(v))).collect()
    }

    /// This registry's counters in the Prometheus text format: `synth_guard_executed_total`,
    /// `synth_guard_suppressed_total` and `synth_guard_context_lost_total`, labelled `guard`,
    /// each family once with its `HELP` and `TYPE`.
    pub fn render_prometheus(&self) -> String {
        let stats = self.stats();
        let mut out = String::new();
        type Family = (&'static str, &'static str, fn(&GuardStats) -> u64);
        let families: [Family; 3] = [
            ("synth_guard_executed_total", "Side effects run for real traffic.", |s| s.executed),
            ("synth_guard_suppressed_total", "Side effects suppressed for synthetic traffic.", |s| {
                s.suppressed
            }),
            (
                "synth_guard_context_lost_total",
                "Synthetic input seen without a synthetic context (refused).",
                |s| s.context_lost,
            ),
        ];
        for (family, help, value) in families {
            let _ = writeln!(out, "# HELP {family} {help}\n# TYPE {family} counter");
            for (name, s) in &stats {
                let _ = writeln!(out, "{family}{{guard=\"{}\"}} {}", escape_label(name), value(s));
            }
        }
        out
    }
}

/// A label value as the exposition format writes it: `\`, `"` and newlines escaped.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
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
        GuardRegistry::global().guard(name)
    }

    /// The guard's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `real` for real traffic; for synthetic traffic returns `stub(&synthetic)` without
    /// running it. It cannot see the input: when the caller can, [`run_checked`](Self::run_checked)
    /// also refuses synthetic input in a real request.
    pub async fn run<T>(&self, real: impl Future<Output = T>, stub: impl FnOnce(&Synthetic) -> T) -> T {
        if let Some(s) = synth_ctx::current() {
            self.suppressed(&s);
            return stub(&s);
        }
        self.executed();
        tracing::trace!(guard = %self.name, "side effect runs: real traffic");
        real.await
    }

    /// Like [`run`](Self::run), and fails closed when the caller can see that the input is
    /// synthetic (`looks_synthetic`: a reserved test identity, a test card) while the context says
    /// real: neither `real` nor `stub` runs, and the answer is [`ContextLost`], counted and logged
    /// as an error, because it is a propagation bug the operator must fix. `stub` is called for
    /// synthetic requests only.
    pub async fn run_checked<T>(
        &self,
        looks_synthetic: bool,
        real: impl Future<Output = T>,
        stub: impl FnOnce(&Synthetic) -> T,
    ) -> Result<T, ContextLost> {
        match self.decide(looks_synthetic) {
            Decision::Real => Ok(real.await),
            Decision::Synthetic(s) => Ok(stub(&s)),
            Decision::ContextLost => Err(self.lost()),
        }
    }

    /// Refuses synthetic input in a real request before anything happens: the same check as
    /// [`run_checked`](Self::run_checked) (counted and logged when it fails), and nothing is
    /// counted when it passes. For a handler whose own effects come before the guarded one (an
    /// order stored before its charge): check first, then call `run_checked` with the same input.
    pub fn check_context(&self, looks_synthetic: bool) -> Result<(), ContextLost> {
        if looks_synthetic && !synth_ctx::is_synthetic() {
            return Err(self.context_lost("the input is a synthetic identity"));
        }
        Ok(())
    }

    /// Decides, counts and records, for callers that cannot wrap the effect in a future. On
    /// [`Decision::ContextLost`] the caller must refuse with an error, as
    /// [`run_checked`](Self::run_checked) does.
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
    }

    pub(crate) fn suppressed(&self, s: &Synthetic) {
        self.counters.suppressed.fetch_add(1, Relaxed);
        synth_ctx::trail::record_guard(&self.name);
        tracing::debug!(guard = %self.name, synthetic.run = %s.run(), "side effect suppressed for synthetic traffic");
    }

    /// Counts and logs a "context lost" mismatch found by the caller, and returns the error to
    /// answer with.
    pub fn context_lost(&self, detail: &str) -> ContextLost {
        self.counters.context_lost.fetch_add(1, Relaxed);
        tracing::error!(
            guard = %self.name,
            detail,
            "context lost: synthetic input in a request without a synthetic context; the effect was refused. \
             Check that every hop propagates the synthetic-traffic marker."
        );
        self.lost()
    }

    /// The error for a mismatch already counted (by [`decide`](Self::decide)).
    fn lost(&self) -> ContextLost {
        ContextLost { guard: self.name.clone() }
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

/// Counts of every guard in the process-wide registry, by name.
pub fn all_stats() -> BTreeMap<String, GuardStats> {
    GuardRegistry::global().stats()
}

/// The process-wide registry's counters in the Prometheus text format; see
/// [`GuardRegistry::render_prometheus`].
pub fn render_prometheus() -> String {
    GuardRegistry::global().render_prometheus()
}
