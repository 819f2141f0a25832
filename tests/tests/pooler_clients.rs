//! Real clients through a real `pgha pooler` in front of real PostgreSQL 15: psql, pgbench in
//! its three protocols, tokio-postgres, COPY both ways, in session and transaction modes.

use harness::pooler::PoolerProcess;
use harness::{PgInstance, PgOptions};
use std::process::Command;
use std::time::Duration;

async fn postgres() -> PgInstance {
    let mut pg = PgInstance::init("pooled", PgOptions::default().param("max_connections", "300")).await.unwrap();
    pg.start().await.unwrap();
    pg
}

fn run(program: &str, args: &[&str]) -> String {
    let bin = format!("/usr/lib/postgresql/15/bin/{program}");
    let out = Command::new(bin).args(args).env("PGCONNECT_TIMEOUT", "10").output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{program} {args:?} failed:\n{text}");
    text
}

async fn psql_and_pgbench(mode: &str) {
    let pg = postgres().await;
    let pooler = PoolerProcess::start(&pg, &format!("pool_mode = \"{mode}\"\ndefault_pool_size = 4")).await.unwrap();
    let port = pooler.port().to_string();
    let socket = pooler.socket_dir().display().to_string();
    for host in ["127.0.0.1", socket.as_str()] {
        let out = run("psql", &["-h", host, "-p", &port, "-U", "postgres", "-d", "postgres", "-AtXc", "select 40 + 2"]);
        assert_eq!(out.trim(), "42", "psql via {host}");
    }
    let tcp = ["-h", "127.0.0.1", "-p", port.as_str(), "-U", "postgres"];
    run("pgbench", &[&tcp[..], &["-i", "-s", "1", "-q", "postgres"]].concat());
    // One thread per client: pgbench 15 prepares with a blocking PQprepare inside the
    // transaction, which stalls a thread's other clients that hold server connections.
    for protocol in ["simple", "extended", "prepared"] {
        let out = run(
            "pgbench",
            &[&tcp[..], &["-n", "-M", protocol, "-c", "8", "-j", "8", "-t", "200", "postgres"]].concat(),
        );
        assert!(out.contains("number of transactions actually processed: 1600/1600"), "{mode}/{protocol}:\n{out}");
    }
    let out = run("pgbench", &[&tcp[..], &["-n", "-S", "-C", "-c", "4", "-t", "50", "postgres"]].concat());
    assert!(out.contains("processed: 200/200"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_and_pgbench_work_in_session_mode() {
    psql_and_pgbench("session").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_and_pgbench_work_in_transaction_mode() {
    psql_and_pgbench("transaction").await;
}

async fn copy_round_trip(mode: &str) {
    use futures_util::SinkExt;
    use futures_util::StreamExt;
    let pg = postgres().await;
    let pooler = PoolerProcess::start(&pg, &format!("pool_mode = \"{mode}\"\ndefault_pool_size = 2")).await.unwrap();
    let client = pooler.connect().await.unwrap();
    client.batch_execute("create table t (id int, body text)").await.unwrap();
    let sink = client.copy_in("copy t from stdin").await.unwrap();
    futures_util::pin_mut!(sink);
    let mut sent = String::new();
    for i in 0..5000 {
        sent.push_str(&format!("{i}\trow {i} {}\n", "x".repeat(i % 300)));
    }
    sink.send(bytes::Bytes::from(sent.clone())).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 5000);
    let stream = client.copy_out("copy (select * from t order by id) to stdout").await.unwrap();
    futures_util::pin_mut!(stream);
    let mut got = Vec::new();
    while let Some(chunk) = stream.next().await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(String::from_utf8(got).unwrap(), sent, "{mode}: COPY out returns what COPY in stored");
    // The connection still works afterwards.
    let n: i64 = client.query_one("select count(*) from t", &[]).await.unwrap().get(0);
    assert_eq!(n, 5000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out_round_trip_in_both_modes() {
    copy_round_trip("session").await;
    copy_round_trip("transaction").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_pg_sleep_through_the_pooler_returns_within_1s() {
    let pg = postgres().await;
    for mode in ["session", "transaction"] {
        let pooler = PoolerProcess::start(&pg, &format!("pool_mode = \"{mode}\"")).await.unwrap();
        let client = pooler.connect().await.unwrap();
        let token = client.cancel_token();
        let sleeper = tokio::spawn(async move {
            let start = std::time::Instant::now();
            let r = client.simple_query("select pg_sleep(30)").await;
            (r.map(|_| ()), start.elapsed())
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let cancel_start = std::time::Instant::now();
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
        let (result, _) = tokio::time::timeout(Duration::from_secs(5), sleeper).await.unwrap().unwrap();
        let took = cancel_start.elapsed();
        let err = result.expect_err("the query should have been cancelled");
        assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::QUERY_CANCELED), "{mode}: {err}");
        assert!(took < Duration::from_secs(1), "{mode}: cancel took {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_clients_log_in_with_the_auth_file_password_and_a_wrong_one_gets_28p01() {
    let pg = postgres().await;
    let pooler = PoolerProcess::start(&pg, "auth_type = \"scram-sha-256\"\npool_mode = \"transaction\"").await.unwrap();
    let good = format!("{} password={}", pooler.dsn("postgres"), pg.password());
    let client = pooler.connect_dsn(&good).await.unwrap();
    let rows = client.query_one("select 6 * 7", &[]).await.unwrap();
    assert_eq!(rows.get::<_, i32>(0), 42);
    let bad = format!("{} password=wrong", pooler.dsn("postgres"));
    let err = pooler.connect_dsn(&bad).await.err().map(|e| format!("{e:#}")).unwrap_or_default();
    assert!(err.contains("28P01") || err.contains("password authentication failed"), "{err}");
}

/// The ParameterStatus messages of a raw login (trusted): name -> value, up to ReadyForQuery.
async fn welcome(pooler: &PoolerProcess, params: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", pooler.port())).await.unwrap();
    let mut all = vec![("user", "postgres"), ("database", "postgres")];
    all.extend_from_slice(params);
    stream.write_all(&harness::pooler::startup_packet(&all)).await.unwrap();
    let mut reported = std::collections::HashMap::new();
    loop {
        let mut header = [0u8; 5];
        stream.read_exact(&mut header).await.unwrap();
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        stream.read_exact(&mut body).await.unwrap();
        match header[0] {
            b'S' => {
                let mut parts = body.split(|&b| b == 0).map(|s| String::from_utf8_lossy(s).into_owned());
                let (name, value) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
                reported.insert(name, value);
            }
            b'Z' => return reported,
            b'E' => panic!("login refused: {}", String::from_utf8_lossy(&body)),
            _ => {}
        }
    }
}

/// Each client is welcomed with its own tracked parameters (application_name, TimeZone, ...)
/// and the server's other values, also when the welcome encoded for the parameters most clients
/// share is reused, and after a client with other parameters came in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_is_welcomed_with_its_own_parameters() {
    let pg = postgres().await;
    let pooler = PoolerProcess::start(&pg, "pool_mode = \"transaction\"").await.unwrap();
    let logins: [&[(&str, &str)]; 5] = [
        &[("application_name", "a")],
        &[("application_name", "b")],
        &[("application_name", "a")],
        &[("application_name", "c"), ("TimeZone", "Asia/Tokyo")],
        &[("application_name", "a")],
    ];
    for params in logins {
        let reported = welcome(&pooler, params).await;
        for (name, value) in params {
            assert_eq!(reported.get(*name).map(String::as_str), Some(*value), "{params:?}: {reported:?}");
        }
        if !params.iter().any(|(name, _)| *name == "TimeZone") {
            assert_ne!(reported.get("TimeZone").map(String::as_str), Some("Asia/Tokyo"), "{reported:?}");
        }
        assert!(reported.get("server_version").is_some_and(|v| v.starts_with("15")), "{reported:?}");
        assert_eq!(reported.get("client_encoding").map(String::as_str), Some("UTF8"), "{reported:?}");
    }
}

/// application_name_add_host: the server and SHOW CLIENTS see each client's application_name
/// with where it connects from (`app` when it gave none), over TCP and the Unix socket, in
/// transaction mode where two clients take turns on one server connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_name_add_host_tells_the_server_where_each_client_connects_from() {
    let pg = postgres().await;
    let settings = "pool_mode = \"transaction\"\ndefault_pool_size = 1\napplication_name_add_host = true\n\
                    admin_users = [\"postgres\"]";
    let pooler = PoolerProcess::start(&pg, settings).await.unwrap();
    let named = pooler.connect_dsn(&format!("{} application_name=billing", pooler.dsn("postgres"))).await.unwrap();
    let unnamed = pooler.connect_dsn(&pooler.dsn("postgres")).await.unwrap();
    let local = pooler.connect_dsn(&format!("{} application_name=cron", pooler.unix_dsn("postgres"))).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..2 {
        for client in [&named, &unnamed, &local] {
            let row = client
                .query_one("select application_name from pg_stat_activity where pid = pg_backend_pid()", &[])
                .await
                .unwrap();
            seen.push(row.get::<_, String>(0));
        }
    }
    let tcp = |name: &str, value: &str| {
        value.strip_prefix(&format!("{name} - 127.0.0.1:")).is_some_and(|port| port.parse::<u16>().is_ok())
    };
    for round in seen.chunks(3) {
        assert!(tcp("billing", &round[0]), "{seen:?}");
        assert!(tcp("app", &round[1]), "{seen:?}");
        assert_eq!(round[2], format!("cron - unix (pid={})", std::process::id()), "{seen:?}");
    }
    assert_ne!(seen[0], seen[1]);
    let console = pooler.connect_dsn(&pooler.dsn("pgbouncer")).await.unwrap();
    let clients = harness::pooler::show(&console, "CLIENTS").await;
    for name in &seen[..3] {
        let row = clients.iter().find(|r| r["application_name"] == *name).expect("SHOW CLIENTS has it");
        if let Some(port) = name.rsplit(':').next().filter(|_| name.contains("127.0.0.1")) {
            assert_eq!(&row["port"], port, "{row:?}");
        }
    }
}

/// disable_pqexec: extended-protocol queries are served, a simple query ends its client with
/// the setting's name (SQLSTATE 08P01), other clients go on, and the console still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_pqexec_serves_only_the_extended_protocol() {
    let pg = postgres().await;
    let settings = "pool_mode = \"transaction\"\ndisable_pqexec = true\nadmin_users = [\"postgres\"]";
    let pooler = harness::pooler::PoolerProcess::start_extended(&pg, settings).await.unwrap();
    let bystander = pooler.connect().await.unwrap();
    let client = pooler.connect().await.unwrap();
    let row = client.query_one("select $1::int + 1", &[&41i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    let err = client.simple_query("select 1; select 2").await.expect_err("the simple protocol is refused");
    let db = err.as_db_error().expect("the pooler's ErrorResponse");
    assert_eq!((db.code().code(), db.severity()), ("08P01", "FATAL"));
    assert!(db.message().contains("disable_pqexec"), "{}", db.message());
    assert!(client.is_closed() || client.query_one("select 1", &[]).await.is_err(), "the client is disconnected");
    assert_eq!(bystander.query_one("select 7", &[]).await.unwrap().get::<_, i32>(0), 7);
    let console = pooler.connect_dsn(&pooler.dsn("pgbouncer")).await.unwrap();
    let config = harness::pooler::show(&console, "CONFIG").await;
    let row = config.iter().find(|r| r["key"] == "disable_pqexec").expect("SHOW CONFIG lists it");
    assert_eq!(row["value"], "1");
}

/// The Unix socket gets unix_socket_mode (PgBouncer's default 0777: any local user may
/// connect, then authenticate) and, when set, unix_socket_group; a group that does not exist
/// stops the pooler with a message naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unix_socket_gets_unix_socket_mode_and_group() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let pg = postgres().await;
    let socket = |pooler: &PoolerProcess| pooler.socket_dir().join(format!(".s.PGSQL.{}", pooler.port()));
    let pooler = PoolerProcess::start(&pg, "").await.unwrap();
    let meta = std::fs::metadata(socket(&pooler)).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o777);
    drop(pooler);

    let group = nix::unistd::Group::from_name("pgha").unwrap().expect("the harness's pgha group");
    let pooler = PoolerProcess::start(&pg, "unix_socket_mode = \"0770\"\nunix_socket_group = \"pgha\"").await.unwrap();
    let meta = std::fs::metadata(socket(&pooler)).unwrap();
    assert_eq!((meta.permissions().mode() & 0o7777, meta.gid()), (0o770, group.gid.as_raw()));
    let client = pooler.connect_dsn(&pooler.unix_dsn("postgres")).await.unwrap();
    client.simple_query("select 1").await.unwrap();
    drop(pooler);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("userlist.txt"), "").unwrap();
    let port = harness::ports::free_port().unwrap();
    let config = harness::pooler::pooler_config(&pg, port, dir.path(), "unix_socket_group = \"no-such-group-pgha\"");
    let mut failing = harness::PghaProcess::start("pooler-bad-group", &["pooler"], &config).unwrap();
    let status = failing.process().wait_exit(Duration::from_secs(10)).await.unwrap();
    let log = failing.log();
    assert!(!status.success(), "a pooler with a missing unix_socket_group started:\n{log}");
    assert!(log.contains("unix_socket_group") && log.contains("no group named"), "{log}");
}

/// How the pooler ended a connection after `client` said Terminate: "reset" (RST), "fin"
/// (end of stream) or what it sent. With `and_close`, the Terminate and the client's FIN go
/// out in one segment (corked), so the pooler sees both in one wake, as it does from libpq.
async fn ending_after_terminate(mut client: tokio::net::TcpStream, and_close: bool) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    socket2::SockRef::from(&client).set_tcp_cork(true).unwrap();
    client.write_all(b"X\0\0\0\x04").await.unwrap();
    let socket = socket2::SockRef::from(&client);
    if and_close {
        socket.shutdown(std::net::Shutdown::Write).unwrap();
    }
    socket.set_tcp_cork(false).unwrap();
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf)).await {
        Err(_) => "nothing within 5 s".into(),
        Ok(Ok(0)) => "fin".into(),
        Ok(Ok(n)) => format!("bytes {:?}", &buf[..n]),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => "reset".into(),
        Ok(Err(e)) => format!("error {e}"),
    }
}

/// client_close_reset (on by default): a client that said Terminate and closed its side gets
/// a reset, so its host keeps no TIME_WAIT entry; one that said Terminate and keeps its side
/// open gets the FIN handshake (it may be waiting for the pooler to close first). With the
/// setting off, both get a FIN, as from PgBouncer. tokio-postgres, which shuts its side down
/// after Terminate, sees its connection end without an error either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_terminates_and_closes_is_reset_and_one_that_stays_gets_a_fin() {
    let pg = postgres().await;
    for (setting, closed_client_gets) in [("", "reset"), ("client_close_reset = false", "fin")] {
        let pooler = PoolerProcess::start(&pg, &format!("pool_mode = \"transaction\"\n{setting}")).await.unwrap();
        for _ in 0..3 {
            let ending = ending_after_terminate(harness::pooler::raw_login(pooler.port()).await.unwrap(), true).await;
            assert_eq!(ending, closed_client_gets, "Terminate and FIN, with {setting:?}");
            let ending = ending_after_terminate(harness::pooler::raw_login(pooler.port()).await.unwrap(), false).await;
            assert_eq!(ending, "fin", "Terminate alone, with {setting:?}");
        }
        let dsn = format!("{} password={}", pooler.dsn("postgres"), pg.password());
        for _ in 0..50 {
            let (client, connection) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await.unwrap();
            let connection = tokio::spawn(connection);
            let row = client.query_one("select 1 + 1", &[]).await.unwrap();
            assert_eq!(row.get::<_, i32>(0), 2);
            drop(client);
            let ended = tokio::time::timeout(Duration::from_secs(5), connection).await.unwrap().unwrap();
            assert!(ended.is_ok(), "tokio-postgres saw its connection end with {ended:?}, with {setting:?}");
        }
    }
}
