//! A real Prometheus server on loopback (Debian's `prometheus` package, installed by
//! `scripts/install-test-deps`; or any binary named by `PROMETHEUS_BIN`), scraping the targets a
//! test gives it, with its data in a temporary directory.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

fn binary() -> Option<PathBuf> {
    crate::find_binary("PROMETHEUS_BIN", &["/usr/bin/prometheus", "prometheus"])
}

/// A running Prometheus.
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    watcher: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (host:port, path `/metrics`) every `scrape`, or
    /// returns `None` after a loud skip when it is not installed (a panic instead under
    /// `SYNTH_REQUIRE_SERVERS=1`).
    ///
    /// # Panics
    ///
    /// When Prometheus is installed but does not become ready within 30 s.
    pub fn start(test: &str, targets: &[SocketAddr], scrape: Duration) -> Option<Prometheus> {
        let Some(bin) = binary() else {
            crate::missing_server(
                test,
                "Prometheus server",
                "run scripts/install-test-deps (Debian: apt-get install prometheus) or set PROMETHEUS_BIN",
            );
            return None;
        };
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "synth-prometheus-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(dir.join("data"))
            .unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let ms = scrape.as_millis().max(100);
        let config = format!(
            "global: {{ scrape_interval: {ms}ms, evaluation_interval: {ms}ms }}\nscrape_configs:\n  - job_name: app\n    scrape_interval: {ms}ms\n    scrape_timeout: {ms}ms\n    static_configs: [{{ targets: [{}] }}]\n",
            targets.join(", ")
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap_or_else(|e| panic!("writing the config: {e}"));
        for _ in 0..5 {
            let port = crate::free_port().unwrap_or_else(|e| panic!("no free port: {e}"));
            let mut child = Command::new(&bin)
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--log.level=warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let mut watcher = watch_parent(child.id(), &dir);
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // exited: the port was taken, probably; try another
                }
                if get(port, "/-/ready").is_some_and(|r| r.starts_with("HTTP/1.0 200")) {
                    // Service discovery hands targets to the scrapers only every few seconds:
                    // wait for the first scrape, so tests see data from their first query.
                    while Instant::now() < deadline {
                        let up = get(port, "/api/v1/query?query=min(up)").unwrap_or_default();
                        // Every target scraped successfully (`up` is 1 for all of them).
                        if up.contains(",\"1\"]") {
                            return Some(Prometheus { child, watcher, port, dir });
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
            stop_watcher(&mut watcher);
        }
        let _ = std::fs::remove_dir_all(&dir);
        panic!("Prometheus did not become ready (see its log above)");
    }

    /// `http://127.0.0.1:PORT`, the base URL of its query API.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A plain HTTP/1.0 GET; the whole answer, head and body.
fn get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Kills the server and removes its files once this process is gone, even if it aborts.
fn watch_parent(child: u32, dir: &Path) -> Option<Child> {
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; kill {child} 2>/dev/null; sleep 1; rm -rf '{dir}'",
        pid = std::process::id(),
        dir = dir.display(),
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

/// The server is gone already: the watcher must not outlive it (it would kill its pid later).
fn stop_watcher(watcher: &mut Option<Child>) {
    if let Some(mut w) = watcher.take() {
        let _ = w.kill();
        let _ = w.wait();
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        stop_watcher(&mut self.watcher);
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
