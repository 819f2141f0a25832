//! The `pgha` binary: parses the command line, sets up logging, and hands each subcommand to the
//! crate that owns it. It holds no logic of its own beyond that wiring.

mod backup_cmd;
mod commands;
mod ctl;
mod demo;
mod logging;

use clap::Parser;
use std::process::ExitCode;

/// mimalloc rather than glibc's malloc: a pooler logging in thousands of clients at once
/// allocates short-lived login state between the small records each client keeps. glibc
/// leaves the freed login state as holes it cannot give back; mimalloc keeps objects of one
/// size on their own pages and returns pages that empty (scripts/bench-pooler, idle clients).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
