//! Runs loadgen's command line in the test's process.

use clap::Parser as _;
use loadgen::cli::{Cli, Exit, run_async};

/// `loadgen ARGS…` (without the program name): the exit code and what it wrote to its output.
/// Only for what is about the command line itself; runs go through the typed API (`run_file`).
#[allow(dead_code)] // not every test binary that includes this support module tests the command line
pub(crate) async fn loadgen(args: &[&str]) -> (Exit, String) {
    let cli = Cli::try_parse_from(std::iter::once("loadgen").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("loadgen {args:?}: {e}"));
    let mut out = Vec::new();
    let exit = run_async(cli, &mut out).await.unwrap_or_else(|e| panic!("loadgen {args:?}: {e:#}"));
    (exit, String::from_utf8(out).unwrap_or_default())
}

/// Writes `yaml` as `s.yaml` and `keys` as `keys` in a directory of its own (`prefix`, this
/// process, `name`); returns the scenario's path.
#[allow(dead_code)] // not every test binary that includes this support module writes scenarios
pub(crate) fn scenario_file(prefix: &str, name: &str, yaml: &str, keys: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("keys"), keys).unwrap();
    let path = dir.join("s.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Runs the scenario file `path` through the typed API ([`loadgen::run`]) with the keys written
/// beside it ([`scenario_file`]), quiet; `configure` adds to the config (reports, run id, …).
/// The exit code and the text `loadgen run` would print: the summary, or the preflight's report
/// and the error.
#[allow(dead_code)] // not every test binary that includes this support module runs scenarios
pub(crate) async fn run_file(
    path: &std::path::Path,
    configure: impl FnOnce(loadgen::RunConfig) -> loadgen::RunConfig,
) -> (Exit, String) {
    let keys = std::fs::read_to_string(path.with_file_name("keys")).unwrap();
    let keys = synth_ctx::KeyRing::parse(keys.trim()).unwrap();
    let scenario = loadgen::Scenario::from_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let config = configure(loadgen::RunConfig::new(keys).with_quiet(true));
    match loadgen::run(std::sync::Arc::new(scenario), config).await {
        Ok(outcome) => (outcome.exit(), outcome.summary()),
        Err(e) => {
            let mut text = match &e {
                loadgen::RunError::PreflightFailed(report) => report.render(),
                _ => String::new(),
            };
            text.push_str(&e.to_string());
            (e.exit(), text)
        }
    }
}

/// `loadgen preflight` through the typed API ([`loadgen::preflight`]): the exit code and the
/// report as the command prints it.
#[allow(dead_code)] // not every test binary that includes this support module preflights
pub(crate) async fn preflight_file(
    path: &std::path::Path,
    configure: impl FnOnce(loadgen::RunConfig) -> loadgen::RunConfig,
) -> (Exit, String) {
    let keys = std::fs::read_to_string(path.with_file_name("keys")).unwrap();
    let keys = synth_ctx::KeyRing::parse(keys.trim()).unwrap();
    let scenario = loadgen::Scenario::from_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let config = configure(loadgen::RunConfig::new(keys));
    let outcome = loadgen::preflight(std::sync::Arc::new(scenario), &config).await.unwrap();
    (outcome.exit(), outcome.render())
}
