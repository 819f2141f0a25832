//! pooler.toml: PgBouncer's settings under PgBouncer's names and defaults (top-level keys, as in
//! pgbouncer.ini's `[pgbouncer]` section), plus `[databases.<name>]` and `[users.<name>]` tables.
//! Durations are seconds, as in PgBouncer.

use consensus::config_file::{Invalid, Validate};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    Session,
    Transaction,
    Statement,
}

/// What relays logged-in clients over plain sockets (`relay_engine`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RelayEngine {
    /// One thread that sleeps in io_uring_enter (`crate::ring`); epoll if the kernel refuses
    /// the ring.
    #[default]
    IoUring,
    /// The tokio runtime's threads (epoll).
    Epoll,
}

impl RelayEngine {
    pub fn name(self) -> &'static str {
        match self {
            RelayEngine::IoUring => "io_uring",
            RelayEngine::Epoll => "epoll",
        }
    }
}

/// How new server connections pick among a database's hosts (PgBouncer 1.24's
/// load_balance_hosts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadBalanceHosts {
    /// Each new connection goes to the next host in the list.
    #[default]
    RoundRobin,
    /// New connections go to the same host until a login to it fails, then to the next.
    Disable,
}

impl LoadBalanceHosts {
    /// The name as pooler.toml and SHOW CONFIG write it.
    pub fn name(self) -> &'static str {
        match self {
            LoadBalanceHosts::RoundRobin => "round-robin",
            LoadBalanceHosts::Disable => "disable",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum AuthType {
    #[serde(rename = "trust")]
    Trust,
    #[serde(rename = "plain")]
    Plain,
    #[serde(rename = "md5")]
    Md5,
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// The method comes from auth_hba_file, line by line (pg_hba.conf's format).
    #[serde(rename = "hba")]
    Hba,
    /// The common name of the client's TLS certificate (checked against client_tls_ca_file)
    /// is the user name.
    #[serde(rename = "cert")]
    Cert,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolerConfig {
    pub listen_addr: String,
    pub listen_port: u16,
    /// Directory for the Unix socket `.s.PGSQL.<listen_port>`; empty disables it.
    pub unix_socket_dir: String,
    /// The Unix socket's permissions, octal as in PgBouncer (`"0777"`: any local user may
    /// connect, and then authenticate); a TOML integer such as `0o770` works too.
    #[serde(deserialize_with = "octal_mode")]
    pub unix_socket_mode: u32,
    /// Group that owns the Unix socket (with a mode such as `"0770"`, who may connect).
    pub unix_socket_group: Option<String>,
    pub pool_mode: PoolMode,
    pub default_pool_size: u32,
    pub min_pool_size: u32,
    pub reserve_pool_size: u32,
    pub reserve_pool_timeout: f64,
    pub max_client_conn: u32,
    pub max_db_connections: u32,
    pub max_user_connections: u32,
    /// Logged-in clients per database, over all users (0: no limit; PgBouncer 1.24).
    pub max_db_client_connections: u32,
    /// Logged-in clients per user, over all databases (0: no limit; PgBouncer 1.24).
    pub max_user_client_connections: u32,
    pub max_prepared_statements: u32,
    pub server_lifetime: f64,
    pub server_idle_timeout: f64,
    /// Check out the server connection idle longest instead of the one released last, so load
    /// spreads over every open connection (PgBouncer's server_round_robin).
    pub server_round_robin: bool,
    /// Session mode: a client whose server connection became close_needed (RECONNECT, a RELOAD
    /// that moved the database) is disconnected with it between transactions, instead of
    /// keeping it to the end of its session (PgBouncer's server_fast_close).
    pub server_fast_close: bool,
    /// How new server connections pick among a host list: `round-robin` or `disable`.
    pub load_balance_hosts: LoadBalanceHosts,
    /// Seconds a database served by the `*` entry may stay unused (no client, no server
    /// connection) before its pools are dropped (0: kept; PgBouncer's autodb_idle_timeout).
    pub autodb_idle_timeout: f64,
    pub server_connect_timeout: f64,
    pub server_login_retry: f64,
    pub query_timeout: f64,
    pub query_wait_timeout: f64,
    /// Seconds a client waits for a server connection before it is told, once, with a
    /// NOTICE that it is queued (0: never; PgBouncer's query_wait_notify).
    pub query_wait_notify: f64,
    pub idle_transaction_timeout: f64,
    /// Seconds a transaction may last, from its first query to its end, before its client is
    /// disconnected (0: no limit; PgBouncer 1.25).
    pub transaction_timeout: f64,
    pub client_idle_timeout: f64,
    pub client_login_timeout: f64,
    pub server_reset_query: String,
    pub server_reset_query_always: bool,
    pub server_check_query: String,
    pub server_check_delay: f64,
    pub auth_type: AuthType,
    pub auth_file: Option<PathBuf>,
    /// pg_hba.conf-style rules for auth_type = "hba" (re-read on RELOAD).
    pub auth_hba_file: Option<PathBuf>,
    pub auth_user: Option<String>,
    pub auth_query: String,
    /// The `[databases]` entry whose server auth_query runs on, in place of the database the
    /// client asked for (PgBouncer's auth_dbname).
    pub auth_dbname: Option<String>,
    /// Server-reported parameters tracked per client besides the six always tracked, as
    /// PgBouncer's track_extra_parameters (read at start).
    #[serde(deserialize_with = "names")]
    pub track_extra_parameters: Vec<String>,
    #[serde(deserialize_with = "names")]
    pub admin_users: Vec<String>,
    #[serde(deserialize_with = "names")]
    pub stats_users: Vec<String>,
    pub client_tls_sslmode: TlsMode,
    pub client_tls_cert_file: Option<PathBuf>,
    pub client_tls_key_file: Option<PathBuf>,
    /// CA certificates (PEM) client certificates must chain to, for client_tls_sslmode
    /// verify-ca / verify-full.
    pub client_tls_ca_file: Option<PathBuf>,
    /// TLS versions offered to clients: `secure` (the default), `all`, `legacy`, or a list
    /// such as `"tlsv1.3"` (rustls speaks 1.2 and 1.3 only).
    pub client_tls_protocols: String,
    pub server_tls_sslmode: TlsMode,
    /// CA certificates (PEM) for server_tls_sslmode verify-ca / verify-full.
    pub server_tls_ca_file: Option<PathBuf>,
    /// A client certificate (PEM, with its chain) and key the pooler shows to servers that
    /// ask for one (PostgreSQL's `cert` authentication, `clientcert=verify-full`).
    pub server_tls_cert_file: Option<PathBuf>,
    pub server_tls_key_file: Option<PathBuf>,
    /// TLS versions used toward servers, as client_tls_protocols.
    pub server_tls_protocols: String,
    pub max_packet_size: u32,
    /// Startup parameters accepted and ignored; any other one the pooler does not track is
    /// refused ("unsupported startup parameter: <name>"), as in PgBouncer.
    #[serde(deserialize_with = "names")]
    pub ignore_startup_parameters: Vec<String>,
    /// How long SIGTERM/SIGINT wait for transactions in progress before the pooler exits
    /// anyway (seconds; 0 waits without a bound).
    pub shutdown_timeout: f64,
    /// `host:port` of the Prometheus `/metrics` HTTP listener; empty (the default) disables it.
    pub metrics_listen: String,
    /// Threads that run client and server connections; 0 (the default) takes half the cores,
    /// at least one. Limits, pools and statistics are shared by all of them. Read at start only.
    pub worker_threads: u32,
    /// What relays clients on plain sockets once they logged in: `io_uring` (the default: one
    /// thread sleeping in io_uring_enter; epoll if the kernel refuses it) or `epoll` (the
    /// worker threads). Read at start only.
    pub relay_engine: RelayEngine,
    /// Seconds over which SHOW STATS_AVERAGES (and SHOW STATS's avg_ columns) average.
    pub stats_period: f64,
    /// SO_KEEPALIVE on client and server TCP sockets, with the system's timings unless the
    /// three below are set (Linux: 7200 s idle, 75 s apart, 9 probes).
    pub tcp_keepalive: bool,
    /// Seconds a connection is idle before the first keepalive probe; 0: the system's.
    pub tcp_keepidle: u32,
    /// Seconds between keepalive probes; 0: the system's.
    pub tcp_keepintvl: u32,
    /// Unanswered probes before the connection is dropped; 0: the system's.
    pub tcp_keepcnt: u32,
    /// Append the client's address to its application_name at login (PgBouncer's
    /// application_name_add_host).
    pub application_name_add_host: bool,
    /// Refuse the simple query protocol: a client that sends a Query message is disconnected
    /// (PgBouncer's disable_pqexec).
    pub disable_pqexec: bool,
    /// Log each client login and each new server connection (at info), as PgBouncer does.
    pub log_connections: bool,
    /// Log each closed client and server connection with why it closed (at info).
    pub log_disconnections: bool,
    /// Log the traffic of the last stats_period (rates and average times over every pool) at
    /// the end of each one, as PgBouncer's log_stats.
    pub log_stats: bool,
    /// TCP_USER_TIMEOUT in milliseconds: how long sent data may stay unacknowledged before the
    /// kernel drops the connection (a server host that vanished mid-query); 0: the system's.
    pub tcp_user_timeout: u32,
    /// TCP_DEFER_ACCEPT on the TCP listeners, in seconds (0: off): the kernel hands a new
    /// connection to the pooler once its first bytes have come, or after this long. On by
    /// default (1 s), as in PgBouncer on Linux. Read at start only.
    pub tcp_defer_accept: u32,
    /// A client that ends with Terminate and has already closed its side of the TCP
    /// connection is closed with a reset (RST) instead of the FIN handshake: its host keeps no
    /// TIME_WAIT entry for the connection, and both sides do less work. false: close as
    /// PgBouncer does.
    pub client_close_reset: bool,
    /// The Unix socket a new pooler started with `--takeover` asks for this one's listening
    /// sockets on (mode 0600). Empty (the default): `<unix_socket_dir>/.s.PGHA.<listen_port>.takeover`,
    /// none without unix_socket_dir; `"off"`: none. Read at start only.
    pub takeover_socket: String,
    pub databases: BTreeMap<String, DatabaseConfig>,
    pub users: BTreeMap<String, UserConfig>,
    /// The pgha (or Patroni) cluster whose primary the `cluster_role = "primary"` databases
    /// follow, read from its DCS.
    pub cluster: Option<ClusterSection>,
}

/// `[cluster]`: where the cluster's DCS is and which cluster it is. One of `etcd_endpoints` or
/// `raft_members` (with the Raft group's secret).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// The agents' `scope`.
    pub scope: String,
    /// The agents' `namespace`.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// etcd client URLs (`http://10.0.0.1:2379`).
    #[serde(default)]
    pub etcd_endpoints: Vec<String>,
    /// For `https://` etcd endpoints: the CA that signed the members' certificates, and a client
    /// certificate and key when etcd checks them (the agents' `dcs.etcd.cacert`, `cert`, `key`).
    #[serde(default)]
    pub etcd_cacert: Option<std::path::PathBuf>,
    #[serde(default)]
    pub etcd_cert: Option<std::path::PathBuf>,
    #[serde(default)]
    pub etcd_key: Option<std::path::PathBuf>,
    /// etcd's user authentication (the agents' `dcs.etcd.username` and `password`).
    #[serde(default)]
    pub etcd_username: Option<String>,
    #[serde(default)]
    pub etcd_password: Option<String>,
    /// The built-in Raft group's members, `host:port` (their `dcs.raft.listen`).
    #[serde(default)]
    pub raft_members: Vec<String>,
    /// The Raft group's shared secret, or a file holding it (one of the two with raft_members).
    #[serde(default)]
    pub raft_secret: Option<String>,
    #[serde(default)]
    pub raft_secret_file: Option<std::path::PathBuf>,
    /// For `cluster_role = "replica"` and `"read-only"`: a standby whose WAL position is more
    /// than this many bytes behind the primary's gets no new server connections (0: no limit).
    #[serde(default)]
    pub max_replica_lag: u64,
}

impl ClusterSection {
    /// Its etcd TLS and user settings (`etcd_cacert`, ...).
    pub fn etcd_security(&self) -> consensus::etcd::EtcdSecurity<'_> {
        consensus::etcd::EtcdSecurity {
            cacert: self.etcd_cacert.as_deref(),
            cert: self.etcd_cert.as_deref(),
            key: self.etcd_key.as_deref(),
            username: self.etcd_username.as_deref(),
            password: self.etcd_password.as_deref(),
        }
    }
}

impl PoolerConfig {
    /// Whether clients of `database` go to the `[cluster]`'s members (its own entry, or `*`).
    pub fn follows_cluster(&self, database: &str) -> bool {
        self.cluster_role_of(database).is_some()
    }

