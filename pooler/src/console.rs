//! The admin console's view of this pooler: [`AdminBackend`] over the pools, counters and
//! configuration in [`Shared`]. SHOW rows are built from live state (SHOW CLIENTS and SERVERS
//! from the connection registry); PAUSE/RESUME, KILL, KILL_CLIENT, RECONNECT, WAIT_CLOSE,
//! DISABLE/ENABLE, RELOAD and SHUTDOWN act on the pools and the registry.

use crate::admin::rows::{ConfigRow, DatabaseRow, Lists, PoolRow, PoolerState, SocketRow, StatsRow, UserRow};
use crate::admin::{AdminBackend, AdminError, ShutdownMode};
use crate::pool::{CloseMark, Pool, PoolKey};
use crate::runtime::Shared;
use crate::shutdown::Signal;
use async_trait::async_trait;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long PAUSE waits for checked-out server connections to come back.
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(30);

#[path = "console_rows.rs"]
mod socket_rows;

pub struct ConsoleBackend {
    pub shared: Arc<Shared>,
}

fn mode_name(mode: crate::config::PoolMode) -> String {
    format!("{mode:?}").to_lowercase()
}

impl ConsoleBackend {
    fn pools_of(&self, db: Option<&str>) -> Result<Vec<Arc<Pool>>, AdminError> {
        self.pools_of_for(db, "pause")
    }

    /// The pools of `db` (all if `None`); `verb` names the command in PgBouncer's refusal of
    /// the admin database ("cannot kill admin db: pgbouncer").
    fn pools_of_for(&self, db: Option<&str>, verb: &'static str) -> Result<Vec<Arc<Pool>>, AdminError> {
        if db == Some(crate::admin::ADMIN_DATABASE) {
            return Err(AdminError::AdminDatabase { verb, db: crate::admin::ADMIN_DATABASE.into() });
        }
        if let Some(db) = db {
            if self.shared.topology().target(db).is_none() {
                return Err(AdminError::NoSuchDatabase(db.to_owned()));
            }
        }
        Ok(self.shared.pools.all().into_iter().filter(|p| db.is_none_or(|d| &*p.key.database == d)).collect())
    }
}

#[async_trait]
impl AdminBackend for ConsoleBackend {
    async fn pools(&self) -> Vec<PoolRow> {
        self.shared
            .pools
            .all()
            .iter()
            .map(|pool| {
                let sv = pool.server_states(crate::tick::Tick::now());
                let clients = pool.stats.clients.load(Ordering::Relaxed);
                PoolRow {
                    database: pool.key.database.to_string(),
                    user: pool.key.user.to_string(),
                    cl_active: clients.saturating_sub(sv.waiting),
                    cl_waiting: sv.waiting,
                    sv_active: sv.active,
                    sv_idle: sv.idle,
                    sv_used: sv.used,
                    sv_tested: sv.tested,
                    sv_login: sv.login,
                    pool_mode: mode_name(pool.settings().pool_mode),
                    load_balance_hosts: pool.load_balance_hosts().map(str::to_owned),
                    ..Default::default()
                }
            })
            .collect()
    }

    async fn stats(&self) -> Vec<StatsRow> {
        self.shared
            .pools
            .all()
            .iter()
            .map(|pool| StatsRow {
                database: pool.key.database.to_string(),
                totals: pool.stats.totals(),
                averages: pool.stats.averages(),
            })
            .collect()
    }

    async fn servers(&self) -> Vec<SocketRow> {
        let marks: HashMap<PoolKey, CloseMark> =
            self.shared.pools.all().iter().map(|p| (p.key.clone(), p.close_mark())).collect();
        let now = crate::tick::Tick::now();
        let used: HashSet<u64> = self.shared.pools.all().iter().flat_map(|p| p.used_servers(now)).collect();
        self.shared.pools.connections.servers().iter().map(|s| socket_rows::server(s, &marks, &used)).collect()
    }

    async fn clients(&self) -> Vec<SocketRow> {
        self.shared.pools.connections.clients().iter().map(|c| socket_rows::client(c)).collect()
    }

