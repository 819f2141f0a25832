//! Every pool, keyed by (database, user) as in PgBouncer (its server is where the database's
//! entry points now, and moves with it), with the per-database and per-user
//! connection counters that max_db_connections and max_user_connections share across pools.
//! Owns creating pools and finding them; a pool's connections are its own.

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

#[derive(Default)]
pub struct Registry {
    pools: RwLock<HashMap<PoolKey, Arc<Pool>, foldhash::fast::RandomState>>,
    /// Open connections per database and per user.
    counters: Mutex<(Counters, Counters)>,
    /// Live client and server connections (SHOW CLIENTS/SERVERS, KILL).
    pub connections: Arc<Connections>,
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
        tokio::spawn(maintain::run(Arc::downgrade(&pool)));
        pool
    }

    pub fn all(&self) -> Vec<Arc<Pool>> {
        self.pools.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }
}
