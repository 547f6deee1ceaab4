//! Runs loadgen's command line in the test's process.

use clap::Parser as _;
use loadgen::cli::{Cli, Exit, run_async};

/// `loadgen ARGS…` (without the program name): the exit code and what it wrote to its output.
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