    /// The `cluster_role` of `database`'s entry (its own, or `*`).
    pub fn cluster_role_of(&self, database: &str) -> Option<ClusterRole> {
        self.databases.get(database).or_else(|| self.databases.get("*")).and_then(|d| d.cluster_role)
    }
}

fn default_namespace() -> String {
    "/service".into()
}

/// Which member of the cluster a database's clients are sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterRole {
    /// The member holding the leader lock.
    Primary,
    /// The healthy standbys (running, streaming, not tagged `noloadbalance`, within
    /// `[cluster] max_replica_lag`), new server connections spread over them in turn; while
    /// there is none, transactions wait.
    Replica,
    /// As `replica`, and the primary while no standby is healthy (Patroni's `/read-only`).
    #[serde(rename = "read-only")]
    ReadOnly,
}

impl ClusterRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterRole::Primary => "primary",
            ClusterRole::Replica => "replica",
            ClusterRole::ReadOnly => "read-only",
        }
    }
}

impl Default for PoolerConfig {
    fn default() -> Self {
        PoolerConfig {
            listen_addr: "127.0.0.1".into(),
            listen_port: 6432,
            unix_socket_dir: "/tmp".into(),
            unix_socket_mode: 0o777,
            unix_socket_group: None,
            pool_mode: PoolMode::Session,
            default_pool_size: 20,
            min_pool_size: 0,
            reserve_pool_size: 0,
            reserve_pool_timeout: 5.0,
            max_client_conn: 100,
            max_db_connections: 0,
            max_user_connections: 0,
            max_db_client_connections: 0,
            max_user_client_connections: 0,
            max_prepared_statements: 200,
            server_lifetime: 3600.0,
            server_idle_timeout: 600.0,
            server_round_robin: false,
            server_fast_close: false,
            load_balance_hosts: LoadBalanceHosts::RoundRobin,
            autodb_idle_timeout: 3600.0,
            server_connect_timeout: 15.0,
            server_login_retry: 15.0,
            query_timeout: 0.0,
            query_wait_timeout: 120.0,
            query_wait_notify: 5.0,
            idle_transaction_timeout: 0.0,
            transaction_timeout: 0.0,
            client_idle_timeout: 0.0,
            client_login_timeout: 60.0,
            server_reset_query: "DISCARD ALL".into(),
            server_reset_query_always: false,
            server_check_query: "select 1".into(),
            server_check_delay: 30.0,
            auth_type: AuthType::ScramSha256,
            auth_file: None,
            auth_hba_file: None,
            auth_user: None,
            auth_query: "SELECT usename, passwd FROM pg_shadow WHERE usename=$1".into(),
            auth_dbname: None,
            track_extra_parameters: vec!["IntervalStyle".into()],
            admin_users: Vec::new(),
            stats_users: Vec::new(),
            client_tls_sslmode: TlsMode::Disable,
            client_tls_cert_file: None,
            client_tls_key_file: None,
            client_tls_ca_file: None,
            client_tls_protocols: "secure".into(),
            server_tls_sslmode: TlsMode::Prefer,
            server_tls_ca_file: None,
            server_tls_cert_file: None,
            server_tls_key_file: None,
            server_tls_protocols: "secure".into(),
            max_packet_size: 2_147_483_647,
            ignore_startup_parameters: Vec::new(),
            shutdown_timeout: 30.0,
            metrics_listen: String::new(),
            takeover_socket: String::new(),
            worker_threads: 0,
            relay_engine: RelayEngine::IoUring,
            stats_period: 60.0,
            application_name_add_host: false,
            disable_pqexec: false,
            log_connections: true,
            log_stats: true,
            log_disconnections: true,
            tcp_keepalive: true,
            tcp_keepidle: 0,
            tcp_keepintvl: 0,
            tcp_keepcnt: 0,
            tcp_user_timeout: 0,
            tcp_defer_accept: 1,
            client_close_reset: true,
            databases: BTreeMap::new(),
            users: BTreeMap::new(),
            cluster: None,
        }
    }
}

