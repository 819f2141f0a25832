//! Where each database's clients are sent: the server list behind one small interface
//! ([`Topology`]), so that a DCS feed can replace the static `[databases]` list of pooler.toml
//! later. Owns lookups only; pools and connections live in `pool` and `server`.

use crate::config::{ClusterRole, LoadBalanceHosts, PoolMode, PoolerConfig};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// A PostgreSQL server: a host name or address, or a Unix socket directory (starts with `/`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerAddr {
    pub host: String,
    pub port: u16,
}

impl ServerAddr {
    pub fn is_unix(&self) -> bool {
        self.host.starts_with('/')
    }

    /// The socket path of a Unix-socket server.
    pub fn unix_path(&self) -> String {
        format!("{}/.s.PGSQL.{}", self.host.trim_end_matches('/'), self.port)
    }
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_unix() {
            write!(f, "{}", self.unix_path())
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The cluster's members a `cluster_role` database can be sent to, as its DCS said last.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterServers {
    /// The member holding the leader lock (None while none does, or while a switchover or
    /// failover asked for now is under way).
    pub primary: Option<ServerAddr>,
    /// The healthy standbys, in member-name order, each with how far it is behind.
    pub replicas: Vec<Standby>,
}

/// A healthy standby and its replication lag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standby {
    pub addr: ServerAddr,
    /// Bytes of WAL it has yet to replay to reach the leader's last known position; None
    /// when either position is unknown (not counted as lag).
    pub lag: Option<u64>,
}

impl Standby {
    /// Within `max_lag` bytes of the leader (0: any lag).
    pub fn keeps_up(&self, max_lag: u64) -> bool {
        max_lag == 0 || self.lag.is_none_or(|lag| lag <= max_lag)
    }
}

impl ClusterServers {
    /// The servers of a database in `role`, standbys within `max_lag` bytes of the leader
    /// (0: any lag); empty while there is none.
    pub fn for_role(&self, role: ClusterRole, max_lag: u64) -> Vec<ServerAddr> {
        let standbys = || self.standbys(max_lag).cloned().collect::<Vec<_>>();
        let primary = || self.primary.iter().cloned().collect::<Vec<_>>();
        match role {
            ClusterRole::Primary => primary(),
            ClusterRole::Replica => standbys(),
            ClusterRole::ReadOnly => match standbys() {
                none if none.is_empty() => primary(),
                some => some,
            },
        }
    }

    /// The standbys within `max_lag` bytes of the leader (0: all).
    pub fn standbys(&self, max_lag: u64) -> impl Iterator<Item = &ServerAddr> {
        self.replicas.iter().filter(move |s| s.keeps_up(max_lag)).map(|s| &s.addr)
    }
}

/// Servers written one after another: `10.0.0.1:5432,10.0.0.2:5432`.
pub struct ServerList<'a>(pub &'a [ServerAddr]);

impl fmt::Display for ServerList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, server) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{server}")?;
        }
        Ok(())
    }
}

/// Where clients of one database go and how they are pooled there.
#[derive(Debug, Clone, PartialEq)]
pub struct DatabaseTarget {
    /// The name clients connect to.
    pub name: String,
    /// Where new server connections go, one after another (never empty): the configured host,
    /// or the cluster's members in the entry's `cluster_role`.
    pub servers: Arc<[ServerAddr]>,
    /// The database name on the server.
    pub dbname: String,
    /// A server-side user forced for every client of this database.
    pub user: Option<String>,
    pub pool_mode: Option<PoolMode>,
    pub pool_size: Option<u32>,
    pub min_pool_size: Option<u32>,
    pub reserve_pool: Option<u32>,
    pub max_db_connections: Option<u32>,
    pub max_db_client_connections: Option<u32>,
    /// The entry's own load_balance_hosts.
    pub load_balance_hosts: Option<LoadBalanceHosts>,
    /// Served by the `*` entry under the client's database name (PgBouncer's automatically
    /// created database): its pools are dropped after autodb_idle_timeout unused.
    pub auto: bool,
}

impl DatabaseTarget {
    /// The first of the servers (the one a single-server database has).
    pub fn server(&self) -> &ServerAddr {
        &self.servers[0]
    }
}

/// The server list as the pooler sees it at one moment.
pub trait Topology: Send + Sync {
    /// Where clients of `database` go; None if the pooler does not serve it.
    fn target(&self, database: &str) -> Option<Arc<DatabaseTarget>>;
    /// Every configured database (for the admin console and pool warm-up).
    fn databases(&self) -> Vec<Arc<DatabaseTarget>>;
}

