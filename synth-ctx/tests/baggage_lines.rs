//! Every `baggage` line is read: by `find_marker` / `remove_marker` (what a server layer uses)
//! and by the propagator over a `HeaderMap`. One table of request shapes, checked in both.
#![cfg(feature = "http")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use opentelemetry::{Context, baggage::BaggageExt, propagation::TextMapPropagator};
use proptest::prelude::*;
use synth_ctx::{
    ExtractedMarker, KeyRing, MAX_BAGGAGE_LEN, MAX_BAGGAGE_MEMBERS, Origin, RunId, Signer,
    SyntheticPropagator, Verifier,
    http::{HeaderExtractor, MarkerSource, find_marker, insert_marker, remove_marker},
    propagation::with_incoming_baggage_lines,
};

fn keys() -> KeyRing {
    KeyRing::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8").unwrap()
}

fn mint(run: &str) -> String {
    Signer::new(keys()).mint(Origin::Load, &RunId::new(run).unwrap(), Duration::from_secs(600))
}

/// Well shaped, signed with another secret under the same key id.
fn forged(run: &str) -> String {
    let other = KeyRing::parse("k1:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8").unwrap();
    Signer::new(other).mint(Origin::Load, &RunId::new(run).unwrap(), Duration::from_secs(600))
}

/// What a server layer decides under the `Reject` policy.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    Real,
    Synthetic(String),
    Refused(&'static str),
}

fn headers(header: Option<&str>, baggage: &[String]) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Some(v) = header {
        h.append("synthetic-traffic", HeaderValue::from_str(v).unwrap());
    }
    for line in baggage {
        h.append("baggage", HeaderValue::from_str(line).unwrap());
    }
    h
}

fn layer_decision(h: &HeaderMap) -> Decision {
    match find_marker(h) {
        None => Decision::Real,
        Some(found) => match found.verify(&Verifier::new(keys())) {
            Ok(s) => Decision::Synthetic(s.run().to_string()),
            Err(e) => Decision::Refused(e.reason()),
        },
    }
}

/// What the propagator makes of it: the run if synthetic, else the unverified token kept.
fn propagator_decision(h: &HeaderMap) -> (Option<String>, Option<String>) {
    let p = SyntheticPropagator::new().with_verifier(Verifier::new(keys()));
    let cx = p.extract_with_context(&Context::new(), &HeaderExtractor(h));
    let run = synth_ctx::from_context(&cx).map(|s| s.run().to_string());
    let kept = ExtractedMarker::from_context(&cx).map(|m| m.token().to_owned());
    (run, kept)
}

