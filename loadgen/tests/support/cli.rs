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