/// The `[databases]` entries of pooler.toml; a `*` entry serves any other database name.
#[derive(Debug, Default)]
pub struct StaticTopology {
    entries: HashMap<String, Arc<DatabaseTarget>, foldhash::fast::RandomState>,
    fallback: Option<DatabaseTarget>,
}

impl StaticTopology {
    pub fn from_config(config: &PoolerConfig) -> Self {
        Self::following(config, None)
    }

    /// The entries of pooler.toml, those with a `cluster_role` sent to the cluster's members in
    /// that role (left out while there is none: their clients are told so at login).
    /// Standbys more than the entry's `max_replica_lag` (else `[cluster] max_replica_lag`)
    /// bytes behind are left out.
    pub fn following(config: &PoolerConfig, cluster: Option<&ClusterServers>) -> Self {
        let mut topology = StaticTopology::default();
        let cluster_lag = config.cluster.as_ref().map_or(0, |c| c.max_replica_lag);
        for (name, db) in &config.databases {
            let servers: Arc<[ServerAddr]> = match (db.cluster_role, cluster) {
                (None, _) => db.hosts().map(|host| ServerAddr { host: host.to_owned(), port: db.port }).collect(),
                (Some(role), Some(cluster)) => {
                    match cluster.for_role(role, db.max_replica_lag.unwrap_or(cluster_lag)) {
                        servers if servers.is_empty() => continue,
                        servers => servers.into(),
                    }
                }
                (Some(_), None) => continue,
            };
            let target = DatabaseTarget {
                name: name.clone(),
                servers,
                dbname: db.dbname.clone().unwrap_or_else(|| name.clone()),
                user: db.user.clone(),
                pool_mode: db.pool_mode,
                pool_size: db.pool_size,
                min_pool_size: db.min_pool_size,
                reserve_pool: db.reserve_pool,
                max_db_connections: db.max_db_connections,
                max_db_client_connections: db.max_db_client_connections,
                load_balance_hosts: db.load_balance_hosts,
                auto: false,
            };
            if name == "*" {
                topology.fallback = Some(target);
            } else {
                topology.entries.insert(name.clone(), Arc::new(target));
            }
        }
        topology
    }
}

impl Topology for StaticTopology {
    fn target(&self, database: &str) -> Option<Arc<DatabaseTarget>> {
        if let Some(target) = self.entries.get(database) {
            return Some(target.clone());
        }
        let fallback = self.fallback.as_ref()?;
        Some(Arc::new(DatabaseTarget {
            name: database.to_owned(),
            dbname: database.to_owned(),
            auto: true,
            ..fallback.clone()
        }))
    }

