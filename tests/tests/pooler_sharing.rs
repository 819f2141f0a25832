//! Transaction pooling as applications use it: 200 tokio-postgres clients share 10 server
//! connections, each with its own named prepared statements and its own reported parameters
//! (application_name from the startup packet, TimeZone and DateStyle SET in the session), and
//! every answer is the client's own.

use harness::pooler::PoolerProcess;
use harness::{PgInstance, PgOptions};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_share_ten_server_connections_with_their_own_statements_and_settings() {
    let mut pg = PgInstance::init("shared", PgOptions::default()).await.unwrap();
    pg.start().await.unwrap();
    // Two worker threads: the pool and its limits are shared across threads.
    let settings = "pool_mode = \"transaction\"\ndefault_pool_size = 10\nmax_client_conn = 300\nworker_threads = 2";
    let pooler = PoolerProcess::start(&pg, settings).await.unwrap();
    let zones = ["UTC", "Europe/Paris", "Asia/Tokyo", "America/New_York"];
    let mut tasks = Vec::new();
    for i in 0..200usize {
        let dsn = format!("{} application_name=client{i}", pooler.dsn("postgres"));
        let client = pooler.connect_dsn(&dsn).await.unwrap();
        tasks.push(tokio::spawn(async move {
            let zone = zones[i % zones.len()];
            client.batch_execute(&format!("SET TimeZone = '{zone}'; SET DateStyle = 'SQL, DMY'")).await?;
            // Named statements, prepared once, used across many transactions.
            let add = client.prepare("select $1::int + 1000").await?;
            let settings = client
                .prepare("select current_setting('application_name'), current_setting('TimeZone'), current_setting('DateStyle')")
                .await?;
            for round in 0..20i32 {
                let n: i32 = client.query_one(&add, &[&(i as i32 * 100 + round)]).await?.get(0);
                anyhow::ensure!(n == i as i32 * 100 + round + 1000, "client{i} got {n}");
                let row = client.query_one(&settings, &[]).await?;
                let (app, tz, style): (String, String, String) = (row.get(0), row.get(1), row.get(2));
                anyhow::ensure!(app == format!("client{i}"), "client{i} sees application_name {app}");
                anyhow::ensure!(tz == zone, "client{i} sees TimeZone {tz}, set {zone}");
                anyhow::ensure!(style == "SQL, DMY", "client{i} sees DateStyle {style}");
                if round % 5 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            anyhow::Ok(client)
        }));
    }
    let mut clients = Vec::new();
    for task in tasks {
        clients.push(tokio::time::timeout(Duration::from_secs(120), task).await.unwrap().unwrap().unwrap());
    }
    // Every client is still connected, and PostgreSQL saw at most 10 connections from the pooler.
    let servers = pg.client_backends().await.unwrap();
    assert!((1..=10).contains(&servers), "{servers} server connections for 200 clients");
    assert_eq!(clients.len(), 200);
}

/// Whether `client`'s transactions run read-only now, and on which server connection.
async fn read_only(client: &tokio_postgres::Client) -> (String, String) {
    let messages =
        client.simple_query("select current_setting('transaction_read_only'), pg_backend_pid()::text").await.unwrap();
    let row = messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => {
            Some((row.get(0).unwrap_or("").to_owned(), row.get(1).unwrap_or("").to_owned()))
        }
        _ => None,
    });
    row.unwrap()
}

/// track_extra_parameters (PgBouncer 1.20's): a server-reported parameter outside the six
/// tracked always (here default_transaction_read_only, which PostgreSQL 14 and later report)
/// is carried per client from one server connection to the next. Two clients share one server
/// connection: one SETs it on, and the other's transactions are still read-write while its
/// own are read-only; a third client sends it at login (a `-c` setting in `options`, refused
/// as untracked otherwise), and has it. Without the setting the same SET
/// leaks to the other client through the shared connection, as with PgBouncer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn track_extra_parameters_keeps_a_reported_parameter_per_client() {
    let mut pg = PgInstance::init("extra-params", PgOptions::default()).await.unwrap();
    pg.start().await.unwrap();
    let base = "pool_mode = \"transaction\"\ndefault_pool_size = 1\nadmin_users = [\"postgres\"]";

    let untracked = PoolerProcess::start(&pg, base).await.unwrap();
    let (setter, other) = (untracked.connect().await.unwrap(), untracked.connect().await.unwrap());
    setter.batch_execute("SET default_transaction_read_only = on").await.unwrap();
    let (leaked, _) = read_only(&other).await;
    assert_eq!(leaked, "on", "untracked, the SET is the shared server connection's");
    drop(untracked);

    let settings = format!("{base}\ntrack_extra_parameters = [\"IntervalStyle\", \"default_transaction_read_only\"]");
    let pooler = PoolerProcess::start(&pg, &settings).await.unwrap();
    let (setter, other) = (pooler.connect().await.unwrap(), pooler.connect().await.unwrap());
    setter.batch_execute("SET default_transaction_read_only = on").await.unwrap();
    let (theirs, other_pid) = read_only(&other).await;
    let (mine, setter_pid) = read_only(&setter).await;
    assert_eq!((theirs.as_str(), mine.as_str()), ("off", "on"));
    assert_eq!(other_pid, setter_pid, "one server connection serves both");
    let (theirs, _) = read_only(&other).await;
    assert_eq!(theirs, "off");
    let err = setter.batch_execute("create table written (n int)").await.expect_err("read-only");
    assert_eq!(err.code().map(|c| c.code()), Some("25006"));
    other.batch_execute("create table written (n int)").await.unwrap();

    // At login: a `-c` setting in options.
    let dsn = format!("{} options='-c default_transaction_read_only=on'", pooler.dsn("postgres"));
    let from_options = pooler.connect_dsn(&dsn).await.unwrap();
    assert_eq!(read_only(&from_options).await.0, "on");
    assert_eq!(read_only(&other).await.0, "off");
    let console = pooler.connect_dsn(&pooler.dsn("pgbouncer")).await.unwrap();
    let config = harness::pooler::show(&console, "CONFIG").await;
    let row = config.iter().find(|r| r["key"] == "track_extra_parameters").unwrap_or_else(|| panic!("{config:?}"));
    assert_eq!(row["value"], "IntervalStyle,default_transaction_read_only");
    assert_eq!(row["changeable"], "no");
}
