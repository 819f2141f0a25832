//! The admin console's commands have their effect on real traffic: PAUSE holds new queries and
//! RESUME releases them, RELOAD applies a changed pool size without dropping clients, SHOW
//! POOLS/CLIENTS/SERVERS/STATS/... report what the pooler holds and did, KILL and KILL_CLIENT
//! drop clients, RECONNECT + WAIT_CLOSE replace server connections, DISABLE/ENABLE gate new
//! clients, SHUTDOWN WAIT_FOR_CLIENTS waits for clients to leave.

use harness::pooler::{show, PoolerProcess};
use harness::{PgInstance, PgOptions};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio_postgres::SimpleQueryMessage;

async fn setup(settings: &str) -> (PgInstance, PoolerProcess) {
    let mut pg = PgInstance::init("admin", PgOptions::default()).await.unwrap();
    pg.start().await.unwrap();
    let settings = format!("admin_users = [\"postgres\"]\n{settings}");
    let pooler = PoolerProcess::start(&pg, &settings).await.unwrap();
    (pg, pooler)
}

async fn admin_error(admin: &tokio_postgres::Client, command: &str) -> String {
    let err = admin.simple_query(command).await.expect_err(command);
    err.as_db_error().map(|e| e.message().to_owned()).unwrap_or_else(|| err.to_string())
}

/// The error a client's next query gets once the pooler has dropped it.
async fn dropped(client: &tokio_postgres::Client) -> String {
    let err = tokio::time::timeout(Duration::from_secs(5), client.simple_query("select 1"))
        .await
        .expect("a dropped client's query must fail at once")
        .expect_err("the client was dropped");
    format!("{err:?}").to_lowercase()
}

