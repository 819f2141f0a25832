//! Counters shared by every thread: per pool (transactions, queries, bytes, wait time with a
//! histogram, errors by kind) and process-wide (client connections). Atomics only on the
//! data path; readers (admin console, /metrics) take snapshots.

use crate::admin::rows::StatsCounters;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Upper bounds (seconds) of the wait-time histogram buckets.
pub const WAIT_BUCKETS: [f64; 10] = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

#[derive(Default)]
pub struct PoolStats {
    /// Server connections handed to clients (a transaction's in transaction mode, a
    /// session's in session mode).
    pub assignments: AtomicU64,
    pub xact_count: AtomicU64,
    pub query_count: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub wait_time_us: AtomicU64,
    pub wait_count: AtomicU64,
    /// Time transactions held a server connection, from checkout to release.
    pub xact_time_us: AtomicU64,
    /// Time from a request's going to the server until its last answer (ReadyForQuery).
    pub query_time_us: AtomicU64,
    /// Clients that logged in to this pool.
    pub client_logins: AtomicU64,
    /// Named prepared statements: Parses from clients, Parses sent to servers, Binds.
    pub client_parse_count: AtomicU64,
    pub server_parse_count: AtomicU64,
    pub bind_count: AtomicU64,
    wait_buckets: [AtomicU64; WAIT_BUCKETS.len()],
    /// Client connections logged in to this pool.
    pub clients: AtomicU32,
    /// Clients waiting for a server connection.
    pub clients_waiting: AtomicU32,
    /// Server connections being opened and logged in.
    pub servers_login: AtomicU32,
    /// Idle server connections running server_check_query before being handed out.
    pub servers_tested: AtomicU32,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    /// SHOW STATS_AVERAGES: the last complete stats_period.
    window: Mutex<Window>,
}

#[derive(Default)]
struct Window {
    /// Start of the current period and the totals then; None before the first tick.
    start: Option<(Instant, StatsCounters)>,
    /// Averages over the last complete period.
    averages: StatsCounters,
}

