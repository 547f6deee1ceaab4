//! Real servers for tests, started and stopped by the tests themselves.
//!
//! Tests that need a server the machine may not have call a `start_*` function: it returns
//! `None` after printing a loud `SKIPPED` line when the server is missing, unless
//! `SYNTH_REQUIRE_SERVERS=1` is set (as `.ci/run` does), in which case a missing server is a
//! test failure. So CI can never skip these tests silently.

pub mod pg;
pub mod prometheus;
pub mod promtool;
pub mod smtp;

/// Environment variable that turns a missing-server skip into a failure.
pub const REQUIRE_SERVERS_ENV: &str = "SYNTH_REQUIRE_SERVERS";

/// Whether missing servers must fail the test.
pub fn servers_required() -> bool {
    std::env::var(REQUIRE_SERVERS_ENV).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Reports a missing server: a loud skip, or a panic when servers are required.
///
/// # Panics
///
/// When `SYNTH_REQUIRE_SERVERS=1`: a required server is missing.
pub fn missing_server(test: &str, what: &str, how_to_fix: &str) {
    let message = format!("{what} not found for {test}: {how_to_fix}");
    if servers_required() {
        panic!("{message} ({REQUIRE_SERVERS_ENV}=1, so this is a failure, not a skip)");
    }
    eprintln!("\n!!!!!!!! SKIPPED: {message} !!!!!!!!\n");
}

/// The first program that answers `--version`: the path in the environment variable `env`, then
/// `defaults` in order.
pub(crate) fn find_binary(env: &str, defaults: &[&str]) -> Option<std::path::PathBuf> {
    use std::process::{Command, Stdio};
    let candidates = std::env::var_os(env)
        .map(std::path::PathBuf::from)
        .into_iter()
        .chain(defaults.iter().map(std::path::PathBuf::from));
    candidates.into_iter().find(|p| {
        Command::new(p)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
