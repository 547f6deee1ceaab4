//! Preflight: every journey once, tagged, one after the other; per step, which services saw it
//! (`synthetic-traffic-path`) and which guards engaged (`synthetic-traffic-guards`), compared
//! with the step's `expect_path` and `expect_guards`. A missing hop or guard fails it, and
//! `loadgen run` does not start.
//!
//! Guards that engage after the response (an e-mail sent from a spawned task) cannot be in any
//! answer header: with `--observe URL` (the services' `/metrics` pages, see
//! [`observe`](crate::observe)) the guards whose suppressed counter moved during a journey count
//! as engaged by it, marked "after the response" — each rise for one request only, so two steps
//! that expect `email` need it to rise by two.

use std::{collections::BTreeMap, fmt::Write as _, sync::Arc};

use crate::{
    engine::Observation,
    scenario::{Scenario, Step, walk},
};

/// What the preflight saw of one journey.
#[derive(Clone, Debug)]
pub(crate) struct JourneySeen {
    /// Its index in the scenario's journeys.
    pub journey: usize,
    /// The journey.
    pub name: Arc<str>,
    /// Each request's answer, in order.
    pub requests: Vec<Observation>,
    /// Guards engaged after the response (from `--observe`): how much each one's suppressed
    /// counter rose during the journey, summed over the observed pages.
    pub after_response: BTreeMap<String, f64>,
    /// Why it failed the preflight on its own: a Rust journey's error, a panic, the time limit.
    pub failure: Option<String>,
}

/// What the preflight saw.
#[derive(Clone, Debug, Default)]
pub(crate) struct Seen {
    /// Every journey, in order.
    pub journeys: Vec<JourneySeen>,
    /// Whether `--observe` pages were given.
    pub observed: bool,
    /// Guard counters that moved with no journey in flight (then nothing is attributed).
    pub noise: Vec<(String, String)>,
    /// An observed page that could not be read.
    pub observe_error: Option<String>,
    /// A stop ended it before every journey ran.
    pub stopped: bool,
}

/// One request of the preflight and what is wrong with it.
#[derive(Clone, Debug)]
pub struct Checked {
    /// The journey.
    pub journey: Arc<str>,
    /// What the answer said.
    pub seen: Observation,
    /// Expected guards this step's journey engaged after the response (from `--observe`).
    pub after_response: Vec<String>,
    /// Why it fails the preflight (empty: fine, or nothing expected).
    pub problems: Vec<String>,
}

/// The preflight's outcome.
#[derive(Clone, Debug)]
pub struct Report {
    /// Every request, in order.
    pub checked: Vec<Checked>,
    /// Steps with expectations that were never reached (their journey stopped before them).
    pub unreached: Vec<(Arc<str>, Arc<str>)>,
    /// Whether any step declares an expectation.
    pub declared: bool,
    /// Guard counters that moved with no journey in flight, so nothing was attributed.
    pub noise: Vec<(String, String)>,
    /// An observed page that could not be read (fails the preflight).
    pub observe_error: Option<String>,
    /// Journeys that failed on their own (a Rust journey's error, a panic, one that did not
    /// end in time), with why: each fails the preflight, since what it did not reach was not
    /// checked.
    pub failed: Vec<(Arc<str>, String)>,
    /// A stop ended the preflight before every journey ran: it checked too little to pass.
    pub stopped: bool,
}

impl Report {
    /// No missing hop, guard or unreached expectation, and every observed page was read.
    pub fn passed(&self) -> bool {
        self.unreached.is_empty()
            && self.failed.is_empty()
            && !self.stopped
            && self.observe_error.is_none()
            && self.checked.iter().all(|c| c.problems.is_empty())
    }

