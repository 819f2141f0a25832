//! PgBouncer's limits and timeouts, observed from clients: max_client_conn refuses with
//! PgBouncer's error, query_wait_timeout ends a client that waited too long for a server
//! connection (and query_wait_notify tells one that waits that it is queued),
//! idle_transaction_timeout ends a client idle inside a transaction, a client that
//! waited reserve_pool_timeout gets a reserve connection (and no more than reserve_pool_size
//! are opened), a slot freed under max_user_connections goes to a client waiting in
//! another pool, and the pools of databases the `*` entry serves are dropped once unused for
//! autodb_idle_timeout.

use harness::pooler::{refusal, server_error, PoolerProcess};
use harness::{PgInstance, PgOptions};
use std::time::{Duration, Instant};

async fn postgres() -> PgInstance {
    let mut pg = PgInstance::init("limits", PgOptions::default()).await.unwrap();
    pg.start().await.unwrap();
    pg
}

/// The server host `client`'s next transaction runs on: `127.0.0.1`, or `unix` over the
/// socket. One simple query is one transaction (tokio-postgres' query() would take two: its
/// prepare and its execution).
async fn server(client: &tokio_postgres::Client) -> String {
    let messages = client.simple_query("select coalesce(host(inet_server_addr()), 'unix')").await.unwrap();
    let value = messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0),
        _ => None,
    });
    value.unwrap_or_default().to_owned()
}