/// One `[databases.<name>]` entry: where clients of database `<name>` are sent.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// The server's host name, address or Unix socket directory, or several separated by
    /// commas (new server connections take them in turn, as PgBouncer's host list); none with
    /// `cluster_role`.
    #[serde(default)]
    pub host: String,
    /// `primary`, `replica` or `read-only`: the servers are the `[cluster]`'s members in that
    /// role, followed through its DCS.
    #[serde(default)]
    pub cluster_role: Option<ClusterRole>,
    #[serde(default = "default_port")]
    pub port: u16,
    /// Database name on the server; defaults to the entry's name.
    #[serde(default)]
    pub dbname: Option<String>,
    /// Force this server-side user for every client of this database.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub pool_mode: Option<PoolMode>,
    #[serde(default)]
    pub pool_size: Option<u32>,
    #[serde(default)]
    pub min_pool_size: Option<u32>,
    #[serde(default)]
    pub reserve_pool: Option<u32>,
    #[serde(default)]
    pub max_db_connections: Option<u32>,
    /// This database's limit on logged-in clients over all users (0: none).
    #[serde(default)]
    pub max_db_client_connections: Option<u32>,
    #[serde(default)]
    pub auth_user: Option<String>,
    /// The `[databases]` entry whose server auth_query runs on for this database's clients,
    /// in place of this one (and of the global auth_dbname).
    #[serde(default)]
    pub auth_dbname: Option<String>,
    /// Override of load_balance_hosts for this database's host list.
    #[serde(default)]
    pub load_balance_hosts: Option<LoadBalanceHosts>,
    /// With `cluster_role = "replica"` or `"read-only"`: this database's limit on a standby's
    /// lag in bytes, in place of `[cluster] max_replica_lag` (0: no limit).
    #[serde(default)]
    pub max_replica_lag: Option<u64>,
}

