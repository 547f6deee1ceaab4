//! The HTML report: one self-contained file (no scripts, no CDN), with SVG charts of the latency
//! percentiles and the request rate over time, the status codes, and the summary.

use std::fmt::Write as _;

use crate::{
    api::RunOutcome,
    engine::Ending,
    report::{Cells, Point, cells, fmt_value},
    scenario::Scenario,
    stats::merge,
};

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A line of a chart: label, colour, (seconds, value) points.
type Line<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// An SVG line chart of `lines` (label, colour, values) over `xs` (seconds).
fn chart(title: &str, unit: &str, xs: &[f64], lines: &[(&str, &str, Vec<f64>)]) -> String {
    let lines: Vec<Line<'_>> =
        lines.iter().map(|(l, c, v)| (*l, *c, xs.iter().copied().zip(v.iter().copied()).collect())).collect();
    chart_xy(title, unit, &lines)
}

/// An SVG line chart of `lines` (label, colour, (seconds, value) points).
fn chart_xy(title: &str, unit: &str, lines: &[Line<'_>]) -> String {
    let (w, h, pad) = (720.0, 240.0, 40.0);
    let xmax = lines.iter().flat_map(|(_, _, v)| v.iter().map(|p| p.0)).fold(1.0, f64::max);
    let ymax = lines.iter().flat_map(|(_, _, v)| v.iter().map(|p| p.1)).fold(0.0, f64::max).max(1e-9) * 1.1;
    let mut svg = format!(
        "<figure><figcaption>{}</figcaption><svg viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"{}\">",
        esc(title),
        esc(title)
    );
    let _ = write!(
        svg,
        "<rect x=\"{pad}\" y=\"10\" width=\"{}\" height=\"{}\" fill=\"#fafafa\" stroke=\"#ccc\"/>",
        w - pad - 10.0,
        h - pad - 10.0
    );
    for i in 0..=4 {
        let v = ymax * f64::from(i) / 4.0;
        let y = h - pad - (h - pad - 10.0) * f64::from(i) / 4.0;
        let _ = write!(svg, "<text x=\"2\" y=\"{y:.1}\" font-size=\"10\">{v:.2}</text>");
    }
    let _ = write!(
        svg,
        "<text x=\"{}\" y=\"{}\" font-size=\"10\">{xmax:.0} s</text><text x=\"{pad}\" y=\"{}\" font-size=\"10\">0 s · {}</text>",
        w - 40.0,
        h - 20.0,
        h - 20.0,
        esc(unit)
    );
    for (k, (label, colour, points)) in lines.iter().enumerate() {
        let points: Vec<String> = points
            .iter()
            .map(|(x, y)| {
                let px = pad + (w - pad - 10.0) * x / xmax;
                let py = h - pad - (h - pad - 10.0) * y / ymax;
                format!("{px:.1},{py:.1}")
            })
            .collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>",
            points.join(" ")
        );
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"24\" font-size=\"11\" fill=\"{colour}\">{}</text>",
            pad + 10.0 + 130.0 * k as f64,
            esc(label)
        );
    }
    svg.push_str("</svg></figure>");
    svg
}

const PALETTE: [&str; 6] = ["#c22", "#27a", "#a60", "#2a7", "#84c", "#555"];