/// `client`'s next query waits for a server connection and ends with query_wait_timeout after
/// at least `min` and less than `max`.
async fn ends_with_query_wait_timeout(client: &tokio_postgres::Client, min: Duration, max: Duration) {
    let start = Instant::now();
    let err = client.simple_query("select 1").await.expect_err("no server connection is free");
    let waited = start.elapsed();
    assert_eq!(err.as_db_error().map(|e| e.message()), Some("query_wait_timeout"), "{err:?}");
    assert!(waited >= min && waited < max, "waited {waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_client_conn_refuses_with_pgbouncers_error_and_others_keep_working() {
    let pg = postgres().await;
    let pooler = PoolerProcess::start(&pg, "max_client_conn = 3").await.unwrap();
    // The readiness probe's connection closes asynchronously.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(pooler.connect().await.unwrap());
    }
    let Err(err) = pooler.connect().await else { panic!("a fourth client must be refused") };
    assert_eq!(refusal(err), ("08P01".into(), "no more connections allowed (max_client_conn)".into()));
    for client in &held {
        client.simple_query("select 1").await.unwrap();
    }
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    pooler.connect().await.unwrap().simple_query("select 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_wait_timeout_ends_a_client_that_cannot_get_a_server_connection() {
    let pg = postgres().await;
    let settings = "pool_mode = \"transaction\"\ndefault_pool_size = 1\nquery_wait_timeout = 1";
    let pooler = PoolerProcess::start(&pg, settings).await.unwrap();
    let holder = pooler.connect().await.unwrap();
    holder.batch_execute("begin; select 1").await.unwrap();
    let waiter = pooler.connect().await.unwrap();
    ends_with_query_wait_timeout(&waiter, Duration::from_millis(900), Duration::from_secs(3)).await;
    // The holder's transaction is unaffected and the pool works once it ends.
    holder.batch_execute("commit").await.unwrap();
    pooler.connect().await.unwrap().simple_query("select 1").await.unwrap();
}

/// query_wait_notify: a client waiting longer for a server connection is told so once with
/// PgBouncer's NOTICE, and its query then runs when a connection frees up; a shorter wait
/// sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_wait_notify_tells_a_waiting_client_it_is_queued() {
    let pg = postgres().await;
    let settings = "pool_mode = \"transaction\"\ndefault_pool_size = 1\nquery_wait_notify = 1\nquery_wait_timeout = 20";
    let pooler = PoolerProcess::start(&pg, settings).await.unwrap();
    let holder = pooler.connect().await.unwrap();
    let (waiter, mut connection) =
        tokio_postgres::connect(&pooler.dsn("postgres"), tokio_postgres::NoTls).await.unwrap();
    let (notices_tx, mut notices) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = futures_util::StreamExt::next(&mut messages).await {
            if let tokio_postgres::AsyncMessage::Notice(notice) = message {
                let _ = notices_tx.send((notice.severity().to_owned(), notice.message().to_owned()));
            }
        }
    });

    holder.batch_execute("begin; select 1").await.unwrap();
    let start = Instant::now();
    let query = tokio::spawn(async move {
        waiter.simple_query("select 1").await.unwrap();
        waiter
    });
    let (severity, message) = tokio::time::timeout(Duration::from_secs(5), notices.recv()).await.unwrap().unwrap();
    let told_after = start.elapsed();
    assert_eq!(severity, "NOTICE");
    assert_eq!(message, "No server connection available in postgres backend, client being queued");
    assert!(told_after >= Duration::from_millis(900), "told after {told_after:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!query.is_finished(), "still queued behind the holder's transaction");
    holder.batch_execute("commit").await.unwrap();
    let waiter = tokio::time::timeout(Duration::from_secs(5), query).await.unwrap().unwrap();

    holder.batch_execute("begin; select 1").await.unwrap();
    let query = tokio::spawn(async move { waiter.simple_query("select 1").await.unwrap() });
    tokio::time::sleep(Duration::from_millis(300)).await;
    holder.batch_execute("commit").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), query).await.unwrap().unwrap();
    assert!(notices.try_recv().is_err(), "a wait shorter than query_wait_notify is not told");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_waiting_past_reserve_pool_timeout_gets_a_reserve_connection_and_the_reserve_is_bounded() {
    let pg = postgres().await;
    let settings = "pool_mode = \"transaction\"\ndefault_pool_size = 1\nreserve_pool_size = 1\n\
                    reserve_pool_timeout = 0.5\nquery_wait_timeout = 2";
    let pooler = PoolerProcess::start(&pg, settings).await.unwrap();
    let holder = pooler.connect().await.unwrap();
    holder.batch_execute("begin; select 1").await.unwrap();
    // The pool's one connection is held: this client waits, then gets the reserve one.
    let waiter = pooler.connect().await.unwrap();
    let start = Instant::now();
    waiter.batch_execute("begin; select 1").await.unwrap();
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(400) && waited < Duration::from_secs(2), "waited {waited:?}");
    // Pool and reserve are both held now: a third client waits until query_wait_timeout.
    let third = pooler.connect().await.unwrap();
    ends_with_query_wait_timeout(&third, Duration::from_millis(1900), Duration::from_secs(4)).await;
    assert_eq!(pg.client_backends().await.unwrap(), 2, "pool_size 1 + reserve 1");
    waiter.batch_execute("commit").await.unwrap();
    holder.batch_execute("commit").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_transaction_timeout_ends_a_client_idle_in_a_transaction_and_frees_its_server() {
    let pg = postgres().await;
    let settings = "pool_mode = \"transaction\"\ndefault_pool_size = 1\nidle_transaction_timeout = 1";
    let pooler = PoolerProcess::start(&pg, settings).await.unwrap();
    let idle = pooler.connect().await.unwrap();
    idle.batch_execute("create table t (x int)").await.unwrap();
    idle.batch_execute("begin; insert into t values (1)").await.unwrap();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let err = idle.simple_query("commit").await.expect_err("the client should have been disconnected");
    let message = err.as_db_error().map(|e| e.message().to_owned());
    assert!(message.as_deref() == Some("idle transaction timeout") || idle.is_closed(), "{err:?}");
    // The server connection was closed, not pooled mid-transaction: the insert is gone and a
    // new client gets a working connection.
    let other = pooler.connect().await.unwrap();
    assert_eq!(first_value(&other, "select count(*) from t").await.as_deref(), Some("0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_waiting_under_max_user_connections_gets_the_slot_another_pool_frees() {
    let pg = postgres().await;
    // Two databases, one user: two pools sharing max_user_connections = 1.
    let settings = format!(
        "pool_mode = \"transaction\"\nmax_user_connections = 1\nquery_wait_timeout = 20\n\n\
         [databases.other]\nhost = \"127.0.0.1\"\nport = {}\ndbname = \"postgres\"",
        pg.port()
    );
    let pooler = PoolerProcess::start(&pg, &settings).await.unwrap();
    let fast = Duration::from_secs(3);
    // Logging in to `other` needs a connection: the idle one of pool `postgres` is closed for it.
    let other = tokio::time::timeout(fast, pooler.connect_dsn(&pooler.dsn("other")))
        .await
        .expect("an idle connection of another pool was evicted for the login")
        .unwrap();
    let holder = pooler.connect().await.unwrap();
    tokio::time::timeout(fast, holder.batch_execute("begin; select 1"))
        .await
        .expect("the idle connection of pool `other` was evicted for this transaction")
        .unwrap();
    let start = Instant::now();
    let waiting = tokio::spawn(async move { other.simple_query("select 2").await.map(|_| start.elapsed()) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "max_user_connections = 1 must make the other pool's client wait");
    holder.batch_execute("commit").await.unwrap();
    let waited = tokio::time::timeout(fast, waiting)
        .await
        .expect("the slot freed by pool `postgres` went to the client waiting in pool `other`")
        .unwrap()
        .unwrap();
    assert!(waited >= Duration::from_millis(450), "waited {waited:?}");
    // The connection that was closed for the waiter leaves PostgreSQL shortly after.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let open = pg.client_backends().await.unwrap();
        if open == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "max_user_connections = 1 exceeded: {open:?} server connections");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// server_lifetime: a connection older than it is not handed out again (it is closed at its
/// release, at the next checkout or by the pool's housekeeping, whichever comes first) and the
/// next transaction runs on a new one; a younger connection is reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_connection_past_server_lifetime_is_replaced_and_a_younger_one_reused() {
    let pg = postgres().await;
    let settings = "pool_mode = \"transaction\"\ndefault_pool_size = 1\nserver_lifetime = 1";
    let pooler = PoolerProcess::start(&pg, settings).await.unwrap();
    let client = pooler.connect().await.unwrap();
    let backend = || async { first_value(&client, "select pg_backend_pid()").await.unwrap() };
    let first = backend().await;
    assert_eq!(backend().await, first, "a connection younger than server_lifetime is reused");
    // Idle past the lifetime.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let second = backend().await;
    assert_ne!(second, first, "the connection outlived server_lifetime = 1 s");
    // Outlives the lifetime during a transaction.
    let aged = tokio::spawn({
        let client = pooler.connect().await.unwrap();
        async move { client.simple_query("select pg_sleep(1.2), pg_backend_pid()").await.map(|_| ()) }
    });
    aged.await.unwrap().unwrap();
    let third = backend().await;
    assert_ne!(third, second, "the connection that outlived server_lifetime during its transaction was reused");
}

/// The first column of the first row `sql` returns.
async fn first_value(client: &tokio_postgres::Client, sql: &str) -> Option<String> {
    let rows = client.simple_query(sql).await.unwrap();
    rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    })
}

