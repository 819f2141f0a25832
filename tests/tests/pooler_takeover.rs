//! Upgrading a real `pgha pooler` without refusing a connection: a second process started with
//! `--takeover` gets the first one's listening sockets (TCP, Unix, /metrics, the takeover
//! socket) and serves them; the first stops accepting, finishes with its connected clients
//! (a transaction under way commits, a cancel for one of its queries that reaches the new
//! process is passed back to it) and exits once they have left.

use harness::pooler::{show, ConnectionLoad, PoolerProcess};
use harness::{run_pgha, wait_for, PgInstance, PgOptions, PghaProcess};
use std::time::{Duration, Instant};

async fn postgres() -> PgInstance {
    let mut pg = PgInstance::init("pooler-takeover", PgOptions::default()).await.unwrap();
    pg.start().await.unwrap();
    pg.sql("CREATE TABLE orders (id int PRIMARY KEY)").await.unwrap();
    pg
}

/// The inode of the socket listening on 127.0.0.1:`port` (/proc/net/tcp).
fn listening_inode(port: u16) -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local_port = fields.get(1)?.rsplit(':').next()?;
        let listening = fields.get(3) == Some(&"0A");
        (listening && u16::from_str_radix(local_port, 16).ok() == Some(port))
            .then(|| fields.get(9).map(|s| s.to_string()))?
    })
}

/// Whether process `pid` has a descriptor of socket `inode`.
fn holds(pid: i32, inode: &str) -> bool {
    let wanted = format!("socket:[{inode}]");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries.flatten().any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy() == wanted))
        })
        .unwrap_or(false)
}

