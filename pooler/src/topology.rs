//! Where each database's clients are sent: the server list behind one small interface
//! ([`Topology`]), so that a DCS feed can replace the static `[databases]` list of pooler.toml
//! later. Owns lookups only; pools and connections live in `pool` and `server`.

use crate::config::{ClusterRole, PoolMode, PoolerConfig};
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
    /// The healthy standbys, in member-name order.
    pub replicas: Vec<ServerAddr>,
}

impl ClusterServers {
    /// The servers of a database in `role`; empty while there is none.
    pub fn for_role(&self, role: ClusterRole) -> Vec<ServerAddr> {
        match role {
            ClusterRole::Primary => self.primary.iter().cloned().collect(),
            ClusterRole::Replica => self.replicas.clone(),
            ClusterRole::ReadOnly if self.replicas.is_empty() => self.primary.iter().cloned().collect(),
            ClusterRole::ReadOnly => self.replicas.clone(),
        }
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
    pub fn following(config: &PoolerConfig, cluster: Option<&ClusterServers>) -> Self {
        let mut topology = StaticTopology::default();
        for (name, db) in &config.databases {
            let servers: Arc<[ServerAddr]> = match (db.cluster_role, cluster) {
                (None, _) => Arc::new([ServerAddr { host: db.host.clone(), port: db.port }]),
                (Some(role), Some(cluster)) => match cluster.for_role(role) {
                    servers if servers.is_empty() => continue,
                    servers => servers.into(),
                },
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
        Some(Arc::new(DatabaseTarget { name: database.to_owned(), dbname: database.to_owned(), ..fallback.clone() }))
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
        assert_eq!(topology.databases().len(), 1);
    }

    #[test]
    fn cluster_roles_take_the_members_in_their_role() {
        let text = "auth_type = \"trust\"\n[databases.app]\ncluster_role = \"primary\"\n\
                    [databases.reads]\ncluster_role = \"replica\"\ndbname = \"app\"\n\
                    [databases.reports]\ncluster_role = \"read-only\"\ndbname = \"app\"\n\
                    [cluster]\nscope = \"s\"\netcd_endpoints = [\"http://127.0.0.1:2379\"]\n";
        let config: PoolerConfig = parse(Path::new("pooler.toml"), text).unwrap();
        let at = |port| ServerAddr { host: "10.0.0.1".into(), port };
        let servers = |topology: &StaticTopology, db: &str| {
            topology.target(db).map(|t| ServerList(&t.servers).to_string()).unwrap_or_default()
        };
        let both = ClusterServers { primary: Some(at(1)), replicas: vec![at(2), at(3)] };
        let topology = StaticTopology::following(&config, Some(&both));
        assert_eq!(servers(&topology, "app"), "10.0.0.1:1");
        assert_eq!(servers(&topology, "reads"), "10.0.0.1:2,10.0.0.1:3");
        assert_eq!(servers(&topology, "reports"), "10.0.0.1:2,10.0.0.1:3");
        // No healthy standby: read-only falls back to the primary, replica has no server.
        let primary_only = ClusterServers { primary: Some(at(1)), replicas: vec![] };
        let topology = StaticTopology::following(&config, Some(&primary_only));
        assert_eq!((servers(&topology, "reads"), servers(&topology, "reports")), ("".into(), "10.0.0.1:1".into()));
        // No leader: the standbys still serve reads.
        let leaderless = ClusterServers { primary: None, replicas: vec![at(2)] };
        let topology = StaticTopology::following(&config, Some(&leaderless));
        assert_eq!((servers(&topology, "app"), servers(&topology, "reads")), ("".into(), "10.0.0.1:2".into()));
        // Before the first reading nothing of the cluster is served.
        assert!(StaticTopology::following(&config, None).databases().is_empty());
    }

    #[test]
    fn unknown_database_without_wildcard_is_none() {
        assert!(StaticTopology::default().target("x").is_none());
    }
}