/// PgBouncer 1.24's client limits: max_db_client_connections counts a database's clients over
/// all users, `[users.X] max_user_client_connections` a user's over all databases; a client
/// past either is refused with PgBouncer's words, a freed place is taken again, SHOW
/// DATABASES and SHOW USERS show limit and count, and admin_users are not held back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_limits_per_database_and_per_user_refuse_with_pgbouncers_errors() {
    let pg = postgres().await;
    let pooler =
        PoolerProcess::start(&pg, "stats_users = [\"postgres\"]\nmax_db_client_connections = 2").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut held = vec![pooler.connect().await.unwrap(), pooler.connect().await.unwrap()];
    let Err(err) = pooler.connect().await else { panic!("a third client of the database must be refused") };
    assert_eq!(refusal(err), ("08P01".into(), "client connections exceeded (max_db_client_connections)".into()));
    let console = pooler.connect_dsn(&pooler.dsn("pgbouncer")).await.unwrap();
    let databases = harness::pooler::show(&console, "DATABASES").await;
    let row = databases.iter().find(|r| r["name"] == "postgres").expect("the database's row");
    assert_eq!((row["max_client_connections"].as_str(), row["current_client_connections"].as_str()), ("2", "2"));
    let users = harness::pooler::show(&console, "USERS").await;
    let row = users.iter().find(|r| r["name"] == "postgres").expect("a user with a pool has a row");
    assert_eq!((row["max_user_client_connections"].as_str(), row["current_client_connections"].as_str()), ("0", "2"));
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    held.push(pooler.connect().await.unwrap());
    for client in &held {
        client.simple_query("select 1").await.unwrap();
    }
    drop((held, console, pooler));

    let settings = "[users.postgres]\nmax_user_client_connections = 1";
    let pooler = PoolerProcess::start(&pg, settings).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first = pooler.connect().await.unwrap();
    let Err(err) = pooler.connect().await else { panic!("a second client of the user must be refused") };
    assert_eq!(refusal(err), ("08P01".into(), "client connections exceeded (max_user_client_connections)".into()));
    first.simple_query("select 1").await.unwrap();
    drop((first, pooler));

    let settings = "admin_users = [\"postgres\"]\nmax_db_client_connections = 1\nmax_user_client_connections = 1";
    let pooler = PoolerProcess::start(&pg, settings).await.unwrap();
    let admins = [pooler.connect().await.unwrap(), pooler.connect().await.unwrap(), pooler.connect().await.unwrap()];
    for client in &admins {
        client.simple_query("select 1").await.unwrap();
    }
}