/// The pooler's server connections; u32::MAX if PostgreSQL could not be asked (a check that
/// waits for a count asks again).
async fn backends(pg: &PgInstance) -> u32 {
    pg.client_backends().await.unwrap_or(u32::MAX)
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// With default_pool_size = 1: client `a` holds the one server connection in an open
/// transaction, and a second client's query waits for it (checked after `settle`). Returns
/// `a` and the waiting client's task, which ends with that client once its query ran.
async fn one_client_waiting(
    pooler: &PoolerProcess,
    settle: Duration,
) -> (tokio_postgres::Client, tokio::task::JoinHandle<tokio_postgres::Client>) {
    let a = pooler.connect().await.unwrap();
    let b = pooler.connect().await.unwrap();
    a.batch_execute("begin; select 1").await.unwrap();
    // b waits: the single server connection is in a's transaction.
    let waiting = tokio::spawn(async move {
        b.simple_query("select 2").await.unwrap();
        b
    });
    tokio::time::sleep(settle).await;
    assert!(!waiting.is_finished(), "pool_size 1 should make the second client wait");
    (a, waiting)
}

async fn console(pooler: &PoolerProcess) -> tokio_postgres::Client {
    pooler.connect_dsn(&pooler.dsn("pgbouncer")).await.unwrap()
}

fn rows(messages: &[SimpleQueryMessage]) -> Vec<Vec<String>> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).unwrap_or("").to_owned()).collect()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_new_queries_and_resume_releases_them() {
    let (_pg, pooler) = setup("pool_mode = \"transaction\"\ndefault_pool_size = 2").await;
    let admin = console(&pooler).await;
    let client = pooler.connect().await.unwrap();
    client.simple_query("select 1").await.unwrap();
    admin.simple_query("PAUSE").await.unwrap();
    let state = rows(&admin.simple_query("SHOW STATE").await.unwrap());
    assert!(state.iter().any(|r| r[0] == "paused" && r[1] == "yes"), "{state:?}");
    let held = tokio::spawn(async move {
        let start = Instant::now();
        client.simple_query("select 2").await.unwrap();
        start.elapsed()
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!held.is_finished(), "a query ran during PAUSE");
    admin.simple_query("RESUME").await.unwrap();
    let waited = tokio::time::timeout(Duration::from_secs(5), held).await.unwrap().unwrap();
    assert!(waited >= Duration::from_millis(1400), "held only {waited:?}");
    // A second RESUME is refused the way PgBouncer refuses it.
    let err = admin.simple_query("RESUME").await.expect_err("not paused any more");
    assert!(format!("{err:?}").contains("not paused"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_a_changed_pool_size_without_dropping_clients() {
    let (pg, mut pooler) = setup("pool_mode = \"transaction\"\ndefault_pool_size = 1\nquery_wait_timeout = 30").await;
    let admin = console(&pooler).await;
    let (a, waiting) = one_client_waiting(&pooler, Duration::from_millis(500)).await;
    let path = pooler.process().config_path().clone();
    let text = std::fs::read_to_string(&path).unwrap().replace("default_pool_size = 1", "default_pool_size = 3");
    std::fs::write(&path, text).unwrap();
    admin.simple_query("RELOAD").await.unwrap();
    let b =
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("RELOAD let b open a connection").unwrap();
    a.batch_execute("commit").await.unwrap();
    b.simple_query("select 3").await.unwrap();
    let pools = rows(&admin.simple_query("SHOW POOLS").await.unwrap());
    let row = pools.iter().find(|r| r[0] == "postgres").unwrap_or_else(|| panic!("{pools:?}"));
    let (active, idle): (u32, u32) = (row[6].parse().unwrap(), row[9].parse().unwrap());
    assert_eq!(active + idle, 2, "two server connections after RELOAD: {row:?}");
    assert_eq!(backends(&pg).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_clients_and_servers_list_live_connections_and_kill_client_drops_exactly_one() {
    let (pg, pooler) = setup("pool_mode = \"session\"").await;
    let admin = console(&pooler).await;
    let a = pooler.connect_dsn(&format!("{} application_name=app_a", pooler.dsn("postgres"))).await.unwrap();
    let b = pooler.connect_dsn(&format!("{} application_name=app_b", pooler.dsn("postgres"))).await.unwrap();
    let pid_of = |messages: Vec<SimpleQueryMessage>| rows(&messages)[0][0].clone();
    let a_pid = pid_of(a.simple_query("select pg_backend_pid()").await.unwrap());
    b.simple_query("select 1").await.unwrap();

    let clients = show(&admin, "CLIENTS").await;
    let client = |app: &str| clients.iter().find(|c| c["application_name"] == app).cloned();
    let row_a = client("app_a").unwrap_or_else(|| panic!("app_a not in SHOW CLIENTS: {clients:?}"));
    assert_eq!((row_a["type"].as_str(), row_a["user"].as_str()), ("C", "postgres"));
    assert_eq!((row_a["database"].as_str(), row_a["state"].as_str()), ("postgres", "active"));
    assert_eq!((row_a["addr"].as_str(), row_a["local_port"].clone()), ("127.0.0.1", pooler.port().to_string()));
    assert!(row_a["port"].parse::<u16>().unwrap() > 0 && row_a["connect_time"].ends_with(" UTC"), "{row_a:?}");
    assert!(client("app_b").is_some(), "{clients:?}");
    assert!(clients.iter().any(|c| c["database"] == "pgbouncer"), "the console itself is a client: {clients:?}");

    // Session mode: a holds its server connection, linked both ways, with the backend's pid.
    let servers = show(&admin, "SERVERS").await;
    let server_a = servers.iter().find(|s| s["remote_pid"] == a_pid).unwrap_or_else(|| panic!("{servers:?}"));
    assert_eq!((server_a["type"].as_str(), server_a["state"].as_str()), ("S", "active"));
    assert_eq!((server_a["database"].as_str(), server_a["port"].clone()), ("postgres", pg.port().to_string()));
    assert_eq!(server_a["link"], row_a["ptr"], "server links to its client");
    assert_eq!(row_a["link"], server_a["ptr"], "client links to its server");
    assert_eq!(server_a["close_needed"], "0");

    // KILL_CLIENT drops a, and only a; its server connection is closed, not pooled.
    admin.simple_query(&format!("KILL_CLIENT {}", row_a["id"])).await.unwrap();
    let err = dropped(&a).await;
    assert!(err.contains("admin forced disconnect") || err.contains("closed"), "{err}");
    b.simple_query("select 2").await.unwrap();
    eventually("a's server backend to end", || async {
        pg.sql_value(&format!("select count(*) from pg_stat_activity where pid = {a_pid}")).await.unwrap().as_deref()
            == Some("0")
    })
    .await;
    let clients = show(&admin, "CLIENTS").await;
    assert!(clients.iter().all(|c| c["application_name"] != "app_a"), "{clients:?}");
    assert!(clients.iter().any(|c| c["application_name"] == "app_b"), "{clients:?}");
    assert_eq!(admin_error(&admin, "KILL_CLIENT 999999999").await, "client not found");

    // DISABLE refuses new clients of the database (connected ones keep working); ENABLE admits them.
    admin.simple_query("DISABLE postgres").await.unwrap();
    let databases = show(&admin, "DATABASES").await;
    assert!(databases.iter().any(|d| d["name"] == "postgres" && d["disabled"] == "1"), "{databases:?}");
    let refused = pooler.connect().await.expect_err("DISABLE refuses new clients");
    assert!(format!("{refused:?}").contains("database does not allow connections: postgres"), "{refused:?}");
    b.simple_query("select 3").await.unwrap();
    admin.simple_query("ENABLE postgres").await.unwrap();
    pooler.connect().await.expect("ENABLE admits new clients").simple_query("select 4").await.unwrap();
    assert_eq!(admin_error(&admin, "DISABLE nosuchdb").await, "no such database: nosuchdb");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_drops_a_databases_clients_and_servers_and_new_clients_wait_for_resume() {
    let (pg, pooler) = setup("pool_mode = \"transaction\"\ndefault_pool_size = 4").await;
    let admin = console(&pooler).await;
    let idle = pooler.connect().await.unwrap();
    idle.simple_query("select 1").await.unwrap();
    let in_transaction = pooler.connect().await.unwrap();
    in_transaction.batch_execute("begin; select 1").await.unwrap();
    let late = pooler.connect().await.unwrap();
    admin.simple_query("KILL postgres").await.unwrap();
    for (name, client) in [("idle", &idle), ("in_transaction", &in_transaction)] {
        let err = tokio::time::timeout(Duration::from_secs(5), client.simple_query("select 1"))
            .await
            .unwrap_or_else(|_| panic!("{name} was not dropped; log:\n{}", pooler.log()))
            .expect_err("dropped");
        let err = format!("{err:?}").to_lowercase();
        assert!(err.contains("database removed") || err.contains("closed"), "{err}");
    }
    eventually("every server connection of the killed database to close", || async { backends(&pg).await == 0 }).await;
    let databases = show(&admin, "DATABASES").await;
    assert!(databases.iter().any(|d| d["name"] == "postgres" && d["paused"] == "1"), "{databases:?}");
    // Connected before the KILL but logged in: it was dropped too.
    let err = dropped(&late).await;
    assert!(err.contains("database removed") || err.contains("closed"), "{err}");
    // A new client logs in and its query waits until RESUME.
    let new = pooler.connect().await.unwrap();
    let held = tokio::spawn(async move { new.simple_query("select 5").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!held.is_finished(), "a query ran on a killed database before RESUME");
    admin.simple_query("RESUME postgres").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), held).await.expect("RESUME released the query").unwrap().unwrap();
    assert_eq!(admin_error(&admin, "KILL pgbouncer").await, "cannot kill admin db: pgbouncer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_marks_servers_close_needed_and_wait_close_returns_once_they_are_gone() {
    let (pg, pooler) = setup("pool_mode = \"transaction\"\ndefault_pool_size = 2").await;
    let admin = console(&pooler).await;
    let waiter = console(&pooler).await;
    let client = pooler.connect().await.unwrap();
    client.batch_execute("begin").await.unwrap();
    let old_pid = rows(&client.simple_query("select pg_backend_pid()").await.unwrap())[0][0].clone();
    admin.simple_query("RECONNECT postgres").await.unwrap();
    let servers = show(&admin, "SERVERS").await;
    let old = servers.iter().find(|s| s["remote_pid"] == old_pid).unwrap_or_else(|| panic!("{servers:?}"));
    assert_eq!((old["close_needed"].as_str(), old["state"].as_str()), ("1", "active"), "{old:?}");
    let wait_close = tokio::spawn(async move {
        let start = Instant::now();
        waiter.simple_query("WAIT_CLOSE postgres").await.map(|_| start.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!wait_close.is_finished(), "WAIT_CLOSE returned while an old server connection was in use");
    client.batch_execute("commit").await.unwrap();
    let waited = tokio::time::timeout(Duration::from_secs(5), wait_close).await.expect("WAIT_CLOSE returned").unwrap();
    assert!(waited.unwrap() >= Duration::from_millis(600));
    let gone = pg.sql_value(&format!("select count(*) from pg_stat_activity where pid = {old_pid}")).await.unwrap();
    assert_eq!(gone.as_deref(), Some("0"), "the old server connection was closed");
    let new_pid = rows(&client.simple_query("select pg_backend_pid()").await.unwrap())[0][0].clone();
    assert_ne!(new_pid, old_pid);
    assert!(show(&admin, "SERVERS").await.iter().all(|s| s["close_needed"] == "0"));
    // Nothing to wait for: returns at once.
    admin.simple_query("WAIT_CLOSE").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_commands_report_traffic_settings_and_state() {
    let settings = "pool_mode = \"transaction\"\ndefault_pool_size = 3\n\n[users.postgres]\npool_mode = \"transaction\"\nmax_user_connections = 7";
    let (_pg, pooler) = setup(settings).await;
    let admin = console(&pooler).await;
    let client = pooler.connect().await.unwrap();
    for i in 0..20 {
        client.simple_query(&format!("select {i}")).await.unwrap();
    }
    // One transaction of three queries.
    for query in ["BEGIN", "select 1", "COMMIT"] {
        client.simple_query(query).await.unwrap();
    }
    let num =
        |row: &HashMap<String, String>, key: &str| row[key].parse::<u64>().unwrap_or_else(|_| panic!("{key}: {row:?}"));
    let totals = show(&admin, "STATS_TOTALS").await;
    let t = totals.iter().find(|r| r["database"] == "postgres").unwrap_or_else(|| panic!("{totals:?}"));
    assert!(num(t, "xact_count") >= 21 && num(t, "bytes_received") > 0 && num(t, "bytes_sent") > 0, "{t:?}");
    assert!(num(t, "query_count") >= num(t, "xact_count") + 2, "a query per answered Query: {t:?}");
    assert!(num(t, "query_time") > 0 && num(t, "query_time") <= num(t, "xact_time"), "{t:?}");
    // One more login to the pool is counted once (console logins are not a pool's).
    let logins = num(t, "client_login_count");
    assert!(logins >= 1, "{t:?}");
    let _another = pooler.connect().await.unwrap();
    let totals = show(&admin, "STATS_TOTALS").await;
    let t2 = totals.iter().find(|r| r["database"] == "postgres").unwrap_or_else(|| panic!("{totals:?}"));
    assert_eq!(num(t2, "client_login_count"), logins + 1, "{t2:?}");
    let stats = show(&admin, "STATS").await;
    let s = stats.iter().find(|r| r["database"] == "postgres").unwrap_or_else(|| panic!("{stats:?}"));
    assert_eq!(num(s, "total_xact_count"), num(t, "xact_count"));
    let averages = show(&admin, "STATS_AVERAGES").await;
    assert!(averages.iter().any(|r| r["database"] == "postgres" && r.contains_key("xact_count")), "{averages:?}");
    let users = show(&admin, "USERS").await;
    let u = users.iter().find(|r| r["name"] == "postgres").unwrap_or_else(|| panic!("{users:?}"));
    assert_eq!((u["pool_mode"].as_str(), u["max_user_connections"].as_str()), ("transaction", "7"));
    let config = show(&admin, "CONFIG").await;
    let pool_size = config.iter().find(|r| r["key"] == "default_pool_size").unwrap_or_else(|| panic!("{config:?}"));
    assert_eq!((pool_size["value"].as_str(), pool_size["default"].as_str()), ("3", "20"));
    let lists = show(&admin, "LISTS").await;
    let items = |name: &str| lists.iter().find(|r| r["list"] == name).map(|r| num(r, "items"));
    assert_eq!(items("databases"), Some(1));
    assert!(items("pools") >= Some(1) && items("used_clients") >= Some(2), "{lists:?}");
    let databases = show(&admin, "DATABASES").await;
    let d = databases.iter().find(|r| r["name"] == "postgres").unwrap_or_else(|| panic!("{databases:?}"));
    assert_eq!((d["pool_size"].as_str(), d["paused"].as_str(), d["disabled"].as_str()), ("3", "0", "0"));
    let version = show(&admin, "VERSION").await;
    assert!(version[0]["version"].starts_with("PgBouncer 1.25"), "{version:?}");
    let state = show(&admin, "STATE").await;
    assert!(state.iter().any(|r| r["key"] == "active" && r["value"] == "yes"), "{state:?}");
}

/// A RELOAD reaches clients that are already connected, at their next transaction boundary
/// (PgBouncer's timeouts are global and apply at once): idle_transaction_timeout set by RELOAD
/// ends a connected client's transaction left idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_reaches_connected_clients_at_their_next_transaction() {
    let (_pg, mut pooler) = setup("pool_mode = \"transaction\"").await;
    let admin = console(&pooler).await;
    let client = pooler.connect().await.unwrap();
    client.simple_query("select 1").await.unwrap();
    let path = pooler.process().config_path().clone();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("idle_transaction_timeout = 1\n{text}")).unwrap();
    admin.simple_query("RELOAD").await.unwrap();
    client.simple_query("begin").await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let err = client.simple_query("select 1").await.expect_err("idle in transaction past the reloaded timeout");
    // The FATAL may reach the idle connection before the query does: then it is closed.
    let message = err.as_db_error().map(|e| e.message().to_owned());
    assert!(message.as_deref() == Some("idle transaction timeout") || client.is_closed(), "{err:?}");
}

/// A session-mode client keeps its mode after a RELOAD to transaction mode: its session
/// settings are reset (DISCARD ALL) when it leaves, not handed to the next client, and its
/// transactions are still counted as they end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_mode_client_keeps_its_mode_across_a_reload() {
    let (_pg, mut pooler) = setup("pool_mode = \"session\"\ndefault_pool_size = 1").await;
    let admin = console(&pooler).await;
    let held = pooler.connect().await.unwrap();
    held.simple_query("set work_mem = '7MB'").await.unwrap();
    let path = pooler.process().config_path().clone();
    let text =
        std::fs::read_to_string(&path).unwrap().replace("pool_mode = \"session\"", "pool_mode = \"transaction\"");
    std::fs::write(&path, text).unwrap();
    admin.simple_query("RELOAD").await.unwrap();
    let xacts = |rows: Vec<HashMap<String, String>>| {
        let t = rows.into_iter().find(|r| r["database"] == "postgres").expect("a postgres row");
        t["xact_count"].parse::<u64>().unwrap_or_else(|_| panic!("{t:?}"))
    };
    let before = xacts(show(&admin, "STATS_TOTALS").await);
    held.simple_query("select 1").await.unwrap();
    assert_eq!(xacts(show(&admin, "STATS_TOTALS").await) - before, 1, "the session's transaction is counted");
    drop(held);
    // The only server connection, after the session that changed work_mem on it.
    let next = pooler.connect().await.unwrap();
    let rows = next.simple_query("show work_mem").await.unwrap();
    let work_mem = rows.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(work_mem.as_deref(), Some("4MB"), "the session's setting leaked to the next client");
}

/// In session mode each transaction is counted when it ends, as in PgBouncer: SHOW STATS moves
/// while a long-lived session works, not only when it disconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_transactions_are_counted_while_the_session_lasts() {
    let (_pg, pooler) = setup("pool_mode = \"session\"").await;
    let admin = console(&pooler).await;
    let client = pooler.connect().await.unwrap();
    // What came before (the harness's readiness probe was a session of its own).
    let totals = |rows: Vec<HashMap<String, String>>| {
        let t = rows.into_iter().find(|r| r["database"] == "postgres").expect("a postgres row");
        let n = |key: &str| t[key].parse::<u64>().unwrap_or_else(|_| panic!("{key}: {t:?}"));
        (n("xact_count"), n("query_count"), n("xact_time"), n("bytes_received"), n("server_assignment_count"))
    };
    let before = totals(show(&admin, "STATS_TOTALS").await);
    for i in 0..5 {
        client.simple_query(&format!("select {i}")).await.unwrap();
    }
    client.batch_execute("begin; select pg_sleep(0.05); commit").await.unwrap();
    let after = totals(show(&admin, "STATS_TOTALS").await);
    // Five single-query transactions and one of three statements in one simple Query.
    assert_eq!(after.0 - before.0, 6, "xact_count {before:?} -> {after:?}");
    assert_eq!(after.1 - before.1, 6, "query_count {before:?} -> {after:?}");
    assert!(after.2 - before.2 >= 50_000, "xact_time with a 50 ms sleep: {before:?} -> {after:?}");
    assert!(after.3 > before.3, "bytes_received {before:?} -> {after:?}");
    // One server connection assigned to the session, at its first query.
    assert_eq!(after.4 - before.4, 1, "server_assignment_count {before:?} -> {after:?}");
    drop(client);
}

/// A server connection running server_check_query before it is handed out shows as `tested`
/// in SHOW SERVERS (and in SHOW POOLS' sv_tested), then as active with its client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_connection_being_checked_shows_as_tested() {
    let settings = "pool_mode = \"transaction\"\nserver_check_delay = 0\nserver_check_query = \"select pg_sleep(1)\"";
    let (_pg, pooler) = setup(settings).await;
    let admin = console(&pooler).await;
    let client = pooler.connect().await.unwrap();
    client.simple_query("select 1").await.unwrap();
    // The next checkout checks the idle connection first (for a second).
    let query = tokio::spawn(async move { client.simple_query("select 2").await.map(|_| ()) });
    let started = Instant::now();
    let tested = loop {
        let servers = show(&admin, "SERVERS").await;
        if let Some(row) = servers.iter().find(|r| r["state"] == "tested") {
            break row.clone();
        }
        assert!(started.elapsed() < Duration::from_millis(900), "no server shown as tested: {servers:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(tested["link"], "", "a connection under test has no client yet: {tested:?}");
    let pools = show(&admin, "POOLS").await;
    // Tested, not active: the two states do not overlap, as in PgBouncer.
    let pool = pools.iter().find(|p| p["database"] == "postgres").unwrap_or_else(|| panic!("{pools:?}"));
    assert_eq!((pool["sv_tested"].as_str(), pool["sv_active"].as_str()), ("1", "0"), "{pools:?}");
    query.await.unwrap().unwrap();
}

/// A connection idle past server_check_delay waits for server_check_query before its next
/// client: PgBouncer shows it as `used` (SHOW SERVERS) and counts it in `sv_used`, not
/// `sv_idle` (SHOW POOLS); once a client has had it, it is `idle` again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_connection_idle_past_server_check_delay_shows_as_used() {
    let settings = "pool_mode = \"transaction\"\nserver_check_delay = 1";
    let (_pg, pooler) = setup(settings).await;
    let admin = console(&pooler).await;
    let client = pooler.connect().await.unwrap();
    let pool_counts = |pools: Vec<HashMap<String, String>>| {
        let pool = pools.iter().find(|p| p["database"] == "postgres").unwrap_or_else(|| panic!("{pools:?}"));
        (pool["sv_idle"].clone(), pool["sv_used"].clone())
    };
    let server_states = |servers: Vec<HashMap<String, String>>| {
        servers.iter().filter(|r| r["database"] == "postgres").map(|r| r["state"].clone()).collect::<Vec<_>>()
    };
    client.simple_query("select 1").await.unwrap();
    let released = Instant::now();
    let (pools, servers) = (show(&admin, "POOLS").await, show(&admin, "SERVERS").await);
    if released.elapsed() < Duration::from_millis(900) {
        assert_eq!(pool_counts(pools), ("1".into(), "0".into()));
        assert_eq!(server_states(servers), ["idle"]);
    }
    tokio::time::sleep(Duration::from_millis(1100).saturating_sub(released.elapsed())).await;
    assert_eq!(pool_counts(show(&admin, "POOLS").await), ("0".into(), "1".into()));
    assert_eq!(server_states(show(&admin, "SERVERS").await), ["used"]);
    // The next client's checkout runs the check query; released again, it is idle.
    client.simple_query("select 2").await.unwrap();
    let released = Instant::now();
    let (pools, servers) = (show(&admin, "POOLS").await, show(&admin, "SERVERS").await);
    if released.elapsed() < Duration::from_millis(900) {
        assert_eq!(pool_counts(pools), ("1".into(), "0".into()));
        assert_eq!(server_states(servers), ["idle"]);
    }
}

/// SHOW STATS_AVERAGES is the last complete stats_period's: transactions and bytes per second,
/// microseconds per transaction, as PgBouncer reports them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_averages_cover_the_last_stats_period() {
    let (_pg, pooler) = setup("pool_mode = \"transaction\"\nstats_period = 1").await;
    let admin = console(&pooler).await;
    let client = pooler.connect().await.unwrap();
    // Steady load for longer than two periods, so the last complete period is all load.
    let started = Instant::now();
    let mut done = 0u64;
    while started.elapsed() < Duration::from_millis(2500) {
        client.simple_query("select pg_sleep(0.002)").await.unwrap();
        done += 1;
    }
    let rate = done as f64 / started.elapsed().as_secs_f64();
    let averages = show(&admin, "STATS_AVERAGES").await;
    let a = averages.iter().find(|r| r["database"] == "postgres").unwrap_or_else(|| panic!("{averages:?}"));
    let num = |key: &str| a[key].parse::<f64>().unwrap_or_else(|_| panic!("{key}: {a:?}"));
    let xacts = num("xact_count");
    assert!(xacts >= rate * 0.4 && xacts <= rate * 2.5, "avg xact_count {xacts}, measured {rate:.0}/s: {a:?}");
    // Each transaction sleeps 2 ms on the server.
    assert!(num("xact_time") >= 2_000.0, "avg xact_time: {a:?}");
    assert!(num("bytes_received") > 0.0 && num("bytes_sent") > 0.0, "{a:?}");
    // One query per transaction here.
    assert!((num("query_count") - xacts).abs() <= xacts * 0.2 + 1.0, "avg query_count: {a:?}");
    // Each query takes at least its 2 ms on the server, and no longer than its transaction.
    assert!(num("query_time") >= 2_000.0 && num("query_time") <= num("xact_time"), "avg query_time: {a:?}");
    let totals = show(&admin, "STATS_TOTALS").await;
    let t = totals.iter().find(|r| r["database"] == "postgres").unwrap_or_else(|| panic!("{totals:?}"));
    let total = |key: &str| t[key].parse::<u64>().unwrap_or_else(|_| panic!("{key}: {t:?}"));
    assert!(total("query_time") >= done * 2_000, "total query_time for {done} queries of 2 ms: {t:?}");
    assert!(total("query_time") <= total("xact_time"), "{t:?}");
    let stats = show(&admin, "STATS").await;
    let s = stats.iter().find(|r| r["database"] == "postgres").unwrap_or_else(|| panic!("{stats:?}"));
    assert!(s["avg_xact_count"].parse::<u64>().unwrap_or(0) > 0, "{s:?}");
}

/// PgBouncer 1.21's prepared-statement figures: SHOW STATS counts the clients' named Parses,
/// the Parses the pooler sent to servers and the Binds; SHOW CLIENTS and SHOW SERVERS say how
/// many statements each client and server connection has prepared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statement_counts_show_in_stats_clients_and_servers() {
    // One server connection: the second client finds the statement already prepared there.
    let (_pg, pooler) = setup("pool_mode = \"transaction\"\ndefault_pool_size = 1").await;
    let admin = console(&pooler).await;
    let a = pooler.connect_dsn(&format!("{} application_name=app_a", pooler.dsn("postgres"))).await.unwrap();
    let b = pooler.connect_dsn(&format!("{} application_name=app_b", pooler.dsn("postgres"))).await.unwrap();
    let by_a = a.prepare("select $1::int4 + 1").await.unwrap();
    let other = a.prepare("select $1::int4 + 2").await.unwrap();
    for i in 0..3 {
        let row = a.query_one(&by_a, &[&i]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i + 1);
    }
    let by_b = b.prepare("select $1::int4 + 1").await.unwrap();
    for i in 0..2 {
        let row = b.query_one(&by_b, &[&i]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i + 1);
    }
    let stats = show(&admin, "STATS").await;
    let s = stats.iter().find(|r| r["database"] == "postgres").unwrap_or_else(|| panic!("{stats:?}"));
    let count = |key: &str| s[key].parse::<u64>().unwrap_or_else(|_| panic!("{key}: {s:?}"));
    assert_eq!(count("total_client_parse_count"), 3, "{s:?}");
    assert_eq!(count("total_server_parse_count"), 2, "the second client's Parse is answered by the pooler: {s:?}");
    assert_eq!(count("total_bind_count"), 5, "{s:?}");
    let clients = show(&admin, "CLIENTS").await;
    let prepared = |app: &str| {
        let row = clients.iter().find(|c| c["application_name"] == app).unwrap_or_else(|| panic!("{clients:?}"));
        row["prepared_statements"].clone()
    };
    assert_eq!((prepared("app_a").as_str(), prepared("app_b").as_str()), ("2", "1"), "{clients:?}");
    let servers = show(&admin, "SERVERS").await;
    assert_eq!(servers.len(), 1, "{servers:?}");
    assert_eq!(servers[0]["prepared_statements"], "2", "{servers:?}");
    drop(other);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_wait_for_clients_refuses_new_clients_and_exits_once_connected_ones_leave() {
    let (_pg, mut pooler) = setup("pool_mode = \"transaction\"").await;
    let admin = console(&pooler).await;
    let client = pooler.connect().await.unwrap();
    client.simple_query("select 1").await.unwrap();
    admin.simple_query("SHUTDOWN WAIT_FOR_CLIENTS").await.unwrap();
    let refused = pooler.connect().await.expect_err("new clients are refused");
    assert!(format!("{refused:?}").contains("shutting down"), "{refused:?}");
    // The connected client keeps working while the pooler waits for it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    client.simple_query("select 2").await.expect("a connected client keeps working");
    assert!(pooler.process().process().is_running(), "exited while a client was connected");
    drop(client);
    let status =
        pooler.process().process().wait_exit(Duration::from_secs(5)).await.expect("exited after the client left");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_startup_parameters_are_refused_unless_in_ignore_startup_parameters() {
    let (_pg, pooler) = setup("ignore_startup_parameters = [\"extra_float_digits\"]").await;
    // tokio-postgres cannot send arbitrary startup parameters: speak the startup packet directly.
    for (param, refused) in [("extra_float_digits", false), ("search_path", true)] {
        let answer = raw_startup(pooler.port(), &[("user", "postgres"), ("database", "postgres"), (param, "2")]).await;
        let text = String::from_utf8_lossy(&answer).to_string();
        if refused {
            assert!(text.contains(&format!("unsupported startup parameter: {param}")), "{text}");
        } else {
            assert!(answer.first() == Some(&b'R') && !text.contains("unsupported"), "{text}");
        }
    }
}

/// PGOPTIONS through the pooler: `-c` settings of tracked parameters are the client's own on
/// whatever server connection it lands on (two clients share one here), a setting the pooler
/// could not keep for the client is refused with PgBouncer's words instead of being dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_settings_follow_their_client_or_are_refused() {
    let (_pg, pooler) = setup("pool_mode = \"transaction\"\ndefault_pool_size = 1").await;
    let with_options = format!("{} options='-c DateStyle=SQL,\\\\ DMY --TimeZone=Asia/Tokyo'", pooler.dsn("postgres"));
    let a = pooler.connect_dsn(&with_options).await.unwrap();
    let b = pooler.connect().await.unwrap();
    for _ in 0..2 {
        assert_eq!(setting(&a, "DateStyle").await, "SQL, DMY");
        assert_eq!(setting(&a, "TimeZone").await, "Asia/Tokyo");
        assert_ne!(setting(&b, "DateStyle").await, "SQL, DMY", "b got a's DateStyle from the shared connection");
        assert_ne!(setting(&b, "TimeZone").await, "Asia/Tokyo");
    }
    let refused = pooler
        .connect_dsn(&format!("{} options='-c statement_timeout=5s'", pooler.dsn("postgres")))
        .await
        .expect_err("a setting the pooler cannot keep is refused");
    assert!(
        format!("{refused:?}").contains("unsupported startup parameter in options: statement_timeout"),
        "{refused:?}"
    );
}

/// `SHOW what` on `client`.
async fn setting(client: &tokio_postgres::Client, what: &str) -> String {
    let rows = client.simple_query(&format!("SHOW {what}")).await.unwrap();
    rows.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap()
}

/// Sends a StartupMessage and returns the first bytes of the answer.
async fn raw_startup(port: u16, params: &[(&str, &str)]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let packet = harness::pooler::startup_packet(params);
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.write_all(&packet).await.unwrap();
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer)).await.unwrap().unwrap();
    answer.truncate(n);
    answer
}

/// KILL_CLIENT of a client waiting for a server connection ends it at once (PgBouncer does),
/// not when a connection frees up, and the pool loses no connection or slot by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_client_ends_a_waiting_client_at_once_and_the_pool_loses_nothing() {
    let (_pg, pooler) = setup("pool_mode = \"transaction\"\ndefault_pool_size = 1\nquery_wait_timeout = 60").await;
    let admin = console(&pooler).await;
    // The pool's only server connection is held by an open transaction.
    let holder = pooler.connect().await.unwrap();
    holder.simple_query("BEGIN").await.unwrap();
    let waiter = pooler.connect_dsn(&format!("{} application_name=waiter", pooler.dsn("postgres"))).await.unwrap();
    let waiting = tokio::spawn(async move { waiter.simple_query("select 1").await.map(|_| ()) });
    let deadline = Instant::now() + Duration::from_secs(5);
    let id = loop {
        let clients = show(&admin, "CLIENTS").await;
        if let Some(c) = clients.iter().find(|c| c["application_name"] == "waiter" && c["state"] == "waiting") {
            break c["id"].clone();
        }
        assert!(Instant::now() < deadline, "the client never waited: {clients:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };

    let killed = Instant::now();
    admin.simple_query(&format!("KILL_CLIENT {id}")).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiting client must be dropped at once, not after query_wait_timeout")
        .expect("task");
    let err = format!("{:?}", ended.expect_err("the killed client's query must fail")).to_lowercase();
    assert!(err.contains("admin forced disconnect"), "{err}");
    assert!(killed.elapsed() < Duration::from_secs(2), "took {:?}", killed.elapsed());
    let pools = show(&admin, "POOLS").await;
    let p = pools.iter().find(|p| p["database"] == "postgres").unwrap_or_else(|| panic!("{pools:?}"));
    assert_eq!((p["cl_waiting"].as_str(), p["sv_active"].as_str()), ("0", "1"), "{p:?}");

    // The holder's connection goes back to the pool and serves the next client: no slot leaked.
    holder.simple_query("COMMIT").await.unwrap();
    let next = pooler.connect().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), next.simple_query("select 2"))
        .await
        .expect("the pool still has its connection")
        .unwrap();
    let pools = show(&admin, "POOLS").await;
    let p = pools.iter().find(|p| p["database"] == "postgres").unwrap_or_else(|| panic!("{pools:?}"));
    let servers: u32 = ["sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login"]
        .iter()
        .map(|k| p.get(*k).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0))
        .sum();
    assert_eq!(servers, 1, "pool_size 1: {p:?}");
}

/// tcp_keepalive, tcp_keepidle, tcp_keepintvl, tcp_keepcnt and tcp_user_timeout are set on the
/// pooler's real sockets toward clients and toward PostgreSQL (read back from the pooler's own
/// descriptors), and RELOAD changes them for new connections: clients at once, server
/// connections once RECONNECT has replaced the old ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_keepalive_settings_reach_client_and_server_sockets_and_reload_changes_them() {
    use harness::pooler::tcp_sockets_of;
    let (pg, mut pooler) = setup(
        "pool_mode = \"transaction\"\ntcp_keepidle = 37\ntcp_keepintvl = 11\ntcp_keepcnt = 4\ntcp_user_timeout = 2500",
    )
    .await;
    let client = pooler.connect().await.unwrap();
    client.simple_query("select 1").await.unwrap();
    let pid = pooler.process().process().pid().as_raw();
    let (pooler_port, pg_port) = (pooler.port(), pg.port());
    // (keepalive on, idle s, interval s, probes, user timeout ms) of the pooler's client-side
    // and server-side sockets.
    let options = |s: &socket2::Socket| {
        (
            s.keepalive().unwrap(),
            s.tcp_keepalive_time().unwrap().as_secs(),
            s.tcp_keepalive_interval().unwrap().as_secs(),
            s.tcp_keepalive_retries().unwrap(),
            s.tcp_user_timeout().unwrap().map(|d| d.as_millis()),
        )
    };
    let sides = || {
        let sockets = tcp_sockets_of(pid).unwrap();
        let clients: Vec<_> =
            sockets.iter().filter(|s| s.local.port() == pooler_port).map(|s| options(&s.socket)).collect();
        let servers: Vec<_> = sockets.iter().filter(|s| s.peer.port() == pg_port).map(|s| options(&s.socket)).collect();
        (clients, servers)
    };
    let (clients, servers) = sides();
    assert!(!clients.is_empty() && !servers.is_empty(), "client sockets {clients:?}, server sockets {servers:?}");
    let set = (true, 37, 11, 4, Some(2500));
    assert!(clients.iter().all(|o| *o == set), "client sockets: {clients:?}");
    assert!(servers.iter().all(|o| *o == set), "server sockets: {servers:?}");

    let path = pooler.process().config_path().clone();
    let text = std::fs::read_to_string(&path).unwrap().replace("tcp_keepidle = 37", "tcp_keepidle = 45");
    let text = text.replace("tcp_user_timeout = 2500", "tcp_user_timeout = 900");
    std::fs::write(&path, text).unwrap();
    let admin = console(&pooler).await;
    admin.simple_query("RELOAD").await.unwrap();
    admin.simple_query("RECONNECT").await.unwrap();
    // RECONNECT closes the idle server connections; the next query opens a new one.
    client.simple_query("select 2").await.unwrap();
    let newer = pooler.connect().await.unwrap();
    newer.simple_query("select 3").await.unwrap();
    let reloaded = (true, 45, 11, 4, Some(900));
    let (clients, _) = sides();
    assert!(clients.contains(&reloaded), "a client that came after RELOAD: {clients:?}");
    assert!(clients.contains(&set), "the client from before RELOAD keeps its socket: {clients:?}");
    // The replaced server connections close in the background (a Terminate first).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, servers) = sides();
        if !servers.is_empty() && servers.iter().all(|o| *o == reloaded) {
            break;
        }
        assert!(Instant::now() < deadline, "server sockets after RELOAD and RECONNECT: {servers:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// log_connections / log_disconnections (on by default, as in PgBouncer): a client's login and
/// its close with the reason, a new server connection and its close by RECONNECT, each one
/// line in the pooler's log; with both off, none of these lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_and_disconnections_are_logged_with_their_reasons() {
    let (_pg, pooler) = setup("pool_mode = \"transaction\"").await;
    let admin = console(&pooler).await;
    let client = pooler.connect().await.unwrap();
    client.simple_query("select 1").await.unwrap();
    drop(client);
    admin.simple_query("RECONNECT").await.unwrap();
    let lines = |log: &str, what: &str| log.lines().filter(|l| l.contains(what)).map(str::to_owned).collect::<Vec<_>>();
    logged(&pooler, "client login", &["database=postgres", "user=postgres", "client=127.0.0.1:", "tls=no"]).await;
    logged(&pooler, "client login", &["database=pgbouncer"]).await;
    logged(&pooler, "closing client: client close request", &["database=postgres", "age_s="]).await;
    logged(&pooler, "new server connection", &["database=postgres", "user=postgres"]).await;
    logged(&pooler, "closing server connection: RECONNECT", &["database=postgres"]).await;
    drop(admin);
    drop(pooler);

    let (_pg, pooler) = setup("pool_mode = \"transaction\"\nlog_connections = false\nlog_disconnections = false").await;
    let client = pooler.connect().await.unwrap();
    client.simple_query("select 1").await.unwrap();
    drop(client);
    let admin = console(&pooler).await;
    admin.simple_query("RECONNECT").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = pooler.log();
    for what in ["client login", "closing client", "new server connection", "closing server connection"] {
        assert!(lines(&log, what).is_empty(), "{what:?} logged with log_connections/log_disconnections off:\n{log}");
    }
}

/// Waits (5 s at most) for a line of the pooler's log with `what` and every one of `also`.
async fn logged(pooler: &PoolerProcess, what: &str, also: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = pooler.log();
        if log.lines().any(|l| l.contains(what) && also.iter().all(|a| l.contains(a))) {
            return;
        }
        assert!(Instant::now() < deadline, "no {what:?} line with {also:?} in the log:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A server connection still logging in shows in SHOW SERVERS as `new` (PgBouncer's state),
/// with the server's address, and in SHOW POOLS as `sv_login`; the row goes when the login
/// ends (here: server_connect_timeout against a server that never answers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_connection_logging_in_shows_as_new() {
    // Accepts and never answers: the pooler's login to it hangs until server_connect_timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            sockets.push(socket);
        }
    });
    let (_pg, pooler) = setup(&format!(
        "server_connect_timeout = 3\n[databases.silent]\nhost = \"127.0.0.1\"\nport = {silent_port}\ndbname = \"postgres\""
    ))
    .await;
    let admin = console(&pooler).await;
    let dsn = pooler.dsn("silent");
    let waiting = tokio::spawn(async move { tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await.map(|_| ()) });
    let deadline = Instant::now() + Duration::from_secs(2);
    let row = loop {
        let servers = show(&admin, "SERVERS").await;
        if let Some(row) = servers.into_iter().find(|r| r["database"] == "silent") {
            break row;
        }
        assert!(Instant::now() < deadline, "no SHOW SERVERS row for the connection logging in");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(row["state"], "new", "{row:?}");
    assert_eq!((row["addr"].as_str(), row["port"].parse::<u16>().unwrap()), ("127.0.0.1", silent_port), "{row:?}");
    let pools = show(&admin, "POOLS").await;
    let pool = pools.iter().find(|r| r["database"] == "silent").unwrap_or_else(|| panic!("{pools:?}"));
    assert_eq!(pool["sv_login"], "1", "{pool:?}");
    let refused = tokio::time::timeout(Duration::from_secs(10), waiting).await.unwrap().unwrap();
    assert!(refused.is_err(), "the client of a server that never answers got in");
    let servers = show(&admin, "SERVERS").await;
    assert!(servers.iter().all(|r| r["database"] != "silent"), "the row stayed after the login failed: {servers:?}");
    held.abort();
}

