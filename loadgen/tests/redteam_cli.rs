//! Red team (issue 18): `loadgen init` with an odd output path. Each test failed on the code it
//! was written against (it reproduced a finding) and guards its fix.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use clap::Parser;
use loadgen::cli::{Cli, Exit, run};
fn run_in_process(args: &[&str]) -> (anyhow::Result<Exit>, String) {
    let mut out = Vec::new();
    let result = run(Cli::try_parse_from(args).unwrap(), &mut out);
    (result, String::from_utf8(out).unwrap())
}

fn dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("loadgen-redteam-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `init` must not write through a dangling symlink: `file.exists()` is false for it, so the
/// "never overwrites without --force" check passes and the write lands wherever the link points.
#[cfg(unix)]
#[test]
fn init_does_not_write_through_a_dangling_symlink_without_force() {
    let d = dir("symlink");
    let elsewhere = d.join("elsewhere.yaml");
    let link = d.join("s.yaml");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    let (result, _) = run_in_process(&["loadgen", "init", "http://127.0.0.1:8080", link.to_str().unwrap()]);
    assert!(
        result.is_err() && !elsewhere.exists(),
        "init wrote through a symlink it did not see ({}): {result:?}",
        elsewhere.display()
    );
}
