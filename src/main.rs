//! `bayeux-mqtt-bridge`: command line, logging, run. No logic lives here.

use std::process::ExitCode;

use bayeux_mqtt_bridge::{cli, telemetry};
use clap::{Parser, Subcommand};

/// Bridge Bayeux (CometD) channels and MQTT topics.
#[derive(Debug, Parser)]
#[command(name = "bayeux-mqtt-bridge", version, about)]
struct Cli {
    /// More log output on stderr (-v debug, -vv trace). RUST_LOG wins when set.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Subscribe to Bayeux channels and print each message as a JSON line on stdout.
    Sub(cli::SubArgs),
    /// Publish one message and exit 0 if the server accepted it.
    Pub(cli::PubArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Sub(args) => cli::sub(args).await,
            Command::Pub(args) => cli::publish(args).await,
        }
    })
}