    async fn databases(&self) -> Vec<DatabaseRow> {
        let config = self.shared.config();
        let pools = self.shared.pools.all();
        let topology = self.shared.topology();
        let mut targets = topology.databases();
        // The databases the `*` entry serves now (a named entry's target is not `auto`), as
        // PgBouncer lists its automatic ones.
        let mut auto: Vec<_> =
            pools.iter().filter_map(|p| topology.target(&p.key.database).filter(|t| t.auto)).collect();
        auto.sort_by(|a, b| a.name.cmp(&b.name));
        auto.dedup_by(|a, b| a.name == b.name);
        targets.extend(auto);
        targets
            .iter()
            .map(|t| {
                let mine: Vec<_> = pools.iter().filter(|p| *p.key.database == *t.name).collect();
                DatabaseRow {
                    name: t.name.clone(),
                    // Several servers (a cluster's standbys): their hosts, as PgBouncer shows
                    // a multi-host entry.
                    host: Some(t.servers.iter().map(|s| s.host.as_str()).collect::<Vec<_>>().join(",")),
                    port: t.server().port,
                    database: t.dbname.clone(),
                    force_user: t.user.clone(),
                    pool_size: t.pool_size.unwrap_or(config.default_pool_size),
                    min_pool_size: t.min_pool_size.unwrap_or(config.min_pool_size),
                    reserve_pool_size: t.reserve_pool.unwrap_or(config.reserve_pool_size),
                    server_lifetime: config.server_lifetime as u32,
                    pool_mode: t.pool_mode.map(mode_name),
                    // As PgBouncer: the mode in use, for an entry with a host list.
                    load_balance_hosts: (t.servers.len() > 1)
                        .then(|| t.load_balance_hosts.unwrap_or(config.load_balance_hosts).name().to_owned()),
                    max_connections: t.max_db_connections.unwrap_or(config.max_db_connections),
                    current_connections: mine.iter().map(|p| p.counts().0).sum(),
                    max_client_connections: t.max_db_client_connections.unwrap_or(config.max_db_client_connections),
                    current_client_connections: mine.iter().map(|p| p.stats.clients.load(Ordering::Relaxed)).sum(),
                    paused: !mine.is_empty() && mine.iter().all(|p| p.is_paused()),
                    disabled: self.shared.pools.connections.is_disabled(&t.name),
                }
            })
            .collect()
    }

    /// The `[users]` entries and every user with a pool, with their limits (their own, else
    /// the global ones) and what their pools hold now.
    async fn users(&self) -> Vec<UserRow> {
        let config = self.shared.config();
        let pools = self.shared.pools.all();
        let mut names: Vec<String> = config.users.keys().cloned().collect();
        names.extend(pools.iter().map(|p| p.key.user.to_string()));
        names.sort_unstable();
        names.dedup();
        names
            .into_iter()
            .map(|name| {
                let own = config.users.get(&name);
                let mine: Vec<_> = pools.iter().filter(|p| *p.key.user == *name).collect();
                UserRow {
                    pool_size: own.and_then(|u| u.pool_size),
                    reserve_pool_size: own.and_then(|u| u.reserve_pool_size),
                    pool_mode: own.and_then(|u| u.pool_mode).map(mode_name),
                    max_user_connections: own
                        .and_then(|u| u.max_user_connections)
                        .unwrap_or(config.max_user_connections),
                    current_connections: mine.iter().map(|p| p.counts().0).sum(),
                    max_user_client_connections: own
                        .and_then(|u| u.max_user_client_connections)
                        .unwrap_or(config.max_user_client_connections),
                    current_client_connections: mine.iter().map(|p| p.stats.clients.load(Ordering::Relaxed)).sum(),
                    name,
                }
            })
            .collect()
    }

    async fn config(&self) -> Vec<ConfigRow> {
        crate::admin::config_rows::config_rows(&self.shared.config())
    }