    /// The table and verdict, for people.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<14} {:<24} {:>6} {:>5}  {:<32} {:<44} check",
            "journey", "step", "status", "seen", "path", "guards"
        );
        for c in &self.checked {
            let o = &c.seen;
            let status = match (o.status, o.error) {
                (Some(s), _) => s.to_string(),
                (None, Some(e)) => e.as_str().to_owned(),
                (None, None) => "-".into(),
            };
            let expects = !o.expect_path.is_empty() || !o.expect_guards.is_empty();
            let check = if !c.problems.is_empty() {
                "FAIL"
            } else if expects {
                "ok"
            } else {
                "-"
            };
            let _ = writeln!(
                out,
                "{:<14} {:<24} {:>6} {:>5}  {:<32} {:<44} {check}",
                clip(&c.journey, 14),
                clip(&o.step, 24),
                status,
                if o.seen { "yes" } else { "no" },
                clip(o.path.as_deref().unwrap_or("-"), 32),
                clip(&guards_cell(o.guards.as_deref(), &c.after_response), 44),
            );
        }
        for c in &self.checked {
            for p in &c.problems {
                let _ = writeln!(out, "FAIL {} / {}: {p}", c.journey, c.seen.step);
            }
        }
        for c in self.checked.iter().filter(|c| !c.after_response.is_empty()) {
            let _ = writeln!(
                out,
                "after the response: {} / {}: {} (its suppressed counter moved on an --observe page)",
                c.journey,
                c.seen.step,
                c.after_response.join(", ")
            );
        }
        if !self.noise.is_empty() {
            let moved: Vec<String> = self.noise.iter().map(|(g, at)| format!("{g} {at}")).collect();
            let _ = writeln!(
                out,
                "guard counters moved with no journey in flight ({}): another synthetic run? Nothing was \
                 attributed to a journey from --observe",
                moved.join("; ")
            );
        }
        if let Some(e) = &self.observe_error {
            let _ = writeln!(out, "FAIL {e}");
        }
        for (j, s) in &self.unreached {
            let _ = writeln!(
                out,
                "FAIL {j} / {s}: not reached (the journey stopped before it); its expectations are unchecked"
            );
        }
        for (j, why) in &self.failed {
            let _ = writeln!(
                out,
                "FAIL {j}: {why}; what the journey did not reach was not checked (fix it, or --no-preflight)"
            );
        }
        if self.stopped {
            let _ = writeln!(out, "FAIL stopped before every journey ran: nothing more was checked");
        }
        let expected = self
            .checked
            .iter()
            .filter(|c| !c.seen.expect_path.is_empty() || !c.seen.expect_guards.is_empty())
            .count();
        let seen = self.checked.iter().filter(|c| c.seen.seen).count();
        let _ = writeln!(
            out,
            "preflight {}: {} requests, {} tagged by the target, {expected} with expectations checked",
            if self.passed() { "passed" } else { "FAILED" },
            self.checked.len(),
            seen
        );
        out
    }
}

/// The guards a step reported, then those its journey engaged after the response.
fn guards_cell(reported: Option<&str>, after: &[String]) -> String {
    let reported = reported.filter(|g| !g.is_empty());
    match (reported, after.is_empty()) {
        (None, true) => "-".into(),
        (Some(r), true) => r.to_owned(),
        (None, false) => format!("{} (after)", after.join(",")),
        (Some(r), false) => format!("{r} +{} (after)", after.join(",")),
    }
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() > n { s.chars().take(n - 1).chain(['…']).collect() } else { s.to_owned() }
}

/// Whether any step of the scenario declares `expect_path` or `expect_guards`, or may: a
/// journey written in Rust says what it expects only as it runs, so it is always preflighted.
pub(crate) fn declares_expectations(scenario: &Scenario) -> bool {
    scenario.journeys.iter().any(|j| {
        j.code.is_some()
            || walk::steps(&j.steps)
                .filter_map(|v| v.sent())
                .any(|r| !r.expect_path.is_empty() || !r.expect_guards.is_empty())
    })
}

/// The request steps of `steps` in the order they run (loops unrolled): name and whether it
/// expects something.
fn flatten(scenario: &Scenario, steps: &[Step]) -> Vec<(Arc<str>, bool)> {
    walk::run_order(steps)
        .filter_map(|v| v.sent())
        .map(|r| {
            (
                scenario.step_names.get(r.stat).cloned().unwrap_or_else(|| Arc::from("?")),
                !r.expect_path.is_empty() || !r.expect_guards.is_empty(),
            )
        })
        .collect()
}

