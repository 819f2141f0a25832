//! Every pool, keyed by (database, user) as in PgBouncer (its server is where the database's
//! entry points now, and moves with it), with the per-database and per-user
//! connection counters that max_db_connections and max_user_connections share across pools.
//! Owns creating pools, finding them and retiring the unused pools of automatic databases
//! (autodb_idle_timeout); a pool's connections are its own.

use super::{maintain, Pool, PoolSettings};
use crate::connections::Connections;
use crate::server::LoginTarget;
use crate::topology::ServerAddr;
use hashbrown::HashMap;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex, RwLock, Weak};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The client-facing database name (shared with the entries of the pool's clients).
    pub database: Arc<str>,
    /// The client's user name (shared likewise).
    pub user: Arc<str>,
}

/// A pool's key as a login has it, borrowed: finding the pool copies no string. Hashes as
/// the `PoolKey` it equals (`&str` hashes as `String`).
#[derive(Debug, Clone, Copy, Hash)]
pub struct PoolKeyRef<'a> {
    pub database: &'a str,
    pub user: &'a str,
}

impl PoolKeyRef<'_> {
    fn to_key(self) -> PoolKey {
        PoolKey { database: self.database.into(), user: self.user.into() }
    }
}

impl hashbrown::Equivalent<PoolKey> for PoolKeyRef<'_> {
    fn equivalent(&self, key: &PoolKey) -> bool {
        self.database == &*key.database && self.user == &*key.user
    }
}

/// Open server connections of one database or one user over all its pools, and those pools,
/// so a slot freed in one pool can go to a client waiting in another.
#[derive(Default)]
pub(crate) struct ConnCounter {
    pub open: AtomicU32,
    /// Logged-in clients of the database's (or user's) pools, for max_db_client_connections
    /// and max_user_client_connections.
    pub clients: AtomicU32,
    pools: Mutex<Vec<Weak<Pool>>>,
}

impl ConnCounter {
    pub fn pools(&self) -> Vec<Arc<Pool>> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner()).iter().filter_map(Weak::upgrade).collect()
    }
}

type Counters = HashMap<String, Arc<ConnCounter>, foldhash::fast::RandomState>;
type PoolMap = HashMap<PoolKey, Arc<Pool>, foldhash::fast::RandomState>;

#[derive(Default)]
pub struct Registry {
    pools: Arc<RwLock<PoolMap>>,
    /// Open connections per database and per user.
    counters: Arc<Mutex<(Counters, Counters)>>,
    /// Live client and server connections (SHOW CLIENTS/SERVERS, KILL).
    pub connections: Arc<Connections>,
}

/// What a pool's housekeeping holds of the registry to take the pool out of it.
pub(super) struct Retirement {
    pools: Weak<RwLock<PoolMap>>,
    counters: Weak<Mutex<(Counters, Counters)>>,
}

impl Retirement {
    /// Takes `pool` out of the registry if nothing but the registry and this caller holds it:
    /// no client (logged in, logging in, or parked), no console listing. A login that looks
    /// for it afterwards creates a new pool. Its database's and user's counters go too when
    /// no other pool shares them. False (and nothing changed) if it is still held.
    pub(super) fn retire(&self, pool: Arc<Pool>) -> bool {
        let (Some(pools), Some(counters)) = (self.pools.upgrade(), self.counters.upgrade()) else { return false };
        {
            let mut map = pools.write().unwrap_or_else(|p| p.into_inner());
            // New references come from the map, under its lock: two now (the map's and this
            // one) means no login has found the pool and none can.
            if Arc::strong_count(&pool) != 2 || !pool.is_unused() {
                return false;
            }
            map.remove(&pool.key);
        }
        let (database, user) = (pool.key.database.clone(), pool.key.user.clone());
        drop(pool);
        let mut counters = counters.lock().unwrap_or_else(|p| p.into_inner());
        let (dbs, users) = &mut *counters;
        for (map, name) in [(dbs, &*database), (users, &*user)] {
            let Some(counter) = map.get(name) else { continue };
            counter.pools.lock().unwrap_or_else(|p| p.into_inner()).retain(|w| w.strong_count() > 0);
            // Only the map holds it: no pool (which holds its counters) is left.
            if Arc::strong_count(counter) == 1 {
                map.remove(name);
            }
        }
        true
    }
}

impl Registry {
    /// The pool for `key`, if a client has logged in to it.
    pub fn find(&self, key: PoolKeyRef<'_>) -> Option<Arc<Pool>> {
        self.pools.read().unwrap_or_else(|p| p.into_inner()).get(&key).cloned()
    }

