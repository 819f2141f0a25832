//! The rows of each SHOW command, with PgBouncer 1.25's exact column names, order and types
//! (src/admin.c and src/stats.c), so pgbouncer_exporter and a DBA's queries work unchanged.
//! PgBouncer 1.18's columns are a subset with the same names. Owns shapes, not values.

use super::resultset::{bytea, int4, int8, numeric, text, Cell, Column, Row};
use std::time::{SystemTime, UNIX_EPOCH};

/// SHOW POOLS: one row per (database, user) pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolRow {
    pub database: String,
    pub user: String,
    pub cl_active: u32,
    pub cl_waiting: u32,
    pub cl_active_cancel_req: u32,
    pub cl_waiting_cancel_req: u32,
    pub sv_active: u32,
    pub sv_active_cancel: u32,
    pub sv_being_canceled: u32,
    pub sv_idle: u32,
    pub sv_used: u32,
    pub sv_tested: u32,
    pub sv_login: u32,
    /// Seconds part of the oldest waiting client's wait.
    pub maxwait: u32,
    /// Microseconds part of it.
    pub maxwait_us: u32,
    pub pool_mode: String,
    pub load_balance_hosts: Option<String>,
}

impl Row for PoolRow {
    const COLUMNS: &'static [Column] = &[
        text("database"),
        text("user"),
        int4("cl_active"),
        int4("cl_waiting"),
        int4("cl_active_cancel_req"),
        int4("cl_waiting_cancel_req"),
        int4("sv_active"),
        int4("sv_active_cancel"),
        int4("sv_being_canceled"),
        int4("sv_idle"),
        int4("sv_used"),
        int4("sv_tested"),
        int4("sv_login"),
        int4("maxwait"),
        int4("maxwait_us"),
        text("pool_mode"),
        text("load_balance_hosts"),
    ];
    fn cells(&self) -> Vec<Cell> {
        vec![
            self.database.as_str().into(),
            self.user.as_str().into(),
            self.cl_active.into(),
            self.cl_waiting.into(),
            self.cl_active_cancel_req.into(),
            self.cl_waiting_cancel_req.into(),
            self.sv_active.into(),
            self.sv_active_cancel.into(),
            self.sv_being_canceled.into(),
            self.sv_idle.into(),
            self.sv_used.into(),
            self.sv_tested.into(),
            self.sv_login.into(),
            self.maxwait.into(),
            self.maxwait_us.into(),
            self.pool_mode.as_str().into(),
            self.load_balance_hosts.clone().into(),
        ]
    }
}

/// The counters SHOW STATS reports, as totals since start or as averages over the last
/// stats_period (counts and bytes per second; times in microseconds per transaction, query
/// or assignment).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsCounters {
    pub server_assignment_count: u64,
    pub xact_count: u64,
    pub query_count: u64,
    pub received: u64,
    pub sent: u64,
    pub xact_time: u64,
    pub query_time: u64,
    pub wait_time: u64,
    pub client_parse_count: u64,
    pub server_parse_count: u64,
    pub bind_count: u64,
    pub client_login_count: u64,
}

impl StatsCounters {
    fn cells(&self) -> [Cell; 12] {
        [
            self.server_assignment_count.into(),
            self.xact_count.into(),
            self.query_count.into(),
            self.received.into(),
            self.sent.into(),
            self.xact_time.into(),
            self.query_time.into(),
            self.wait_time.into(),
            self.client_parse_count.into(),
            self.server_parse_count.into(),
            self.bind_count.into(),
            self.client_login_count.into(),
        ]
    }
}

/// SHOW STATS: one row per database with totals and averages. SHOW STATS_TOTALS,
/// STATS_AVERAGES and TOTALS are derived from these rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsRow {
    pub database: String,
    pub totals: StatsCounters,
    pub averages: StatsCounters,
}

impl Row for StatsRow {
    const COLUMNS: &'static [Column] = &[
        text("database"),
        numeric("total_server_assignment_count"),
        numeric("total_xact_count"),
        numeric("total_query_count"),
        numeric("total_received"),
        numeric("total_sent"),
        numeric("total_xact_time"),
        numeric("total_query_time"),
        numeric("total_wait_time"),
        numeric("total_client_parse_count"),
        numeric("total_server_parse_count"),
        numeric("total_bind_count"),
        numeric("total_client_login_count"),
        numeric("avg_server_assignment_count"),
        numeric("avg_xact_count"),
        numeric("avg_query_count"),
        numeric("avg_recv"),
        numeric("avg_sent"),
        numeric("avg_xact_time"),
        numeric("avg_query_time"),
        numeric("avg_wait_time"),
        numeric("avg_client_parse_count"),
        numeric("avg_server_parse_count"),
        numeric("avg_bind_count"),
        numeric("avg_client_login_count"),
    ];
    fn cells(&self) -> Vec<Cell> {
        let mut cells = vec![self.database.as_str().into()];
        cells.extend(self.totals.cells());
        cells.extend(self.averages.cells());
        cells
    }
}