/// query_timeout: a query the server has not answered within it ends its client with
/// PgBouncer's `query_timeout`, and the pooler cancels it on the server (PostgreSQL would run
/// it to its end otherwise); transaction_timeout ends a client whose transaction lasts longer,
/// busy or idle; shorter ones are not touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_timeout_and_transaction_timeout_end_the_client_and_stop_the_query() {
    let pg = postgres().await;
    let settings = "pool_mode = \"transaction\"\nquery_timeout = 1\ntransaction_timeout = 3";
    let pooler = PoolerProcess::start(&pg, settings).await.unwrap();
    let other = pooler.connect().await.unwrap();

    let slow = pooler.connect().await.unwrap();
    let started = Instant::now();
    let err = slow.simple_query("select pg_sleep(30) /* slow one */").await.expect_err("query_timeout");
    let took = started.elapsed();
    assert_eq!(err.as_db_error().map(|e| (e.code().code(), e.message())), Some(("08P01", "query_timeout")), "{err:?}");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "ended after {took:?}");
    let running = "select count(*) from pg_stat_activity where query like '%slow one%' and state = 'active' \
                   and pid <> pg_backend_pid()";
    harness::wait_for("the slow query to be cancelled on the server", Duration::from_secs(5), || async {
        Ok((pg.sql_value(running).await?.as_deref() == Some("0")).then_some(()))
    })
    .await
    .unwrap();
    other.simple_query("select pg_sleep(0.5)").await.unwrap();

    // A transaction that stays open past transaction_timeout, idle or not.
    let long = pooler.connect().await.unwrap();
    long.batch_execute("BEGIN; SELECT 1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    long.simple_query("select pg_sleep(0.5)").await.unwrap();
    let started = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Err(e) = long.simple_query("select 1").await {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the transaction must be ended");
    assert!(started.elapsed() < Duration::from_secs(3), "ended after {:?}", started.elapsed());
    let fatal = err.as_db_error().map(|e| (e.code().code().to_owned(), e.message().to_owned()));
    // The FATAL arrives while the client waits between its queries; the next query may find
    // the connection closed instead.
    assert!(fatal == Some(("08P01".into(), "transaction timeout".into())) || err.is_closed(), "{err:?}");
    // A transaction shorter than the limit commits.
    let quick = pooler.connect().await.unwrap();
    quick.batch_execute("BEGIN; SELECT pg_sleep(0.5); COMMIT").await.unwrap();
    other.simple_query("select 1").await.unwrap();
}

/// server_login_retry: after a failed login to a server, clients that would open a new
/// connection to it are refused at once with PgBouncer's "server login has been failing" (and
/// the cause) instead of each trying again; after the wait the next client tries again. Other
/// databases are not touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failed_server_login_clients_fail_fast_until_server_login_retry_has_passed() {
    let pg = postgres().await;
    let nowhere = harness::ports::free_port().unwrap();
    let settings = format!("server_login_retry = 2\n[databases.nowhere]\nhost = \"127.0.0.1\"\nport = {nowhere}");
    let pooler = PoolerProcess::start(&pg, &settings).await.unwrap();
    let dsn = format!("host=127.0.0.1 port={} user=postgres dbname=nowhere", pooler.port());
    let message =
        |err: anyhow::Error| server_error(&err).map(|e| e.message().to_owned()).unwrap_or_else(|| format!("{err:#}"));
    let first = message(pooler.connect_dsn(&dsn).await.expect_err("nothing listens there"));
    assert!(!first.contains("server login has been failing"), "the first client tries: {first}");
    let failed_at = Instant::now();
    let second = message(pooler.connect_dsn(&dsn).await.expect_err("still nothing there"));
    assert!(
        second.starts_with("server login has been failing, try again later (server_login_retry)")
            && second.contains(&first),
        "a client within server_login_retry is refused at once with the cause: {second}"
    );
    pooler.connect().await.unwrap().simple_query("select 1").await.unwrap();
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(failed_at.elapsed()) + Duration::from_millis(200)).await;
    let third = message(pooler.connect_dsn(&dsn).await.expect_err("still nothing there"));
    assert!(!third.contains("server login has been failing"), "after the wait a client tries again: {third}");
    // The harness reads the log through a pipe: the third line may come a moment later.
    harness::wait_for("three refusals in the log", Duration::from_secs(5), || async {
        Ok((pooler.log().matches("login refused: no server connection").count() == 3).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", pooler.log()));
}

/// A database with several hosts (PgBouncer's host list) opens its server connections on each
/// in turn; server_round_robin then spreads one client's transactions over them (the
/// connection idle longest goes next), where the default reuses the one released last. The
/// hosts here are the same PostgreSQL over TCP and over its Unix socket, told apart by
/// `inet_server_addr()` (NULL over a Unix socket).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_list_and_server_round_robin_spread_transactions_over_the_hosts() {
    let pg = postgres().await;
    let settings = format!(
        "admin_users = [\"postgres\"]\npool_mode = \"transaction\"\nserver_round_robin = true\n\
         [databases.both]\nhost = \"127.0.0.1,{}\"\nport = {}\ndbname = \"postgres\"",
        pg.socket_dir().display(),
        pg.port()
    );
    let pooler = PoolerProcess::start(&pg, &settings).await.unwrap();
    let dsn = format!("host=127.0.0.1 port={} user=postgres dbname=both", pooler.port());
    let (first, second) = (pooler.connect_dsn(&dsn).await.unwrap(), pooler.connect_dsn(&dsn).await.unwrap());
    first.batch_execute("begin").await.unwrap();
    second.batch_execute("begin").await.unwrap();
    let mut opened = [server(&first).await, server(&second).await];
    opened.sort();
    assert_eq!(opened, ["127.0.0.1", "unix"], "one server connection on each host");
    first.batch_execute("commit").await.unwrap();
    second.batch_execute("commit").await.unwrap();
    let mut turns = Vec::new();
    for _ in 0..6 {
        turns.push(server(&first).await);
    }
    assert!(turns.windows(2).all(|w| w[0] != w[1]), "round robin alternates: {turns:?}");

    let console = pooler.connect_dsn(&pooler.dsn("pgbouncer")).await.unwrap();
    console.simple_query("SET server_round_robin = 0").await.unwrap();
    let mut turns = Vec::new();
    for _ in 0..6 {
        turns.push(server(&first).await);
    }
    assert!(turns.windows(2).all(|w| w[0] == w[1]), "the last released goes again: {turns:?}");
    let databases = harness::pooler::show(&console, "DATABASES").await;
    let row = databases.iter().find(|r| r["name"] == "both").expect("the database's row");
    assert_eq!(row["host"], format!("127.0.0.1,{}", pg.socket_dir().display()));
}

/// load_balance_hosts = "disable" (PgBouncer 1.24's), for one database: its new server
/// connections all go to the first host of its list (three open at once, all on the Unix
/// socket) while a database without the setting takes its hosts in turn. With a first host
/// that cannot be reached (a socket directory that does not exist), the client's query runs on
/// the next host, and the connections after it stay there. SHOW DATABASES and SHOW POOLS say which mode a host list uses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_balance_hosts_disable_keeps_to_one_host_until_it_fails() {
    let pg = postgres().await;
    let socket = pg.socket_dir().display().to_string();
    let settings = format!(
        "admin_users = [\"postgres\"]\npool_mode = \"transaction\"\nserver_login_retry = 30\n\
         [databases.sticky]\nhost = \"{socket},127.0.0.1\"\nport = {port}\ndbname = \"postgres\"\n\
         load_balance_hosts = \"disable\"\n\
         [databases.spread]\nhost = \"{socket},127.0.0.1\"\nport = {port}\ndbname = \"postgres\"\n\
         [databases.failover]\nhost = \"/nonexistent-pgha-dir,127.0.0.1,{socket}\"\nport = {port}\n\
         dbname = \"postgres\"\nload_balance_hosts = \"disable\"",
        port = pg.port()
    );
    let pooler = PoolerProcess::start(&pg, &settings).await.unwrap();
    // Three transactions at once need three server connections: where did they open?
    let hosts_of_three = |database: &'static str| {
        let dsn = format!("host=127.0.0.1 port={} user=postgres dbname={database}", pooler.port());
        let pooler = &pooler;
        async move {
            let mut clients = Vec::new();
            for _ in 0..3 {
                let client = pooler.connect_dsn(&dsn).await.unwrap();
                client.batch_execute("begin").await.unwrap();
                clients.push(client);
            }
            let mut hosts = Vec::new();
            for client in &clients {
                hosts.push(server(client).await);
                client.batch_execute("commit").await.unwrap();
            }
            hosts.sort();
            hosts
        }
    };
    assert_eq!(hosts_of_three("sticky").await, ["unix", "unix", "unix"]);
    // In turn: the socket, 127.0.0.1, the socket.
    assert_eq!(hosts_of_three("spread").await, ["127.0.0.1", "unix", "unix"]);

    // The first host fails: the next one serves the same checkout, and keeps serving. Without
    // server_login_retry nothing skips the failed host: the mode itself moves on.
    let console = pooler.connect_dsn(&pooler.dsn("pgbouncer")).await.unwrap();
    console.simple_query("SET server_login_retry = 0").await.unwrap();
    let dsn = format!("host=127.0.0.1 port={} user=postgres dbname=failover", pooler.port());
    let first = pooler.connect_dsn(&dsn).await.unwrap();
    assert_eq!(server(&first).await, "127.0.0.1");
    assert_eq!(hosts_of_three("failover").await, ["127.0.0.1", "127.0.0.1", "127.0.0.1"]);

    let databases = harness::pooler::show(&console, "DATABASES").await;
    let mode = |name: &str| {
        let row = databases.iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("{name}: {databases:?}"));
        row["load_balance_hosts"].clone()
    };
    assert_eq!(
        (mode("sticky"), mode("spread"), mode("failover")),
        ("disable".into(), "round-robin".into(), "disable".into())
    );
    let pools = harness::pooler::show(&console, "POOLS").await;
    let row = pools.iter().find(|r| r["database"] == "sticky").unwrap_or_else(|| panic!("{pools:?}"));
    assert_eq!(row["load_balance_hosts"], "disable");
}