/// Checks what the preflight saw against what the scenario expects.
pub(crate) fn check(scenario: &Scenario, seen: Seen) -> Report {
    let mut checked = Vec::new();
    let mut unreached = Vec::new();
    let mut failed = Vec::new();
    for journey_seen in seen.journeys {
        let JourneySeen { journey: j, name, requests, after_response, failure } = journey_seen;
        if let Some(why) = failure {
            failed.push((name.clone(), why));
        }
        let planned =
            scenario.journeys.get(j).map(|journey| flatten(scenario, &journey.steps)).unwrap_or_default();
        for (step, expects) in planned.iter().skip(requests.len()) {
            if *expects {
                unreached.push((name.clone(), step.clone()));
            }
        }
        // Every request credited with a guard after the response needs an engagement of its
        // own: one rise of the counter cannot prove two steps guarded.
        let mut credited: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for o in &requests {
            for g in after_credit(o, &after_response) {
                credited.entry(g).or_default().push(&o.step);
            }
        }
        let short: BTreeMap<String, String> = credited
            .iter()
            .filter_map(|(g, steps)| {
                let rise = after_response.get(*g).copied().unwrap_or(0.0);
                (rise < steps.len() as f64).then(|| {
                    let why = format!(
                        "guard {g} rose by {rise} after the response during this journey, but {} of its \
                         requests expect it there ({}): at least one of them did not engage it, so its \
                         side effect may be real for synthetic traffic; put such steps in journeys of \
                         their own, or have the service report the guard in synthetic-traffic-guards",
                        steps.len(),
                        steps.join(", "),
                    );
                    ((*g).to_owned(), why)
                })
            })
            .collect();
        for o in requests {
            let (mut problems, after) = problems(&o, &after_response, seen.observed);
            let (after, unproven): (Vec<String>, Vec<String>) =
                after.into_iter().partition(|g| !short.contains_key(g));
            problems.extend(unproven.iter().filter_map(|g| short.get(g).cloned()));
            checked.push(Checked { journey: name.clone(), seen: o, after_response: after, problems });
        }
    }
    Report {
        checked,
        unreached,
        declared: declares_expectations(scenario),
        noise: seen.noise,
        observe_error: seen.observe_error,
        failed,
        stopped: seen.stopped,
    }
}

/// The expected guards of `o` that its answer did not report and that its journey engaged after
/// the response (`deferred`, from `--observe`).
fn after_credit<'a>(o: &'a Observation, deferred: &BTreeMap<String, f64>) -> Vec<&'a str> {
    let reported = reported_guards(o);
    o.expect_guards
        .iter()
        .map(String::as_str)
        .filter(|g| !reported.contains(g) && deferred.contains_key(*g))
        .collect()
}

/// The guards an answer reported in `synthetic-traffic-guards`.
fn reported_guards(o: &Observation) -> Vec<&str> {
    o.guards.as_deref().unwrap_or("").split(',').map(str::trim).collect()
}

/// What is wrong with one request, and which of its expected guards its journey engaged after
/// the response (`deferred`, from `--observe`).
fn problems(o: &Observation, deferred: &BTreeMap<String, f64>, observed: bool) -> (Vec<String>, Vec<String>) {
    let mut out = Vec::new();
    if o.expect_path.is_empty() && o.expect_guards.is_empty() {
        return (out, Vec::new());
    }
    if let Some(e) = o.error {
        let what = o.status.map_or_else(|| e.as_str().to_owned(), |s| format!("{} ({s})", e.as_str()));
        out.push(format!("the step failed: {what}"));
    }
    if !o.seen {
        out.push(
            "the answer did not echo the run in synthetic-traffic-seen: the first service does not verify the marker"
                .into(),
        );
    }
    let path = o.path.as_deref().unwrap_or("");
    let services: Vec<&str> = synth_ctx::trail::path_services(path).collect();
    let missing: Vec<&str> =
        o.expect_path.iter().map(String::as_str).filter(|s| !services.contains(s)).collect();
    if !missing.is_empty() {
        out.push(format!(
            "missing hop{} {} (path: {}): {} not see the marker, or a hop before it does not pass it on",
            if missing.len() > 1 { "s" } else { "" },
            missing.join(", "),
            if path.is_empty() { "none" } else { path },
            if missing.len() > 1 { "they did" } else { "it did" },
        ));
    }
    let guards = reported_guards(o);
    let (after, missing): (Vec<&str>, Vec<&str>) = o
        .expect_guards
        .iter()
        .map(String::as_str)
        .filter(|g| !guards.contains(g))
        .partition(|g| deferred.contains_key(*g));
    if !missing.is_empty() {
        let hint = if observed {
            ""
        } else {
            "; if it runs after the response (a spawned task), give --observe URL of that service's /metrics"
        };
        out.push(format!(
            "missing guard{} {} (engaged: {}): that side effect may be real for synthetic traffic{hint}",
            if missing.len() > 1 { "s" } else { "" },
            missing.join(", "),
            o.guards.as_deref().filter(|g| !g.is_empty()).unwrap_or("none"),
        ));
    }
    (out, after.into_iter().map(str::to_owned).collect())
}