/// SHOW STATS_TOTALS.
pub struct StatsTotalsRow<'a>(pub &'a StatsRow);

impl Row for StatsTotalsRow<'_> {
    const COLUMNS: &'static [Column] = &[
        text("database"),
        numeric("server_assignment_count"),
        numeric("xact_count"),
        numeric("query_count"),
        numeric("bytes_received"),
        numeric("bytes_sent"),
        numeric("xact_time"),
        numeric("query_time"),
        numeric("wait_time"),
        numeric("client_parse_count"),
        numeric("server_parse_count"),
        numeric("bind_count"),
        numeric("client_login_count"),
    ];
    fn cells(&self) -> Vec<Cell> {
        let mut cells = vec![self.0.database.as_str().into()];
        cells.extend(self.0.totals.cells());
        cells
    }
}

/// SHOW STATS_AVERAGES (PgBouncer's own mix of plain and `avg_` names).
pub struct StatsAveragesRow<'a>(pub &'a StatsRow);

impl Row for StatsAveragesRow<'_> {
    const COLUMNS: &'static [Column] = &[
        text("database"),
        numeric("server_assignment_count"),
        numeric("xact_count"),
        numeric("query_count"),
        numeric("bytes_received"),
        numeric("bytes_sent"),
        numeric("xact_time"),
        numeric("query_time"),
        numeric("wait_time"),
        numeric("avg_client_parse_count"),
        numeric("avg_server_parse_count"),
        numeric("avg_bind_count"),
        numeric("avg_client_login_count"),
    ];
    fn cells(&self) -> Vec<Cell> {
        let mut cells = vec![self.0.database.as_str().into()];
        cells.extend(self.0.averages.cells());
        cells
    }
}

/// SHOW TOTALS: `name`, `value` rows over all databases.
pub struct NameValueRow {
    pub name: String,
    pub value: u64,
}

impl Row for NameValueRow {
    const COLUMNS: &'static [Column] = &[text("name"), numeric("value")];
    fn cells(&self) -> Vec<Cell> {
        vec![self.name.as_str().into(), self.value.into()]
    }
}

/// The averages of every database together: per-second rates add up; per-event times are
/// weighted by their event counts (what SHOW TOTALS' `avg_` rows and log_stats report).
pub fn averages_over(rows: &[StatsRow]) -> StatsCounters {
    totals_and_averages(rows).1
}

/// One line of PgBouncer's log_stats: the last stats_period over every database.
pub fn stats_line(avg: &StatsCounters) -> String {
    format!(
        "stats: {} xacts/s, {} queries/s, {} client parses/s, {} server parses/s, {} binds/s, in {} B/s, out {} B/s, \
         xact {} us, query {} us, wait {} us",
        avg.xact_count,
        avg.query_count,
        avg.client_parse_count,
        avg.server_parse_count,
        avg.bind_count,
        avg.received,
        avg.sent,
        avg.xact_time,
        avg.query_time,
        avg.wait_time
    )
}

/// SHOW TOTALS from per-database rows: totals and per-second averages add up; per-event times
/// are weighted by their event counts.
pub fn totals(rows: &[StatsRow]) -> Vec<NameValueRow> {
    let (total, avg) = totals_and_averages(rows);
    totals_rows(&total, &avg)
}

