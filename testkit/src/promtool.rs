//! `promtool check metrics` (Debian's `prometheus` package, installed by
//! `scripts/install-test-deps`; or the binary named by `PROMTOOL_BIN`): what a real Prometheus
//! accepts, lint included (HELP text, counter suffixes, one TYPE per family).

use std::{
    io::Write as _,
    path::PathBuf,
    process::{Command, Stdio},
};

fn binary() -> Option<PathBuf> {
    crate::find_binary("PROMTOOL_BIN", &["/usr/bin/promtool", "promtool"])
}

/// Checks a `/metrics` page: `Some(Ok(()))` when promtool accepts it, `Some(Err(what promtool
/// said))` when not, `None` after a loud skip when promtool is not installed (a panic instead
/// under `SYNTH_REQUIRE_SERVERS=1`).
///
/// # Panics
///
/// When promtool is missing and servers are required, or cannot be run.
pub fn check_metrics(test: &str, page: &str) -> Option<Result<(), String>> {
    let Some(bin) = binary() else {
        crate::missing_server(test, "promtool", "run scripts/install-test-deps (Debian package prometheus)");
        return None;
    };
    let mut child = Command::new(bin)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running promtool: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(page.as_bytes()).unwrap_or_else(|e| panic!("writing to promtool: {e}"));
    }
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("waiting for promtool: {e}"));
    if out.status.success() {
        Some(Ok(()))
    } else {
        let said =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        Some(Err(said))
    }
}
