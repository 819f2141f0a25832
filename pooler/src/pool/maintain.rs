//! A pool's housekeeping: every `WAITER_CHECK` the timeouts of waiting clients
//! (query_wait_timeout, reserve_pool_timeout; `Pool::check_waiters`), and once a second: close
//! idle connections past server_idle_timeout or server_lifetime, open connections up to
//! min_pool_size once the pool has been used, roll SHOW STATS_AVERAGES over at the end of
//! each stats_period, and take an automatic database's pool out of the registry once it has
//! been unused for autodb_idle_timeout.

use super::registry::Retirement;
use super::Pool;
use crate::tick::Tick;
use std::sync::Weak;
use std::time::{Duration, Instant};

/// How often waiting clients' timeouts are checked: they fire up to this late (PgBouncer's
/// janitor runs every third of a second).
pub(super) const WAITER_CHECK: Duration = Duration::from_millis(250);
/// Waiter checks per round of the once-a-second housekeeping.
const CHECKS_PER_SECOND: u32 = 4;

pub(super) async fn run(pool: Weak<Pool>, retirement: Retirement) {
    let mut tick = crate::clock::interval(WAITER_CHECK);
    let mut round = 0u32;
    // Since when an automatic database's pool has been unused (autodb_idle_timeout).
    let mut unused_since: Option<Instant> = None;
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        pool.check_waiters(Tick::now());
        round = round.wrapping_add(1);
        if round % CHECKS_PER_SECOND != 1 {
            continue;
        }
        let settings = pool.settings();
        pool.stats.roll_averages(Instant::now(), settings.stats_period);
        pool.expire_idle();
        if pool.is_orphaned() {
            let (database, user) = (pool.key.database.clone(), pool.key.user.clone());
            if pool.is_unused() && retirement.retire(pool) {
                tracing::info!(
                    database = &*database,
                    user = &*user,
                    "pool dropped: its database was removed from the configuration"
                );
                return;
            }
            continue;
        }
        pool.fill_to_minimum().await;
        let Some(timeout) = settings.autodb_idle_timeout else {
            unused_since = None;
            continue;
        };
        let now = Instant::now();
        if !pool.is_unused() {
            unused_since = None;
            continue;
        }
        let since = *unused_since.get_or_insert(now);
        if now.duration_since(since) < timeout {
            continue;
        }
        let (database, user) = (pool.key.database.clone(), pool.key.user.clone());
        if retirement.retire(pool) {
            tracing::info!(
                database = &*database,
                user = &*user,
                "pool dropped: its database came from the * entry and was unused for autodb_idle_timeout"
            );
            return;
        }
    }
}

impl Pool {
    fn expire_idle(&self) {
        let now = Tick::now();
        let expired = {
            let mut st = self.lock();
            let (life, idle_timeout, min) =
                (st.settings.server_lifetime, st.settings.server_idle_timeout, st.settings.min_pool_size);
            let mut expired = Vec::new();
            let mut i = 0;
            while i < st.idle.len() {
                let conn = &st.idle[i];
                let too_old = life.is_some_and(|l| now.is_past(conn.created, l));
                let too_idle = idle_timeout.is_some_and(|t| now.is_past(conn.last_used, t))
                    && st.total - expired.len() as u32 > min;
                if too_old || too_idle {
                    // In order: the idle list is in release order (server_round_robin).
                    expired.push(st.idle.remove(i));
                } else {
                    i += 1;
                }
            }
            expired
        };
        for conn in expired {
            self.close_idle(conn, "server_idle_timeout or server_lifetime");
        }
    }

    async fn fill_to_minimum(&self) {
        let login = {
            let mut st = self.lock();
            if st.welcome.is_none() || st.closed || st.total >= st.settings.min_pool_size {
                return;
            }
            // Every server failed a login within server_login_retry: not before then.
            let Ok(login) = st.next_ready_login(Instant::now()) else { return };
            if !self.try_open(&mut st, false) {
                return;
            }
            st.active -= 1;
            (login, st.generation)
        };
        let (login, generation) = login;
        match self.connect_new(&login).await {
            Ok(mut conn) => {
                let mut st = self.lock();
                conn.generation = generation;
                st.active += 1;
                drop(st);
                self.register(&mut conn);
                self.release(Box::new(conn));
            }
            Err(e) => {
                tracing::warn!("min_pool_size: {e}");
                self.lock().login_failed(&login.addr, Instant::now(), e.to_string());
                self.slot_freed(false);
            }
        }
    }
}