fn totals_and_averages(rows: &[StatsRow]) -> (StatsCounters, StatsCounters) {
    let mut total = StatsCounters::default();
    let mut avg = StatsCounters::default();
    let (mut xact_w, mut query_w, mut wait_w) = (0u128, 0u128, 0u128);
    for r in rows {
        let t = &r.totals;
        let a = &r.averages;
        for (sum, v) in [
            (&mut total.server_assignment_count, t.server_assignment_count),
            (&mut total.xact_count, t.xact_count),
            (&mut total.query_count, t.query_count),
            (&mut total.received, t.received),
            (&mut total.sent, t.sent),
            (&mut total.xact_time, t.xact_time),
            (&mut total.query_time, t.query_time),
            (&mut total.wait_time, t.wait_time),
            (&mut total.client_parse_count, t.client_parse_count),
            (&mut total.server_parse_count, t.server_parse_count),
            (&mut total.bind_count, t.bind_count),
            (&mut total.client_login_count, t.client_login_count),
            (&mut avg.server_assignment_count, a.server_assignment_count),
            (&mut avg.xact_count, a.xact_count),
            (&mut avg.query_count, a.query_count),
            (&mut avg.received, a.received),
            (&mut avg.sent, a.sent),
            (&mut avg.client_parse_count, a.client_parse_count),
            (&mut avg.server_parse_count, a.server_parse_count),
            (&mut avg.bind_count, a.bind_count),
            (&mut avg.client_login_count, a.client_login_count),
        ] {
            *sum = sum.saturating_add(v);
        }
        xact_w += u128::from(a.xact_time) * u128::from(a.xact_count);
        query_w += u128::from(a.query_time) * u128::from(a.query_count);
        wait_w += u128::from(a.wait_time) * u128::from(a.server_assignment_count);
    }
    let per = |w: u128, n: u64| if n == 0 { 0 } else { u64::try_from(w / u128::from(n)).unwrap_or(u64::MAX) };
    avg.xact_time = per(xact_w, avg.xact_count);
    avg.query_time = per(query_w, avg.query_count);
    avg.wait_time = per(wait_w, avg.server_assignment_count);
    (total, avg)
}

fn totals_rows(total: &StatsCounters, avg: &StatsCounters) -> Vec<NameValueRow> {
    const NAMES: [&str; 12] = [
        "server_assignment_count",
        "xact_count",
        "query_count",
        "client_bytes",
        "server_bytes",
        "xact_time",
        "query_time",
        "wait_time",
        "ps_client_parse_count",
        "ps_server_parse_count",
        "ps_bind_count",
        "client_login_count",
    ];
    let values = |c: &StatsCounters| {
        [
            c.server_assignment_count,
            c.xact_count,
            c.query_count,
            c.received,
            c.sent,
            c.xact_time,
            c.query_time,
            c.wait_time,
            c.client_parse_count,
            c.server_parse_count,
            c.bind_count,
            c.client_login_count,
        ]
    };
    let mut out = Vec::with_capacity(24);
    for (prefix, counters) in [("total_", total), ("avg_", avg)] {
        for (name, value) in NAMES.iter().zip(values(counters)) {
            out.push(NameValueRow { name: format!("{prefix}{name}"), value });
        }
    }
    out
}

/// SHOW SERVERS and SHOW CLIENTS: one row per connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketRow {
    /// `S` for a server connection, `C` for a client.
    pub kind: char,
    pub user: String,
    pub database: String,
    /// `none`, `logical` or `physical`.
    pub replication: String,
    /// Servers: active, idle, used, tested, new, active_cancel, being_canceled.
    /// Clients: active, idle, waiting, active_cancel_req, waiting_cancel_req.
    pub state: String,
    pub addr: String,
    pub port: u16,
    pub local_addr: String,
    pub local_port: u16,
    pub connect_time: SystemTime,
    pub request_time: SystemTime,
    /// Clients: current wait, seconds part; servers: 0.
    pub wait: u32,
    pub wait_us: u32,
    pub close_needed: bool,
    /// An id for this connection in PgBouncer's pointer format, e.g. `0x1f`.
    pub ptr: String,
    /// `ptr` of the paired connection, empty if none.
    pub link: String,
    pub remote_pid: i32,
    /// TLS description (`TLSv1.3/TLS_AES_256_GCM_SHA384`), empty without TLS.
    pub tls: String,
    pub application_name: String,
    pub prepared_statements: u32,
    pub id: u64,
}

