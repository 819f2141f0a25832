//! Log output for every pgha subcommand: human-readable lines on stderr by default, one JSON
//! object per line with `--log-format json`. The level comes from `--log-level` or `RUST_LOG`.

use anyhow::Context;
use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per event, for log shippers.
    Json,
}

pub fn init(format: LogFormat, level: &str) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => {
            EnvFilter::try_new(&spec).with_context(|| format!("RUST_LOG={spec:?} is not a valid log filter"))?
        }
        _ => {
            const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];
            let plain_level = LEVELS.contains(&level.to_ascii_lowercase().as_str());
            let bad = || {
                format!("--log-level {level:?}: expected one of error, warn, info, debug, trace (or a filter like pgha=debug)")
            };
            if !plain_level && !level.contains('=') {
                anyhow::bail!(bad());
            }
            EnvFilter::try_new(filter_for_level(level)).with_context(bad)?
        }
    };
    use std::io::IsTerminal;
    // Colours only for a person at a terminal, never in log files or pipes.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let result = match format {
        LogFormat::Human => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("could not set up logging: {e}"))
}

/// The filter for `--log-level`: at `info` the embedded Raft library's own lines (each vote
/// request, a dump of its state at every start) are left out, only its warnings and errors
/// stay; pgha's consensus module says what a DBA needs (a member started, a leader changed).
/// At `debug` and `trace` everything shows; a filter with `=` is taken as it is.
fn filter_for_level(level: &str) -> String {
    if level.eq_ignore_ascii_case("info") {
        format!("{level},openraft=warn")
    } else {
        level.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::filter_for_level;

    #[test]
    fn info_leaves_out_the_raft_librarys_chatter_and_other_levels_are_taken_as_given() {
        assert_eq!(filter_for_level("info"), "info,openraft=warn");
        assert_eq!(filter_for_level("INFO"), "INFO,openraft=warn");
        for level in ["error", "warn", "debug", "trace", "off", "pgha=debug", "info,openraft=info"] {
            assert_eq!(filter_for_level(level), level);
        }
    }
}
