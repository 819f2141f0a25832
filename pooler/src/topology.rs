//! Where each database's clients are sent: the server list behind one small interface
//! ([`Topology`]), so that a DCS feed can replace the static `[databases]` list of pooler.toml
//! later. Owns lookups only; pools and connections live in `pool` and `server`.

use crate::config::{PoolMode, PoolerConfig};
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

/// Where clients of one database go and how they are pooled there.
#[derive(Debug, Clone, PartialEq)]
pub struct DatabaseTarget {
    /// The name clients connect to.
    pub name: String,
    pub server: ServerAddr,
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

    /// The entries of pooler.toml, the `cluster_role = "primary"` ones sent to `primary` (left
    /// out while no primary is known: their clients are told so at login).
    pub fn following(config: &PoolerConfig, primary: Option<&ServerAddr>) -> Self {
        let mut topology = StaticTopology::default();
        for (name, db) in &config.databases {
            let server = match (db.cluster_role, primary) {
                (None, _) => ServerAddr { host: db.host.clone(), port: db.port },
                (Some(crate::config::ClusterRole::Primary), Some(primary)) => primary.clone(),
                (Some(_), None) => continue,
            };
            let target = DatabaseTarget {
                name: name.clone(),
                server,
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
        assert_eq!((app.dbname.as_str(), app.server.to_string()), ("shop", "10.0.0.1:5432".to_owned()));
        let other = topology.target("other").unwrap();
        assert_eq!((other.dbname.as_str(), other.server.to_string()), ("other", "/run/pg/.s.PGSQL.5433".into()));
        assert_eq!(topology.databases().len(), 1);
    }

    #[test]
    fn unknown_database_without_wildcard_is_none() {
        assert!(StaticTopology::default().target("x").is_none());
    }
}
