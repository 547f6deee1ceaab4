//! Preflight: every journey once, tagged, one after the other; per step, which services saw it
//! (`synthetic-traffic-path`) and which guards engaged (`synthetic-traffic-guards`), compared
//! with the step's `expect_path` and `expect_guards`. A missing hop or guard fails it, and
//! `loadgen run` does not start.

use std::{fmt::Write as _, sync::Arc};

use crate::{
    engine::Observation,
    scenario::{Scenario, Step},
};

/// One request of the preflight and what is wrong with it.
#[derive(Clone, Debug)]
pub struct Checked {
    /// The journey.
    pub journey: Arc<str>,
    /// What the answer said.
    pub seen: Observation,
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
}

impl Report {
    /// No missing hop, guard or unreached expectation.
    pub fn passed(&self) -> bool {
        self.unreached.is_empty() && self.checked.iter().all(|c| c.problems.is_empty())
    }

    /// The table and verdict, for people.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<14} {:<24} {:>6} {:>5}  {:<32} {:<32} check",
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
                "{:<14} {:<24} {:>6} {:>5}  {:<32} {:<32} {check}",
                clip(&c.journey, 14),
                clip(&o.step, 24),
                status,
                if o.seen { "yes" } else { "no" },
                clip(o.path.as_deref().unwrap_or("-"), 32),
                clip(o.guards.as_deref().unwrap_or("-"), 32),
            );
        }
        for c in &self.checked {
            for p in &c.problems {
                let _ = writeln!(out, "FAIL {} / {}: {p}", c.journey, c.seen.step);
            }
        }
        for (j, s) in &self.unreached {
            let _ = writeln!(
                out,
                "FAIL {j} / {s}: not reached (the journey stopped before it); its expectations are unchecked"
            );
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

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() > n { s.chars().take(n - 1).chain(['…']).collect() } else { s.to_owned() }
}

/// Whether any step of the scenario declares `expect_path` or `expect_guards`.
pub fn declares_expectations(scenario: &Scenario) -> bool {
    fn any(steps: &[Step]) -> bool {
        steps.iter().any(|s| match s {
            Step::Request(r) => !r.expect_path.is_empty() || !r.expect_guards.is_empty(),
            Step::Loop { steps, .. } => any(steps),
            Step::Think(_) => false,
        })
    }
    scenario.journeys.iter().any(|j| any(&j.steps))
}

/// The request steps of `steps` in the order they run (loops unrolled): name and whether it
/// expects something.
fn flatten<'a>(scenario: &'a Scenario, steps: &'a [Step], out: &mut Vec<(Arc<str>, bool)>) {
    for s in steps {
        match s {
            Step::Request(r) => out.push((
                scenario.step_names.get(r.stat).cloned().unwrap_or_else(|| Arc::from("?")),
                !r.expect_path.is_empty() || !r.expect_guards.is_empty(),
            )),
            Step::Loop { count, steps } => {
                for _ in 0..*count {
                    flatten(scenario, steps, out);
                }
            }
            Step::Think(_) => {}
        }
    }
}

/// Checks what the preflight saw against what the scenario expects.
pub fn check(scenario: &Scenario, results: Vec<(Arc<str>, Vec<Observation>)>) -> Report {
    let mut checked = Vec::new();
    let mut unreached = Vec::new();
    for (j, (name, seen)) in results.into_iter().enumerate() {
        let mut planned = Vec::new();
        if let Some(journey) = scenario.journeys.get(j) {
            flatten(scenario, &journey.steps, &mut planned);
        }
        for (step, expects) in planned.iter().skip(seen.len()) {
            if *expects {
                unreached.push((name.clone(), step.clone()));
            }
        }
        for o in seen {
            let problems = problems(&o);
            checked.push(Checked { journey: name.clone(), seen: o, problems });
        }
    }
    Report { checked, unreached, declared: declares_expectations(scenario) }
}

fn problems(o: &Observation) -> Vec<String> {
    let mut out = Vec::new();
    if o.expect_path.is_empty() && o.expect_guards.is_empty() {
        return out;
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
    let guards: Vec<&str> = o.guards.as_deref().unwrap_or("").split(',').map(str::trim).collect();
    let missing: Vec<&str> =
        o.expect_guards.iter().map(String::as_str).filter(|g| !guards.contains(g)).collect();
    if !missing.is_empty() {
        out.push(format!(
            "missing guard{} {} (engaged: {}): that side effect may be real for synthetic traffic",
            if missing.len() > 1 { "s" } else { "" },
            missing.join(", "),
            o.guards.as_deref().filter(|g| !g.is_empty()).unwrap_or("none"),
        ));
    }
    out
}
