//! The `portcullis` binary: parse the command line, set up logging, hand over to the library.

use std::process::ExitCode;

use clap::Parser;
use portcullis::cli::{Cli, Command, TokenCommand};
use portcullis::config::{DEFAULT_LOG_LEVEL, Settings};

/// With `--features mimalloc`: fewer cycles per request than glibc's malloc, more resident
/// memory (both measured in bench/RESULTS.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for a configuration mistake (the message names the field and the fix).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            let settings = match Settings::resolve(&args) {
                Ok(s) => s,
                Err(e) => return fail_config(&e.to_string()),
            };
            portcullis::telemetry::init(settings.log_format, &settings.log_level);
            report(portcullis::run::run(settings))
        }
        Command::Demo(args) => report(portcullis::demo::run(&args)),
        Command::Token(TokenCommand::Mint(args)) => report(portcullis::tools::mint_command(&args)),
        Command::Token(TokenCommand::Inspect(args)) => {
            match portcullis::tools::inspect_command(&args) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => report(Err(e)),
            }
        }
        Command::Check(args) => match portcullis::tools::check_command(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => fail_config(&message),
        },
        Command::Inject(args) => {
            let level = std::env::var("RUST_LOG").unwrap_or_else(|_| DEFAULT_LOG_LEVEL.into());
            portcullis::telemetry::init(args.log_format, &level);
            match portcullis::inject::run(*args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail_config(&format!("inject: {e}")),
            }
        }
    }
}

fn fail_config(message: &str) -> ExitCode {
    eprintln!("portcullis: {message}");
    ExitCode::from(EXIT_CONFIG)
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            ExitCode::FAILURE
        }
    }
}
