//! Reports: threshold verdicts, the end-of-run summary table, and the JSON report.
//!
//! The JSON report has `schema_version` 1; each step's latency histogram is included in HDR
//! histogram V2 form (base64), so the reports of several runs or shards can be merged exactly.

use std::{fmt::Write as _, time::Duration};

use base64::Engine as _;
use hdrhistogram::serialization::{Serializer as _, V2Serializer};
use serde_json::json;

use crate::{
    api::RunOutcome,
    engine::Ending,
    scenario::{Scenario, Threshold, threshold::Metric},
    stats::{ErrorClass, StepStats, merge},
};

/// One second of a run, for the charts and the JSON report's `series`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    /// Seconds since the start.
    pub t: f64,
    /// Requests per second in this interval.
    pub rps: f64,
    /// Failed requests per second.
    pub errors_per_s: f64,
    /// Latency percentiles of the interval, ms (0 if nothing finished).
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
}

impl Point {
    /// The point of an interval.
    pub(crate) fn of(i: &crate::engine::Interval<'_>) -> Point {
        let secs = i.length.as_secs_f64().max(1e-9);
        let q =
            |p: f64| if i.latency.is_empty() { 0.0 } else { i.latency.value_at_quantile(p) as f64 / 1000.0 };
        Point {
            t: i.elapsed.as_secs_f64(),
            rps: i.requests as f64 / secs,
            errors_per_s: i.errors as f64 / secs,
            p50_ms: q(0.5),
            p95_ms: q(0.95),
            p99_ms: q(0.99),
        }
    }
}

/// A threshold and how the run did against it.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// The threshold as written.
    pub threshold: String,
    /// The step it applies to, if not all.
    pub step: Option<String>,
    /// The measured value (seconds or a fraction); `None` if nothing was measured.
    pub value: Option<f64>,
    /// Whether it passed. A threshold with nothing to measure fails.
    pub passed: bool,
}

/// The value a threshold measures in `stats`.
pub(crate) fn measure(threshold: &Threshold, stats: &StepStats) -> Option<f64> {
    let requests = stats.requests();
    match threshold.metric {
        Metric::ErrorRate => (requests > 0).then(|| stats.error_count() as f64 / requests as f64),
        _ if stats.latency.is_empty() => None,
        Metric::Percentile(p) => Some(stats.latency.value_at_quantile(p / 100.0) as f64 / 1e6),
        Metric::Mean => Some(stats.latency.mean() / 1e6),
        Metric::Max => Some(stats.latency.max() as f64 / 1e6),
    }
}

/// Checks every threshold against per-step statistics (`steps[i]` is the request named
/// `names[i]`).
pub(crate) fn verdicts(
    scenario: &Scenario,
    names: &[std::sync::Arc<str>],
    steps: &[StepStats],
) -> Vec<Verdict> {
    let total = merge(steps);
    scenario
        .thresholds
        .iter()
        .map(|t| {
            let stats = match &t.step {
                Some(name) => names.iter().position(|n| **n == **name).and_then(|i| steps.get(i)),
                None => Some(&total),
            };
            let value = stats.and_then(|s| measure(t, s));
            Verdict {
                threshold: t.text.clone(),
                step: t.step.clone(),
                value,
                passed: value.is_some_and(|v| t.passes(v)),
            }
        })
        .collect()
}

fn ms(us: u64) -> String {
    format!("{:.1}", us as f64 / 1000.0)
}

/// A verdict's measured value for people: a percentage for error rates, ms for latencies.
pub(crate) fn fmt_value(t: &Verdict) -> String {
    match t.value {
        None => "n/a".into(),
        Some(v) if t.threshold.starts_with("error") => format!("{:.2}%", v * 100.0),
        Some(v) => format!("{:.1}ms", v * 1000.0),
    }
}

