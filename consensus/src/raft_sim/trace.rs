//! The tail of what happened in one simulated run (faults, leader changes, acknowledged client
//! operations), stamped with virtual milliseconds since the run began; printed with the seed when
//! a check fails. Owns nothing else.

use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::time::Instant;

/// Lines kept for the failure report.
const KEPT: usize = 400;

pub struct Trace {
    start: Instant,
    lines: Mutex<VecDeque<String>>,
}

impl Trace {
    pub fn new(start: Instant) -> Trace {
        Trace { start, lines: Mutex::new(VecDeque::new()) }
    }

    /// Virtual milliseconds since the run began.
    pub fn ms(&self, at: Instant) -> u128 {
        at.saturating_duration_since(self.start).as_millis()
    }

    pub fn log(&self, line: impl std::fmt::Display) {
        let line = format!("{:>7} ms  {line}", self.ms(Instant::now()));
        if std::env::var_os("PGHA_SIM_VERBOSE").is_some() {
            eprintln!("{line}");
        }
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() == KEPT {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    pub fn tail(&self) -> String {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines.iter().map(String::as_str).collect::<Vec<_>>().join("\n")
    }
}