async fn wait_for_log(what: &str, process: &PghaProcess, line: &str) {
    wait_for(what, Duration::from_secs(20), || async { Ok(process.log().contains(line).then_some(())) })
        .await
        .unwrap_or_else(|e| panic!("{e}\nlog:\n{}", process.log()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_pooler_takes_over_without_refusing_a_connection_and_the_old_one_finishes_its_clients() {
    let pg = postgres().await;
    let metrics_port = harness::ports::free_port().unwrap();
    let settings = format!(
        "pool_mode = \"transaction\"\nadmin_users = [\"postgres\"]\nmetrics_listen = \"127.0.0.1:{metrics_port}\""
    );
    let mut old = PoolerProcess::start(&pg, &settings).await.unwrap();
    let port = old.port();
    let old_pid = old.process().process().pid().as_raw();
    let config = std::fs::read_to_string(old.process().config_path()).unwrap();
    let takeover_socket = old.socket_dir().join(format!(".s.PGHA.{port}.takeover"));
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&takeover_socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "only the pooler's own user may take its sockets");

    // Clients of the old process: one inside a transaction, one running a long query.
    let staying = old.connect_dsn(&format!("{} application_name=staying", old.dsn("postgres"))).await.unwrap();
    staying.batch_execute("BEGIN; INSERT INTO orders VALUES (1)").await.unwrap();
    let sleeper = old.connect().await.unwrap();
    let cancel = sleeper.cancel_token();
    let sleeping = tokio::spawn(async move { sleeper.simple_query("select pg_sleep(30)").await.map(|_| ()) });

    let load = ConnectionLoad::start(vec![old.dsn("postgres"), old.dsn("postgres"), old.unix_dsn("postgres")]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = load.succeeded();
    assert!(before > 0, "the load runs through the old pooler: {:?}", load.failures());

    let listener = listening_inode(port).expect("the pooler's listening socket");
    let mut new = PghaProcess::start("pooler-new", &["pooler", "--takeover"], &config).unwrap();
    wait_for_log("the new pooler to serve", &new, "takeover: serving the listening sockets").await;
    wait_for_log("the old pooler to stop accepting", old.process(), "taken over: serving the connected clients").await;
    let new_pid = new.process().pid().as_raw();
    assert_eq!(listening_inode(port).as_deref(), Some(listener.as_str()), "the same socket, never closed");
    assert!(holds(new_pid, &listener), "the new pooler serves the listening socket");
    assert!(!holds(old_pid, &listener), "the old pooler no longer accepts:\n{}", old.log());

    // A cancel for the old process's query reaches the new one (the only one accepting) and is
    // passed back: the query ends at once.
    let asked = Instant::now();
    cancel.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), sleeping).await.expect("the cancel took effect").unwrap();
    let err = ended.expect_err("pg_sleep(30) was cancelled");
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("57014"), "{err}");
    assert!(asked.elapsed() < Duration::from_secs(2), "cancel took {:?}", asked.elapsed());

    // The old process still serves its client's transaction.
    staying.batch_execute("INSERT INTO orders VALUES (2); COMMIT").await.unwrap();

    // New connections go to the new process: its SHOW CLIENTS has none of the old one's, and
    // /metrics answers from it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let admin = old.connect_dsn(&old.dsn("pgbouncer")).await.unwrap();
    let clients = show(&admin, "CLIENTS").await;
    assert!(
        clients.iter().all(|c| c.get("application_name").map(String::as_str) != Some("staying")),
        "a client of the old process shows in the new one: {clients:?}"
    );
    let metrics = harness::pooler::http_get(&format!("127.0.0.1:{metrics_port}"), "/metrics").await.unwrap();
    assert!(metrics.contains("pgha_pooler_"), "{metrics}");
    drop(admin);

    load.stop_expecting_no_failure(before).await;

    // Its last client gone, the old process exits by itself, leaving the Unix socket file to
    // the new one.
    let committed = pg.sql_value("SELECT count(*) FROM orders").await.unwrap();
    assert_eq!(committed.as_deref(), Some("2"), "the old process's transaction committed");
    drop(staying);
    let status = old.process().process().wait_exit(Duration::from_secs(15)).await.unwrap();
    assert!(status.success(), "the old pooler exits 0: {status:?}\n{}", old.log());
    let unix = old.connect_dsn(&old.unix_dsn("postgres")).await.unwrap();
    unix.simple_query("select 1").await.unwrap();
    drop(unix);

    // The takeover socket went along too: a third process takes over from the second.
    let mut newer = PghaProcess::start("pooler-newer", &["pooler", "--takeover"], &config).unwrap();
    wait_for_log("the third pooler to serve", &newer, "takeover: serving the listening sockets").await;
    let status = new.process().wait_exit(Duration::from_secs(15)).await.unwrap();
    assert!(status.success(), "the second pooler exits 0 once it has no client: {status:?}\n{}", new.log());
    assert!(holds(newer.process().pid().as_raw(), &listener));
    let client = old.connect().await.unwrap();
    client.simple_query("select 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_starts_a_pooler_where_none_runs_and_refusals_say_what_to_do() {
    let pg = postgres().await;
    let mut pooler = PoolerProcess::start(&pg, "pool_mode = \"transaction\"").await.unwrap();
    let config = std::fs::read_to_string(pooler.process().config_path()).unwrap();
    let dir = pooler.socket_dir().to_owned();

    // Something that is not a takeover request gets an error line, and the pooler goes on.
    let path = dir.join(format!(".s.PGHA.{}.takeover", pooler.port()));
    let answer = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::os::unix::net::UnixStream::connect(path).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.write_all(b"GIVE ME YOUR SOCKETS\n").unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    })
    .await
    .unwrap();
    assert!(answer.starts_with("ERROR expected \"PGHA-TAKEOVER 1 <pid>\""), "{answer:?}");
    pooler.connect().await.unwrap().simple_query("select 1").await.unwrap();

    // --takeover where no pooler runs starts a pooler all the same (one service definition
    // starts and replaces it), saying so.
    let other_port = harness::ports::free_port().unwrap();
    let lonely = config.replace(&format!("listen_port = {}", pooler.port()), &format!("listen_port = {other_port}"));
    let first = PghaProcess::start("pooler-first", &["pooler", "--takeover"], &lonely).unwrap();
    let dsn = format!("host=127.0.0.1 port={other_port} user=postgres dbname=postgres");
    wait_for("a pooler started with --takeover and nothing to take", Duration::from_secs(15), || async {
        pooler.connect_dsn(&dsn).await?.simple_query("select 1").await?;
        Ok(Some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", first.log()));
    let expected = format!(".s.PGHA.{other_port}.takeover");
    assert!(
        first.log().contains("no pooler runs with this config") && first.log().contains(&expected),
        "{}",
        first.log()
    );
    drop(first);

    // With the takeover socket turned off there is nothing to ask.
    std::fs::write(dir.join("off.toml"), format!("takeover_socket = \"off\"\n{config}")).unwrap();
    let off = dir.join("off.toml");
    let out =
        run_pgha(&["pooler", "--takeover", "--config", off.to_str().unwrap()], Duration::from_secs(20)).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no takeover socket"), "{stderr}");

    // A pooler draining after SIGTERM hands nothing over.
    let client = pooler.connect().await.unwrap();
    client.batch_execute("BEGIN").await.unwrap();
    pooler.process().process().signal(nix::sys::signal::Signal::SIGTERM).unwrap();
    wait_for("the pooler to start draining", Duration::from_secs(10), || async {
        Ok(pooler.log().contains("pooler stopping").then_some(()))
    })
    .await
    .unwrap();
    let out = run_pgha(
        &["pooler", "--takeover", "--config", &pooler.process().config_path().display().to_string()],
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("this pooler is shutting down; start the new one without --takeover"), "{stderr}");
    drop(client);
}
