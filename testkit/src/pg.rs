//! A throwaway PostgreSQL cluster: `initdb` + `pg_ctl` on a temporary directory and a free
//! loopback port, stopped and removed on drop.
//!
//! PostgreSQL refuses to run as root; when the tests run as root (as CI does), the cluster runs
//! as the `postgres` user that Debian's server package creates, through `runuser`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

/// A running throwaway cluster. Dropping it stops the server and deletes its files.
#[derive(Debug)]
pub struct PgCluster {
    bin: PathBuf,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    as_postgres_user: bool,
}

fn find_bin_dir() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(dir) = std::env::var("PG_BIN") {
        candidates.push(dir.into());
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        candidates.push(String::from_utf8_lossy(&out.stdout).trim().into());
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("bin")).collect();
        versions.sort();
        candidates.extend(versions.into_iter().rev());
    }
    candidates.into_iter().find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl PgCluster {
    /// Starts a cluster for `test`, or returns `None` after a loud skip when PostgreSQL is not
    /// installed (a panic instead under `SYNTH_REQUIRE_SERVERS=1`).
    ///
    /// # Panics
    ///
    /// When PostgreSQL is installed but does not start: that is a broken machine, not a skip.
    pub fn start(test: &str) -> Option<PgCluster> {
        let Some(bin) = find_bin_dir() else {
            crate::missing_server(
                test,
                "PostgreSQL server (initdb, pg_ctl)",
                "install it (Debian: apt-get install postgresql) or set PG_BIN to its bin directory",
            );
            return None;
        };
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!("synth-pg-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let data = std::env::temp_dir().join(&name);
        let log = std::env::temp_dir().join(format!("{name}.log"));
        let as_postgres_user = is_root();
        let mut cluster = PgCluster { bin, data, log, port: 0, as_postgres_user };
        let data_s = cluster.data.display().to_string();
        cluster.run("initdb", &["-D", &data_s, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]);
        // A port can be taken between choosing and binding it: try a few.
        for _ in 0..5 {
            cluster.port = crate::free_port().unwrap_or_else(|e| panic!("no free port: {e}"));
            let opts = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
                cluster.port, data_s
            );
            let log_s = cluster.log.display().to_string();
            let out = cluster
                .try_run("pg_ctl", &["-D", &data_s, "-o", &opts, "-l", &log_s, "-w", "-t", "60", "start"]);
            if out.status.success() {
                cluster.watch_parent();
                return Some(cluster);
            }
        }
        let log = std::fs::read_to_string(&cluster.log).unwrap_or_default();
        panic!("PostgreSQL did not start; its log:\n{log}");
    }

    /// Clusters kept in statics are never dropped, and a test process may abort: a small shell
    /// watchdog stops the server and removes its files once this process is gone.
    fn watch_parent(&self) {
        let pg_ctl = self.bin.join("pg_ctl").display().to_string();
        let stop = if self.as_postgres_user { format!("runuser -u postgres -- {pg_ctl}") } else { pg_ctl };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {stop} -D '{data}' -m immediate -w stop >/dev/null 2>&1; rm -rf '{data}' '{log}'",
            pid = std::process::id(),
            data = self.data.display(),
            log = self.log.display(),
        );
        let _ = Command::new("sh")
            .args(["-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn try_run(&self, program: &str, args: &[&str]) -> Output {
        self.command(program).args(args).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
    }

    fn run(&self, program: &str, args: &[&str]) {
        let out = self.try_run(program, args);
        assert!(
            out.status.success(),
            "{program} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// The URL of database `db` on this cluster.
    pub fn url_for(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `db` and returns its URL (tests sharing a cluster keep apart this way).
    pub fn create_database(&self, db: &str) -> String {
        let port = self.port.to_string();
        let out = Command::new(self.bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", db])
            .output()
            .unwrap_or_else(|e| panic!("cannot run createdb: {e}"));
        assert!(out.status.success(), "createdb {db}: {}", String::from_utf8_lossy(&out.stderr));
        self.url_for(db)
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data_s = self.data.display().to_string();
        let _ = self.try_run("pg_ctl", &["-D", &data_s, "-m", "immediate", "-w", "stop"]);
        let _ = std::fs::remove_dir_all(&self.data);
        let _ = std::fs::remove_file(&self.log);
    }
}
