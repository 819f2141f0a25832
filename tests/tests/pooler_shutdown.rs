//! Stopping a real `pgha pooler` with SIGTERM: it stops accepting at once, a client inside a
//! transaction may finish it (its COMMIT lands), a client between transactions is told and
//! closed, the process exits 0 when the last client is gone, and a client that never ends its
//! transaction holds the exit back no longer than shutdown_timeout.

use harness::pooler::PoolerProcess;
use harness::{PgInstance, PgOptions};
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

async fn postgres() -> PgInstance {
    let mut pg = PgInstance::init("pooler-stop", PgOptions::default()).await.unwrap();
    pg.start().await.unwrap();
    pg.sql("CREATE TABLE orders (id int PRIMARY KEY)").await.unwrap();
    pg
}

/// Waits up to 3 s until a new TCP connection to the pooler is refused.
async fn refused_within_3s(port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_transaction_in_progress_commit_refuses_new_clients_and_exits_0() {
    let pg = postgres().await;
    // Two worker threads: idle clients are closed from the thread that handles the signal.
    let settings = "pool_mode = \"transaction\"\nshutdown_timeout = 20\nworker_threads = 2";
    let mut pooler = PoolerProcess::start(&pg, settings).await.unwrap();
    let port = pooler.port();
    let in_transaction = pooler.connect().await.unwrap();
    let between_transactions = pooler.connect().await.unwrap();
    between_transactions.simple_query("select 1").await.unwrap();
    in_transaction.batch_execute("BEGIN; INSERT INTO orders VALUES (1)").await.unwrap();

    let signalled = Instant::now();
    pooler.process().process().signal(Signal::SIGTERM).unwrap();
    assert!(refused_within_3s(port).await, "the pooler still accepts after SIGTERM");
    // The idle client is closed with 57P01 (its next query fails), the pooler keeps running.
    let err = between_transactions.simple_query("select 1").await.expect_err("idle client must be closed");
    if let Some(db) = err.as_db_error() {
        assert_eq!(db.code().code(), "57P01", "{db:?}");
    }
    assert!(pooler.process().process().is_running(), "exited with a transaction open:\n{}", pooler.log());

    in_transaction.batch_execute("INSERT INTO orders VALUES (2); COMMIT").await.unwrap();
    let status = pooler.process().process().wait_exit(Duration::from_secs(5)).await.unwrap();
    let took = signalled.elapsed();
    assert!(status.success(), "exit status {status:?}:\n{}", pooler.log());
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let rows = pg.sql("SELECT count(*) FROM orders WHERE id IN (1, 2)").await.unwrap();
    assert_eq!(rows[0][0].as_deref(), Some("2"), "the committed rows are missing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_after_shutdown_timeout_when_a_transaction_never_ends() {
    let pg = postgres().await;
    let mut pooler = PoolerProcess::start(&pg, "pool_mode = \"transaction\"\nshutdown_timeout = 2").await.unwrap();
    let stuck = pooler.connect().await.unwrap();
    stuck.batch_execute("BEGIN; INSERT INTO orders VALUES (3)").await.unwrap();
    let signalled = Instant::now();
    pooler.process().process().signal(Signal::SIGTERM).unwrap();
    let status = pooler.process().process().wait_exit(Duration::from_secs(6)).await.unwrap();
    let took = signalled.elapsed();
    assert!(status.success(), "exit status {status:?}:\n{}", pooler.log());
    assert!(took >= Duration::from_millis(1900) && took < Duration::from_secs(4), "exited after {took:?}");
    // The unfinished transaction did not commit.
    assert!(stuck.simple_query("COMMIT").await.is_err());
    let rows = pg.sql("SELECT count(*) FROM orders").await.unwrap();
    assert_eq!(rows[0][0].as_deref(), Some("0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_or_sigquit_stops_at_once() {
    let pg = postgres().await;
    for second in [Signal::SIGTERM, Signal::SIGQUIT] {
        let mut pooler = PoolerProcess::start(&pg, "pool_mode = \"transaction\"\nshutdown_timeout = 30").await.unwrap();
        let stuck = pooler.connect().await.unwrap();
        stuck.batch_execute("BEGIN").await.unwrap();
        pooler.process().process().signal(Signal::SIGTERM).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(pooler.process().process().is_running(), "exited with a transaction open");
        let signalled = Instant::now();
        pooler.process().process().signal(second).unwrap();
        let status = pooler.process().process().wait_exit(Duration::from_secs(3)).await.unwrap();
        assert!(status.success(), "{second}: exit status {status:?}");
        assert!(signalled.elapsed() < Duration::from_secs(2), "{second}: took {:?}", signalled.elapsed());
    }
}
