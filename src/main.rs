//! The `portcullis` command line: parse, set up logging, run the chosen subcommand.
//!
//! On this branch only `inject` exists; the other subcommands join it on the main branch.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use portcullis::inject::{self, InjectArgs, LogFormat};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::util::SubscriberInitExt;

/// A sidecar that verifies who calls a Kubernetes workload and what they may do.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the mutating admission webhook that injects the sidecar into pods.
    Inject(InjectArgs),
}

/// Exit code for a start-up failure the operator must fix (bad flag, unreadable certificate).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Inject(args) => {
            init_logging(args.log_format);
            match inject::run(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("portcullis inject: {error}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }
    }
}

/// Quiet by default (`warn`, portcullis at `info`), overridable with `RUST_LOG`; pingora's `log`
/// records are bridged into tracing by the subscriber's `tracing-log` feature.
fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,portcullis=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().finish().init(),
        LogFormat::Text => builder.finish().init(),
    }
}
