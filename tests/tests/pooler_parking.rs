//! Idle clients park without a task (the real `pgha pooler` before real PostgreSQL 15): clients
//! that sent nothing since their login park within a fraction of a second, active ones after
//! about a second idle; a parked client's next query wakes it with its session intact (its
//! parameters, its settings, its prepared statements, over TCP and the Unix socket); KILL_CLIENT and SIGTERM
//! reach parked clients; a client that keeps working never parks.

use harness::pooler::{http_get, sample, show, PoolerProcess};
use harness::{PgInstance, PgOptions};
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};
use tokio_postgres::SimpleQueryMessage;

/// Clients parked now, from /metrics.
async fn parked(metrics: &str) -> u32 {
    let text = http_get(metrics, "/metrics").await.unwrap();
    sample(&text, "pgha_pooler_clients_parked").unwrap_or_else(|| panic!("no parked gauge:\n{text}")) as u32
}

/// Waits up to `within` until exactly `n` clients are parked.
async fn until_parked(metrics: &str, n: u32, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let now = parked(metrics).await;
        if now == n {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{now} clients parked after {within:?}, expected {n}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn value(messages: &[SimpleQueryMessage]) -> String {
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_park_and_wake_with_their_session_and_kill_and_sigterm_reach_them() {
    let mut pg = PgInstance::init("pooler-parking", PgOptions::default()).await.unwrap();
    pg.start().await.unwrap();
    let metrics = format!("127.0.0.1:{}", harness::ports::free_port().unwrap());
    let settings = format!(
        "admin_users = [\"postgres\"]\npool_mode = \"transaction\"\ndefault_pool_size = 4\nmetrics_listen = \"{metrics}\""
    );
    let metrics = metrics.as_str();
    let mut pooler = PoolerProcess::start(&pg, &settings).await.unwrap();
    let admin = pooler.connect_dsn(&pooler.dsn("pgbouncer")).await.unwrap();

    // 40 clients that only log in (half over the Unix socket), 20 that prepare a statement.
    let mut fresh = Vec::new();
    for i in 0..40 {
        let dsn = if i % 2 == 0 { pooler.dsn("postgres") } else { pooler.unix_dsn("postgres") };
        fresh.push(pooler.connect_dsn(&format!("{dsn} application_name=fresh{i}")).await.unwrap());
    }
    let fresh_parked = until_parked(metrics, 40, Duration::from_secs(3)).await;
    let mut active = Vec::new();
    for i in 0..20 {
        let client =
            pooler.connect_dsn(&format!("{} application_name=active{i}", pooler.dsn("postgres"))).await.unwrap();
        let statement = client.prepare("select $1::int + 1").await.unwrap();
        // A setting of its own, which a parked client must keep.
        client.simple_query(&format!("set timezone = 'Etc/GMT-{}'", i % 12 + 1)).await.unwrap();
        let row = client.query_one(&statement, &[&i]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i + 1);
        active.push((client, statement));
    }
    // A client that keeps working (a query every 100 ms) stays in the runtime meanwhile.
    let busy = pooler.connect().await.unwrap();
    let active_parked = {
        let start = Instant::now();
        loop {
            busy.simple_query("select 1").await.unwrap();
            if parked(metrics).await == 60 {
                break start.elapsed();
            }
            assert!(start.elapsed() < Duration::from_secs(5), "active clients did not park:\n{}", pooler.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    drop(busy);
    eprintln!("parking: 40 fresh clients parked within {fresh_parked:?}, 20 active ones within {active_parked:?}");
    assert!(active_parked >= Duration::from_millis(500), "active clients parked after only {active_parked:?}");

    // Parked clients wake with their session: their application_name, their statements.
    for (i, client) in fresh.iter().enumerate() {
        let name = value(&client.simple_query("show application_name").await.unwrap());
        assert_eq!(name, format!("fresh{i}"));
    }
    for (i, (client, statement)) in active.iter().enumerate() {
        let row = client.query_one(statement, &[&(i as i32 * 10)]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i as i32 * 10 + 1);
        let timezone = value(&client.simple_query("show timezone").await.unwrap());
        assert_eq!(timezone, format!("Etc/GMT-{}", i % 12 + 1), "client {i}'s setting after parking");
    }
    assert!(parked(metrics).await < 60, "woken clients are still counted as parked");

    // KILL_CLIENT reaches a parked client: it is told why and leaves SHOW CLIENTS.
    until_parked(metrics, 60, Duration::from_secs(5)).await;
    let clients = show(&admin, "CLIENTS").await;
    let victim = clients.iter().find(|c| c["application_name"] == "fresh3").unwrap_or_else(|| panic!("{clients:?}"));
    admin.simple_query(&format!("KILL_CLIENT {}", victim["id"])).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), fresh[3].simple_query("select 1"))
        .await
        .expect("the killed client's query must fail at once")
        .expect_err("the client was killed");
    // The FATAL may reach the idle connection before the query does: then it is closed.
    let err = format!("{err:?}");
    assert!(err.contains("admin forced disconnect") || err.contains("Closed"), "{err}");
    let start = Instant::now();
    while show(&admin, "CLIENTS").await.iter().any(|c| c["application_name"] == "fresh3") {
        assert!(start.elapsed() < Duration::from_secs(3), "the killed client stays in SHOW CLIENTS");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // SIGTERM: parked clients are told (57P01) and the pooler exits 0 at once.
    until_parked(metrics, 59, Duration::from_secs(5)).await;
    drop(admin);
    let signalled = Instant::now();
    pooler.process().process().signal(Signal::SIGTERM).unwrap();
    let status = pooler.process().process().wait_exit(Duration::from_secs(10)).await.unwrap();
    assert!(status.success(), "exit status {status:?}:\n{}", pooler.log());
    assert!(signalled.elapsed() < Duration::from_secs(5), "took {:?}", signalled.elapsed());
    let err = fresh[0].simple_query("select 1").await.expect_err("the pooler is gone");
    if let Some(db) = err.as_db_error() {
        assert_eq!(db.code().code(), "57P01", "{db:?}");
    }
}