/// SET key = value changes the running configuration as RELOAD would (checked the same way),
/// without touching pooler.toml: the pool size takes effect for waiting clients, SHOW CONFIG
/// shows it, pgbouncer.ini's 0/1 booleans work, and unknown, read-only or malformed settings
/// are refused with what is wrong. RELOAD goes back to the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_changes_the_running_configuration_and_reload_goes_back_to_the_file() {
    let (_pg, pooler) = setup("pool_mode = \"transaction\"\ndefault_pool_size = 1\nquery_wait_timeout = 30").await;
    let admin = console(&pooler).await;
    let config = |rows: Vec<HashMap<String, String>>, key: &str| {
        rows.into_iter().find(|r| r["key"] == key).map(|r| r["value"].clone()).unwrap_or_default()
    };
    let (a, waiting) = one_client_waiting(&pooler, Duration::from_millis(300)).await;
    admin.simple_query("SET default_pool_size = 3").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("SET let the waiting client in").unwrap();
    assert_eq!(config(show(&admin, "CONFIG").await, "default_pool_size"), "3");
    a.batch_execute("commit").await.unwrap();

    admin.simple_query("SET log_connections = 0").await.unwrap();
    assert_eq!(config(show(&admin, "CONFIG").await, "log_connections"), "0");
    admin.simple_query("set server_check_query to 'select 2'").await.unwrap();
    assert_eq!(config(show(&admin, "CONFIG").await, "server_check_query"), "select 2");

    assert!(admin_error(&admin, "SET no_such_setting = 1").await.contains("unknown parameter: no_such_setting"));
    assert!(admin_error(&admin, "SET listen_port = 7000").await.contains("cannot be changed while the pooler runs"));
    let bad = admin_error(&admin, "SET default_pool_size = many").await;
    assert!(bad.contains("default_pool_size"), "{bad}");
    let bad = admin_error(&admin, "SET tcp_keepcnt = 500").await;
    assert!(bad.contains("at most 127"), "{bad}");
    assert_eq!(config(show(&admin, "CONFIG").await, "tcp_keepcnt"), "0", "a refused SET changed nothing");

    admin.simple_query("RELOAD").await.unwrap();
    assert_eq!(config(show(&admin, "CONFIG").await, "default_pool_size"), "1");
    assert_eq!(config(show(&admin, "CONFIG").await, "log_connections"), "1");
}

