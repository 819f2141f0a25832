//! The pooler following a real cluster through its DCS (`[cluster]`, `cluster_role =
//! "primary"`): clients reach the primary, and across a switchover their connections, kept open,
//! see a pause and no error: new transactions wait while the switchover runs, and run on the new
//! primary once it has promoted. Read-only databases (`cluster_role = "replica"`) go to the
//! healthy standbys.

use harness::agent_checks::{another_primary, healthy};
use harness::cluster::{http, PghaCluster, Timing, SUPERUSER_PASSWORD};
use harness::{wait_for, PghaProcess};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn first_value(messages: &[tokio_postgres::SimpleQueryMessage]) -> Option<String> {
    messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    })
}

/// The port of the server a client's query runs on.
async fn server_port(client: &tokio_postgres::Client) -> anyhow::Result<u16> {
    let rows = client.simple_query("select current_setting('port')").await?;
    Ok(first_value(&rows).unwrap_or_default().parse()?)
}

/// A pooler following `cluster` (etcd or the built-in Raft) for database `postgres` (and the
/// `[databases]` entries in `more`), once it serves a query: (process, client DSN, its scratch
/// dir).
async fn start_pooler(cluster: &PghaCluster, more: &str) -> (PghaProcess, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("userlist.txt"), format!("\"postgres\" \"{SUPERUSER_PASSWORD}\"\n")).unwrap();
    let port = harness::ports::free_port().unwrap();
    let dcs = match &cluster.etcd {
        Some(etcd) => {
            let endpoints: Vec<String> = etcd.endpoints().iter().map(|e| format!("\"{e}\"")).collect();
            format!("etcd_endpoints = [{}]", endpoints.join(", "))
        }
        None => {
            let members: Vec<String> = cluster.raft_members().iter().map(|m| format!("\"{m}\"")).collect();
            format!("raft_members = [{}]\nraft_secret = \"{}\"", members.join(", "), harness::raft::RAFT_SECRET)
        }
    };
    let config = format!(
        "listen_addr = \"127.0.0.1\"\nlisten_port = {port}\nunix_socket_dir = \"\"\nauth_type = \"trust\"\n\
         auth_file = \"{dir}/userlist.txt\"\npool_mode = \"transaction\"\nquery_wait_timeout = 30\n\
         takeover_socket = \"{dir}/pooler.takeover\"\n\n\
         [databases.postgres]\ncluster_role = \"primary\"\n{more}\n[cluster]\nscope = \"{scope}\"\n{dcs}\n",
        dir = dir.path().display(),
        scope = cluster.scope,
    );
    let pooler = PghaProcess::start("pooler-cluster", &["pooler"], &config).unwrap();
    let dsn = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=5");
    wait_for("the pooler to reach the primary", Duration::from_secs(30), || async {
        connect(&dsn).await?.simple_query("select 1").await?;
        Ok(Some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", pooler.log()));
    (pooler, dsn, dir)
}

async fn connect(dsn: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pooler_follows_the_primary_across_a_switchover() {
    a_writer_sees_a_pause_across_a_switchover(None).await;
}

/// A switchover scheduled a few seconds ahead is a pause too: the pooler holds new transactions
/// from just before its time, when no DCS event tells it anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pooler_holds_its_clients_for_a_scheduled_switchover() {
    a_writer_sees_a_pause_across_a_switchover(Some(Duration::from_secs(6))).await;
}

/// Switches over (at once, or `scheduled` from the request) while a client writes through the
/// pooler every 20 ms on one connection: no write fails, the client never reconnects.
async fn a_writer_sees_a_pause_across_a_switchover(scheduled: Option<Duration>) {
    let cluster = PghaCluster::start_on_etcd(2, Timing::default()).await.unwrap_or_else(|e| panic!("{e:#}"));
    let old = healthy(&cluster).await;
    let new = 1 - old;
    let (pooler, dsn, _dir) = start_pooler(&cluster, "").await;
    let client = connect(&dsn).await.unwrap();
    assert_eq!(server_port(&client).await.unwrap(), cluster.nodes[old].pg_port);
    client
        .batch_execute("create table if not exists moves(id serial primary key, at timestamptz default now())")
        .await
        .unwrap();

    // A client writing through the pooler all along, on one connection.
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let reconnects = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let writer = {
        let (ok, failed, reconnects, errors) = (ok.clone(), failed.clone(), reconnects.clone(), errors.clone());
        let mut client = connect(&dsn).await.unwrap();
        let dsn = dsn.clone();
        tokio::spawn(async move {
            loop {
                match client.simple_query("insert into moves default values").await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        errors
                            .lock()
                            .unwrap()
                            .push(e.as_db_error().map(|d| d.message().to_owned()).unwrap_or(e.to_string()));
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                // As an application's pool would: a closed connection is opened again.
                if client.is_closed() {
                    if let Ok(c) = connect(&dsn).await {
                        client = c;
                        reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let at = scheduled.map(|ahead| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        let at = consensus::cluster::timestamp::Timestamp((now + ahead).as_secs() as i64);
        format!(r#","scheduled_at":"{at}""#)
    });
    let body = format!(
        r#"{{"leader":"{}","candidate":"{}"{}}}"#,
        cluster.nodes[old].name,
        cluster.nodes[new].name,
        at.as_deref().unwrap_or("")
    );
    let (status, text) = http(cluster.nodes[old].api_port, "POST", "/switchover", Some(&body)).await.unwrap();
    assert_eq!(status, if scheduled.is_some() { 202 } else { 200 }, "{text}\n{}", cluster.logs());

    // The connection opened before the switchover now runs on the new primary.
    wait_for("the pooler's clients to reach the new primary", Duration::from_secs(30), || async {
        Ok((server_port(&client).await.ok() == Some(cluster.nodes[new].pg_port)).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", pooler.log(), cluster.logs()));
    let before = ok.load(Ordering::Relaxed);
    wait_for("the writer to write on the new primary", Duration::from_secs(10), || async {
        Ok((ok.load(Ordering::Relaxed) > before + 10).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}; errors {:?}\n{}", errors.lock().unwrap(), pooler.log()));
    writer.abort();
    let rows = first_value(&client.simple_query("select count(*) from moves").await.unwrap()).unwrap_or_default();
    let (written, errors_list) = (ok.load(Ordering::Relaxed), errors.clone());
    let errors = failed.load(Ordering::Relaxed);
    let reconnected = reconnects.load(Ordering::Relaxed);
    eprintln!(
        "switchover through the pooler: {written} inserts acknowledged, {errors} failed ({:?}), {reconnected} \
         reconnects, {rows} rows on the new primary",
        self::errors_seen(&errors_list)
    );
    assert!(rows.parse::<u64>().unwrap() >= written, "acknowledged inserts lost: {rows} < {written}");
    // A planned switchover is a pause for the pooler's clients, not an error.
    assert_eq!((errors, reconnected), (0, 0), "{:?}\n{}", errors_seen(&errors_list), pooler.log());
    let log = pooler.log();
    assert!(log.contains("following the cluster's primary"), "{log}");
}

fn errors_seen(errors: &std::sync::Mutex<Vec<String>>) -> Vec<String> {
    let mut seen = errors.lock().unwrap().clone();
    seen.dedup();
    seen
}

/// On the built-in Raft, the pooler reads the agents' own Raft group; when the primary's node is
/// lost its clients, kept connected, run their next transactions on the promoted replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pooler_follows_a_failover_on_the_built_in_raft() {
    let mut cluster = PghaCluster::start_on_raft(3, Timing::default()).await.unwrap_or_else(|e| panic!("{e:#}"));
    let old = healthy(&cluster).await;
    let (pooler, dsn, _dir) = start_pooler(&cluster, "").await;
    let client = connect(&dsn).await.unwrap();
    assert_eq!(server_port(&client).await.unwrap(), cluster.nodes[old].pg_port);
    cluster.nodes[old].kill_node();
    let new = another_primary(&cluster, old, 60).await;
    wait_for("the pooler's client to reach the new primary", Duration::from_secs(30), || async {
        Ok((server_port(&client).await.ok() == Some(cluster.nodes[new].pg_port)).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", pooler.log(), cluster.logs()));
    client.batch_execute("create table after_failover(id int)").await.unwrap();
    assert!(!client.is_closed(), "the client's connection was closed");
}

/// `cluster_role = "replica"`: clients go to the healthy standbys, new server connections taking
/// them in turn; writes there get PostgreSQL's own read-only error; a standby that goes down
/// gets no new connections (refused ones go to the next standby, and its member key stops
/// listing it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_clients_are_spread_over_the_healthy_standbys() {
    let mut cluster = PghaCluster::start_on_etcd(3, Timing::default()).await.unwrap_or_else(|e| panic!("{e:#}"));
    let primary = healthy(&cluster).await;
    let standbys: Vec<usize> = (0..cluster.nodes.len()).filter(|&i| i != primary).collect();
    let standby_ports: std::collections::BTreeSet<u16> = standbys.iter().map(|&i| cluster.nodes[i].pg_port).collect();
    let (pooler, dsn, _dir) =
        start_pooler(&cluster, "\n[databases.reads]\ndbname = \"postgres\"\ncluster_role = \"replica\"\n").await;
    let reads = dsn.replace("dbname=postgres", "dbname=reads");

    // Clients that each hold a transaction open make the pool open that many server connections.
    let ports_of_concurrent_transactions = |n: usize| {
        let reads = reads.clone();
        async move {
            let mut clients = Vec::new();
            for _ in 0..n {
                let client = connect(&reads).await?;
                client.batch_execute("begin").await?;
                clients.push(client);
            }
            let mut ports = std::collections::BTreeSet::new();
            for client in &clients {
                let rows = client.simple_query("select current_setting('port'), pg_is_in_recovery()").await?;
                let in_recovery = rows.iter().find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(1).map(str::to_owned),
                    _ => None,
                });
                anyhow::ensure!(in_recovery.as_deref() == Some("t"), "a read-only client reached the primary");
                ports.insert(first_value(&rows).unwrap_or_default().parse::<u16>()?);
                client.batch_execute("commit").await?;
            }
            anyhow::Ok(ports)
        }
    };
    let ports = ports_of_concurrent_transactions(4).await.unwrap_or_else(|e| panic!("{e:#}\n{}", pooler.log()));
    assert_eq!(ports, standby_ports, "four server connections, two standbys\n{}", pooler.log());

    let client = connect(&reads).await.unwrap();
    let refused = client.batch_execute("create table written_on_a_standby(id int)").await.unwrap_err();
    assert_eq!(refused.as_db_error().map(|e| e.code().code()), Some("25006"), "a write on a standby: {refused:?}");
    assert!(!client.is_closed());

    // One standby goes down: read-only clients all run on the other.
    let (lost, kept) = (standbys[0], standbys[1]);
    cluster.nodes[lost].kill_node();
    let kept_port = cluster.nodes[kept].pg_port;
    wait_for("read-only clients to run on the remaining standby only", Duration::from_secs(30), || async {
        let ports = ports_of_concurrent_transactions(4).await?;
        Ok((ports == [kept_port].into()).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", pooler.log()));
    // Once the lost standby's member key is gone, the pooler lists one standby.
    let (kept_addr, lost_addr) =
        (format!("127.0.0.1:{kept_port}"), format!("127.0.0.1:{}", cluster.nodes[lost].pg_port));
    wait_for("the pooler to list one standby", Duration::from_secs(30), || async {
        let log = pooler.log();
        let last = log.lines().rfind(|l| l.contains("the cluster's healthy standbys")).map(str::to_owned);
        Ok(last.filter(|l| l.contains(&kept_addr) && !l.contains(&lost_addr)).map(|_| ()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", pooler.log()));
    // The writers' database still goes to the primary.
    let writer = connect(&dsn).await.unwrap();
    assert_eq!(server_port(&writer).await.unwrap(), cluster.nodes[primary].pg_port);
    let log = pooler.log();
    // Until its member key expired, the lost standby's refusals sent new connections to the other.
    assert!(log.contains("trying the database's next server"), "{log}");
    // The remaining standby's connections stayed when the other left the list.
    let kept_server = format!("server={kept_addr} ");
    let closed_kept = log.lines().find(|l| {
        l.contains("closing server connection")
            && l.contains(&kept_server)
            && (l.contains("no longer one of the database's") || l.contains("moved to another server"))
    });
    assert!(closed_kept.is_none(), "{closed_kept:?}\n{log}");
}

/// A pooler that follows the cluster is replaced with `--takeover` under a load of new
/// connections: the new process reads the DCS before it serves (until then the old one goes on
/// accepting), so no connection is refused and none gets "no primary known".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooler_that_follows_the_cluster_is_taken_over_without_a_refused_connection() {
    let cluster = PghaCluster::start_on_etcd(1, Timing::FAST).await.unwrap_or_else(|e| panic!("{e:#}"));
    let primary = healthy(&cluster).await;
    let (mut old, dsn, _dir) = start_pooler(&cluster, "").await;
    let load = harness::pooler::ConnectionLoad::start(vec![dsn.clone(), dsn.clone(), dsn.clone()]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = load.succeeded();
    assert!(before > 0, "the load runs through the old pooler: {:?}", load.failures());

    let config = std::fs::read_to_string(old.config_path()).unwrap();
    let new = PghaProcess::start("pooler-cluster-new", &["pooler", "--takeover"], &config).unwrap();
    wait_for("the new pooler to serve", Duration::from_secs(30), || async {
        Ok(new.log().contains("takeover: serving the listening sockets").then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", new.log()));
    // Its clients gone (each connection is short), the old pooler exits by itself.
    let status = old.process().wait_exit(Duration::from_secs(15)).await.unwrap();
    assert!(status.success(), "{status:?}\n{}", old.log());
    tokio::time::sleep(Duration::from_millis(300)).await;
    load.stop_expecting_no_failure(before).await;
    let client = connect(&dsn).await.unwrap();
    assert_eq!(server_port(&client).await.unwrap(), cluster.nodes[primary].pg_port);
}
