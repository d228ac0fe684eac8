//! Logging setup: `tracing` to stderr (or a file), so stdout stays free for data.
//!
//! `RUST_LOG` (an `EnvFilter` directive such as `info,bayeux_mqtt_bridge=debug`) wins when
//! set; otherwise the level comes from the `-v` count (tools) or the config file (daemon).
//! The daemon can log JSON lines for Docker/log shippers; text is the default (journald).

use std::fs::{File, OpenOptions};
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

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
        Some(path) => Some(open_log(path)?),
        None => None,
    };
    let ansi = file.is_none() && std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(level))
        .with_ansi(ansi)
        .with_target(false);
    let result = match (format, file) {
        (LogFormat::Text, None) => builder.with_writer(std::io::stderr).try_init(),
        (LogFormat::Text, Some(f)) => builder.with_writer(Mutex::new(f)).try_init(),
        (LogFormat::Json, None) => builder.json().with_writer(std::io::stderr).try_init(),
        (LogFormat::Json, Some(f)) => builder.json().with_writer(Mutex::new(f)).try_init(),
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
