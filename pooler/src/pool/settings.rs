//! A pool's effective settings: PgBouncer's global values with the `[databases]` entry's
//! overrides applied, in the units the pool uses. Rebuilt on RELOAD.

use crate::config::{LoadBalanceHosts, PoolMode, PoolerConfig, UserConfig};
use crate::topology::DatabaseTarget;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct PoolSettings {
    pub pool_mode: PoolMode,
    pub pool_size: u32,
    pub min_pool_size: u32,
    pub reserve_pool: u32,
    pub reserve_pool_timeout: Duration,
    pub max_db_connections: u32,
    pub max_user_connections: u32,
    pub query_wait_timeout: Option<Duration>,
    /// query_wait_notify: a client waiting this long for a connection gets a NOTICE, once.
    pub query_wait_notify: Option<Duration>,
    pub server_lifetime: Option<Duration>,
    pub server_idle_timeout: Option<Duration>,
    /// autodb_idle_timeout, for the pools of a database the `*` entry serves (None: kept).
    pub autodb_idle_timeout: Option<Duration>,
    pub server_connect_timeout: Duration,
    /// After a failed login to a server, how long new connections skip it.
    pub server_login_retry: Option<Duration>,
    pub server_check_delay: Duration,
    pub server_check_query: String,
    pub server_reset_query: String,
    pub server_reset_query_always: bool,
    pub idle_transaction_timeout: Option<Duration>,
    /// query_timeout: a request the server has not answered this long is cancelled and its
    /// client disconnected.
    pub query_timeout: Option<Duration>,
    /// transaction_timeout: a transaction this old disconnects its client.
    pub transaction_timeout: Option<Duration>,
    pub client_idle_timeout: Option<Duration>,
    /// Period of SHOW STATS_AVERAGES.
    pub stats_period: Duration,
    /// tcp_keepalive and friends, for new server connections.
    pub tcp: crate::tcp::TcpOptions,
    pub log_connections: bool,
    pub log_disconnections: bool,
    /// client_close_reset: a reset, not a FIN, for a client that said Terminate and closed.
    pub client_close_reset: bool,
    /// server_round_robin: a checkout takes the connection idle longest, not the last released.
    pub server_round_robin: bool,
    /// load_balance_hosts: new connections take the hosts in turn, or stay on one until a
    /// login to it fails.
    pub load_balance_hosts: LoadBalanceHosts,
    /// server_fast_close: in session mode, a close_needed connection ends its client's session
    /// between transactions.
    pub server_fast_close: bool,
}

/// Seconds as PgBouncer reads them: 0 means off.
pub fn secs(v: f64) -> Option<Duration> {
    (v > 0.0).then(|| Duration::from_secs_f64(v))
}

impl PoolSettings {
    /// The settings of the pool of `target`'s database and a user whose `[users]` entry is
    /// `user`: the user's own settings first (as in PgBouncer), then the database's, then the
    /// global ones.
    pub fn new(config: &PoolerConfig, target: &DatabaseTarget, user: Option<&UserConfig>) -> Self {
        let own = |pick: fn(&UserConfig) -> Option<u32>| user.and_then(pick);
        PoolSettings {
            pool_mode: user.and_then(|u| u.pool_mode).or(target.pool_mode).unwrap_or(config.pool_mode),
            pool_size: own(|u| u.pool_size).or(target.pool_size).unwrap_or(config.default_pool_size),
            min_pool_size: target.min_pool_size.unwrap_or(config.min_pool_size),
            reserve_pool: own(|u| u.reserve_pool_size).or(target.reserve_pool).unwrap_or(config.reserve_pool_size),
            reserve_pool_timeout: Duration::from_secs_f64(config.reserve_pool_timeout),
            max_db_connections: target.max_db_connections.unwrap_or(config.max_db_connections),
            max_user_connections: own(|u| u.max_user_connections).unwrap_or(config.max_user_connections),
            query_wait_timeout: secs(config.query_wait_timeout),
            query_wait_notify: secs(config.query_wait_notify),
            server_lifetime: secs(config.server_lifetime),
            server_idle_timeout: secs(config.server_idle_timeout),
            autodb_idle_timeout: if target.auto { secs(config.autodb_idle_timeout) } else { None },
            server_connect_timeout: secs(config.server_connect_timeout).unwrap_or(Duration::from_secs(15)),
            server_login_retry: secs(config.server_login_retry),
            server_check_delay: Duration::from_secs_f64(config.server_check_delay),
            server_check_query: config.server_check_query.trim().to_owned(),
            server_reset_query: config.server_reset_query.trim().to_owned(),
            server_reset_query_always: config.server_reset_query_always,
            idle_transaction_timeout: secs(config.idle_transaction_timeout),
            query_timeout: secs(user.and_then(|u| u.query_timeout).unwrap_or(config.query_timeout)),
            transaction_timeout: secs(config.transaction_timeout),
            client_idle_timeout: secs(config.client_idle_timeout),
            stats_period: secs(config.stats_period).unwrap_or(Duration::from_secs(60)),
            tcp: crate::tcp::TcpOptions::from_config(config),
            log_connections: config.log_connections,
            client_close_reset: config.client_close_reset,
            server_round_robin: config.server_round_robin,
            load_balance_hosts: target.load_balance_hosts.unwrap_or(config.load_balance_hosts),
            server_fast_close: config.server_fast_close,
            log_disconnections: config.log_disconnections,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use consensus::config_file::parse;
    use std::path::Path;

    /// As in PgBouncer: a `[users]` entry's pool_size, reserve_pool_size, query_timeout,
    /// pool_mode and max_user_connections come before the database's, which come before the
    /// global ones.
    #[test]
    fn a_user_s_own_settings_come_first_then_the_database_s_then_the_global_ones() {
        let text = "auth_type = \"trust\"\ndefault_pool_size = 20\nreserve_pool_size = 1\nquery_timeout = 60\n\
                    [databases.app]\nhost = \"10.0.0.1\"\npool_size = 10\nreserve_pool = 2\n\
                    [users.batch]\npool_size = 3\nreserve_pool_size = 0\nquery_timeout = 600\npool_mode = \"session\"\n\
                    max_user_connections = 4\n[users.web]\nmax_user_client_connections = 100\n";
        let config: PoolerConfig = parse(Path::new("pooler.toml"), text).unwrap();
        let topology = crate::topology::StaticTopology::from_config(&config);
        let target = crate::topology::Topology::target(&topology, "app").unwrap();
        let batch = PoolSettings::new(&config, &target, config.users.get("batch"));
        assert_eq!((batch.pool_size, batch.reserve_pool, batch.max_user_connections), (3, 0, 4));
        assert_eq!((batch.pool_mode, batch.query_timeout), (PoolMode::Session, Some(Duration::from_secs(600))));
        for user in [config.users.get("web"), None] {
            let settings = PoolSettings::new(&config, &target, user);
            assert_eq!((settings.pool_size, settings.reserve_pool, settings.max_user_connections), (10, 2, 0));
            assert_eq!(settings.query_timeout, Some(Duration::from_secs(60)));
        }
        assert!(parse::<PoolerConfig>(
            Path::new("pooler.toml"),
            "auth_type = \"trust\"\n[users.x]\nquery_timeout = -1\n"
        )
        .is_err());
    }
}