/// A step's table cells, shared by the summary and the HTML report: latencies in ms, `-` when
/// nothing was measured.
pub(crate) struct Cells {
    pub(crate) p50: String,
    pub(crate) p95: String,
    pub(crate) p99: String,
    pub(crate) max: String,
    pub(crate) tagged: String,
}

pub(crate) fn cells(s: &StepStats) -> Cells {
    let h = &s.latency;
    let q = |p: f64| if h.is_empty() { "-".to_owned() } else { ms(h.value_at_quantile(p)) };
    Cells {
        p50: q(0.5),
        p95: q(0.95),
        p99: q(0.99),
        max: if h.is_empty() { "-".to_owned() } else { ms(h.max()) },
        tagged: if s.responses == 0 {
            "-".to_owned()
        } else {
            format!("{:.0}%", 100.0 * s.tagged as f64 / s.responses as f64)
        },
    }
}

/// The summary table, then the automatic controls' decisions.
pub(crate) fn summary(outcome: &RunOutcome) -> String {
    let RunOutcome { run_id, finished, verdicts, controls, .. } = outcome;
    let mut out = String::new();
    let secs = finished.elapsed.as_secs_f64().max(1e-9);
    let _ = writeln!(
        out,
        "\nrun {run_id}: {} after {:.1}s",
        match &finished.ending {
            Ending::Completed => "completed".to_owned(),
            Ending::Stopped => "STOPPED".to_owned(),
            Ending::Aborted(why) => format!("ABORTED ({why})"),
        },
        secs
    );
    let _ = writeln!(
        out,
        "{:<40} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "step", "requests", "rate/s", "errors", "p50 ms", "p95 ms", "p99 ms", "max ms", "tagged"
    );
    let mut rows: Vec<(String, &StepStats)> =
        finished.step_names.iter().zip(&finished.steps).map(|(n, s)| (n.to_string(), s)).collect();
    let total = merge(&finished.steps);
    rows.push(("total".into(), &total));
    for (name, s) in rows {
        let name: String =
            if name.chars().count() > 40 { name.chars().take(39).chain(['…']).collect() } else { name };
        let Cells { p50, p95, p99, max, tagged } = cells(s);
        let _ = writeln!(
            out,
            "{name:<40} {:>8} {:>8.1} {:>8} {p50:>9} {p95:>9} {p99:>9} {max:>9} {tagged:>8}",
            s.requests(),
            s.requests() as f64 / secs,
            s.error_count()
        );
    }
    if total.error_count() > 0 {
        let classes: Vec<String> = total.errors.iter().map(|(c, n)| format!("{} {n}", c.as_str())).collect();
        let _ = writeln!(out, "errors: {}", classes.join(", "));
    }
    let codes: Vec<String> = total.statuses.iter().map(|(c, n)| format!("{c}: {n}")).collect();
    let _ =
        writeln!(out, "status codes: {}", if codes.is_empty() { "none".into() } else { codes.join(", ") });
    if !total.grpc_statuses.is_empty() {
        let grpc: Vec<String> =
            total.grpc_statuses.iter().map(|(c, n)| format!("{}: {n}", c.as_str())).collect();
        let _ = writeln!(out, "grpc statuses: {}", grpc.join(", "));
    }
    if total.grpc_messages > 0 {
        let _ = writeln!(out, "grpc stream messages: {}", total.grpc_messages);
    }
    if total.shed > 0 {
        let _ = writeln!(
            out,
            "shed by the target: {} answers said synthetic-traffic-shed (kill switch or overload protection)",
            total.shed
        );
    }
    let j = &finished.journeys;
    if let Some(r) = &outcome.replay {
        let _ = writeln!(out, "replay: {}", r.headline());
        let _ = writeln!(
            out,
            "replayed requests: {} started, {} tagged `replay` (echoed by the target), {} dropped (--max-in-flight), {} cancelled by a stop",
            j.started, total.tagged, j.dropped, j.cancelled
        );
        if j.started == 0 {
            let _ = writeln!(out, "the replay sent nothing: it tested nothing (exit 3)");
        }
        if !r.not_replayed.is_empty() {
            let why: Vec<String> = r.not_replayed.iter().map(|(k, n)| format!("{k} {n}")).collect();
            let _ = writeln!(out, "records not replayed: {}", why.join(", "));
        }
    } else {
        let _ = writeln!(
            out,
            "journeys: {} started, {} completed, {} failed, {} dropped (max_concurrent), {} cancelled",
            j.started, j.completed, j.failed, j.dropped, j.cancelled
        );
    }
    // Per journey when there is more than one, or when one failed: which, and why.
    if finished.by_journey.len() > 1 || finished.by_journey.iter().any(|j| j.failed > 0) {
        for j in &finished.by_journey {
            let _ = write!(
                out,
                "  {}: {} started, {} completed, {} failed",
                j.name, j.started, j.completed, j.failed
            );
            let mut top: Vec<(&String, &u64)> = j.failures.iter().collect();
            top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let why: Vec<String> = top.iter().take(3).map(|(m, n)| format!("{m} ×{n}")).collect();
            if !why.is_empty() {
                let _ = write!(out, " ({}{})", why.join("; "), if top.len() > 3 { "; …" } else { "" });
            }
            let _ = writeln!(out);
        }
    }
    for v in verdicts {
        let scope = v.step.as_deref().map(|s| format!(" [{s}]")).unwrap_or_default();
        let _ = writeln!(
            out,
            "threshold {}{scope}: {} ({})",
            v.threshold,
            if v.passed { "pass" } else { "FAIL" },
            fmt_value(v)
        );
    }
    if !controls.decisions.is_empty() {
        let _ = writeln!(out, "controls: {} decisions", controls.decisions.len());
        for d in &controls.decisions {
            let _ = writeln!(
                out,
                "  [{:>6.1}s] {} ({}): {}; {:.1} -> {:.1} journeys/s",
                d.t_s, d.action, d.source, d.detail, d.old_rate, d.new_rate
            );
        }
    }
    if outcome.signals_never_answered() && finished.ending == Ending::Completed {
        let _ = writeln!(
            out,
            "the signal source never answered: the run held its arrivals for its whole length and tested nothing (exit 3)"
        );
    }
    out
}