/// A RELOAD that points a database at another server moves its clients there, as in PgBouncer:
/// a transaction under way finishes on the server it began on, every transaction after it (of
/// connected and new clients alike) runs on the new server, the pool stays one pool, and no
/// connection to the old server is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_moves_a_database_to_another_server_and_its_clients_follow() {
    let (a, mut pooler) = setup("pool_mode = \"transaction\"").await;
    let mut b = PgInstance::init("admin-moved", PgOptions::default()).await.unwrap();
    b.start().await.unwrap();
    // The pooler logs in to either server with the password it has for the first.
    b.sql(&format!("alter role postgres password '{}'", a.password())).await.unwrap();
    let admin = console(&pooler).await;
    let (on_a, on_b) = (a.port().to_string(), b.port().to_string());
    let settled = pooler.connect().await.unwrap();
    let mid_transaction = pooler.connect().await.unwrap();
    assert_eq!(server_port(&settled).await, on_a);
    mid_transaction.batch_execute("begin").await.unwrap();
    assert_eq!(server_port(&mid_transaction).await, on_a);

    let path = pooler.process().config_path().clone();
    let text = std::fs::read_to_string(&path).unwrap().replace(&format!("port = {on_a}"), &format!("port = {on_b}"));
    std::fs::write(&path, text).unwrap();
    admin.simple_query("RELOAD").await.unwrap();

    assert_eq!(server_port(&settled).await, on_b, "a connected client's next transaction");
    assert_eq!(server_port(&mid_transaction).await, on_a, "the transaction under way");
    mid_transaction.batch_execute("commit").await.unwrap();
    assert_eq!(server_port(&mid_transaction).await, on_b, "its next transaction");
    let newcomer = pooler.connect().await.unwrap();
    assert_eq!(server_port(&newcomer).await, on_b);
    let pools = rows(&admin.simple_query("SHOW POOLS").await.unwrap());
    assert_eq!(pools.iter().filter(|r| r[0] == "postgres").count(), 1, "{pools:?}");
    harness::wait_for("no pooler connection left on the old server", Duration::from_secs(10), || async {
        Ok((a.client_backends().await? == 0).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", pooler.log()));
    assert!(pooler.log().contains("the database moved to another server"), "{}", pooler.log());
}

/// The port of the server a client's query runs on.
async fn server_port(client: &tokio_postgres::Client) -> String {
    rows(&client.simple_query("select current_setting('port')").await.unwrap())[0][0].clone()
}

/// RESUME hands a connection to every client that waited during PAUSE: each of them runs its
/// query (before the fix every second waiter was dropped and told the pool was closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_releases_every_waiting_client() {
    let (_pg, pooler) = setup("pool_mode = \"transaction\"").await;
    let admin = console(&pooler).await;
    admin.simple_query("PAUSE").await.unwrap();
    let mut waiting = Vec::new();
    for i in 0..4 {
        let client = pooler.connect().await.unwrap();
        waiting.push(tokio::spawn(async move { client.simple_query(&format!("select {i}")).await.map(|_| ()) }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(waiting.iter().all(|w| !w.is_finished()), "a query ran during PAUSE");
    admin.simple_query("RESUME").await.unwrap();
    for w in waiting {
        let ran = tokio::time::timeout(Duration::from_secs(5), w).await.expect("released by RESUME").unwrap();
        assert!(ran.is_ok(), "a waiting client failed at RESUME: {ran:?}\n{}", pooler.log());
    }
}

/// A RELOAD that removes a database closes its clients (told `database removed`), closes its
/// server connections and drops its pool, as PgBouncer kills a database that left its
/// configuration; new logins to it are refused; the other databases go on. The database is
/// added by a RELOAD first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_that_removes_a_database_closes_its_clients_and_drops_its_pool() {
    let (pg, mut pooler) = setup("pool_mode = \"transaction\"").await;
    let admin = console(&pooler).await;
    let path = pooler.process().config_path().clone();
    let original = std::fs::read_to_string(&path).unwrap();
    let entry = format!("\n[databases.extra]\nhost = \"127.0.0.1\"\nport = {}\ndbname = \"postgres\"\n", pg.port());
    std::fs::write(&path, format!("{original}{entry}")).unwrap();
    admin.simple_query("RELOAD").await.unwrap();

    let (extra, connection) = tokio_postgres::connect(&pooler.dsn("extra"), tokio_postgres::NoTls).await.unwrap();
    let extra_ended = tokio::spawn(connection);
    extra.simple_query("select 1").await.unwrap();
    let other = pooler.connect().await.unwrap();
    other.simple_query("select 1").await.unwrap();
    let pool_names = || async {
        let pools = show(&admin, "POOLS").await;
        let mut names: Vec<String> = pools.iter().map(|p| p["database"].clone()).collect();
        names.sort();
        names
    };
    assert_eq!(pool_names().await, ["extra", "postgres"]);
    assert_eq!(backends(&pg).await, 2, "one server connection per pool");

    std::fs::write(&path, &original).unwrap();
    admin.simple_query("RELOAD").await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), extra_ended).await.expect("the client was not closed");
    let err = ended.unwrap().expect_err("closed without a word");
    assert_eq!(err.as_db_error().map(|e| e.message()), Some("database removed"), "{err:?}");
    eventually("the removed database's pool to be dropped", || async { pool_names().await == ["postgres"] }).await;
    eventually("its server connection to close", || async { backends(&pg).await == 1 }).await;
    let refused = pooler.connect_dsn(&pooler.dsn("extra")).await.expect_err("a removed database");
    assert_eq!(harness::pooler::refusal(refused), ("3D000".to_owned(), "no such database: extra".to_owned()));
    other.simple_query("select 2").await.unwrap();
}

/// log_stats (PgBouncer's): at the end of each stats_period the pooler logs one line with the
/// period's rates and average times over every pool; `SET log_stats = 0` stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_stats_writes_the_period_s_traffic_to_the_log() {
    let (_pg, pooler) = setup("pool_mode = \"transaction\"\nstats_period = 1").await;
    let client = pooler.connect().await.unwrap();
    let busy_until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < busy_until {
        client.simple_query("select 1").await.unwrap();
    }
    let line = |log: &str| {
        log.lines().filter(|l| l.contains("stats: ")).find_map(|l| {
            let rate = l.split("stats: ").nth(1)?.split(" xacts/s").next()?.parse::<u64>().ok()?;
            (rate > 0 && l.contains(" queries/s, ") && l.contains(" us, wait ")).then(|| l.to_owned())
        })
    };
    let seen = harness::wait_for("a stats line with transactions", Duration::from_secs(5), || async {
        Ok(line(&pooler.log()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", pooler.log()));
    eprintln!("{seen}");

    let admin = console(&pooler).await;
    admin.simple_query("SET log_stats = 0").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before = pooler.log().matches("stats: ").count();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(pooler.log().matches("stats: ").count(), before, "log_stats = 0 still logs");
}
