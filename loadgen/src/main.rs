//! The `loadgen` command-line tool; see `loadgen --help`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = loadgen::cli::Cli::parse();
    let mut out = std::io::stdout().lock();
    match loadgen::cli::run(cli, &mut out) {
        Ok(code) => code.into(),
        Err(e) => {
            eprintln!("error: {e:#}");
            loadgen::cli::Exit::Usage.into()
        }
    }
}
