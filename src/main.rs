//! `bayeux-mqtt-bridge`: command line, config, logging, signals, run. No logic lives here.

use std::path::PathBuf;
use std::process::ExitCode;

use bayeux_mqtt_bridge::{
    bridge, cli, config, files, http, scheduling, shutdown, spool, telemetry,
};
use clap::{Args, Parser, Subcommand};

/// Bridge Bayeux (CometD) channels and MQTT topics.
#[derive(Debug, Parser)]
#[command(
    name = "bayeux-mqtt-bridge",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Run the bridge daemon with this config file (same as `run --config FILE`).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// More log output on stderr (-v debug, -vv trace). RUST_LOG wins when set.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Args)]
struct ConfigArg {
    /// The bridge's TOML config file.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

#[derive(Debug, Args)]
struct HealthArgs {
    /// The endpoint to probe.
    #[arg(long, default_value = "http://127.0.0.1:9464/readyz")]
    url: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the bridge daemon.
    Run(ConfigArg),
    /// Load and validate a config file, print the compiled routes, and exit.
    Check(ConfigArg),
    /// Tell where a message on a Bayeux channel or an MQTT topic goes: every route that takes
    /// it, in order, and why a route that nearly matches does not. Exit 0 when at least one
    /// route takes it, 1 when none does, 2 on a config error.
    Explain(cli::ExplainArgs),
    /// Move damaged or incompatible spool files (in `spool.dir`) aside, report what each held,
    /// and leave healthy ones alone. Stop the bridge first.
    SpoolRecover(ConfigArg),
    /// Exit 0 if the URL answers HTTP 200 (a health check for images without curl), e.g.
    /// `health --url http://127.0.0.1:9464/readyz`.
    Health(HealthArgs),
    /// Subscribe to Bayeux channels and print each message as a JSON line on stdout.
    Sub(cli::SubArgs),
    /// Publish one message and exit 0 if the server accepted it.
    Pub(cli::PubArgs),
}

/// Exit code for a config file that cannot be used.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match (cli.command, cli.config) {
        (Some(command), _) => command,
        (None, Some(config)) => Command::Run(ConfigArg { config }),
        (None, None) => {
            eprintln!(
                "error: nothing to do: give --config FILE to run the bridge, or a command (see --help)"
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match command {
        Command::Check(args) => check(&args.config),
        Command::Explain(args) => cli::explain(&args),
        Command::SpoolRecover(args) => spool_recover(&args.config),
        Command::Run(args) => run(&args.config, cli.verbose),
        Command::Health(args) => block_on(async move {
            match http::probe(&args.url).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("unhealthy: {e}");
                    ExitCode::FAILURE
                }
            }
        }),
        Command::Sub(args) => {
            telemetry::init(cli.verbose);
            block_on(cli::sub(args))
        }
        Command::Pub(args) => {
            telemetry::init(cli.verbose);
            block_on(cli::publish(args))
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match config::load(path).and_then(|config| bridge::preflight(&config, path)) {
        Ok(description) => {
            print!("{description}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn spool_recover(path: &std::path::Path) -> ExitCode {
    let config = match config::load(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let dir = &config.spool.dir;
    match spool::recover(dir) {
        Ok(files) if files.is_empty() => {
            println!("{}: no spool files", dir.display());
            ExitCode::SUCCESS
        }
        Ok(files) => {
            for file in files {
                println!("{file}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: &std::path::Path, verbose: u8) -> ExitCode {
    let config = match config::load(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // The same checks as `check`, so that the daemon refuses nothing `check` accepted.
    if let Err(e) = bridge::preflight(&config, path) {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    // Routes that cannot be compiled are a config error like any other: exit 2, as `check`.
    if let Err(e) = bridge::compile_routes(&config, config.replay.enabled) {
        eprintln!("error: {}", e.in_file(path));
        return ExitCode::from(EXIT_CONFIG);
    }
    let level = if verbose > 0 {
        telemetry::level_for(verbose).to_owned()
    } else {
        config.log.level.clone()
    };
    let format = match config.log.format {
        config::LogFormat::Text => telemetry::LogFormat::Text,
        config::LogFormat::Json => telemetry::LogFormat::Json,
    };
    if let Err(e) = telemetry::init_daemon(&level, format, config.log.file.as_deref()) {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    for warning in config.warnings() {
        tracing::warn!(%warning, "Config warning.");
    }
    for warning in files::warnings(&config) {
        tracing::warn!(%warning, "File mode warning.");
    }
    // Before the runtime starts any thread: they inherit it.
    scheduling::apply(config.bridge.cpu_scheduling).log();
    block_on(async move {
        let reload = bridge::ReloadSource {
            path: path.to_owned(),
            requests: shutdown::reload_requests(reopen_log),
        };
        match bridge::run_with_reload(config, shutdown::signal(), Some(reload)).await {
            Ok(_) => {
                tracing::info!("Bridge stopped.");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %e, "Bridge failed.");
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// On SIGHUP, before the config reload: the log file again under its path (logrotate).
fn reopen_log() {
    match telemetry::reopen_log() {
        Ok(Some(path)) => tracing::info!(file = %path.display(), "Log file reopened."),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e, "Could not reopen the log file; still writing to the old one.")
        }
    }
}

fn block_on(future: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    // One thread, the main one, unless TOKIO_WORKER_THREADS asks for a pool of workers. The
    // bridge is a pipeline whose stages hand each message to the next: on two workers every
    // hand-over is a cross-thread wake-up (futex, eventfd, context switch), which cost more
    // CPU than the second thread gave back, and a current-thread runtime schedules for less
    // than a pool of one (docs/benchmarks.md). Blocking work goes to spawn_blocking
    // threads either way.
    let mut builder = if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    match builder.enable_all().build() {
        Ok(runtime) => runtime.block_on(future),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}