    async fn lists(&self) -> Lists {
        let pools = self.shared.pools.all();
        let (mut used, mut free) = (0, 0);
        for pool in &pools {
            let (_, active, idle, _) = pool.counts();
            used += active;
            free += idle;
        }
        Lists {
            databases: self.shared.topology().databases().len() as u32,
            users: self.shared.config().users.len() as u32,
            pools: pools.len() as u32,
            used_clients: self.shared.stats.client_connections.load(Ordering::Relaxed),
            used_servers: used,
            free_servers: free,
            ..Default::default()
        }
    }

    async fn state(&self) -> PoolerState {
        let pools = self.shared.pools.all();
        if !pools.is_empty() && pools.iter().all(|p| p.is_paused()) {
            PoolerState::Paused
        } else {
            PoolerState::Active
        }
    }

    async fn pause(&self, db: Option<&str>) -> Result<(), AdminError> {
        let pools = self.pools_of(db)?;
        if !pools.is_empty() && pools.iter().all(|p| p.is_paused()) {
            return Err(AdminError::AlreadyPaused);
        }
        for pool in &pools {
            pool.pause();
        }
        let start = Instant::now();
        loop {
            if pools.iter().any(|p| !p.is_paused()) {
                return Err(AdminError::PauseCancelled);
            }
            let busy: u32 = pools.iter().map(|p| p.busy()).sum();
            if busy == 0 {
                // Drained: close the idle connections so a RESUME reconnects (to a new primary).
                pools.iter().for_each(|p| p.reconnect());
                return Ok(());
            }
            if start.elapsed() >= PAUSE_TIMEOUT {
                return Err(AdminError::PauseTimeout { after: PAUSE_TIMEOUT, busy });
            }
            crate::clock::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn resume(&self, db: Option<&str>) -> Result<(), AdminError> {
        let pools = self.pools_of(db)?;
        if !pools.iter().any(|p| p.is_paused()) {
            return Err(match db {
                Some(db) => AdminError::DatabaseNotPaused(db.to_owned()),
                None => AdminError::NotPaused,
            });
        }
        pools.iter().for_each(|p| p.resume());
        Ok(())
    }

    async fn kill(&self, db: Option<&str>) -> Result<(), AdminError> {
        let pools = self.pools_of_for(db, "kill")?;
        for pool in &pools {
            pool.kill();
        }
        let clients = self.shared.pools.connections.kill_clients(db, crate::connections::KillReason::DatabaseRemoved);
        tracing::info!(database = db.unwrap_or("(all)"), clients, "KILL command issued");
        Ok(())
    }

    async fn kill_client(&self, id: u64) -> Result<(), AdminError> {
        let client = self.shared.pools.connections.client(id).ok_or(AdminError::ClientNotFound)?;
        tracing::info!(id, database = %client.database, user = %client.user, "KILL_CLIENT command issued");
        client.kill(crate::connections::KillReason::AdminForced);
        Ok(())
    }

    async fn reconnect(&self, db: Option<&str>) -> Result<(), AdminError> {
        self.pools_of(db)?.iter().for_each(|p| p.reconnect());
        Ok(())
    }

    async fn wait_close(&self, db: Option<&str>) -> Result<(), AdminError> {
        self.pools_of_for(db, "wait in")?;
        let start = Instant::now();
        loop {
            let marks: HashMap<PoolKey, CloseMark> =
                self.shared.pools.all().iter().map(|p| (p.key.clone(), p.close_mark())).collect();
            let pending = self
                .shared
                .pools
                .connections
                .servers()
                .iter()
                .filter(|s| db.is_none_or(|d| &*s.key.database == d))
                .filter(|s| socket_rows::close_needed(s, &marks))
                .count();
            if pending == 0 {
                return Ok(());
            }
            if start.elapsed() >= PAUSE_TIMEOUT {
                return Err(AdminError::Failed(format!(
                    "WAIT_CLOSE timed out after {PAUSE_TIMEOUT:?} with {pending} server connection(s) still in use \
                     by clients; they close when released"
                )));
            }
            crate::clock::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn disable(&self, db: &str) -> Result<(), AdminError> {
        self.pools_of_for(Some(db), "disable")?;
        self.shared.pools.connections.disable(db);
        Ok(())
    }

    async fn enable(&self, db: &str) -> Result<(), AdminError> {
        self.pools_of_for(Some(db), "enable")?;
        self.shared.pools.connections.enable(db);
        Ok(())
    }

    async fn reload(&self) -> Result<(), AdminError> {
        let Some(path) = self.shared.config_path.clone() else { return Err(AdminError::ReloadFailed) };
        let config: crate::config::PoolerConfig = match consensus::config_file::load(&path) {
            Ok(config) => config,
            Err(e) => {
                tracing::warn!("RELOAD: {e}");
                return Err(AdminError::ReloadFailed);
            }
        };
        self.apply(config).map_err(|e| {
            tracing::warn!("RELOAD: {e}");
            AdminError::ReloadFailed
        })?;
        tracing::info!("RELOAD: configuration re-read from {}", path.display());
        Ok(())
    }

    /// SET key = value: the running configuration with one setting changed, applied as RELOAD
    /// applies a file (checked the same way; pooler.toml itself is not written, so the next
    /// RELOAD or restart goes back to the file, as in PgBouncer).
    async fn set(&self, key: &str, value: &str) -> Result<(), AdminError> {
        match crate::admin::config_rows::changeable(key) {
            None => return Err(AdminError::SetFailed(format!("unknown parameter: {key}"))),
            Some(false) => {
                return Err(AdminError::SetFailed(format!(
                    "{key} cannot be changed while the pooler runs (edit pooler.toml and restart)"
                )))
            }
            Some(true) => {}
        }
        let running = toml::Table::try_from(&*self.shared.config())
            .map_err(|e| AdminError::SetFailed(format!("cannot copy the running configuration: {e}")))?;
        let mut first_error = None;
        for candidate in set_values(value) {
            let mut table = running.clone();
            table.insert(key.to_owned(), candidate);
            let text = toml::to_string(&table)
                .map_err(|e| AdminError::SetFailed(format!("cannot copy the running configuration: {e}")))?;
            match consensus::config_file::parse::<crate::config::PoolerConfig>(std::path::Path::new("SET"), &text) {
                Ok(config) => {
                    self.apply(config).map_err(|e| AdminError::SetFailed(e.to_string()))?;
                    tracing::info!("SET {key} = {value}");
                    return Ok(());
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let why = first_error.map(|e| e.to_string()).unwrap_or_default();
        Err(AdminError::SetFailed(why.strip_prefix("SET: ").unwrap_or(&why).to_owned()))
    }

    async fn shutdown(&self, mode: ShutdownMode) -> Result<(), AdminError> {
        match mode {
            ShutdownMode::Immediate => std::process::exit(0),
            ShutdownMode::WaitForClients => self.shared.shutdown.request(Signal::WaitForClients),
            ShutdownMode::WaitForServers => self.shared.shutdown.request(Signal::Graceful),
        }
        Ok(())
    }
}

/// What SET's value may mean, most literal first: a TOML value as typed (`30`, `2.5`, `true`,
/// `"x"`), a pgbouncer.ini boolean (`0`/`1`, `on`/`off`, `yes`/`no`), then the text as a
/// string (`select 1`, `tlsv1.3`). The first the setting accepts is taken.
fn set_values(value: &str) -> Vec<toml::Value> {
    let mut values = Vec::new();
    if let Some(v) = format!("v = {value}").parse::<toml::Table>().ok().and_then(|mut t| t.remove("v")) {
        values.push(v);
    }
    match value.to_ascii_lowercase().as_str() {
        "1" | "on" | "yes" | "true" => values.push(toml::Value::Boolean(true)),
        "0" | "off" | "no" | "false" => values.push(toml::Value::Boolean(false)),
        _ => {}
    }
    values.push(toml::Value::String(value.to_owned()));
    values
}

impl ConsoleBackend {
    /// A new configuration takes effect: credentials, TLS and the server list for new clients,
    /// pool settings for every pool (connected clients at their next transaction).
    fn apply(&self, config: crate::config::PoolerConfig) -> Result<(), crate::runtime::PoolerError> {
        self.shared.reload(config)?;
        self.shared.retarget_pools();
        Ok(())
    }
}
