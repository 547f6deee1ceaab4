//! Where captured records go: a [`CaptureSink`]; [`JsonLinesSink`] writes rotated files.

use std::{
    fs::{File, OpenOptions},
    io::{Seek as _, Write as _},
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use super::CaptureRecord;

/// Why a sink could not take a record.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaptureSinkError {
    /// Writing failed.
    #[error("capture sink: {0}")]
    Io(#[from] std::io::Error),
    /// Any other reason (a custom sink's).
    #[error("capture sink: {0}")]
    Other(String),
}

/// Takes scrubbed records, one at a time, on the capture's own writer thread (never on a real
/// request's path). Implement it to send records elsewhere (Kafka, S3, a database).
pub trait CaptureSink: Send + Sync + 'static {
    /// Stores one record. An error is counted and the record dropped; the capture goes on.
    fn write(&self, record: &CaptureRecord) -> Result<(), CaptureSinkError>;

    /// Makes what was written durable (called when the queue runs empty and at shutdown).
    fn flush(&self) -> Result<(), CaptureSinkError> {
        Ok(())
    }
}

/// Writes records as JSON Lines (`docs/capture-format.md`) to
/// `<dir>/<prefix>-<unix ms>-<pid>.jsonl`, starting a new file when the current one reaches
/// `max_bytes` or `max_age`, and keeping the newest `keep_files` of this process's.
///
/// ```
/// use std::time::Duration;
/// use synth_tower::capture::JsonLinesSink;
///
/// let dir = std::env::temp_dir().join(format!("capture-doc-{}", std::process::id()));
/// let sink = JsonLinesSink::new(&dir, "catalog")?.max_bytes(64 << 20).max_age(Duration::from_secs(3600));
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct JsonLinesSink {
    dir: PathBuf,
    prefix: String,
    max_bytes: u64,
    max_age: Duration,
    keep: usize,
    current: Mutex<Option<Current>>,
}

#[derive(Debug)]
struct Current {
    /// Unbuffered: a record counts as written only once it is in the file.
    file: File,
    bytes: u64,
    opened: Instant,
}

impl JsonLinesSink {
    /// A sink writing into `dir` (created if missing), files named `<prefix>-<unix ms>-<pid>.jsonl`.
    /// Rotates at 256 MiB or one hour, and keeps the newest 24 files, by default.
    pub fn new(dir: impl AsRef<Path>, prefix: impl Into<String>) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir.as_ref())?;
        Ok(JsonLinesSink {
            dir: dir.as_ref().to_owned(),
            prefix: prefix.into(),
            max_bytes: 256 << 20,
            max_age: Duration::from_secs(3600),
            keep: 24,
            current: Mutex::new(None),
        })
    }

    /// Starts a new file once the current one has this many bytes.
    #[must_use]
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes.max(1);
        self
    }

    /// Starts a new file once the current one is this old.
    #[must_use]
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = age;
        self
    }

    /// Keeps this many files (the newest); older ones are deleted when a new one starts, so a
    /// capture left on cannot fill the disk. At least 1.
    #[must_use]
    pub fn keep_files(mut self, files: usize) -> Self {
        self.keep = files.max(1);
        self
    }

    /// The files of this prefix in the directory (`<prefix>-<13-digit unix ms>-<pid>.jsonl`, from
    /// every process that writes there), oldest first.
    pub fn files(&self) -> std::io::Result<Vec<PathBuf>> {
        Ok(self.matching(|_| true)?.into_iter().map(|(_, path)| path).collect())
    }

    /// Files named exactly `<prefix>-<13 digits>-<pid>.jsonl` whose pid passes `pid`, sorted.
    fn matching(&self, pid: impl Fn(u32) -> bool) -> std::io::Result<Vec<(String, PathBuf)>> {
        let mut files: Vec<(String, PathBuf)> = std::fs::read_dir(&self.dir)?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let rest = name.strip_prefix(&self.prefix)?.strip_prefix('-')?.strip_suffix(".jsonl")?;
                let (ms, owner) = rest.split_once('-')?;
                let ok = ms.len() == 13
                    && ms.bytes().all(|b| b.is_ascii_digit())
                    && !owner.is_empty()
                    && owner.bytes().all(|b| b.is_ascii_digit())
                    && owner.parse().is_ok_and(&pid);
                ok.then(|| (name.clone(), e.path()))
            })
            .collect();
        files.sort();
        Ok(files)
    }

    fn open(&self) -> std::io::Result<Current> {
        let pid = std::process::id();
        let mut ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        // Two rotations in one millisecond get the next free name.
        let (current, name) = loop {
            let name = format!("{}-{ms:013}-{pid}.jsonl", self.prefix);
            match OpenOptions::new().write(true).create_new(true).open(self.dir.join(&name)) {
                Ok(file) => break (Current { file, bytes: 0, opened: Instant::now() }, name),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => ms += 1,
                Err(e) => return Err(e),
            }
        };
        // Retention counts this process's own files only (replicas may share the directory, and
        // another prefix may start like this one), and never the file just opened.
        if let Ok(files) = self.matching(|owner| owner == pid) {
            let old: Vec<&PathBuf> = files.iter().filter(|(n, _)| *n != name).map(|(_, p)| p).collect();
            for path in old.iter().take((old.len() + 1).saturating_sub(self.keep)) {
                let _ = std::fs::remove_file(path);
            }
        }
        Ok(current)
    }
}

impl CaptureSink for JsonLinesSink {
    fn write(&self, record: &CaptureRecord) -> Result<(), CaptureSinkError> {
        let line = format!("{}\n", record.json_line());
        let mut current = self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let rotate =
            current.as_ref().is_some_and(|c| c.bytes >= self.max_bytes || c.opened.elapsed() >= self.max_age);
        if rotate {
            *current = None;
        }
        if current.is_none() {
            *current = Some(self.open()?);
        }
        if let Some(c) = current.as_mut() {
            if let Err(e) = c.file.write_all(line.as_bytes()) {
                // A disk that is full took part of the line: cut it back, so the file holds whole
                // records only.
                let _ = c.file.set_len(c.bytes);
                let _ = c.file.seek(std::io::SeekFrom::Start(c.bytes));
                return Err(e.into());
            }
            c.bytes += line.len() as u64;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), CaptureSinkError> {
        let mut current = self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = current.as_mut() {
            c.file.sync_data()?;
        }
        Ok(())
    }
}