impl Row for SocketRow {
    const COLUMNS: &'static [Column] = &[
        text("type"),
        text("user"),
        text("database"),
        text("replication"),
        text("state"),
        text("addr"),
        int4("port"),
        text("local_addr"),
        int4("local_port"),
        text("connect_time"),
        text("request_time"),
        int4("wait"),
        int4("wait_us"),
        int4("close_needed"),
        text("ptr"),
        text("link"),
        int4("remote_pid"),
        text("tls"),
        text("application_name"),
        int4("prepared_statements"),
        int4("id"),
    ];
    fn cells(&self) -> Vec<Cell> {
        vec![
            self.kind.to_string().into(),
            self.user.as_str().into(),
            self.database.as_str().into(),
            self.replication.as_str().into(),
            self.state.as_str().into(),
            self.addr.as_str().into(),
            self.port.into(),
            self.local_addr.as_str().into(),
            self.local_port.into(),
            timestamp(self.connect_time).into(),
            timestamp(self.request_time).into(),
            self.wait.into(),
            self.wait_us.into(),
            self.close_needed.into(),
            self.ptr.as_str().into(),
            self.link.as_str().into(),
            i64::from(self.remote_pid).into(),
            self.tls.as_str().into(),
            self.application_name.as_str().into(),
            self.prepared_statements.into(),
            self.id.into(),
        ]
    }
}

/// PgBouncer's timestamp text: `2026-11-23 10:33:55 UTC`.
pub fn timestamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (y, m, d, h, mi, s) = consensus::cluster::timestamp::Timestamp(i64::try_from(secs).unwrap_or(i64::MAX)).utc();
    format!("{y:04}-{m:02}-{d:02} {h:02}:{mi:02}:{s:02} UTC")
}

/// SHOW DATABASES: one row per configured database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatabaseRow {
    pub name: String,
    pub host: Option<String>,
    pub port: u16,
    pub database: String,
    pub force_user: Option<String>,
    pub pool_size: u32,
    pub min_pool_size: u32,
    pub reserve_pool_size: u32,
    pub server_lifetime: u32,
    pub pool_mode: Option<String>,
    pub load_balance_hosts: Option<String>,
    pub max_connections: u32,
    pub current_connections: u32,
    pub max_client_connections: u32,
    pub current_client_connections: u32,
    pub paused: bool,
    pub disabled: bool,
}

impl Row for DatabaseRow {
    const COLUMNS: &'static [Column] = &[
        text("name"),
        text("host"),
        int4("port"),
        text("database"),
        text("force_user"),
        int4("pool_size"),
        int4("min_pool_size"),
        int4("reserve_pool_size"),
        int4("server_lifetime"),
        text("pool_mode"),
        text("load_balance_hosts"),
        int4("max_connections"),
        int4("current_connections"),
        int4("max_client_connections"),
        int4("current_client_connections"),
        int4("paused"),
        int4("disabled"),
    ];
    fn cells(&self) -> Vec<Cell> {
        vec![
            self.name.as_str().into(),
            self.host.clone().into(),
            self.port.into(),
            self.database.as_str().into(),
            self.force_user.clone().into(),
            self.pool_size.into(),
            self.min_pool_size.into(),
            self.reserve_pool_size.into(),
            self.server_lifetime.into(),
            self.pool_mode.clone().into(),
            self.load_balance_hosts.clone().into(),
            self.max_connections.into(),
            self.current_connections.into(),
            self.max_client_connections.into(),
            self.current_client_connections.into(),
            self.paused.into(),
            self.disabled.into(),
        ]
    }
}

/// SHOW USERS: one row per known user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserRow {
    pub name: String,
    /// The user's own pool_size override, if any.
    pub pool_size: Option<u32>,
    pub reserve_pool_size: Option<u32>,
    pub pool_mode: Option<String>,
    pub max_user_connections: u32,
    pub current_connections: u32,
    pub max_user_client_connections: u32,
    pub current_client_connections: u32,
}

impl Row for UserRow {
    const COLUMNS: &'static [Column] = &[
        text("name"),
        text("pool_size"),
        text("reserve_pool_size"),
        text("pool_mode"),
        int4("max_user_connections"),
        int4("current_connections"),
        int4("max_user_client_connections"),
        int4("current_client_connections"),
    ];
    fn cells(&self) -> Vec<Cell> {
        // PgBouncer prints the overrides as text, empty when not set.
        let opt = |v: Option<u32>| Cell::from(v.map(|v| v.to_string()).unwrap_or_default());
        vec![
            self.name.as_str().into(),
            opt(self.pool_size),
            opt(self.reserve_pool_size),
            self.pool_mode.clone().into(),
            self.max_user_connections.into(),
            self.current_connections.into(),
            self.max_user_client_connections.into(),
            self.current_client_connections.into(),
        ]
    }
}

/// SHOW CONFIG: one row per setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigRow {
    pub key: String,
    pub value: Option<String>,
    pub default: Option<String>,
    /// Whether RELOAD or SET can change it while running.
    pub changeable: bool,
}