struct Shape {
    name: &'static str,
    header: Option<String>,
    baggage: Vec<String>,
    layer: Decision,
    /// `(synthetic run, unverified token kept)` from the propagator.
    propagator: (Option<&'static str>, Option<String>),
}

fn shapes() -> Vec<Shape> {
    let valid = mint("r1");
    let other = mint("r2");
    let bad = forged("evil");
    let members_64 = (0..MAX_BAGGAGE_MEMBERS).map(|i| format!("m{i}={i}")).collect::<Vec<_>>().join(",");
    let pad = format!("pad={}", "x".repeat(MAX_BAGGAGE_LEN - 100));
    let syn = |t: &str| format!("synthetic={t}");
    let valid_kept = Some(valid.clone());
    vec![
        Shape {
            name: "marker in line 2",
            header: None,
            baggage: vec!["tenant=acme".into(), format!("region=eu,{}", syn(&valid))],
            layer: Decision::Synthetic("r1".into()),
            propagator: (Some("r1"), valid_kept.clone()),
        },
        Shape {
            name: "marker after the 64th member, same line",
            header: None,
            baggage: vec![format!("{members_64},{}", syn(&valid))],
            layer: Decision::Synthetic("r1".into()),
            propagator: (Some("r1"), valid_kept.clone()),
        },
        Shape {
            name: "marker after the 64th member, next line",
            header: None,
            baggage: vec![members_64.clone(), syn(&valid)],
            layer: Decision::Synthetic("r1".into()),
            propagator: (Some("r1"), valid_kept.clone()),
        },
        Shape {
            name: "marker in a line that makes the whole over 8 KiB",
            header: None,
            baggage: vec![pad.clone(), format!("a=1,{}", syn(&valid))],
            layer: Decision::Synthetic("r1".into()),
            propagator: (Some("r1"), valid_kept.clone()),
        },
        Shape {
            name: "marker in one line over 8 KiB",
            header: None,
            baggage: vec![format!("{pad}{},{}", "y".repeat(200), syn(&valid))],
            layer: Decision::Synthetic("r1".into()),
            propagator: (Some("r1"), valid_kept.clone()),
        },
        Shape {
            name: "forged marker in line 2",
            header: None,
            baggage: vec!["tenant=acme".into(), syn(&bad)],
            layer: Decision::Refused("bad_signature"),
            propagator: (None, Some(bad.clone())),
        },
        Shape {
            name: "the same marker in two lines",
            header: None,
            baggage: vec![syn(&valid), format!("a=1,{}", syn(&valid))],
            layer: Decision::Synthetic("r1".into()),
            propagator: (Some("r1"), valid_kept.clone()),
        },
        Shape {
            name: "two valid markers in two lines",
            header: None,
            baggage: vec![syn(&valid), syn(&other)],
            layer: Decision::Refused("conflicting_markers"),
            propagator: (None, Some(String::new())),
        },
        Shape {
            name: "a valid and a forged marker in one line",
            header: None,
            baggage: vec![format!("{},{}", syn(&valid), syn(&bad))],
            layer: Decision::Refused("conflicting_markers"),
            propagator: (None, Some(String::new())),
        },
        Shape {
            name: "a forged marker in line 1, a valid one in line 2",
            header: None,
            baggage: vec![syn(&bad), syn(&valid)],
            layer: Decision::Refused("conflicting_markers"),
            propagator: (None, Some(String::new())),
        },
        Shape {
            name: "a valid marker and an unreadable one",
            header: None,
            baggage: vec![syn(&valid), "synthetic=%FF".into()],
            layer: Decision::Refused("conflicting_markers"),
            propagator: (None, Some(String::new())),
        },
        Shape {
            name: "a valid header wins over a forged baggage member",
            header: Some(valid.clone()),
            baggage: vec!["a=1".into(), syn(&bad)],
            layer: Decision::Synthetic("r1".into()),
            propagator: (Some("r1"), valid_kept.clone()),
        },
        Shape {
            name: "a forged header is not rescued by a valid baggage member",
            header: Some(bad.clone()),
            baggage: vec!["a=1".into(), syn(&valid)],
            layer: Decision::Refused("bad_signature"),
            propagator: (None, Some(bad.clone())),
        },
        Shape {
            name: "a present but undecodable marker is refused, not ignored",
            header: None,
            baggage: vec!["a=1".into(), "synthetic=v1%2".into()],
            layer: Decision::Refused("malformed"),
            propagator: (None, None),
        },
        Shape {
            name: "no marker in any line",
            header: None,
            baggage: vec!["a=1".into(), "synthetic-x=1".into()],
            layer: Decision::Real,
            propagator: (None, None),
        },
    ]
}

#[test]
fn every_shape_is_decided_the_same_by_the_layer_and_the_propagator() {
    for shape in shapes() {
        let h = headers(shape.header.as_deref(), &shape.baggage);
        assert_eq!(layer_decision(&h), shape.layer, "layer: {}", shape.name);
        let (run, kept) = propagator_decision(&h);
        assert_eq!(
            (run.as_deref(), kept),
            (shape.propagator.0, shape.propagator.1.clone()),
            "propagator: {}",
            shape.name
        );
    }
}

#[test]
fn conflicting_markers_are_reported_as_such() {
    let h = headers(None, &[format!("synthetic={}", mint("r1")), format!("synthetic={}", mint("r2"))]);
    let found = find_marker(&h).unwrap();
    assert_eq!(found.source, MarkerSource::Baggage);
    assert!(found.is_conflicting());
    // Verifying the value directly (skipping `FoundMarker::verify`) fails too.
    assert_eq!(Verifier::new(keys()).verify(&found.value).unwrap_err().reason(), "malformed");

    let p = SyntheticPropagator::new().with_verifier(Verifier::new(keys()));
    let cx = p.extract_with_context(&Context::new(), &HeaderExtractor(&h));
    let marker = ExtractedMarker::from_context(&cx).unwrap();
    assert!(marker.is_conflicting());
    assert_eq!(marker.verify(&Verifier::new(keys())).unwrap_err().reason(), "conflicting_markers");

    // `synthetic-traffic` lines that disagree are ambiguous too.
    let mut h = HeaderMap::new();
    h.append("synthetic-traffic", HeaderValue::from_str(&mint("r1")).unwrap());
    h.append("synthetic-traffic", HeaderValue::from_str(&mint("r2")).unwrap());
    assert_eq!(layer_decision(&h), Decision::Refused("conflicting_markers"));
    assert_eq!(propagator_decision(&h), (None, Some(String::new())));
    let same = mint("r3");
    let mut h = HeaderMap::new();
    h.append("synthetic-traffic", HeaderValue::from_str(&same).unwrap());
    h.append("synthetic-traffic", HeaderValue::from_str(&format!(" {same}")).unwrap());
    assert_eq!(layer_decision(&h), Decision::Synthetic("r3".into()));
}

#[test]
fn remove_marker_strips_every_line_and_drops_lines_left_empty() {
    let bad = forged("evil");
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (vec!["tenant=acme".into(), format!("synthetic={bad}")], vec!["tenant=acme"]),
        (vec![format!("synthetic={bad}"), "a=1".into()], vec!["a=1"]),
        (
            vec![format!("a=1,synthetic={bad}"), format!("b=2, synthetic = {bad} ;p, c=3")],
            vec!["a=1", "b=2, c=3"],
        ),
        (vec![format!("synth%65tic={bad}"), format!("synthetic={bad}")], vec![]),
        (vec!["a=1".into(), "b=2".into()], vec!["a=1", "b=2"]),
    ];
    for (lines, want) in cases {
        let mut h = headers(Some(&bad), &lines);
        remove_marker(&mut h);
        let got: Vec<&str> = h.get_all("baggage").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(got, want, "{lines:?}");
        assert!(!h.contains_key("synthetic-traffic"));
        assert_eq!(find_marker(&h), None, "{lines:?}");
    }
    // A line that is not UTF-8 is stripped too.
    let mut h = HeaderMap::new();
    let mut raw = b"a=\xff,synthetic=".to_vec();
    raw.extend_from_slice(bad.as_bytes());
    h.append("baggage", HeaderValue::from_bytes(&raw).unwrap());
    assert!(find_marker(&h).is_some());
    remove_marker(&mut h);
    assert_eq!(h["baggage"].as_bytes(), b"a=\xff");
}

