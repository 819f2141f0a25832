//! The Prometheus endpoint of a real `pgha pooler` (metrics_listen) scraped while clients run:
//! a client waiting on a full pool shows up as waiting, the holder as an active server
//! connection, and once the holder commits the waiter's wait lands in the histogram and the
//! transaction and query totals grow.

use harness::pooler::{http_get, sample, PoolerProcess};
use harness::{PgInstance, PgOptions};
use std::time::{Duration, Instant};

const POOL: &str = "database=\"postgres\",user=\"postgres\"";

/// Scrapes until `series` has `want` (up to 5 s); returns the last text.
async fn scrape_until(addr: &str, series: &str, want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = http_get(addr, "/metrics").await.unwrap();
        if sample(&text, series) == Some(want) || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_a_waiting_client_then_its_wait_and_the_totals() {
    let mut pg = PgInstance::init("pooler-metrics", PgOptions::default()).await.unwrap();
    pg.start().await.unwrap();
    let addr = format!("127.0.0.1:{}", harness::ports::free_port().unwrap());
    let settings = format!("pool_mode = \"transaction\"\ndefault_pool_size = 1\nmetrics_listen = \"{addr}\"");
    let pooler = PoolerProcess::start(&pg, &settings).await.unwrap();

    let series = |name: &str| format!("{name}{{{POOL}}}");
    let before = http_get(&addr, "/metrics").await.unwrap();
    assert_eq!(sample(&before, "pgbouncer_up"), Some(1.0), "{before}");
    let xacts_before = sample(&before, &series("pgbouncer_stats_sql_transactions_pooled_total")).unwrap();
    let waits_before = sample(&before, &series("pgha_pooler_client_wait_seconds_count")).unwrap();

    let holder = pooler.connect().await.unwrap();
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let waiter = pooler.connect().await.unwrap();
    let waiting = tokio::spawn(async move { waiter.simple_query("SELECT 2").await.map(|_| ()) });

    let text = scrape_until(&addr, &series("pgbouncer_pools_client_waiting_connections"), 1.0).await;
    assert_eq!(sample(&text, &series("pgbouncer_pools_client_waiting_connections")), Some(1.0), "{text}");
    assert_eq!(sample(&text, &series("pgbouncer_pools_client_active_connections")), Some(1.0), "{text}");
    assert_eq!(sample(&text, &series("pgbouncer_pools_server_active_connections")), Some(1.0), "{text}");
    assert_eq!(sample(&text, &series("pgbouncer_pools_server_idle_connections")), Some(0.0), "{text}");

    tokio::time::sleep(Duration::from_millis(300)).await;
    holder.batch_execute("COMMIT").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap().unwrap();

    let text = scrape_until(&addr, &series("pgbouncer_pools_client_waiting_connections"), 0.0).await;
    assert_eq!(sample(&text, &series("pgbouncer_pools_client_waiting_connections")), Some(0.0), "{text}");
    assert_eq!(sample(&text, &series("pgbouncer_pools_server_idle_connections")), Some(1.0), "{text}");
    let xacts = sample(&text, &series("pgbouncer_stats_sql_transactions_pooled_total")).unwrap();
    assert!(xacts >= xacts_before + 2.0, "transactions {xacts_before} -> {xacts}");
    let waits = sample(&text, &series("pgha_pooler_client_wait_seconds_count")).unwrap();
    assert!(waits > waits_before, "waits {waits_before} -> {waits}");
    // The waiter waited ~300 ms: in the 0.5 s bucket, not in the 0.1 s one.
    let bucket = |le: &str| sample(&text, &format!("pgha_pooler_client_wait_seconds_bucket{{{POOL},le=\"{le}\"}}"));
    let (le_01, le_05) = (bucket("0.1").unwrap(), bucket("0.5").unwrap());
    assert!(le_05 >= le_01 + 1.0, "no wait between 0.1 s and 0.5 s: {text}");
    let wait_sum = sample(&text, &series("pgha_pooler_client_wait_seconds_sum")).unwrap();
    assert!(wait_sum >= 0.25, "wait sum {wait_sum}");
    assert!(sample(&text, &series("pgbouncer_stats_received_bytes_total")).unwrap() > 0.0, "{text}");
    // The holder's transaction lasted the ~300 ms the waiter waited.
    let in_transaction = sample(&text, &series("pgbouncer_stats_server_in_transaction_seconds_total")).unwrap();
    assert!(in_transaction >= 0.25, "server_in_transaction_seconds {in_transaction}: {text}");
    let in_queries = sample(&text, &series("pgbouncer_stats_queries_duration_seconds_total")).unwrap();
    assert!(in_queries > 0.0 && in_queries <= in_transaction, "queries_duration_seconds {in_queries}: {text}");

    // Named prepared statements: one Parse from the client, one sent to the server, two Binds.
    let client = pooler.connect().await.unwrap();
    let statement = client.prepare("select $1::int4").await.unwrap();
    for i in 0..2 {
        client.query_one(&statement, &[&i]).await.unwrap();
    }
    let text = http_get(&addr, "/metrics").await.unwrap();
    let count = |name: &str| sample(&text, &series(name)).unwrap_or_else(|| panic!("{name} missing: {text}"));
    assert_eq!(count("pgbouncer_stats_client_parses_total"), 1.0, "{text}");
    assert_eq!(count("pgbouncer_stats_server_parses_total"), 1.0, "{text}");
    assert_eq!(count("pgbouncer_stats_binds_total"), 2.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listener_is_off_by_default() {
    let mut pg = PgInstance::init("pooler-nometrics", PgOptions::default()).await.unwrap();
    pg.start().await.unwrap();
    let pooler = PoolerProcess::start(&pg, "").await.unwrap();
    let log = pooler.log();
    assert!(!log.contains("serving Prometheus metrics"), "{log}");
}

/// A server connection idle past server_check_delay is `used`, not idle, on /metrics too
/// (pgbouncer_exporter's pgbouncer_pools_server_used_connections).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_idle_past_server_check_delay_is_counted_as_used() {
    let mut pg = PgInstance::init("pooler-metrics-used", PgOptions::default()).await.unwrap();
    pg.start().await.unwrap();
    let addr = format!("127.0.0.1:{}", harness::ports::free_port().unwrap());
    let settings = format!("pool_mode = \"transaction\"\nserver_check_delay = 1\nmetrics_listen = \"{addr}\"");
    let pooler = PoolerProcess::start(&pg, &settings).await.unwrap();
    let series = |name: &str| format!("{name}{{{POOL}}}");
    let client = pooler.connect().await.unwrap();
    client.simple_query("select 1").await.unwrap();
    let text = scrape_until(&addr, &series("pgbouncer_pools_server_used_connections"), 1.0).await;
    assert_eq!(sample(&text, &series("pgbouncer_pools_server_used_connections")), Some(1.0), "{text}");
    assert_eq!(sample(&text, &series("pgbouncer_pools_server_idle_connections")), Some(0.0), "{text}");
    client.simple_query("select 2").await.unwrap();
    let text = http_get(&addr, "/metrics").await.unwrap();
    let idle = sample(&text, &series("pgbouncer_pools_server_idle_connections"));
    let used = sample(&text, &series("pgbouncer_pools_server_used_connections"));
    assert_eq!(idle.zip(used).map(|(i, u)| i + u), Some(1.0), "{text}");
}