    /// The pool for `key`, created (with its maintenance task) on first use.
    pub fn get_or_create(
        &self,
        key: PoolKeyRef<'_>,
        settings: impl FnOnce() -> (PoolSettings, LoginTarget, Arc<[ServerAddr]>),
    ) -> Arc<Pool> {
        if let Some(pool) = self.pools.read().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return pool.clone();
        }
        let mut pools = self.pools.write().unwrap_or_else(|p| p.into_inner());
        if let Some(pool) = pools.get(&key) {
            return pool.clone();
        }
        let key = key.to_key();
        let (db, user) = {
            let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
            let db = counters.0.entry_ref(&*key.database).or_default().clone();
            let user = counters.1.entry_ref(&*key.user).or_default().clone();
            (db, user)
        };
        let (settings, login, servers) = settings();
        let pool = Arc::new(Pool::new(
            key.clone(),
            settings,
            login,
            servers,
            db.clone(),
            user.clone(),
            self.connections.clone(),
        ));
        for counter in [&db, &user] {
            counter.pools.lock().unwrap_or_else(|p| p.into_inner()).push(Arc::downgrade(&pool));
        }
        pools.insert(key.clone(), pool.clone());
        tokio::spawn(maintain::run(Arc::downgrade(&pool), self.retirement()));
        pool
    }

    fn retirement(&self) -> Retirement {
        Retirement { pools: Arc::downgrade(&self.pools), counters: Arc::downgrade(&self.counters) }
    }

    pub fn all(&self) -> Vec<Arc<Pool>> {
        self.pools.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PoolerConfig;
    use crate::pool::PoolKeyRef;
    use std::sync::atomic::Ordering;

    fn counted(registry: &Registry) -> (usize, usize) {
        let counters = registry.counters.lock().unwrap();
        (counters.0.len(), counters.1.len())
    }

    /// A pool leaves the registry only while nothing else holds it and it has no client, no
    /// server connection and no pause; its database's and user's counters go with it unless
    /// another pool shares them; the next login gets a new pool.
    #[tokio::test]
    async fn an_unused_pool_is_retired_only_when_nothing_holds_it() {
        let text = "auth_type = \"trust\"\n[databases.\"*\"]\nhost = \"10.0.0.1\"\n";
        let config: PoolerConfig = consensus::config_file::parse(std::path::Path::new("pooler.toml"), text).unwrap();
        let shared = crate::runtime::Shared::new(config.clone(), None).unwrap();
        let registry = &shared.pools;
        let pool_of = |database: &'static str, user: &'static str| {
            let target = shared.topology().target(database).unwrap();
            registry.get_or_create(PoolKeyRef { database, user }, || {
                let login = LoginTarget {
                    addr: target.server().clone(),
                    dbname: database.into(),
                    user: user.into(),
                    credential: crate::auth::ServerCredential::None,
                    connect_timeout: std::time::Duration::from_secs(1),
                    tcp: Default::default(),
                    tls: shared.server_tls(),
                };
                (PoolSettings::new(&config, &target, None), login, target.servers.clone())
            })
        };
        let shop = pool_of("shop", "u");
        let other = pool_of("other", "u");
        assert!(shop.settings().autodb_idle_timeout.is_some(), "a `*` database's pool has a timeout");
        assert_eq!(counted(registry), (2, 1));
        let retirement = registry.retirement();

        let held = shop.clone();
        assert!(!retirement.retire(shop.clone()), "a login holds it");
        drop(held);
        shop.stats.clients.fetch_add(1, Ordering::Relaxed);
        assert!(!retirement.retire(shop.clone()), "a client is in it");
        shop.stats.clients.fetch_sub(1, Ordering::Relaxed);
        shop.pause();
        assert!(!retirement.retire(shop.clone()), "PAUSE holds it");
        shop.resume();
        assert!(registry.find(PoolKeyRef { database: "shop", user: "u" }).is_some());

        let first = Arc::as_ptr(&shop) as usize;
        assert!(retirement.retire(shop));
        assert!(registry.find(PoolKeyRef { database: "shop", user: "u" }).is_none());
        assert_eq!(counted(registry), (1, 1), "the user's counter stays: `other` shares it");
        assert!(retirement.retire(other));
        assert_eq!(counted(registry), (0, 0));
        let again = pool_of("shop", "u");
        assert_ne!(Arc::as_ptr(&again) as usize, first, "a new login makes a new pool");
        assert_eq!(counted(registry), (1, 1));
    }
}