#[test]
fn insert_marker_keeps_the_members_of_every_line() {
    let s =
        Signer::new(keys()).mint_synthetic(Origin::Load, &RunId::new("r1").unwrap(), Duration::from_secs(60));
    let mut h =
        headers(None, &["tenant=acme,synthetic=stale".into(), "region=eu".into(), "synthetic=old".into()]);
    insert_marker(&mut h, &s);
    let lines: Vec<&str> = h.get_all("baggage").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(lines, [format!("tenant=acme,region=eu,synthetic={}", s.token())]);
    assert_eq!(layer_decision(&h), Decision::Synthetic("r1".into()));
    // A line that is not text is left alone rather than lost.
    let mut h = HeaderMap::new();
    h.append("baggage", HeaderValue::from_static("a=1"));
    h.append("baggage", HeaderValue::from_bytes(b"b=\xff").unwrap());
    insert_marker(&mut h, &s);
    assert_eq!(h.get_all("baggage").iter().count(), 2);
    assert_eq!(h["synthetic-traffic"], s.token());
}

#[test]
fn other_members_of_every_line_are_passed_on_within_the_limits_of_the_whole() {
    let member = |cx: &Context, k: &str| cx.baggage().get(k).map(|v| v.as_str().to_owned());
    let cx = with_incoming_baggage_lines(&Context::new(), ["a=1", "b=2,synthetic=x", "c=3"]);
    assert_eq!(
        (member(&cx, "a"), member(&cx, "b"), member(&cx, "c"), member(&cx, "synthetic")),
        (Some("1".into()), Some("2".into()), Some("3".into()), None)
    );
    // 64 members in all: the 65th, in the second line, is dropped.
    let first: Vec<String> = (0..60).map(|i| format!("m{i}=1")).collect();
    let second: Vec<String> = (60..70).map(|i| format!("m{i}=1")).collect();
    let (first, second) = (first.join(","), second.join(","));
    let cx = with_incoming_baggage_lines(&Context::new(), [first.as_str(), second.as_str()]);
    assert_eq!(cx.baggage().len(), MAX_BAGGAGE_MEMBERS);
    assert!(member(&cx, "m63").is_some() && member(&cx, "m64").is_none());
    // Over 8 KiB together: nothing is passed on.
    let half = format!("p={}", "x".repeat(MAX_BAGGAGE_LEN / 2));
    let cx = with_incoming_baggage_lines(&Context::new(), [half.as_str(), half.as_str()]);
    assert!(cx.baggage().is_empty());
}

/// The members of a baggage string, split across `cuts.len() + 1` lines at member boundaries.
fn split_lines(members: &[String], cuts: &[usize]) -> Vec<String> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (members.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut lines = Vec::new();
    let mut start = 0;
    for cut in cuts.into_iter().chain([members.len()]) {
        if cut > start {
            lines.push(members[start..cut].join(","));
            start = cut;
        }
    }
    lines
}

fn member_strategy() -> impl Strategy<Value = String> {
    let valid = mint("r1");
    let other = mint("r2");
    let bad = forged("evil");
    prop_oneof![
        6 => "[a-z]{1,6}=[a-z0-9]{0,8}",
        1 => Just(format!("synthetic={valid}")),
        1 => Just(format!("synthetic = {valid} ;p=1")),
        1 => Just(format!("synthetic={other}")),
        1 => Just(format!("synthetic={bad}")),
        1 => Just("synthetic=%FF".to_owned()),
        1 => Just(format!("pad={}", "x".repeat(3000))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn splitting_baggage_across_lines_never_changes_the_decision(
        members in prop::collection::vec(member_strategy(), 1..80),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
        header in prop::option::of(prop_oneof![Just(mint("r3")), Just(forged("h"))]),
    ) {
        let one_line = headers(header.as_deref(), &[members.join(",")]);
        let lines = split_lines(&members, &cuts);
        let many = headers(header.as_deref(), &lines);
        prop_assert_eq!(layer_decision(&many), layer_decision(&one_line), "{} lines", lines.len());
        prop_assert_eq!(propagator_decision(&many), propagator_decision(&one_line));
        // Whatever the decision, stripping leaves no marker in any line.
        let mut stripped = many.clone();
        remove_marker(&mut stripped);
        prop_assert_eq!(find_marker(&stripped), None);
    }
}