/// The controls: the rate against every signal over time, each decision, and per phase the
/// synthetic SLIs next to the real ones the signals measured (the impact report).
fn controls_section(scenario: &Scenario, series: &[Point], controls: &crate::controls::Record) -> String {
    let mut body = String::from("<h2>Controls and impact</h2>");
    let mut names: Vec<&str> = Vec::new();
    for p in &controls.signals {
        if !names.contains(&p.name.as_str()) {
            names.push(&p.name);
        }
    }
    // Rate and signals on one timeline, each scaled to its own maximum.
    let scaled = |points: Vec<(f64, f64)>| {
        let max = points.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-12);
        points.into_iter().map(|(x, y)| (x, y / max)).collect::<Vec<_>>()
    };
    let mut lines = vec![("synthetic req/s", "#222", scaled(series.iter().map(|p| (p.t, p.rps)).collect()))];
    for (i, n) in names.iter().enumerate() {
        let pts = controls
            .signals
            .iter()
            .filter(|p| p.name == *n)
            .filter_map(|p| p.value.map(|v| (p.t_s, v)))
            .collect();
        lines.push((n, PALETTE[i % PALETTE.len()], scaled(pts)));
    }
    if !names.is_empty() {
        body.push_str(&chart_xy(
            "Rate and signals over time (each line scaled to its own maximum)",
            "scaled",
            &lines,
        ));
    }
    if !controls.decisions.is_empty() {
        body.push_str("<table><tr><th>t (s)</th><th>action</th><th>source</th><th>value</th><th>rate before</th><th>rate after</th><th>why</th></tr>");
        for d in &controls.decisions {
            let _ = write!(
                body,
                "<tr><td>{:.1}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.1}</td><td>{}</td></tr>",
                d.t_s,
                d.action.as_str(),
                esc(&d.source),
                d.value.map(|v| format!("{v:.4}")).unwrap_or_default(),
                d.old_rate,
                d.new_rate,
                esc(&d.detail)
            );
        }
        body.push_str("</table>");
    }
    // Impact: per phase, synthetic (loadgen's own) next to real (the signals).
    body.push_str("<table><tr><th>phase</th><th>from (s)</th><th>to (s)</th><th>synthetic req/s</th><th>synthetic p95 ms</th><th>synthetic errors/s</th>");
    for n in &names {
        let _ = write!(body, "<th>{} (mean)</th>", esc(n));
    }
    body.push_str("</tr>");
    let mut start = 0.0;
    for (i, p) in scenario.phases.iter().enumerate() {
        let end = start + p.duration().as_secs_f64();
        let inside: Vec<&Point> = series.iter().filter(|q| q.t > start && q.t <= end + 0.5).collect();
        let mean = |f: &dyn Fn(&Point) -> f64| {
            if inside.is_empty() {
                f64::NAN
            } else {
                inside.iter().map(|q| f(q)).sum::<f64>() / inside.len() as f64
            }
        };
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{start:.0}</td><td>{end:.0}</td><td>{:.1}</td><td>{:.1}</td><td>{:.2}</td>",
            i + 1,
            mean(&|q| q.rps),
            mean(&|q| q.p95_ms),
            mean(&|q| q.errors_per_s)
        );
        for n in &names {
            let vals: Vec<f64> = controls
                .signals
                .iter()
                .filter(|q| q.name == *n && q.t_s > start && q.t_s <= end)
                .filter_map(|q| q.value)
                .collect();
            let cell = if vals.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.4}", vals.iter().sum::<f64>() / vals.len() as f64)
            };
            let _ = write!(body, "<td>{cell}</td>");
        }
        body.push_str("</tr>");
        start = end;
    }
    body.push_str("</table>");
    body
}