/// The `*` entry serves any other database name, and (autodb_idle_timeout, as in PgBouncer)
/// drops such a database's pools once they have had no client and no server connection for
/// that long: a database that does not exist, and one whose last client left. A connected
/// client, even idle, keeps its pool; SHOW DATABASES lists the automatic databases in use;
/// the next client gets a new pool; `SET autodb_idle_timeout = 0` keeps them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wildcard_database_s_unused_pools_are_dropped_after_autodb_idle_timeout() {
    let pg = postgres().await;
    pg.sql("create database shop").await.unwrap();
    let settings = format!(
        "admin_users = [\"postgres\"]\nautodb_idle_timeout = 1\nserver_idle_timeout = 1\n\
         [databases.\"*\"]\nhost = \"127.0.0.1\"\nport = {}",
        pg.port()
    );
    let pooler = PoolerProcess::start(&pg, &settings).await.unwrap();
    let console = pooler.connect_dsn(&pooler.dsn("pgbouncer")).await.unwrap();
    let databases_with_pools = || async {
        let pools = harness::pooler::show(&console, "POOLS").await;
        let mut names: Vec<String> = pools.iter().map(|r| r["database"].clone()).collect();
        names.sort();
        names.dedup();
        names
    };

    let missing = pooler.connect_dsn(&pooler.dsn("nosuch")).await.expect_err("no such database on the server");
    let missing = server_error(&missing).map(|e| e.code().code().to_owned());
    assert_eq!(missing.as_deref(), Some("3D000"), "the server's own refusal");
    let shop = pooler.connect_dsn(&pooler.dsn("shop")).await.unwrap();
    let rows = shop.simple_query("select current_database()").await.unwrap();
    let name = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0),
        _ => None,
    });
    assert_eq!(name, Some("shop"));
    let databases = harness::pooler::show(&console, "DATABASES").await;
    let row = databases.iter().find(|r| r["name"] == "shop").expect("an automatic database in use is listed");
    assert_eq!((row["database"].as_str(), row["port"].clone()), ("shop", pg.port().to_string()));
    assert!(databases.iter().all(|r| r["name"] != "*"), "the `*` entry itself is not a database: {databases:?}");

    // The idle client outlasts autodb_idle_timeout and server_idle_timeout several times over.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(databases_with_pools().await, ["postgres", "shop"], "the pool of a database that failed is gone");
    shop.simple_query("select 1").await.unwrap();
    drop(shop);
    harness::wait_for("shop's pool to be dropped", Duration::from_secs(15), || async {
        Ok((databases_with_pools().await == ["postgres"]).then_some(()))
    })
    .await
    .unwrap();
    let databases = harness::pooler::show(&console, "DATABASES").await;
    assert!(databases.iter().all(|r| r["name"] != "shop"), "{databases:?}");
    // The pool leaves the registry a moment before its line is logged.
    harness::wait_for("both drops in the log", Duration::from_secs(5), || async {
        Ok((pooler.log().matches("pool dropped").count() == 2).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", pooler.log()));

    console.simple_query("SET autodb_idle_timeout = 0").await.unwrap();
    let shop = pooler.connect_dsn(&pooler.dsn("shop")).await.unwrap();
    shop.simple_query("select 1").await.unwrap();
    drop(shop);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(databases_with_pools().await, ["postgres", "shop"], "autodb_idle_timeout = 0 keeps the pools");
    assert_eq!(pooler.log().matches("pool dropped").count(), 2);
}

/// A session-mode client connected straight to the pooler, with the way its connection ended.
async fn session_client(
    pooler: &PoolerProcess,
) -> (tokio_postgres::Client, tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>) {
    let (client, connection) = tokio_postgres::connect(&pooler.dsn("postgres"), tokio_postgres::NoTls).await.unwrap();
    (client, tokio::spawn(connection))
}

/// server_fast_close (PgBouncer's), session mode: after RECONNECT a client between
/// transactions is disconnected at once with its server connection, told why; a client in a
/// transaction finishes it (nothing is interrupted) and is disconnected when it commits. The
/// closed server connections are gone from PostgreSQL, and a new client gets a fresh one.
/// With the setting off the sessions keep their connections to their end, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_fast_close_ends_session_mode_clients_between_transactions() {
    let pg = postgres().await;
    let settings = "pool_mode = \"session\"\nserver_fast_close = true\nadmin_users = [\"postgres\"]";
    let pooler = PoolerProcess::start(&pg, settings).await.unwrap();
    async fn backend_pid(client: &tokio_postgres::Client) -> Option<String> {
        let messages = client.simple_query("select pg_backend_pid()").await.unwrap();
        messages.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
    }
    let (idle, idle_ended) = session_client(&pooler).await;
    let (busy, busy_ended) = session_client(&pooler).await;
    let idle_pid = backend_pid(&idle).await.unwrap();
    busy.batch_execute("begin; create temp table t (n int); insert into t values (1)").await.unwrap();
    let busy_pid = backend_pid(&busy).await.unwrap();

    let console = pooler.connect_dsn(&pooler.dsn("pgbouncer")).await.unwrap();
    console.simple_query("RECONNECT").await.unwrap();

    let ended = tokio::time::timeout(Duration::from_secs(5), idle_ended).await.expect("the idle session was not ended");
    let err = ended.unwrap().expect_err("the idle session ended without an error");
    let db = err.as_db_error().unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(
        (db.code().code(), db.message()),
        ("08P01", "database configuration changed (server_fast_close): reconnect")
    );
    // The transaction goes on to its end on the same server connection.
    assert_eq!(backend_pid(&busy).await.unwrap(), busy_pid);
    busy.batch_execute("insert into t values (2)").await.unwrap();
    assert!(!busy_ended.is_finished(), "a session in a transaction was interrupted");
    busy.batch_execute("commit").await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), busy_ended).await.expect("not ended after its commit");
    assert!(ended.unwrap().is_err());

    let (pg, idle_pid, busy_pid) = (&pg, &idle_pid, &busy_pid);
    harness::wait_for("the closed server connections to leave", Duration::from_secs(5), || async move {
        let now = pg.sql_value("select string_agg(pid::text, ',') from pg_stat_activity").await?.unwrap_or_default();
        let gone = !now.split(',').any(|p| p == idle_pid.as_str() || p == busy_pid.as_str());
        Ok(gone.then_some(()))
    })
    .await
    .unwrap();
    let (fresh, _fresh_ended) = session_client(&pooler).await;
    let fresh_pid = backend_pid(&fresh).await.unwrap();
    assert!(fresh_pid != *idle_pid && fresh_pid != *busy_pid);

    // Off: a RECONNECT leaves the session its connection until it leaves.
    console.simple_query("SET server_fast_close = 0").await.unwrap();
    console.simple_query("RECONNECT").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(backend_pid(&fresh).await.unwrap(), fresh_pid);
}