fn histogram_b64(h: &hdrhistogram::Histogram<u64>) -> String {
    let mut buf = Vec::new();
    match V2Serializer::new().serialize(h, &mut buf) {
        Ok(_) => base64::engine::general_purpose::STANDARD.encode(buf),
        Err(_) => String::new(),
    }
}

fn step_json(name: &str, s: &StepStats, secs: f64) -> serde_json::Value {
    let h = &s.latency;
    let q = |p: f64| {
        if h.is_empty() { serde_json::Value::Null } else { json!(h.value_at_quantile(p) as f64 / 1000.0) }
    };
    let errors: serde_json::Map<String, serde_json::Value> = ErrorClass::ALL
        .iter()
        .map(|c| (c.as_str().to_owned(), json!(s.errors.get(c).copied().unwrap_or(0))))
        .collect();
    let statuses: serde_json::Map<String, serde_json::Value> =
        s.statuses.iter().map(|(c, n)| (c.to_string(), json!(n))).collect();
    let grpc_statuses: serde_json::Map<String, serde_json::Value> =
        s.grpc_statuses.iter().map(|(c, n)| (c.as_str().to_owned(), json!(n))).collect();
    json!({
        "name": name,
        "requests": s.requests(),
        "responses": s.responses,
        "rate_per_s": s.requests() as f64 / secs,
        "errors": errors,
        "status_codes": statuses,
        "grpc_status_codes": grpc_statuses,
        "grpc_messages": s.grpc_messages,
        "tagged": s.tagged,
        "shed": s.shed,
        "latency_ms": {
            "p50": q(0.5), "p90": q(0.9), "p95": q(0.95), "p99": q(0.99),
            "max": if h.is_empty() { serde_json::Value::Null } else { json!(h.max() as f64 / 1000.0) },
            "mean": if h.is_empty() { serde_json::Value::Null } else { json!(h.mean() / 1000.0) },
        },
        "histogram_us_hdr_v2_base64": histogram_b64(h),
    })
}

