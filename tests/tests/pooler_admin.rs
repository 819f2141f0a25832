//! The admin console's commands have their effect on real traffic: PAUSE holds new queries and
//! RESUME releases them, RELOAD applies a changed pool size without dropping clients, and SHOW
//! POOLS reports what the pools hold.

use harness::pooler::PoolerProcess;
use harness::{PgInstance, PgOptions};
use std::time::{Duration, Instant};
use tokio_postgres::SimpleQueryMessage;

async fn setup(settings: &str) -> (PgInstance, PoolerProcess) {
    let mut pg = PgInstance::init("admin", PgOptions::default()).await.unwrap();
    pg.start().await.unwrap();
    let settings = format!("admin_users = [\"postgres\"]\n{settings}");
    let pooler = PoolerProcess::start(&pg, &settings).await.unwrap();
    (pg, pooler)
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
    let a = pooler.connect().await.unwrap();
    let b = pooler.connect().await.unwrap();
    a.batch_execute("begin; select 1").await.unwrap();
    // b waits: the single server connection is in a's transaction.
    let waiting = tokio::spawn(async move {
        b.simple_query("select 2").await.unwrap();
        b
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "pool_size 1 should make the second client wait");
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
    let servers = pg
        .sql_value(
            "select count(*) from pg_stat_activity where backend_type = 'client backend' and pid <> pg_backend_pid()",
        )
        .await
        .unwrap();
    assert_eq!(servers.as_deref(), Some("2"));
}
