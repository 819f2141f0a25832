//! The `pgha` binary: parses the command line, sets up logging, and hands each subcommand to the
//! crate that owns it. It holds no logic of its own beyond that wiring.

mod backup_cmd;
mod commands;
mod demo;
mod logging;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = commands::Cli::parse();
    if let Err(e) = logging::init(cli.log_format, &cli.log_level) {
        eprintln!("pgha: {e:#}");
        return ExitCode::from(2);
    }
    match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pgha: {e:#}");
            ExitCode::FAILURE
        }
    }
}