/// The report as one HTML document.
pub(crate) fn render(outcome: &RunOutcome) -> String {
    let RunOutcome { scenario, run_id, finished, series, verdicts, controls, replay } = outcome;
    let run_id = run_id.as_str();
    let total = merge(&finished.steps);
    let xs: Vec<f64> = series.iter().map(|p| p.t).collect();
    let mut body = String::new();
    let ending = match &finished.ending {
        Ending::Completed => "completed".to_owned(),
        Ending::Stopped => "stopped".to_owned(),
        Ending::Aborted(r) => format!("aborted: {r}"),
    };
    let _ = write!(
        body,
        "<h1>loadgen run {}</h1><p>Target {} · {:.1} s · {} · {} requests · {} errors · {} tagged answers</p>",
        esc(run_id),
        esc(&scenario.target.to_string()),
        finished.elapsed.as_secs_f64(),
        esc(&ending),
        total.requests(),
        total.error_count(),
        total.tagged
    );
    if let Some(r) = replay {
        let _ = write!(
            body,
            "<h2>Replay</h2><p>{}</p><table><tr><th>file</th><th>format</th></tr>",
            esc(&r.headline())
        );
        for (path, format) in &r.files {
            let _ = write!(body, "<tr><td>{}</td><td>{}</td></tr>", esc(path), esc(format));
        }
        body.push_str("</table>");
        if !r.not_replayed.is_empty() {
            body.push_str("<table><tr><th>not replayed</th><th>records</th></tr>");
            for (why, n) in &r.not_replayed {
                let _ = write!(body, "<tr><td>{}</td><td>{n}</td></tr>", esc(why));
            }
            body.push_str("</table>");
        }
    }
    body.push_str(&chart(
        "Latency percentiles over time",
        "ms",
        &xs,
        &[
            ("p50", "#1f77b4", series.iter().map(|p| p.p50_ms).collect()),
            ("p95", "#ff7f0e", series.iter().map(|p| p.p95_ms).collect()),
            ("p99", "#d62728", series.iter().map(|p| p.p99_ms).collect()),
        ],
    ));
    body.push_str(&chart(
        "Requests per second",
        "req/s",
        &xs,
        &[
            ("rate", "#2ca02c", series.iter().map(|p| p.rps).collect()),
            ("errors/s", "#d62728", series.iter().map(|p| p.errors_per_s).collect()),
        ],
    ));
    body.push_str("<h2>Steps</h2><table><tr><th>step</th><th>requests</th><th>errors</th><th>p50 ms</th><th>p95 ms</th><th>p99 ms</th><th>max ms</th><th>tagged</th></tr>");
    for (name, s) in finished
        .step_names
        .iter()
        .zip(&finished.steps)
        .map(|(n, s)| (n.to_string(), s))
        .chain([("total".to_owned(), &total)])
    {
        let Cells { p50, p95, p99, max, tagged } = cells(s);
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{p50}</td><td>{p95}</td><td>{p99}</td><td>{max}</td><td>{tagged}</td></tr>",
            esc(&name),
            s.requests(),
            s.error_count(),
        );
    }
    body.push_str("</table><h2>Status codes</h2><table><tr><th>code</th><th>answers</th><th></th></tr>");
    let most = total.statuses.values().chain(total.grpc_statuses.values()).copied().max().unwrap_or(1).max(1);
    // HTTP codes, then gRPC statuses by name (`gRPC PERMISSION_DENIED`).
    let http = total.statuses.iter().map(|(code, n)| (code.to_string(), *n));
    let grpc = total.grpc_statuses.iter().map(|(code, n)| (format!("gRPC {}", code.as_str()), *n));
    for (code, n) in http.chain(grpc) {
        let width = 300 * n / most;
        let _ = write!(
            body,
            "<tr><td>{code}</td><td>{n}</td><td><svg width=\"300\" height=\"12\"><rect width=\"{width}\" height=\"12\" fill=\"#1f77b4\"/></svg></td></tr>"
        );
    }
    body.push_str("</table>");
    if total.error_count() > 0 {
        body.push_str("<h2>Errors</h2><table><tr><th>class</th><th>count</th></tr>");
        for (class, n) in &total.errors {
            let _ = write!(body, "<tr><td>{}</td><td>{n}</td></tr>", class.as_str());
        }
        body.push_str("</table>");
    }
    if !verdicts.is_empty() {
        body.push_str(
            "<h2>Thresholds</h2><table><tr><th>threshold</th><th>step</th><th>value</th><th>result</th></tr>",
        );
        for v in verdicts {
            let value = fmt_value(v);
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{value}</td><td class=\"{}\">{}</td></tr>",
                esc(&v.threshold),
                esc(v.step.as_deref().unwrap_or("all")),
                if v.passed { "pass" } else { "fail" },
                if v.passed { "pass" } else { "FAIL" }
            );
        }
        body.push_str("</table>");
    }
    if !controls.decisions.is_empty() || !controls.signals.is_empty() {
        body.push_str(&controls_section(scenario, series, controls));
    }
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>loadgen {}</title><style>\
         body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;margin:1em 0}}\
         td,th{{border:1px solid #ddd;padding:4px 8px;text-align:right}}td:first-child,th:first-child{{text-align:left}}\
         .pass{{color:#2a7}}.fail{{color:#c22;font-weight:bold}}figure{{margin:1em 0}}figcaption{{font-weight:bold}}\
         </style></head><body>{body}</body></html>\n",
        esc(run_id)
    )
}
