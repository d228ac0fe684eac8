//! Logging setup: `tracing` to stderr, so stdout stays free for data.
//!
//! `RUST_LOG` (an `EnvFilter` directive such as `info,bayeux_mqtt_bridge=debug`) wins when
//! set; otherwise the level comes from the `-v` count.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The default level for `verbosity` (`-v` count): 0 → `warn`, 1 → `debug`, 2+ → `trace`.
pub fn level_for(verbosity: u8) -> &'static str {
    match verbosity {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    }
}

/// Installs the global subscriber. Calling it twice is harmless (the second call is ignored).
pub fn init(verbosity: u8) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::new(directives),
        _ => EnvFilter::new(level_for(verbosity)),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}