impl DatabaseConfig {
    /// The hosts of `host`, a comma-separated list.
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.host.split(',').map(str::trim)
    }
}

/// One `[users.<name>]` entry: per-user overrides.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    #[serde(default)]
    pub pool_mode: Option<PoolMode>,
    #[serde(default)]
    pub max_user_connections: Option<u32>,
    /// This user's pools' size, in place of the database's pool_size and default_pool_size.
    #[serde(default)]
    pub pool_size: Option<u32>,
    /// This user's pools' reserve, in place of the database's reserve_pool and
    /// reserve_pool_size.
    #[serde(default)]
    pub reserve_pool_size: Option<u32>,
    /// Seconds, in place of query_timeout for this user's requests (0: none).
    #[serde(default)]
    pub query_timeout: Option<f64>,
    /// This user's limit on logged-in clients over all databases (0: none).
    #[serde(default)]
    pub max_user_client_connections: Option<u32>,
}

fn default_port() -> u16 {
    5432
}

fn non_negative(key: &str, v: f64) -> Result<(), Invalid> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(Invalid::new(key, v, "expected a number of seconds >= 0 (0 disables the timeout)"))
    }
}

impl Validate for PoolerConfig {
    fn validate(&self) -> Result<(), Invalid> {
        for (key, v) in [
            ("reserve_pool_timeout", self.reserve_pool_timeout),
            ("server_lifetime", self.server_lifetime),
            ("server_idle_timeout", self.server_idle_timeout),
            ("autodb_idle_timeout", self.autodb_idle_timeout),
            ("server_connect_timeout", self.server_connect_timeout),
            ("server_login_retry", self.server_login_retry),
            ("query_timeout", self.query_timeout),
            ("query_wait_timeout", self.query_wait_timeout),
            ("query_wait_notify", self.query_wait_notify),
            ("idle_transaction_timeout", self.idle_transaction_timeout),
            ("transaction_timeout", self.transaction_timeout),
            ("client_idle_timeout", self.client_idle_timeout),
            ("client_login_timeout", self.client_login_timeout),
            ("server_check_delay", self.server_check_delay),
            ("shutdown_timeout", self.shutdown_timeout),
        ] {
            non_negative(key, v)?;
        }
        for (name, user) in &self.users {
            if let Some(v) = user.query_timeout {
                non_negative(&format!("users.{name}.query_timeout"), v)?;
            }
        }
        for (name, db) in &self.databases {
            match (db.cluster_role, db.host.is_empty()) {
                (None, true) => {
                    return Err(Invalid::missing(
                        format!("databases.{name}.host"),
                        "set host (and port), or cluster_role (\"primary\", \"replica\" or \"read-only\") with a [cluster] section",
                    ))
                }
                (Some(_), false) => {
                    return Err(Invalid::new(
                        format!("databases.{name}.host"),
                        format!("{:?}", db.host),
                        "cluster_role takes the server from the cluster's DCS: remove host and port",
                    ))
                }
                (Some(_), true) if self.cluster.is_none() => {
                    return Err(Invalid::missing(
                        "cluster",
                        format!("databases.{name}.cluster_role needs a [cluster] section (scope and the DCS)"),
                    ))
                }
                (None, false) if db.hosts().any(str::is_empty) => {
                    return Err(Invalid::new(
                        format!("databases.{name}.host"),
                        format!("{:?}", db.host),
                        "expected a host, or several separated by commas, none of them empty",
                    ))
                }
                _ => {}
            }
            if let Some(lag) = db.max_replica_lag {
                if !matches!(db.cluster_role, Some(ClusterRole::Replica | ClusterRole::ReadOnly)) {
                    return Err(Invalid::new(
                        format!("databases.{name}.max_replica_lag"),
                        lag,
                        "applies to standbys only: set cluster_role = \"replica\" or \"read-only\", or remove it",
                    ));
                }
            }
        }
        if let Some(c) = &self.cluster {
            if c.etcd_endpoints.is_empty() == c.raft_members.is_empty() {
                return Err(Invalid::missing(
                    "cluster.etcd_endpoints",
                    "set one of etcd_endpoints (etcd client URLs) or raft_members (the built-in Raft group)",
                ));
            }
            if !c.raft_members.is_empty() && c.raft_secret.is_none() == c.raft_secret_file.is_none() {
                return Err(Invalid::missing(
                    "cluster.raft_secret",
                    "set raft_secret or raft_secret_file (the agents' dcs.raft secret)",
                ));
            }
            c.etcd_security().check(&c.etcd_endpoints, "cluster.etcd_")?;
            if consensus::cluster::KeyLayout::new(&c.namespace, &c.scope).is_err() {
                return Err(Invalid::new("cluster.scope", format!("{:?}", c.scope), "expected the agents' scope"));
            }
        }
        if self.min_pool_size > self.default_pool_size {
            return Err(Invalid::new(
                "min_pool_size",
                self.min_pool_size,
                format!("expected at most default_pool_size ({})", self.default_pool_size),
            ));
        }
        if self.stats_period < 1.0 {
            return Err(Invalid::new("stats_period", self.stats_period, "expected at least 1 second"));
        }
        // Linux refuses larger values (MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL, MAX_TCP_KEEPCNT).
        for (key, v, max, unit) in [
            ("tcp_keepidle", self.tcp_keepidle, 32_767, "seconds"),
            ("tcp_keepintvl", self.tcp_keepintvl, 32_767, "seconds"),
            ("tcp_keepcnt", self.tcp_keepcnt, 127, "probes"),
        ] {
            if v > max {
                return Err(Invalid::new(key, v, format!("expected at most {max} {unit} (0: the system's default)")));
            }
        }
        if !self.tcp_keepalive && (self.tcp_keepidle, self.tcp_keepintvl, self.tcp_keepcnt) != (0, 0, 0) {
            return Err(Invalid::new(
                "tcp_keepalive",
                "false",
                "tcp_keepidle, tcp_keepintvl and tcp_keepcnt only apply with tcp_keepalive = true",
            ));
        }
        if self.unix_socket_mode > 0o7777 {
            return Err(Invalid::new(
                "unix_socket_mode",
                format!("{:o}", self.unix_socket_mode),
                "expected an octal mode such as \"0777\" or \"0770\"",
            ));
        }
        if self.max_client_conn == 0 {
            return Err(Invalid::new("max_client_conn", 0, "expected at least 1"));
        }
        if self.max_packet_size < 1024 {
            return Err(Invalid::new("max_packet_size", self.max_packet_size, "expected at least 1024 bytes"));
        }
        if self.auth_type == AuthType::Hba && self.auth_hba_file.is_none() {
            return Err(Invalid::missing("auth_hba_file", "required when auth_type is hba"));
        }
        if self.auth_type == AuthType::Cert
            && !matches!(self.client_tls_sslmode, TlsMode::VerifyCa | TlsMode::VerifyFull)
        {
            return Err(Invalid::new(
                "auth_type",
                "\"cert\"",
                "needs client_tls_sslmode = \"verify-ca\" or \"verify-full\" (and client_tls_ca_file), so that \
                 clients present a certificate",
            ));
        }
        if !matches!(self.auth_type, AuthType::Trust | AuthType::Hba | AuthType::Cert)
            && self.auth_file.is_none()
            && self.auth_user.is_none()
        {
            let v = match self.auth_type {
                AuthType::Md5 => "\"md5\"",
                AuthType::Plain => "\"plain\"",
                _ => "\"scram-sha-256\"",
            };
            return Err(Invalid::new(
                "auth_type",
                v,
                "needs auth_file (a userlist.txt) or auth_user (for auth_query) to check passwords",
            ));
        }
        if self.client_tls_sslmode != TlsMode::Disable {
            if self.client_tls_cert_file.is_none() {
                return Err(Invalid::missing(
                    "client_tls_cert_file",
                    "required when client_tls_sslmode is not disable",
                ));
            }
            if self.client_tls_key_file.is_none() {
                return Err(Invalid::missing("client_tls_key_file", "required when client_tls_sslmode is not disable"));
            }
        }
        if matches!(self.client_tls_sslmode, TlsMode::VerifyCa | TlsMode::VerifyFull)
            && self.client_tls_ca_file.is_none()
        {
            return Err(Invalid::missing(
                "client_tls_ca_file",
                "required when client_tls_sslmode is verify-ca or verify-full",
            ));
        }
        if !self.metrics_listen.is_empty() && self.metrics_listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(Invalid::new(
                "metrics_listen",
                format!("{:?}", self.metrics_listen),
                "expected an IP address and port such as \"127.0.0.1:9127\" (empty disables /metrics)",
            ));
        }
        if matches!(self.server_tls_sslmode, TlsMode::VerifyCa | TlsMode::VerifyFull)
            && self.server_tls_ca_file.is_none()
        {
            return Err(Invalid::missing(
                "server_tls_ca_file",
                "required when server_tls_sslmode is verify-ca or verify-full",
            ));
        }
        if self.server_tls_cert_file.is_some() != self.server_tls_key_file.is_some() {
            let (missing, given) = if self.server_tls_cert_file.is_none() {
                ("server_tls_cert_file", "server_tls_key_file")
            } else {
                ("server_tls_key_file", "server_tls_cert_file")
            };
            return Err(Invalid::missing(
                missing,
                format!("required with {given}: the certificate and its key go together"),
            ));
        }
        for (key, text) in
            [("client_tls_protocols", &self.client_tls_protocols), ("server_tls_protocols", &self.server_tls_protocols)]
        {
            if let Err(why) = crate::tls::protocol_versions(text) {
                return Err(Invalid::new(key, format!("{text:?}"), why));
            }
        }
        if let Err(why) = crate::session::extra_parameter_names(&self.track_extra_parameters) {
            return Err(Invalid::new(
                "track_extra_parameters",
                format!("{:?}", self.track_extra_parameters.join(",")),
                why,
            ));
        }
        let auth_dbnames = std::iter::once(("auth_dbname".to_owned(), &self.auth_dbname))
            .chain(self.databases.iter().map(|(name, db)| (format!("databases.{name}.auth_dbname"), &db.auth_dbname)));
        for (key, auth_dbname) in auth_dbnames {
            if let Some(auth_db) = auth_dbname {
                if auth_db == "*" || !self.databases.contains_key(auth_db) {
                    return Err(Invalid::new(
                        key,
                        format!("{auth_db:?}"),
                        "expected the name of a [databases] entry (not \"*\"), whose server auth_query runs on",
                    ));
                }
            }
        }
        for (name, db) in &self.databases {
            if let (Some(min), Some(size)) = (db.min_pool_size, db.pool_size) {
                if min > size {
                    return Err(Invalid::new(
                        format!("databases.{name}.min_pool_size"),
                        min,
                        format!("expected at most pool_size ({size})"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A file mode as pgbouncer.ini writes it, a string of octal digits (`"0777"`, `"770"`), or a
/// TOML integer (`0o770`, taken as it is).
fn octal_mode<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    struct Mode;
    impl serde::de::Visitor<'_> for Mode {
        type Value = u32;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an octal file mode such as \"0777\" or 0o770")
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<u32, E> {
            let digits = text.trim().trim_start_matches("0o");
            u32::from_str_radix(digits, 8)
                .map_err(|_| E::custom(format!("{text:?} is not an octal file mode such as \"0777\" or \"0770\"")))
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u32, E> {
            u32::try_from(v).map_err(|_| E::custom(format!("{v} is not a file mode")))
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u32, E> {
            u32::try_from(v).map_err(|_| E::custom(format!("{v} is not a file mode")))
        }
    }
    deserializer.deserialize_any(Mode)
}

/// A list of names as TOML writes it (`["a", "b"]`) or as pgbouncer.ini did (`"a, b"`: split at
/// commas and blanks), so a copied `admin_users = a, b` line only needs its quotes.
fn names<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    struct Names;
    impl<'de> serde::de::Visitor<'de> for Names {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of names, [\"a\", \"b\"], or one string of comma-separated names")
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Vec<String>, E> {
            Ok(text
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect())
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut names = Vec::new();
            while let Some(name) = seq.next_element::<String>()? {
                names.push(name);
            }
            Ok(names)
        }
    }
    deserializer.deserialize_any(Names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use consensus::config_file::parse;
    use std::path::Path;

    fn err(text: &str) -> String {
        match parse::<PoolerConfig>(Path::new("pooler.toml"), text) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_database_follows_the_cluster_only_with_a_whole_cluster_section() {
        let db = "auth_type = \"trust\"\n[databases.app]\ncluster_role = \"primary\"\n";
        let etcd = "[cluster]\nscope = \"main\"\netcd_endpoints = [\"http://10.0.0.1:2379\"]\n";
        let c: PoolerConfig = parse(Path::new("pooler.toml"), &format!("{db}{etcd}")).unwrap();
        assert_eq!(c.databases["app"].cluster_role, Some(ClusterRole::Primary));
        assert_eq!(c.cluster.as_ref().map(|c| c.namespace.as_str()), Some("/service"));
        assert_eq!(
            err(db),
            "pooler.toml: cluster: databases.app.cluster_role needs a [cluster] section (scope and the DCS)"
        );
        assert_eq!(
            err(&format!("{db}host = \"10.0.0.1\"\n{etcd}")),
            "pooler.toml: databases.app.host = \"10.0.0.1\": cluster_role takes the server from the cluster's DCS: remove host and port"
        );
        assert_eq!(
            err("auth_type = \"trust\"\n[databases.app]\nport = 5432\n"),
            "pooler.toml: databases.app.host: set host (and port), or cluster_role (\"primary\", \"replica\" or \"read-only\") with a [cluster] section"
        );
        assert!(err(&format!("{db}[cluster]\nscope = \"main\"\n")).contains("set one of etcd_endpoints"));
        let raft = format!("{db}[cluster]\nscope = \"main\"\nraft_members = [\"10.0.0.1:7204\"]\n");
        assert!(err(&raft).contains("set raft_secret or raft_secret_file"));
        let c: PoolerConfig =
            parse(Path::new("pooler.toml"), &format!("{raft}raft_secret = \"0123456789abcdef0123\"\n")).unwrap();
        assert_eq!(c.cluster.map(|c| c.raft_members.len()), Some(1));
        assert!(err(&format!("{db}[databases.app.x]\n")).contains("unknown key"));
        // A lag limit is for standbys.
        assert_eq!(
            err(&format!("{db}max_replica_lag = 1000\n{etcd}")),
            "pooler.toml: databases.app.max_replica_lag = 1000: applies to standbys only: set cluster_role = \"replica\" or \"read-only\", or remove it"
        );
        let reads = "auth_type = \"trust\"\n[databases.app]\ncluster_role = \"replica\"\nmax_replica_lag = 1000\n";
        let c: PoolerConfig = parse(Path::new("pooler.toml"), &format!("{reads}{etcd}")).unwrap();
        assert_eq!(c.databases["app"].max_replica_lag, Some(1000));
    }

    #[test]
    fn defaults_match_pgbouncer() {
        let c: PoolerConfig = parse(Path::new("pooler.toml"), "auth_type = \"trust\"\n").unwrap();
        assert_eq!(c.listen_port, 6432);
        assert_eq!(c.pool_mode, PoolMode::Session);
        assert_eq!(c.default_pool_size, 20);
        assert_eq!(c.max_client_conn, 100);
        assert_eq!(c.server_reset_query, "DISCARD ALL");
    }

    #[test]
    fn user_lists_are_arrays_or_pgbouncers_comma_separated_strings() {
        let text = "auth_type = \"trust\"\nadmin_users = \"dba, ops,root\"\nstats_users = [\"prometheus\"]\n\
                    ignore_startup_parameters = \"extra_float_digits\"\n";
        let c: PoolerConfig = parse(Path::new("pooler.toml"), text).unwrap();
        assert_eq!(c.admin_users, ["dba", "ops", "root"]);
        assert_eq!(c.stats_users, ["prometheus"]);
        assert_eq!(c.ignore_startup_parameters, ["extra_float_digits"]);
        let wrong = err("auth_type = \"trust\"\nadmin_users = 5\n");
        assert!(wrong.contains("admin_users") && wrong.contains("comma-separated names"), "{wrong}");
    }

    #[test]
    fn misspelt_pool_mode_names_file_key_and_choices() {
        assert_eq!(
            err("auth_type = \"trust\"\npool_mode = \"transactoin\"\n"),
            "pooler.toml: pool_mode = \"transactoin\": expected one of session, transaction, statement"
        );
    }

    #[test]
    fn database_entry_is_parsed_and_checked() {
        let text = "auth_type = \"trust\"\n[databases.app]\nhost = \"127.0.0.1\"\npool_size = 5\nmin_pool_size = 9\n";
        assert_eq!(err(text), "pooler.toml: databases.app.min_pool_size = 9: expected at most pool_size (5)");
    }

    #[test]
    fn cert_auth_needs_clients_to_present_certificates() {
        let tls = "client_tls_cert_file = \"c\"\nclient_tls_key_file = \"k\"\nclient_tls_ca_file = \"ca\"\n";
        let refused = err(&format!("auth_type = \"cert\"\nclient_tls_sslmode = \"require\"\n{tls}"));
        assert!(
            refused.starts_with("pooler.toml: auth_type = \"cert\": needs client_tls_sslmode = \"verify-ca\""),
            "{refused}"
        );
        assert!(err("auth_type = \"cert\"\n").contains("needs client_tls_sslmode"));
        let fine = format!("auth_type = \"cert\"\nclient_tls_sslmode = \"verify-full\"\n{tls}");
        assert_eq!(parse::<PoolerConfig>(Path::new("pooler.toml"), &fine).unwrap().auth_type, AuthType::Cert);
    }

    #[test]
    fn auth_dbname_must_name_a_database_entry() {
        let entry = "[databases.authdb]\nhost = \"127.0.0.1\"\n";
        assert_eq!(
            err(&format!("auth_type = \"trust\"\nauth_dbname = \"nosuch\"\n{entry}")),
            "pooler.toml: auth_dbname = \"nosuch\": expected the name of a [databases] entry (not \"*\"), whose \
             server auth_query runs on"
        );
        let text = format!("auth_type = \"trust\"\n{entry}[databases.app]\nhost = \"h\"\nauth_dbname = \"*\"\n");
        assert!(
            err(&text).starts_with("pooler.toml: databases.app.auth_dbname = \"*\": expected the name"),
            "{}",
            err(&text)
        );
        let fine = format!("auth_type = \"trust\"\nauth_dbname = \"authdb\"\n{entry}[databases.app]\nhost = \"h\"\nauth_dbname = \"authdb\"\n");
        let config = parse::<PoolerConfig>(Path::new("pooler.toml"), &fine).unwrap();
        assert_eq!(config.databases["app"].auth_dbname.as_deref(), Some("authdb"));
    }

    #[test]
    fn password_auth_without_a_source_of_passwords_is_rejected() {
        assert!(err("").starts_with("pooler.toml: auth_type = \"scram-sha-256\": needs auth_file"));
    }

    #[test]
    fn metrics_listen_and_client_certificate_settings_are_checked() {
        let c: PoolerConfig = parse(Path::new("pooler.toml"), "auth_type = \"trust\"\n").unwrap();
        assert_eq!((c.metrics_listen.as_str(), c.shutdown_timeout), ("", 30.0));
        assert!(err("auth_type = \"trust\"\nmetrics_listen = \"localhost\"\n")
            .starts_with("pooler.toml: metrics_listen = \"localhost\": expected an IP address and port"));
        let verify = "auth_type = \"trust\"\nclient_tls_sslmode = \"verify-ca\"\n\
                      client_tls_cert_file = \"c.pem\"\nclient_tls_key_file = \"k.pem\"\n";
        assert!(err(verify).contains("client_tls_ca_file"), "{}", err(verify));
    }

    #[test]
    fn tcp_settings_default_to_keepalive_and_are_bounded_as_linux_bounds_them() {
        let c: PoolerConfig = parse(Path::new("pooler.toml"), "auth_type = \"trust\"\n").unwrap();
        assert_eq!(
            (c.tcp_keepalive, c.tcp_keepidle, c.tcp_keepintvl, c.tcp_keepcnt, c.tcp_user_timeout),
            (true, 0, 0, 0, 0)
        );
        assert_eq!(
            err("auth_type = \"trust\"\ntcp_keepcnt = 200\n"),
            "pooler.toml: tcp_keepcnt = 200: expected at most 127 probes (0: the system's default)"
        );
        assert!(err("auth_type = \"trust\"\ntcp_keepidle = 40000\n").contains("at most 32767 seconds"));
        assert!(err("auth_type = \"trust\"\ntcp_keepalive = false\ntcp_keepidle = 30\n")
            .contains("only apply with tcp_keepalive = true"));
    }

    #[test]
    fn unix_socket_mode_is_octal_as_in_pgbouncer_ini() {
        let mode = |line: &str| {
            parse::<PoolerConfig>(Path::new("pooler.toml"), &format!("auth_type = \"trust\"\n{line}\n"))
                .map(|c| c.unix_socket_mode)
        };
        assert_eq!(mode("").unwrap(), 0o777);
        assert_eq!(mode("unix_socket_mode = \"0770\"").unwrap(), 0o770);
        assert_eq!(mode("unix_socket_mode = \"700\"").unwrap(), 0o700);
        assert_eq!(mode("unix_socket_mode = 0o750").unwrap(), 0o750);
        let bad = err("auth_type = \"trust\"\nunix_socket_mode = \"rwx\"\n");
        assert!(bad.contains("unix_socket_mode") && bad.contains("not an octal file mode"), "{bad}");
        assert!(err("auth_type = \"trust\"\nunix_socket_mode = \"17777\"\n").contains("expected an octal mode"));
    }

    #[test]
    fn auth_type_hba_needs_its_file_and_no_password_source() {
        assert_eq!(err("auth_type = \"hba\"\n"), "pooler.toml: auth_hba_file: required when auth_type is hba");
        let c: PoolerConfig =
            parse(Path::new("pooler.toml"), "auth_type = \"hba\"\nauth_hba_file = \"/etc/pgha/hba.conf\"\n").unwrap();
        assert_eq!(c.auth_type, AuthType::Hba);
    }

    #[test]
    fn negative_timeout_is_rejected() {
        assert!(err("auth_type = \"trust\"\nquery_wait_timeout = -1\n")
            .starts_with("pooler.toml: query_wait_timeout = -1: expected"));
    }
}