    fn databases(&self) -> Vec<Arc<DatabaseTarget>> {
        self.entries.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use consensus::config_file::parse;
    use std::path::Path;

    #[test]
    fn named_entries_and_wildcard() {
        let text = "auth_type = \"trust\"\n[databases.app]\nhost = \"10.0.0.1\"\ndbname = \"shop\"\n\
                    [databases.\"*\"]\nhost = \"/run/pg\"\nport = 5433\n";
        let config: PoolerConfig = parse(Path::new("pooler.toml"), text).unwrap();
        let topology = StaticTopology::from_config(&config);
        let app = topology.target("app").unwrap();
        assert_eq!((app.dbname.as_str(), app.server().to_string()), ("shop", "10.0.0.1:5432".to_owned()));
        let other = topology.target("other").unwrap();
        assert_eq!((other.dbname.as_str(), other.server().to_string()), ("other", "/run/pg/.s.PGSQL.5433".into()));
        assert!(other.auto && !app.auto, "only the `*` entry's databases are automatic");
        assert_eq!(topology.databases().len(), 1);
    }

    #[test]
    fn a_host_list_gives_the_database_each_host_in_turn() {
        let text = "auth_type = \"trust\"\n[databases.app]\nhost = \"10.0.0.1, /run/pg,db2\"\nport = 5433\n";
        let config: PoolerConfig = parse(Path::new("pooler.toml"), text).unwrap();
        let app = StaticTopology::from_config(&config).target("app").unwrap();
        assert_eq!(ServerList(&app.servers).to_string(), "10.0.0.1:5433,/run/pg/.s.PGSQL.5433,db2:5433");
        for bad in ["10.0.0.1,", ",", "a,,b"] {
            let text = format!("auth_type = \"trust\"\n[databases.app]\nhost = \"{bad}\"\n");
            let err = parse::<PoolerConfig>(Path::new("pooler.toml"), &text).unwrap_err().to_string();
            assert!(err.contains("databases.app.host") && err.contains("none of them empty"), "{bad}: {err}");
        }
    }

    #[test]
    fn cluster_roles_take_the_members_in_their_role() {
        let text = "auth_type = \"trust\"\n[databases.app]\ncluster_role = \"primary\"\n\
                    [databases.reads]\ncluster_role = \"replica\"\ndbname = \"app\"\n\
                    [databases.reports]\ncluster_role = \"read-only\"\ndbname = \"app\"\n\
                    [cluster]\nscope = \"s\"\netcd_endpoints = [\"http://127.0.0.1:2379\"]\n";
        let config: PoolerConfig = parse(Path::new("pooler.toml"), text).unwrap();
        let at = |port| ServerAddr { host: "10.0.0.1".into(), port };
        let standby = |port| Standby { addr: at(port), lag: None };
        let servers = |topology: &StaticTopology, db: &str| {
            topology.target(db).map(|t| ServerList(&t.servers).to_string()).unwrap_or_default()
        };
        let both = ClusterServers { primary: Some(at(1)), replicas: vec![standby(2), standby(3)] };
        let topology = StaticTopology::following(&config, Some(&both));
        assert_eq!(servers(&topology, "app"), "10.0.0.1:1");
        assert_eq!(servers(&topology, "reads"), "10.0.0.1:2,10.0.0.1:3");
        assert_eq!(servers(&topology, "reports"), "10.0.0.1:2,10.0.0.1:3");
        // No healthy standby: read-only falls back to the primary, replica has no server.
        let primary_only = ClusterServers { primary: Some(at(1)), replicas: vec![] };
        let topology = StaticTopology::following(&config, Some(&primary_only));
        assert_eq!((servers(&topology, "reads"), servers(&topology, "reports")), ("".into(), "10.0.0.1:1".into()));
        // No leader: the standbys still serve reads.
        let leaderless = ClusterServers { primary: None, replicas: vec![standby(2)] };
        let topology = StaticTopology::following(&config, Some(&leaderless));
        assert_eq!((servers(&topology, "app"), servers(&topology, "reads")), ("".into(), "10.0.0.1:2".into()));
        // Before the first reading nothing of the cluster is served.
        assert!(StaticTopology::following(&config, None).databases().is_empty());
    }

    /// `[cluster] max_replica_lag` holds for every database, a database's own
    /// `max_replica_lag` in its place (0: any lag); an unknown lag is no lag.
    #[test]
    fn each_database_may_set_its_own_replica_lag_limit() {
        let text = "auth_type = \"trust\"\n\
                    [databases.reads]\ncluster_role = \"replica\"\n\
                    [databases.reports]\ncluster_role = \"read-only\"\nmax_replica_lag = 100000\n\
                    [databases.archive]\ncluster_role = \"replica\"\nmax_replica_lag = 0\n\
                    [cluster]\nscope = \"s\"\netcd_endpoints = [\"http://127.0.0.1:2379\"]\nmax_replica_lag = 1000\n";
        let config: PoolerConfig = parse(Path::new("pooler.toml"), text).unwrap();
        let at = |port| ServerAddr { host: "10.0.0.1".into(), port };
        let servers = |topology: &StaticTopology, db: &str| {
            topology.target(db).map(|t| ServerList(&t.servers).to_string()).unwrap_or_default()
        };
        let cluster = ClusterServers {
            primary: Some(at(1)),
            replicas: vec![
                Standby { addr: at(2), lag: Some(500) },
                Standby { addr: at(3), lag: Some(50_000) },
                Standby { addr: at(4), lag: Some(5_000_000) },
                Standby { addr: at(5), lag: None },
            ],
        };
        let topology = StaticTopology::following(&config, Some(&cluster));
        assert_eq!(servers(&topology, "reads"), "10.0.0.1:2,10.0.0.1:5");
        assert_eq!(servers(&topology, "reports"), "10.0.0.1:2,10.0.0.1:3,10.0.0.1:5");
        assert_eq!(servers(&topology, "archive"), "10.0.0.1:2,10.0.0.1:3,10.0.0.1:4,10.0.0.1:5");
        // Every standby too far behind: read-only falls back to the primary.
        let behind =
            ClusterServers { primary: Some(at(1)), replicas: vec![Standby { addr: at(4), lag: Some(5_000_000) }] };
        let topology = StaticTopology::following(&config, Some(&behind));
        assert_eq!((servers(&topology, "reads"), servers(&topology, "reports")), ("".into(), "10.0.0.1:1".into()));
    }

    #[test]
    fn unknown_database_without_wildcard_is_none() {
        assert!(StaticTopology::default().target("x").is_none());
    }
}
