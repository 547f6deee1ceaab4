//! The YAML form of a scenario: serde types that keep where each value was written, so the
//! compiler can point at the file, line and column of a mistake.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use super::{Order, ScenarioError, signals, template};

/// Reads scenario `text` into its YAML form; `file` names it in errors.
pub(super) fn parse(text: &str, file: &str) -> Result<RawScenario, ScenarioError> {
    serde_saphyr::from_str(text).map_err(|e| yaml_error(&e, file))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScenario {
    pub(super) target: Spanned<String>,
    #[serde(default)]
    pub(super) run: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) timeouts: Option<RawTimeouts>,
    #[serde(default)]
    pub(super) max_connections: Option<Spanned<usize>>,
    #[serde(default)]
    pub(super) http2: bool,
    #[serde(default)]
    pub(super) tls: Option<RawTls>,
    #[serde(default)]
    pub(super) signals: Option<Spanned<signals::RawSignals>>,
    #[serde(default)]
    pub(super) on_shed: Option<signals::RawOnShed>,
    #[serde(default)]
    pub(super) max_rate_factor: Option<Spanned<f64>>,
    pub(super) phases: Spanned<Vec<RawPhase>>,
    #[serde(default)]
    pub(super) data: BTreeMap<String, Spanned<RawFeeder>>,
    pub(super) journeys: Spanned<Vec<Spanned<RawJourney>>>,
    #[serde(default)]
    pub(super) thresholds: Vec<Spanned<RawThreshold>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    #[serde(default)]
    pub(super) ca: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeouts {
    #[serde(default)]
    pub(super) connect: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) request: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPhase {
    #[serde(default)]
    pub(super) duration: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) arrival_rate: Option<Spanned<f64>>,
    #[serde(default)]
    pub(super) ramp_to: Option<Spanned<f64>>,
    #[serde(default)]
    pub(super) pause: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) max_concurrent: Option<usize>,
    #[serde(default)]
    pub(super) users: Option<Spanned<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFeeder {
    pub(super) csv: Spanned<String>,
    #[serde(default = "default_order")]
    pub(super) order: Order,
}

fn default_order() -> Order {
    Order::Sequential
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJourney {
    pub(super) name: Spanned<String>,
    #[serde(default = "one")]
    pub(super) weight: Spanned<u32>,
    #[serde(default = "yes")]
    pub(super) cookies: bool,
    pub(super) steps: Spanned<Vec<Spanned<RawStep>>>,
}

fn one() -> Spanned<u32> {
    Spanned::new(1, Location::UNKNOWN, Location::UNKNOWN)
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStep {
    #[serde(default)]
    pub(super) name: Option<String>,
    #[serde(default)]
    pub(super) get: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) post: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) put: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) patch: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) delete: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) head: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) headers: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub(super) json: Option<Spanned<serde_json::Value>>,
    #[serde(default)]
    pub(super) body: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) capture: BTreeMap<String, Spanned<RawCapture>>,
    #[serde(default)]
    pub(super) expect: Option<RawExpect>,
    #[serde(default)]
    pub(super) grpc: Option<Spanned<RawGrpc>>,
    #[serde(default)]
    pub(super) think: Option<Spanned<String>>,
    #[serde(default, rename = "loop")]
    pub(super) repeat: Option<Spanned<RawLoop>>,
    #[serde(default)]
    pub(super) expect_path: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) expect_guards: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGrpc {
    pub(super) proto: Spanned<String>,
    #[serde(default)]
    pub(super) include: Vec<Spanned<String>>,
    pub(super) call: Spanned<String>,
    #[serde(default)]
    pub(super) message: Option<Spanned<serde_json::Value>>,
    #[serde(default)]
    pub(super) metadata: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub(super) target: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLoop {
    pub(super) count: u32,
    pub(super) steps: Vec<Spanned<RawStep>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCapture {
    #[serde(default)]
    pub(super) json: Option<String>,
    #[serde(default)]
    pub(super) header: Option<String>,
    #[serde(default)]
    pub(super) regex: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExpect {
    #[serde(default)]
    pub(super) status: Option<Spanned<RawStatus>>,
    #[serde(default)]
    pub(super) grpc_status: Option<Spanned<RawGrpcStatus>>,
    #[serde(default)]
    pub(super) header: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) json: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawStatus {
    One(u16),
    Many(Vec<u16>),
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawGrpcStatus {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawThreshold {
    Text(String),
    Full(RawThresholdFull),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawThresholdFull {
    pub(super) threshold: String,
    #[serde(default)]
    pub(super) step: Option<String>,
    #[serde(default)]
    pub(super) abort_on_fail: bool,
}

const TOP_KEYS: [&str; 11] = [
    "target",
    "run",
    "timeouts",
    "max_connections",
    "max_rate_factor",
    "http2",
    "tls",
    "phases",
    "data",
    "journeys",
    "thresholds",
];
const PHASE_KEYS: [&str; 6] = ["duration", "arrival_rate", "ramp_to", "pause", "max_concurrent", "users"];
const STEP_KEYS: [&str; 26] = [
    "name",
    "get",
    "post",
    "put",
    "patch",
    "delete",
    "head",
    "headers",
    "json",
    "body",
    "capture",
    "expect",
    "think",
    "loop",
    "steps",
    "expect_path",
    "expect_guards",
    "grpc",
    "proto",
    "include",
    "call",
    "message",
    "metadata",
    "target",
    "grpc_status",
    "status",
];
const JOURNEY_KEYS: [&str; 4] = ["name", "weight", "cookies", "steps"];

pub(super) fn yaml_error(e: &serde_saphyr::Error, file: &str) -> ScenarioError {
    let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
    let full = e.to_string();
    // The first line is the message; the rest is a snippet of the file.
    let first = full.lines().next().unwrap_or(&full);
    // `error: line 7 column 9: unknown field ..`: the location is ours to print, once.
    let message = first.strip_prefix("error: ").unwrap_or(first);
    let message = message
        .split_once(": ")
        .filter(|(p, _)| p.starts_with("line ") && p.contains(" column "))
        .map_or(message, |(_, m)| m)
        .to_owned();
    let hint = unknown_key(&message).map(|key| {
        let all: Vec<&str> = TOP_KEYS
            .iter()
            .chain(&PHASE_KEYS)
            .chain(&STEP_KEYS)
            .chain(&JOURNEY_KEYS)
            .chain(&signals::KEYS)
            .copied()
            .collect();
        match template::suggest(key, &all) {
            Some(s) => format!("did you mean `{s}`? (docs/scenarios.md lists every key)"),
            None => "remove it; docs/scenarios.md lists every key".to_owned(),
        }
    });
    ScenarioError { file: file.to_owned(), line, column, message, hint }
}

fn unknown_key(message: &str) -> Option<&str> {
    let rest = message.split_once("unknown field `")?.1;
    Some(&rest[..rest.find('`')?])
}
