//! A pool's effective settings: PgBouncer's global values with the `[databases]` entry's
//! overrides applied, in the units the pool uses. Rebuilt on RELOAD.

use crate::config::{PoolMode, PoolerConfig};
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
    pub server_lifetime: Option<Duration>,
    pub server_idle_timeout: Option<Duration>,
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
}

/// Seconds as PgBouncer reads them: 0 means off.
pub fn secs(v: f64) -> Option<Duration> {
    (v > 0.0).then(|| Duration::from_secs_f64(v))
}

impl PoolSettings {
    pub fn new(
        config: &PoolerConfig,
        target: &DatabaseTarget,
        user_mode: Option<PoolMode>,
        user_max: Option<u32>,
    ) -> Self {
        PoolSettings {
            pool_mode: user_mode.or(target.pool_mode).unwrap_or(config.pool_mode),
            pool_size: target.pool_size.unwrap_or(config.default_pool_size),
            min_pool_size: target.min_pool_size.unwrap_or(config.min_pool_size),
            reserve_pool: target.reserve_pool.unwrap_or(config.reserve_pool_size),
            reserve_pool_timeout: Duration::from_secs_f64(config.reserve_pool_timeout),
            max_db_connections: target.max_db_connections.unwrap_or(config.max_db_connections),
            max_user_connections: user_max.unwrap_or(config.max_user_connections),
            query_wait_timeout: secs(config.query_wait_timeout),
            server_lifetime: secs(config.server_lifetime),
            server_idle_timeout: secs(config.server_idle_timeout),
            server_connect_timeout: secs(config.server_connect_timeout).unwrap_or(Duration::from_secs(15)),
            server_login_retry: secs(config.server_login_retry),
            server_check_delay: Duration::from_secs_f64(config.server_check_delay),
            server_check_query: config.server_check_query.trim().to_owned(),
            server_reset_query: config.server_reset_query.trim().to_owned(),
            server_reset_query_always: config.server_reset_query_always,
            idle_transaction_timeout: secs(config.idle_transaction_timeout),
            query_timeout: secs(config.query_timeout),
            transaction_timeout: secs(config.transaction_timeout),
            client_idle_timeout: secs(config.client_idle_timeout),
            stats_period: secs(config.stats_period).unwrap_or(Duration::from_secs(60)),
            tcp: crate::tcp::TcpOptions::from_config(config),
            log_connections: config.log_connections,
            client_close_reset: config.client_close_reset,
            log_disconnections: config.log_disconnections,
        }
    }
}