impl Row for ConfigRow {
    const COLUMNS: &'static [Column] = &[text("key"), text("value"), text("default"), text("changeable")];
    fn cells(&self) -> Vec<Cell> {
        vec![
            self.key.as_str().into(),
            self.value.clone().into(),
            self.default.clone().into(),
            if self.changeable { "yes" } else { "no" }.into(),
        ]
    }
}

/// SHOW LISTS: the counts PgBouncer reports, one row each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lists {
    pub databases: u32,
    pub users: u32,
    pub peers: u32,
    pub pools: u32,
    pub peer_pools: u32,
    pub free_clients: u32,
    pub used_clients: u32,
    pub login_clients: u32,
    pub free_servers: u32,
    pub used_servers: u32,
    pub dns_names: u32,
    pub dns_zones: u32,
    pub dns_queries: u32,
    pub dns_pending: u32,
}

/// One SHOW LISTS row.
pub struct ListRow {
    pub list: &'static str,
    pub items: u32,
}

impl Row for ListRow {
    const COLUMNS: &'static [Column] = &[text("list"), int4("items")];
    fn cells(&self) -> Vec<Cell> {
        vec![self.list.into(), self.items.into()]
    }
}

impl Lists {
    pub fn rows(&self) -> Vec<ListRow> {
        [
            ("databases", self.databases),
            ("users", self.users),
            ("peers", self.peers),
            ("pools", self.pools),
            ("peer_pools", self.peer_pools),
            ("free_clients", self.free_clients),
            ("used_clients", self.used_clients),
            ("login_clients", self.login_clients),
            ("free_servers", self.free_servers),
            ("used_servers", self.used_servers),
            ("dns_names", self.dns_names),
            ("dns_zones", self.dns_zones),
            ("dns_queries", self.dns_queries),
            ("dns_pending", self.dns_pending),
        ]
        .into_iter()
        .map(|(list, items)| ListRow { list, items })
        .collect()
    }
}

/// SHOW STATE: whether the pooler is running normally, paused or suspended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PoolerState {
    #[default]
    Active,
    Paused,
    Suspended,
}

/// One SHOW STATE row (`key`, `value` yes/no).
pub struct KeyValueRow {
    pub key: &'static str,
    pub value: &'static str,
}

impl Row for KeyValueRow {
    const COLUMNS: &'static [Column] = &[text("key"), text("value")];
    fn cells(&self) -> Vec<Cell> {
        vec![self.key.into(), self.value.into()]
    }
}

impl PoolerState {
    pub fn rows(self) -> Vec<KeyValueRow> {
        let yes = |b: bool| if b { "yes" } else { "no" };
        vec![
            KeyValueRow { key: "active", value: yes(self == PoolerState::Active) },
            KeyValueRow { key: "paused", value: yes(self == PoolerState::Paused) },
            KeyValueRow { key: "suspended", value: yes(self == PoolerState::Suspended) },
        ]
    }
}

/// SHOW MEM: one row per internal cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemRow {
    pub name: String,
    pub size: u32,
    pub used: u32,
    pub free: u32,
    pub memtotal: u32,
}

impl Row for MemRow {
    const COLUMNS: &'static [Column] = &[text("name"), int4("size"), int4("used"), int4("free"), int4("memtotal")];
    fn cells(&self) -> Vec<Cell> {
        vec![self.name.as_str().into(), self.size.into(), self.used.into(), self.free.into(), self.memtotal.into()]
    }
}

/// SHOW VERSION's single row.
pub struct VersionRow(pub String);

impl Row for VersionRow {
    const COLUMNS: &'static [Column] = &[text("version")];
    fn cells(&self) -> Vec<Cell> {
        vec![self.0.as_str().into()]
    }
}

/// Column sets of SHOW commands the pooler answers with no rows: it has no file-descriptor
/// hand-over, no peers and no DNS cache.
pub struct NoRows;

