//! Scenario files: the issue's example parses as written; mistakes point at file, line and column
//! and say how to fix them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::path::Path;

use loadgen::scenario::{self, Body, Phase, Step};

fn data() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data"))
}

#[test]
fn the_issue_example_parses_as_written() {
    let s = scenario::load(data().join("issue-example.yaml")).unwrap();
    assert_eq!(s.target.to_string(), "http://127.0.0.1:8080/");
    assert_eq!(s.phases.len(), 2);
    assert!(matches!(s.phases[0], Phase::Load { rate, ramp_to, .. } if rate == 5.0 && ramp_to == 50.0));
    assert_eq!(s.feeders[0].rows.len(), 3);
    let names: Vec<&str> = s.journeys.iter().map(|j| &*j.name).collect();
    assert_eq!(names, ["checkout", "browse"]);
    assert_eq!(s.journeys[0].weight, 3);
    assert_eq!(s.journeys[0].captures, ["token"]);
    assert_eq!(s.journeys[0].feeders_used, [0]);
    assert!(matches!(s.journeys[0].steps[2], Step::Think(d) if d.as_millis() == 500));
    let Step::Request(login) = &s.journeys[0].steps[0] else { panic!() };
    assert!(matches!(login.body, Body::Json(_)));
    assert_eq!(login.expect.status.as_deref(), Some(&[200][..]));
    assert_eq!(s.thresholds.len(), 2);
    assert_eq!(s.step_names.len(), 5);
}

fn error(yaml: &str) -> scenario::ScenarioError {
    scenario::parse(yaml, "s.yaml", data()).unwrap_err()
}

const HEAD: &str = "target: http://127.0.0.1:1\nphases:\n  - { duration: 1s, arrival_rate: 1 }\n";

#[test]
fn mistakes_point_at_the_place_and_say_what_to_do() {
    let cases: &[(&str, u64, &str, &str)] = &[
        (
            "target: http://127.0.0.1:1\nphases:\n  - { duration: 1s, arival_rate: 1 }\njourneys: []\n",
            3,
            "unknown field `arival_rate`",
            "did you mean `arrival_rate`?",
        ),
        (
            "target: http://127.0.0.1:1\nphases:\n  - { duration: 10 seconds, arrival_rate: 1 }\njourneys: [{ name: a, steps: [{ get: / }] }]\n",
            3,
            "duration: invalid duration `10 seconds`",
            "write a number and a unit",
        ),
        (
            &format!("{HEAD}journeys:\n  - name: a\n    steps:\n      - get: \"/{{{{ tokn }}}}\"\n"),
            7,
            "undefined variable `tokn`",
            "capture it in an earlier step",
        ),
        (
            &format!("{HEAD}journeys:\n  - name: a\n    weight: 0\n    steps: [{{ get: / }}]\n"),
            6,
            "journey `a` has weight 0",
            "weight of 1 or more",
        ),
        (
            &format!("{HEAD}journeys:\n  - name: a\n    steps: []\n"),
            6,
            "journey `a` has no steps",
            "add at least one request",
        ),
        (
            &format!(
                "{HEAD}journeys:\n  - name: a\n    steps:\n      - {{ get: /a, capture: {{ t: {{ json: \"$.t\" }} }} }}\n      - get: \"/b?t={{{{ T }}}}\"\n"
            ),
            8,
            "undefined variable `T`",
            "did you mean `t`?",
        ),
        (
            &format!(
                "{HEAD}journeys: [{{ name: a, steps: [{{ get: / }}] }}]\nthresholds: [\"p95 < soon\"]\n"
            ),
            5,
            "invalid duration `soon`",
            "p95 < 300ms",
        ),
        (
            &format!("{HEAD}journeys: [{{ name: a, steps: [{{ get: /, post: / }}] }}]\n"),
            4,
            "a step makes one request",
            "split it into two steps",
        ),
        (
            &format!(
                "{HEAD}data:\n  users: {{ csv: missing.csv }}\njourneys: [{{ name: a, steps: [{{ get: / }}] }}]\n"
            ),
            5,
            "cannot read",
            "relative to the scenario file",
        ),
        (
            "target: ftp://x\nphases: [{ duration: 1s, arrival_rate: 1 }]\njourneys: [{ name: a, steps: [{ get: / }] }]\n",
            1,
            "http:// or https://",
            "e.g. `target:",
        ),
    ];
    for (yaml, line, message, hint) in cases {
        let e = error(yaml);
        assert_eq!(e.file, "s.yaml");
        assert_eq!(e.line, *line, "{e}\n---\n{yaml}");
        assert!(e.column > 0, "{e}");
        assert!(e.message.contains(message), "{e}");
        assert!(e.hint.as_deref().unwrap_or("").contains(hint), "{e}");
        let shown = e.to_string();
        assert!(shown.starts_with(&format!("s.yaml:{line}:")), "{shown}");
    }
}

#[test]
fn validate_command_reports_ok_and_errors_with_exit_codes() {
    use clap::Parser;
    use loadgen::cli::{Cli, Exit, run};
    let mut out = Vec::new();
    let file = data().join("issue-example.yaml");
    let code =
        run(Cli::try_parse_from(["loadgen", "validate", file.to_str().unwrap()]).unwrap(), &mut out).unwrap();
    assert_eq!(code, Exit::Ok);
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("2 journeys"), "{text}");
    let bad = std::env::temp_dir().join(format!("loadgen-bad-{}.yaml", std::process::id()));
    std::fs::write(&bad, "target: http://x\nphases: []\njourneys: []\n").unwrap();
    let mut out = Vec::new();
    let err = run(Cli::try_parse_from(["loadgen", "validate", bad.to_str().unwrap()]).unwrap(), &mut out)
        .unwrap_err();
    assert!(format!("{err:#}").contains(":2:"), "{err:#}");
    let _ = std::fs::remove_file(bad);
}

/// A YAML mistake names its place once (`file:line:column: what`), not twice.
#[test]
fn yaml_errors_name_their_location_once() {
    for (yaml, line, column, what) in [
        (
            "target: http://x\nphases: [{ duration: 1s, arrival_rate: 1 }]\njourneys:\n  - name: a\n    steps:\n      - get: /\n        nope: 1\n",
            7,
            9,
            "unknown field `nope`",
        ),
        ("target: http://x\nphases: [{ duration: 1s, arrival_rate: 1 }\n", 2, 9, "unclosed bracket"),
    ] {
        let e = error(yaml);
        assert_eq!((e.line, e.column), (line, column), "{e}");
        assert!(e.message.starts_with(what), "{:?}", e.message);
        assert!(!e.to_string().contains("line "), "the location is printed once: {e}");
        assert!(e.to_string().starts_with(&format!("s.yaml:{line}:{column}: {what}")), "{e}");
    }
}