/// The JSON report.
pub(crate) fn json_report(outcome: &RunOutcome) -> serde_json::Value {
    let RunOutcome { scenario, run_id, finished, series, verdicts, controls, replay } = outcome;
    let secs = finished.elapsed.as_secs_f64().max(1e-9);
    let steps: Vec<serde_json::Value> =
        finished.step_names.iter().zip(&finished.steps).map(|(n, s)| step_json(n, s, secs)).collect();
    let j = &finished.journeys;
    json!({
        "schema_version": 1,
        "run_id": run_id.as_str(),
        "target": scenario.target.to_string(),
        "duration_s": finished.elapsed.as_secs_f64(),
        "ending": match &finished.ending { Ending::Completed => "completed", Ending::Stopped => "stopped", Ending::Aborted(_) => "aborted" },
        "abort_reason": match &finished.ending { Ending::Aborted(r) => json!(r.to_string()), _ => serde_json::Value::Null },
        "abort_kind": match &finished.ending { Ending::Aborted(r) => json!(r.kind()), _ => serde_json::Value::Null },
        "journeys": { "started": j.started, "completed": j.completed, "failed": j.failed, "dropped": j.dropped, "cancelled": j.cancelled },
        "by_journey": finished.by_journey.iter().map(|j| json!({
            "name": &*j.name, "started": j.started, "completed": j.completed, "failed": j.failed,
            "cancelled": j.cancelled, "failures": j.failures,
        })).collect::<Vec<_>>(),
        "total": step_json("total", &merge(&finished.steps), secs),
        "steps": steps,
        "series": series.iter().map(|p| json!({
            "t_s": p.t, "rps": p.rps, "errors_per_s": p.errors_per_s, "p50_ms": p.p50_ms, "p95_ms": p.p95_ms, "p99_ms": p.p99_ms,
        })).collect::<Vec<_>>(),
        "thresholds": verdicts.iter().map(|v| json!({
            "threshold": v.threshold, "step": v.step, "value": v.value, "passed": v.passed,
        })).collect::<Vec<_>>(),
        "decisions": controls.decisions,
        "signals": controls.signals,
        "replay": replay.as_ref().map(|r| json!({
            "files": r.files.iter().map(|(path, format)| json!({ "path": path, "format": format })).collect::<Vec<_>>(),
            "records": r.records,
            "replayed_records": r.replayed_records,
            "not_replayed": r.not_replayed,
            "recording_s": r.recording_s,
            "timing": r.timing,
            "amplify": r.amplify,
            "looped": r.looped,
            "cap": r.cap,
            "scrubbed_headers": r.scrubbed_headers,
            "credentials_dropped": r.credentials_dropped,
        })),
    })
}

/// A live line for one interval.
pub(crate) fn interval_line(i: &crate::engine::Interval<'_>) -> String {
    let secs = i.length.as_secs_f64().max(1e-9);
    let h = &i.latency;
    let p = |q: f64| {
        if h.is_empty() { "-".to_owned() } else { format!("{:.1}", h.value_at_quantile(q) as f64 / 1000.0) }
    };
    format!(
        "[{:>5.0}s] {:>8.1} req/s  p50 {:>7} ms  p95 {:>7} ms  p99 {:>7} ms  errors {:>5}  in flight {:>5}",
        i.elapsed.as_secs_f64(),
        i.requests as f64 / secs,
        p(0.5),
        p(0.95),
        p(0.99),
        i.errors,
        i.active
    )
}

/// The total length of a scenario's phases.
pub(crate) fn planned(scenario: &Scenario) -> Duration {
    crate::schedule::planned_duration(&scenario.phases)
}