pub const FDS_COLUMNS: &[Column] = &[
    int4("fd"),
    text("task"),
    text("user"),
    text("database"),
    text("addr"),
    int4("port"),
    int8("cancel"),
    int4("link"),
    text("client_encoding"),
    text("std_strings"),
    text("datestyle"),
    text("timezone"),
    text("password"),
    bytea("scram_client_key"),
    bytea("scram_server_key"),
];
pub const PEERS_COLUMNS: &[Column] = &[int4("peer_id"), text("host"), int4("port"), int4("pool_size")];
pub const PEER_POOLS_COLUMNS: &[Column] = &[
    int4("peer_id"),
    int4("cl_active_cancel_req"),
    int4("cl_waiting_cancel_req"),
    int4("sv_active_cancel"),
    int4("sv_login"),
];
pub const DNS_HOSTS_COLUMNS: &[Column] = &[text("hostname"), int8("ttl"), text("addrs")];
pub const DNS_ZONES_COLUMNS: &[Column] = &[text("zonename"), int8("serial"), int4("count")];

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn names(columns: &[Column]) -> Vec<&str> {
        columns.iter().map(|c| c.name).collect()
    }

    #[test]
    fn every_row_has_as_many_cells_as_columns() {
        assert_eq!(PoolRow::default().cells().len(), PoolRow::COLUMNS.len());
        assert_eq!(StatsRow::default().cells().len(), StatsRow::COLUMNS.len());
        assert_eq!(StatsTotalsRow(&StatsRow::default()).cells().len(), 13);
        assert_eq!(StatsAveragesRow(&StatsRow::default()).cells().len(), 13);
        assert_eq!(DatabaseRow::default().cells().len(), DatabaseRow::COLUMNS.len());
        assert_eq!(UserRow::default().cells().len(), UserRow::COLUMNS.len());
        assert_eq!(MemRow::default().cells().len(), MemRow::COLUMNS.len());
        let socket = SocketRow {
            kind: 'C',
            user: "u".into(),
            database: "d".into(),
            replication: "none".into(),
            state: "idle".into(),
            addr: "127.0.0.1".into(),
            port: 1,
            local_addr: "127.0.0.1".into(),
            local_port: 6432,
            connect_time: UNIX_EPOCH,
            request_time: UNIX_EPOCH,
            wait: 0,
            wait_us: 0,
            close_needed: false,
            ptr: "0x1".into(),
            link: String::new(),
            remote_pid: 0,
            tls: String::new(),
            application_name: String::new(),
            prepared_statements: 0,
            id: 1,
        };
        assert_eq!(socket.cells().len(), SocketRow::COLUMNS.len());
    }

    #[test]
    fn pools_and_servers_columns_are_pgbouncers_in_order() {
        assert_eq!(
            names(PoolRow::COLUMNS),
            "database user cl_active cl_waiting cl_active_cancel_req cl_waiting_cancel_req sv_active sv_active_cancel sv_being_canceled sv_idle sv_used sv_tested sv_login maxwait maxwait_us pool_mode load_balance_hosts"
                .split(' ')
                .collect::<Vec<_>>()
        );
        assert_eq!(
            names(SocketRow::COLUMNS),
            "type user database replication state addr port local_addr local_port connect_time request_time wait wait_us close_needed ptr link remote_pid tls application_name prepared_statements id"
                .split(' ')
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn timestamps_look_like_pgbouncers() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        assert_eq!(timestamp(UNIX_EPOCH + Duration::from_secs(1_795_430_035)), "2026-11-23 10:33:55 UTC");
        assert_eq!(timestamp(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29 00:00:00 UTC");
    }

    #[test]
    fn the_stats_log_line_reads_like_pgbouncer_s() {
        let row = |xacts, time| StatsRow {
            database: "d".into(),
            totals: StatsCounters::default(),
            averages: StatsCounters {
                xact_count: xacts,
                query_count: xacts * 2,
                xact_time: time,
                ..Default::default()
            },
        };
        let avg = averages_over(&[row(10, 100), row(30, 200)]);
        assert_eq!(
            stats_line(&avg),
            "stats: 40 xacts/s, 80 queries/s, 0 client parses/s, 0 server parses/s, 0 binds/s, in 0 B/s, out 0 B/s, \
             xact 175 us, query 0 us, wait 0 us"
        );
    }

    #[test]
    fn totals_add_counts_and_weight_times() {
        let row = |xacts, time| StatsRow {
            database: "d".into(),
            totals: StatsCounters { xact_count: xacts, ..Default::default() },
            averages: StatsCounters { xact_count: xacts, xact_time: time, ..Default::default() },
        };
        let t = totals(&[row(10, 100), row(30, 200)]);
        let get = |n: &str| t.iter().find(|r| r.name == n).map(|r| r.value);
        assert_eq!(t.len(), 24);
        assert_eq!(get("total_xact_count"), Some(40));
        assert_eq!(get("avg_xact_count"), Some(40));
        assert_eq!(get("avg_xact_time"), Some(175));
        assert_eq!(get("total_client_bytes"), Some(0));
    }
}
