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
