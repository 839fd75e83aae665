//! Log lines from the shipper thread, which never takes the GIL and so cannot use Python's logging: the same
//! line format as the Python roles' (`adclick.core.logs`), written straight to stderr.
use std::fmt;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug = 10,
    Info = 20,
    Warning = 30,
    Error = 40,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warning => "WARNING",
            Level::Error => "ERROR",
        }
    }

    /// Python's level numbers (logging.DEBUG = 10 ...); anything above ERROR logs errors only.
    pub fn from_python(level: u32) -> Level {
        match level {
            0..=10 => Level::Debug,
            11..=20 => Level::Info,
            21..=30 => Level::Warning,
            _ => Level::Error,
        }
    }
}

/// Writes `{time} {role} {pid} {LEVEL} adclick.tracker.shipper: {message}` lines at or above a level.
#[derive(Debug, Clone)]
pub struct Logger {
    role: String,
    min: Level,
}

pub const LOGGER_NAME: &str = "adclick.tracker.shipper";

impl Logger {
    pub fn new(role: impl Into<String>, min: Level) -> Self {
        Logger { role: role.into(), min }
    }

    pub fn log(&self, level: Level, message: fmt::Arguments<'_>) {
        if level < self.min {
            return;
        }
        let line = format!(
            "{} {} {} {} {LOGGER_NAME}: {message}\n",
            local_time(),
            self.role,
            std::process::id(),
            level.name()
        );
        // One write per line, as Python's StreamHandler does, so lines of both sides do not interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

/// Local time as Python's logging `asctime`: `2026-12-02 15:04:05,123`.
fn local_time() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs() as libc::time_t;
    // SAFETY: localtime_r writes only into the struct we pass and reads the time we pass.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&secs, &mut tm);
        tm
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02},{:03}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        now.subsec_millis()
    )
}