impl PoolStats {
    pub fn add_wait(&self, waited: Duration) {
        self.wait_time_us.fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
        self.wait_count.fetch_add(1, Ordering::Relaxed);
        let secs = waited.as_secs_f64();
        if let Some(i) = WAIT_BUCKETS.iter().position(|&le| secs <= le) {
            self.wait_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits per bucket (not cumulative); waits above the last bound are `wait_count - sum`.
    pub fn wait_buckets(&self) -> [u64; WAIT_BUCKETS.len()] {
        std::array::from_fn(|i| self.wait_buckets[i].load(Ordering::Relaxed))
    }

    /// The totals SHOW STATS reports.
    pub fn totals(&self) -> StatsCounters {
        let xacts = self.xact_count.load(Ordering::Relaxed);
        StatsCounters {
            server_assignment_count: self.assignments.load(Ordering::Relaxed),
            xact_count: xacts,
            query_count: self.query_count.load(Ordering::Relaxed),
            received: self.bytes_received.load(Ordering::Relaxed),
            sent: self.bytes_sent.load(Ordering::Relaxed),
            xact_time: self.xact_time_us.load(Ordering::Relaxed),
            query_time: self.query_time_us.load(Ordering::Relaxed),
            client_login_count: self.client_logins.load(Ordering::Relaxed),
            wait_time: self.wait_time_us.load(Ordering::Relaxed),
            client_parse_count: self.client_parse_count.load(Ordering::Relaxed),
            server_parse_count: self.server_parse_count.load(Ordering::Relaxed),
            bind_count: self.bind_count.load(Ordering::Relaxed),
        }
    }

    /// At every housekeeping tick: once `period` has passed since the current period began,
    /// its averages replace the previous ones and a new period begins (PgBouncer's
    /// stats_period).
    pub fn roll_averages(&self, now: Instant, period: Duration) {
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        match window.start {
            Some((began, before)) if now.duration_since(began) >= period => {
                let after = self.totals();
                window.averages = averages_between(&before, &after, now.duration_since(began));
                window.start = Some((now, after));
            }
            Some(_) => {}
            None => window.start = Some((now, self.totals())),
        }
    }

    /// Averages over the last complete stats_period (zeros before the first one ends).
    pub fn averages(&self) -> StatsCounters {
        self.window.lock().unwrap_or_else(|p| p.into_inner()).averages
    }

    /// Adds a client's named-statement work (`Session::take_prepared_counts`).
    pub fn add_prepared(&self, counts: crate::session::PreparedCounts) {
        // One atomic add per counter that moved: a driver that caches its statements binds
        // in every transaction but parses only at its first.
        for (counter, n) in [
            (&self.client_parse_count, counts.client_parse),
            (&self.server_parse_count, counts.server_parse),
            (&self.bind_count, counts.bind),
        ] {
            if n > 0 {
                counter.fetch_add(u64::from(n), Ordering::Relaxed);
            }
        }
    }

    pub fn count_error(&self, kind: &'static str) {
        *self.errors.lock().unwrap_or_else(|p| p.into_inner()).entry(kind).or_default() += 1;
    }

    pub fn errors(&self) -> BTreeMap<&'static str, u64> {
        self.errors.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Counts one connection in a state (a gauge) while it lives.
pub struct InState<'a>(&'a AtomicU32);

impl<'a> InState<'a> {
    pub fn enter(gauge: &'a AtomicU32) -> InState<'a> {
        gauge.fetch_add(1, Ordering::Relaxed);
        InState(gauge)
    }
}

impl Drop for InState<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Process-wide counters.
#[derive(Default)]
pub struct GlobalStats {
    /// Client connections open (logging in or logged in), for max_client_conn.
    pub client_connections: AtomicU32,
    /// Logged-in clients relayed on the io_uring thread now (parked ones not counted).
    pub clients_on_ring: AtomicU32,
    pub refused_max_client_conn: AtomicU64,
    /// Client errors before a pool is known (authentication, TLS), by kind.
    errors: Mutex<BTreeMap<&'static str, u64>>,
}

impl GlobalStats {
    pub fn count_error(&self, kind: &'static str) {
        *self.errors.lock().unwrap_or_else(|p| p.into_inner()).entry(kind).or_default() += 1;
    }

    pub fn errors(&self) -> BTreeMap<&'static str, u64> {
        self.errors.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_land_in_their_bucket() {
        let stats = PoolStats::default();
        stats.add_wait(Duration::from_micros(50));
        stats.add_wait(Duration::from_millis(3));
        stats.add_wait(Duration::from_secs(10));
        let buckets = stats.wait_buckets();
        assert_eq!((buckets[0], buckets[3], buckets.iter().sum::<u64>()), (1, 1, 2));
        assert_eq!(stats.wait_count.load(Ordering::Relaxed), 3);
    }
}

/// PgBouncer's averages over a period: counts and bytes per second; transaction time per
/// transaction and wait time per server assignment, in microseconds.
pub fn averages_between(before: &StatsCounters, after: &StatsCounters, elapsed: Duration) -> StatsCounters {
    let secs = elapsed.as_secs_f64().max(1e-6);
    let rate = |a: u64, b: u64| (a.saturating_sub(b) as f64 / secs).round() as u64;
    let per = |a: u64, b: u64, n: u64| a.saturating_sub(b).checked_div(n).unwrap_or(0);
    let xacts = after.xact_count.saturating_sub(before.xact_count);
    let assignments = after.server_assignment_count.saturating_sub(before.server_assignment_count);
    StatsCounters {
        server_assignment_count: rate(after.server_assignment_count, before.server_assignment_count),
        xact_count: rate(after.xact_count, before.xact_count),
        query_count: rate(after.query_count, before.query_count),
        received: rate(after.received, before.received),
        sent: rate(after.sent, before.sent),
        xact_time: per(after.xact_time, before.xact_time, xacts),
        query_time: per(after.query_time, before.query_time, after.query_count.saturating_sub(before.query_count)),
        wait_time: per(after.wait_time, before.wait_time, assignments),
        client_parse_count: rate(after.client_parse_count, before.client_parse_count),
        server_parse_count: rate(after.server_parse_count, before.server_parse_count),
        bind_count: rate(after.bind_count, before.bind_count),
        client_login_count: rate(after.client_login_count, before.client_login_count),
    }
}

#[cfg(test)]
mod average_tests {
    use super::*;

    #[test]
    fn averages_are_rates_and_times_per_event() {
        let before =
            StatsCounters { xact_count: 100, server_assignment_count: 100, received: 1_000, ..Default::default() };
        let after = StatsCounters {
            xact_count: 400,
            server_assignment_count: 400,
            received: 61_000,
            sent: 30_000,
            xact_time: 600_000,
            wait_time: 3_000,
            ..Default::default()
        };
        let avg = averages_between(&before, &after, Duration::from_secs(60));
        assert_eq!((avg.xact_count, avg.server_assignment_count), (5, 5));
        assert_eq!((avg.received, avg.sent), (1_000, 500));
        // 600 ms over 300 transactions; 3 ms of waits over 300 assignments.
        assert_eq!((avg.xact_time, avg.wait_time), (2_000, 10));
        // Nothing happened: zeros, no division by zero.
        assert_eq!(averages_between(&after, &after, Duration::from_secs(60)), StatsCounters::default());
    }

    #[test]
    fn a_period_rolls_only_once_it_has_passed() {
        let stats = PoolStats::default();
        let t0 = Instant::now();
        stats.roll_averages(t0, Duration::from_secs(10));
        stats.xact_count.fetch_add(50, Ordering::Relaxed);
        stats.roll_averages(t0 + Duration::from_secs(5), Duration::from_secs(10));
        assert_eq!(stats.averages().xact_count, 0, "the period has not ended");
        stats.roll_averages(t0 + Duration::from_secs(10), Duration::from_secs(10));
        assert_eq!(stats.averages().xact_count, 5);
        stats.roll_averages(t0 + Duration::from_secs(20), Duration::from_secs(10));
        assert_eq!(stats.averages().xact_count, 0, "an idle period averages to zero");
    }
}
