//! Logging setup: `tracing` to stderr (or a file), so stdout stays free for data.
//!
//! `RUST_LOG` (an `EnvFilter` directive such as `info,bayeux_mqtt_bridge=debug`) wins when
//! set; otherwise the level comes from the `-v` count (tools) or the config file (daemon).
//! The daemon can log JSON lines for Docker/log shippers; text is the default (journald).
//!
//! A log file is opened for appending and opened again by [`reopen_log`] (on SIGHUP), so
//! logrotate can rename it and signal the daemon (`postrotate`: `systemctl reload`), or copy
//! and truncate it (`copytruncate`: appends go to the new end).

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Output format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The default level for `verbosity` (`-v` count): 0 → `warn`, 1 → `debug`, 2+ → `trace`.
pub fn level_for(verbosity: u8) -> &'static str {
    match verbosity {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    }
}

fn filter(default_level: &str) -> EnvFilter {
    match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::new(directives),
        _ => EnvFilter::new(default_level),
    }
}

/// Installs the global subscriber for the command-line tools: text on stderr. Calling it
/// twice is harmless (the second call is ignored).
pub fn init(verbosity: u8) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter(level_for(verbosity)))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

/// Installs the global subscriber for the daemon: `level` (unless `RUST_LOG` is set), in
/// `format`, to `file` (appended to) or stderr.
pub fn init_daemon(level: &str, format: LogFormat, file: Option<&Path>) -> Result<(), String> {
    let file = match file {
        Some(path) => {
            let log = Arc::new(LogFile {
                path: path.to_owned(),
                file: Mutex::new(open_log(path)?),
            });
            // Only the first daemon subscriber of the process writes (see below).
            let _ = LOG_FILE.set(Arc::clone(&log));
            Some(LogWriter(log))
        }
        None => None,
    };
    let ansi = file.is_none() && std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(level))
        .with_ansi(ansi)
        .with_target(false);
    let result = match (format, file) {
        (LogFormat::Text, None) => builder.with_writer(std::io::stderr).try_init(),
        (LogFormat::Text, Some(f)) => builder.with_writer(f).try_init(),
        (LogFormat::Json, None) => builder.json().with_writer(std::io::stderr).try_init(),
        (LogFormat::Json, Some(f)) => builder.json().with_writer(f).try_init(),
    };
    // A subscriber already installed (tests running the daemon in-process) is fine.
    let _ = result;
    Ok(())
}

/// Opens `path` for appending; a new file is created with mode 0600 (log lines name
/// channels, topics and peers). An existing file keeps its mode (`files` warns when it is
/// open to others).
fn open_log(path: &Path) -> Result<File, String> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(path)
        .map_err(|e| format!("cannot open log file {}: {e}", path.display()))
}

/// The daemon's log file, for [`reopen_log`].
static LOG_FILE: OnceLock<Arc<LogFile>> = OnceLock::new();

/// A log file that can be opened again under its path.
#[derive(Debug)]
struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
}

impl LogFile {
    fn lock(&self) -> MutexGuard<'_, File> {
        self.file.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The subscriber's writer: the current file of a [`LogFile`].
struct LogWriter(Arc<LogFile>);

/// One log line being written, with the file locked.
struct LogLine<'a>(MutexGuard<'a, File>);

impl Write for LogLine<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = LogLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LogLine(self.0.lock())
    }
}

/// Opens the daemon's log file again under its path (after logrotate renamed it), and
/// returns that path; `Ok(None)` when the daemon logs to stderr. On an error the old file
/// stays in use.
pub fn reopen_log() -> Result<Option<PathBuf>, String> {
    let Some(log) = LOG_FILE.get() else {
        return Ok(None);
    };
    let fresh = open_log(&log.path)?;
    *log.lock() = fresh;
    Ok(Some(log.path.clone()))
}
