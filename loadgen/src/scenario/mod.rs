//! Scenarios: the model, the YAML form and the compiler between them.
//!
//! A scenario file is parsed once and compiled: templates, JSON paths, regexes, thresholds and
//! data files are all checked before the run starts, and every mistake is reported with the file,
//! line and column and a hint on how to fix it. `docs/scenarios.md` documents every key.
//!
//! The model (`model.rs`: [`Scenario`], [`Journey`], [`Step`], [`Phase`], ...) is what a run
//! executes; the YAML form (`raw.rs`) keeps where each value was written; the compiler
//! (`compile.rs`) turns one into the other. A Rust caller can build the model directly
//! ([`Scenario::single_request`]).
//!
//! ```
//! use std::path::Path;
//!
//! use loadgen::scenario::{self, Phase};
//!
//! let yaml = "
//! target: http://127.0.0.1:8080
//! phases:
//!   - { duration: 10s, arrival_rate: 5 }
//! journeys:
//!   - name: browse
//!     steps:
//!       - get: /
//! ";
//! let s = scenario::parse(yaml, "inline.yaml", Path::new("."))?;
//! assert!(matches!(s.phases[0], Phase::Load { rate, .. } if rate == 5.0));
//! assert_eq!(s.planned_duration().as_secs(), 10);
//!
//! // A mistake names its line and column.
//! let e = scenario::parse(&yaml.replace("arrival_rate: 5", "arrival_rate: -5"), "inline.yaml", Path::new("."))
//!     .err()
//!     .map(|e| (e.line, e.message));
//! assert_eq!(e, Some((4, "-5.0 is not a rate".to_owned())));
//! # Ok::<(), loadgen::scenario::ScenarioError>(())
//! ```

mod compile;
mod csv;
mod json_path;
mod model;
mod raw;
pub mod signals;
pub mod template;
pub mod threshold;
pub(crate) mod walk;

use std::path::Path;

pub use compile::ScenarioError;
pub use json_path::JsonPath;
pub use model::{
    Body, Capture, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_RATE_FACTOR, Expect, Feeder, GrpcCall, Journey,
    JsonTemplate, MAX_ARRIVAL_RATE, MAX_RATE_FACTOR_LIMIT, Order, Phase, Request, Scenario, Step, Timeouts,
    Tls,
};
pub use template::Template;
pub use threshold::Threshold;

/// Loads and validates a scenario file. Data files are read relative to it.
pub fn load(path: impl AsRef<Path>) -> Result<Scenario, ScenarioError> {
    let path = path.as_ref();
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
        file: file.clone(),
        line: 0,
        column: 0,
        message: format!("cannot read the scenario: {e}"),
        hint: None,
    })?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    parse(&text, &file, &dir)
}

/// Parses and validates scenario `text`; `file` names it in errors, `dir` resolves data files.
pub fn parse(text: &str, file: &str, dir: &Path) -> Result<Scenario, ScenarioError> {
    let raw = raw::parse(text, file)?;
    compile::Compiler { file, dir, protos: Default::default() }.compile(raw)
}

/// The `signals:` block of a file, for `loadgen replay --signals FILE`: a scenario file (its other
/// keys are not read) or a file with only that block. Checked as a scenario's is.
pub(crate) fn load_signals(path: &Path) -> Result<signals::Signals, ScenarioError> {
    #[derive(serde::Deserialize)]
    struct OnlySignals {
        signals: Option<serde_saphyr::Spanned<signals::RawSignals>>,
    }
    let file = path.display().to_string();
    let fail =
        |message: String| ScenarioError { file: file.clone(), line: 0, column: 0, message, hint: None };
    let text =
        std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read the signals file: {e}")))?;
    let raw: OnlySignals = serde_saphyr::from_str(&text).map_err(|e| raw::yaml_error(&e, &file))?;
    let Some(raw) = raw.signals else {
        return Err(ScenarioError {
            hint: Some("e.g. `signals: { prometheus: http://127.0.0.1:9090, top_up: { real_rate: '…', target: 1 } }`".into()),
            ..fail("no `signals:` block".into())
        });
    };
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    compile::Compiler { file: &file, dir: &dir, protos: Default::default() }
        .signals(&raw.value, &raw.referenced)
}
