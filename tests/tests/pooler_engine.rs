//! The relaying engines of a real `pgha pooler` before real PostgreSQL 15: with the default
//! relay_engine (io_uring) logged-in clients over TCP and the Unix socket are relayed on the
//! io_uring thread from their second transaction on (the `pgha_pooler_clients_on_ring` gauge
//! counts them), prepared statements,
//! a large COPY out and a transaction's error work there, and server connections go back and
//! forth between clients; with relay_engine = "epoll" the same work runs on the worker threads
//! and nobody is on the ring. On either, idle clients park (leaving the ring) and come back
//! with their sessions at their next query.

use harness::pooler::{http_get, sample, show, PoolerProcess};
use harness::{PgInstance, PgOptions};
use std::time::{Duration, Instant};

/// Waits up to 5 s for the gauge to read `want`; returns what it read last.
async fn on_ring(metrics: &str, want: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = http_get(metrics, "/metrics").await.unwrap();
        let now = sample(&text, "pgha_pooler_clients_on_ring").unwrap_or_else(|| panic!("no gauge:\n{text}")) as u32;
        if now == want || Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits up to 5 s for `n` parked clients.
async fn until_parked(metrics: &str, n: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = http_get(metrics, "/metrics").await.unwrap();
        let now = sample(&text, "pgha_pooler_clients_parked").unwrap_or_else(|| panic!("no gauge:\n{text}")) as u32;
        if now == n {
            return;
        }
        assert!(Instant::now() < deadline, "{now} clients parked, expected {n}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// After parking: each client's prepared statement and setting are still there.
async fn back_from_parking(clients: &[tokio_postgres::Client]) {
    for (i, client) in clients.iter().enumerate() {
        let statement = client.prepare("SELECT $1::int + 1").await.unwrap();
        let row = client.query_one(&statement, &[&(i as i32)]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i as i32 + 1);
    }
}

/// Work of every kind a relay does, from three clients sharing the pool's connections.
async fn relay_work(pooler: &PoolerProcess) -> Vec<tokio_postgres::Client> {
    let tcp = pooler.connect_dsn(&pooler.dsn("postgres")).await.unwrap();
    let unix = pooler.connect_dsn(&pooler.unix_dsn("postgres")).await.unwrap();
    let third = pooler.connect_dsn(&pooler.dsn("postgres")).await.unwrap();
    for (i, client) in [&tcp, &unix, &third].into_iter().enumerate() {
        let statement = client.prepare("SELECT $1::int + 1").await.unwrap();
        for n in 0..50 {
            let row = client.query_one(&statement, &[&(n + i as i32)]).await.unwrap();
            assert_eq!(row.get::<_, i32>(0), n + i as i32 + 1);
        }
        let error = client.batch_execute("SELECT 1/0").await.unwrap_err();
        assert_eq!(error.code(), Some(&tokio_postgres::error::SqlState::DIVISION_BY_ZERO), "{error}");
    }
    // A result of about 6 MB: many receive buffers, reads that take part of one.
    let rows = tcp.simple_query("SELECT repeat('x', 1000) FROM generate_series(1, 6000)").await.unwrap();
    let data = rows.iter().filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))).count();
    assert_eq!(data, 6000);
    // Interleaved transactions on two connections of the pool.
    tcp.batch_execute("BEGIN; SELECT 1").await.unwrap();
    unix.batch_execute("BEGIN; SELECT 2").await.unwrap();
    third.batch_execute("SELECT 3").await.unwrap();
    tcp.batch_execute("COMMIT").await.unwrap();
    unix.batch_execute("COMMIT").await.unwrap();
    vec![tcp, unix, third]
}

async fn start(name: &str, engine: Option<&str>) -> (PgInstance, PoolerProcess, String) {
    let mut pg = PgInstance::init(name, PgOptions::default()).await.unwrap();
    pg.start().await.unwrap();
    let metrics = format!("127.0.0.1:{}", harness::ports::free_port().unwrap());
    let mut settings = format!(
        "admin_users = [\"postgres\"]\npool_mode = \"transaction\"\ndefault_pool_size = 3\nmetrics_listen = \"{metrics}\""
    );
    if let Some(engine) = engine {
        settings.push_str(&format!("\nrelay_engine = \"{engine}\""));
    }
    let pooler = PoolerProcess::start(&pg, &settings).await.unwrap();
    (pg, pooler, metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_clients_are_relayed_on_the_io_uring_thread() {
    let (_pg, pooler, metrics) = start("pooler-engine-ring", None).await;
    let admin = pooler.connect_dsn(&pooler.dsn("pgbouncer")).await.unwrap();
    // A client's first transaction runs where it logged in (a client that comes for one
    // transaction never moves); its second begins on the ring.
    let once = pooler.connect_dsn(&pooler.dsn("postgres")).await.unwrap();
    once.batch_execute("SELECT 1").await.unwrap();
    assert_eq!(on_ring(&metrics, 0).await, 0, "moved to the ring before its second transaction");
    once.batch_execute("BEGIN; SELECT 2").await.unwrap();
    assert_eq!(on_ring(&metrics, 1).await, 1, "not on the ring in its second transaction");
    once.batch_execute("COMMIT").await.unwrap();
    drop(once);
    assert_eq!(on_ring(&metrics, 0).await, 0, "a client that left is still counted");
    let clients = relay_work(&pooler).await;
    // In a transaction each (one server connection each): none parks while the gauge is read.
    for client in &clients {
        client.batch_execute("BEGIN; SELECT 1").await.unwrap();
    }
    assert_eq!(on_ring(&metrics, 3).await, 3, "the three clients relayed on the ring");
    for client in &clients {
        client.batch_execute("COMMIT").await.unwrap();
    }
    // Idle, they park: off the ring, and back on it at their next query.
    until_parked(&metrics, 3).await;
    assert_eq!(on_ring(&metrics, 0).await, 0, "parked clients are not on the ring");
    back_from_parking(&clients).await;
    for client in &clients {
        client.batch_execute("BEGIN; SELECT 1").await.unwrap();
    }
    assert_eq!(on_ring(&metrics, 3).await, 3, "woken clients are relayed on the ring again");
    for client in &clients {
        client.batch_execute("COMMIT").await.unwrap();
    }
    let config = show(&admin, "CONFIG").await;
    let engine = config.iter().find(|row| row.get("key").map(String::as_str) == Some("relay_engine"));
    assert_eq!(engine.and_then(|row| row.get("value")).map(String::as_str), Some("io_uring"), "{config:?}");
    drop(clients);
    assert_eq!(on_ring(&metrics, 0).await, 0, "clients that left are no longer counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_engine_epoll_relays_on_the_worker_threads() {
    let (_pg, pooler, metrics) = start("pooler-engine-epoll", Some("epoll")).await;
    let clients = relay_work(&pooler).await;
    // Give a wrongly counted client the time to show.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(on_ring(&metrics, 0).await, 0, "nobody on the ring with relay_engine = epoll");
    until_parked(&metrics, 3).await;
    back_from_parking(&clients).await;
    assert_eq!(on_ring(&metrics, 0).await, 0, "nobody on the ring with relay_engine = epoll");
    drop(clients);
}
