//! A real SMTP server on loopback: Python's aiosmtpd, installed by `scripts/install-test-deps`
//! into `target/test-venv` (or any Python named by `SYNTH_SMTP_PYTHON` that can import it).
//!
//! Every accepted message becomes a file in [`SmtpSink::dir`], its envelope recipients in a first
//! `X-Envelope-To:` line. The server ends when the sink is dropped, and also when the test
//! process dies (it stops when its standard input closes).

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

/// Python that can import aiosmtpd, if any.
fn python() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-venv/bin/python");
    let candidates = std::env::var_os("SYNTH_SMTP_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain([venv, PathBuf::from("python3")]);
    for p in candidates {
        let ok = Command::new(&p)
            .args(["-c", "import aiosmtpd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(p);
        }
    }
    None
}

/// A running SMTP sink.
#[derive(Debug)]
pub struct SmtpSink {
    child: Child,
    stdin: Option<ChildStdin>,
    port: u16,
    dir: PathBuf,
}

impl SmtpSink {
    /// Starts a sink for `test`, or returns `None` after a loud skip when aiosmtpd is missing
    /// (a panic instead under `SYNTH_REQUIRE_SERVERS=1`).
    ///
    /// # Panics
    ///
    /// When aiosmtpd is there but the sink does not start.
    pub fn start(test: &str) -> Option<SmtpSink> {
        let Some(python) = python() else {
            crate::missing_server(
                test,
                "Python with aiosmtpd (the SMTP sink)",
                "run scripts/install-test-deps, or set SYNTH_SMTP_PYTHON to a Python that can import aiosmtpd",
            );
            return None;
        };
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "synth-smtp-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("smtp_sink.py");
        let mut child = Command::new(&python)
            .arg(&script)
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", python.display()));
        let stdin = child.stdin.take();
        // Its first line, or nothing after 30 s (a hung interpreter must not hang the test).
        let (tx, rx) = std::sync::mpsc::channel();
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                let mut line = String::new();
                let _ = BufReader::new(out).read_line(&mut line);
                let _ = tx.send(line);
            });
        }
        let line = rx.recv_timeout(std::time::Duration::from_secs(30)).unwrap_or_default();
        let port = line.trim().strip_prefix("listening on ").and_then(|p| p.parse().ok());
        let sink = SmtpSink { child, stdin, port: port.unwrap_or(0), dir };
        if port.is_none() {
            drop(sink); // stops the process, removes the directory
            panic!("the SMTP sink did not start (it said {line:?})");
        }
        Some(sink)
    }

    /// `smtp://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Where messages land.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every message received so far, as text.
    pub fn messages(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect();
        paths.sort();
        paths.iter().filter_map(|p| std::fs::read_to_string(p).ok()).collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
