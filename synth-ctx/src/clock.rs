use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the unix epoch; 0 if the clock is set before it.
pub(crate) fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
