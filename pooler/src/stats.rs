//! Counters shared by every thread: per pool (transactions, queries, bytes, wait time with a
//! histogram, errors by kind) and process-wide (client connections). Atomics only on the
//! data path; readers (admin console, /metrics) take snapshots.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the wait-time histogram buckets.
pub const WAIT_BUCKETS: [f64; 10] = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

#[derive(Default)]
pub struct PoolStats {
    pub xact_count: AtomicU64,
    pub query_count: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub wait_time_us: AtomicU64,
    pub wait_count: AtomicU64,
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
