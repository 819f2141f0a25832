//! The console session driven by real clients: tokio-postgres `simple_query` over an
//! in-process stream, and psql over loopback TCP, against an in-memory `AdminBackend` (the
//! trait is the boundary; the real backend is tested by the pool side's integration tests).

use super::*;
use crate::admin::command::ShutdownMode;
use crate::admin::rows::{
    ConfigRow, DatabaseRow, Lists, MemRow, PoolRow, PoolerState, SocketRow, StatsCounters, StatsRow, UserRow,
};
use crate::protocol::message::write_authentication_ok;
use crate::protocol::{parse_startup_packet, StartupPacket};
use async_trait::async_trait;
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::SimpleQueryMessage;

#[derive(Default)]
struct Memory {
    calls: Mutex<Vec<String>>,
    paused: Mutex<bool>,
}

impl Memory {
    fn record(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }
}

#[async_trait]
impl AdminBackend for Memory {
    async fn pools(&self) -> Vec<PoolRow> {
        vec![PoolRow {
            database: "app".into(),
            user: "alice".into(),
            cl_active: 3,
            cl_waiting: 1,
            sv_idle: 2,
            maxwait_us: 1500,
            pool_mode: "transaction".into(),
            ..Default::default()
        }]
    }
    async fn stats(&self) -> Vec<StatsRow> {
        let c = StatsCounters { xact_count: 7, query_count: 9, ..Default::default() };
        vec![StatsRow { database: "app".into(), totals: c, averages: c }]
    }
    async fn servers(&self) -> Vec<SocketRow> {
        Vec::new()
    }
    async fn clients(&self) -> Vec<SocketRow> {
        vec![SocketRow {
            kind: 'C',
            user: "alice".into(),
            database: "app".into(),
            replication: "none".into(),
            state: "active".into(),
            addr: "127.0.0.1".into(),
            port: 50000,
            local_addr: "127.0.0.1".into(),
            local_port: 6432,
            connect_time: UNIX_EPOCH,
            request_time: UNIX_EPOCH,
            wait: 0,
            wait_us: 0,
            close_needed: false,
            ptr: "0x1".into(),
            link: String::new(),
            remote_pid: 0,
            tls: String::new(),
            application_name: "psql".into(),
            prepared_statements: 0,
            id: 1,
        }]
    }
    async fn databases(&self) -> Vec<DatabaseRow> {
        vec![DatabaseRow { name: "app".into(), host: Some("127.0.0.1".into()), port: 5432, ..Default::default() }]
    }
    async fn users(&self) -> Vec<UserRow> {
        vec![UserRow { name: "alice".into(), ..Default::default() }]
    }
    async fn config(&self) -> Vec<ConfigRow> {
        vec![ConfigRow {
            key: "default_pool_size".into(),
            value: Some("20".into()),
            default: Some("20".into()),
            changeable: true,
        }]
    }
    async fn lists(&self) -> Lists {
        Lists { databases: 1, users: 1, pools: 1, ..Default::default() }
    }
    async fn state(&self) -> PoolerState {
        if *self.paused.lock().unwrap() {
            PoolerState::Paused
        } else {
            PoolerState::Active
        }
    }
    async fn mem(&self) -> Vec<MemRow> {
        Vec::new()
    }
    async fn pause(&self, db: Option<&str>) -> Result<(), AdminError> {
        self.record(format!("pause {db:?}"));
        let mut paused = self.paused.lock().unwrap();
        if *paused {
            return Err(AdminError::AlreadyPaused);
        }
        *paused = true;
        Ok(())
    }
    async fn resume(&self, db: Option<&str>) -> Result<(), AdminError> {
        self.record(format!("resume {db:?}"));
        let mut paused = self.paused.lock().unwrap();
        if !*paused {
            return Err(AdminError::NotPaused);
        }
        *paused = false;
        Ok(())
    }
    async fn kill(&self, db: Option<&str>) -> Result<(), AdminError> {
        self.record(format!("kill {db:?}"));
        match db {
            Some("nope") => Err(AdminError::NoSuchDatabase("nope".into())),
            _ => Ok(()),
        }
    }
    async fn kill_client(&self, id: u64) -> Result<(), AdminError> {
        self.record(format!("kill_client {id}"));
        Err(AdminError::ClientNotFound)
    }
    async fn reconnect(&self, db: Option<&str>) -> Result<(), AdminError> {
        self.record(format!("reconnect {db:?}"));
        Ok(())
    }
    async fn wait_close(&self, db: Option<&str>) -> Result<(), AdminError> {
        self.record(format!("wait_close {db:?}"));
        Ok(())
    }
    async fn disable(&self, db: &str) -> Result<(), AdminError> {
        self.record(format!("disable {db}"));
        Ok(())
    }
    async fn enable(&self, db: &str) -> Result<(), AdminError> {
        self.record(format!("enable {db}"));
        Ok(())
    }
    async fn reload(&self) -> Result<(), AdminError> {
        self.record("reload".into());
        Err(AdminError::ReloadFailed)
    }
    async fn shutdown(&self, mode: ShutdownMode) -> Result<(), AdminError> {
        self.record(format!("shutdown {mode:?}"));
        Ok(())
    }
}

/// Accepts one console login on `stream`: startup (answering SSL/GSS requests with 'N'),
/// AuthenticationOk, then the session.
async fn console<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    access: Access,
    backend: Arc<Memory>,
) -> Result<(), SessionError> {
    let mut buf = BytesMut::new();
    loop {
        match parse_startup_packet(&buf).unwrap() {
            Some((StartupPacket::Startup(_), used)) => {
                let _ = buf.split_to(used);
                break;
            }
            Some((StartupPacket::SslRequest | StartupPacket::GssEncRequest, used)) => {
                let _ = buf.split_to(used);
                stream.write_all(b"N").await.unwrap();
            }
            Some((other, _)) => panic!("unexpected {other:?}"),
            None => assert!(stream.read_buf(&mut buf).await.unwrap() > 0, "client left before startup"),
        }
    }
    let mut out = BytesMut::new();
    write_authentication_ok(&mut out);
    stream.write_all(&out).await.unwrap();
    serve_admin(&mut stream, &mut buf, access, backend.as_ref(), SessionOptions::default()).await
}

async fn connect(
    access: Access,
) -> (tokio_postgres::Client, Arc<Memory>, tokio::task::JoinHandle<Result<(), SessionError>>) {
    let backend = Arc::new(Memory::default());
    let (client_side, server_side) = tokio::io::duplex(1 << 16);
    let session = tokio::spawn(console(server_side, access, Arc::clone(&backend)));
    let mut config = tokio_postgres::Config::new();
    config.user("admin").dbname("pgbouncer");
    let (client, connection) = config.connect_raw(client_side, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    (client, backend, session)
}

/// Column names and rows (as text) of one SHOW.
async fn show(client: &tokio_postgres::Client, query: &str) -> (Vec<String>, Vec<Vec<Option<String>>>) {
    let messages = client.simple_query(query).await.unwrap_or_else(|e| panic!("{query}: {e}"));
    let mut columns = Vec::new();
    let mut rows = Vec::new();
    for m in messages {
        match m {
            SimpleQueryMessage::RowDescription(cols) => columns = cols.iter().map(|c| c.name().to_string()).collect(),
            SimpleQueryMessage::Row(row) => rows.push((0..row.len()).map(|i| row.get(i).map(str::to_string)).collect()),
            _ => {}
        }
    }
    (columns, rows)
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

async fn error_of(client: &tokio_postgres::Client, query: &str) -> (String, String) {
    let err = client.simple_query(query).await.expect_err(query);
    let db = err.as_db_error().unwrap_or_else(|| panic!("{query}: {err}"));
    (db.code().code().to_string(), db.message().to_string())
}

#[tokio::test]
async fn every_show_answers_with_pgbouncers_columns() {
    let (client, _, _) = connect(Access::Stats).await;
    let cases = [
        ("SHOW POOLS", "database user cl_active cl_waiting cl_active_cancel_req cl_waiting_cancel_req sv_active sv_active_cancel sv_being_canceled sv_idle sv_used sv_tested sv_login maxwait maxwait_us pool_mode load_balance_hosts"),
        ("show stats", "database total_server_assignment_count total_xact_count total_query_count total_received total_sent total_xact_time total_query_time total_wait_time total_client_parse_count total_server_parse_count total_bind_count total_client_login_count avg_server_assignment_count avg_xact_count avg_query_count avg_recv avg_sent avg_xact_time avg_query_time avg_wait_time avg_client_parse_count avg_server_parse_count avg_bind_count avg_client_login_count"),
        ("SHOW STATS_TOTALS;", "database server_assignment_count xact_count query_count bytes_received bytes_sent xact_time query_time wait_time client_parse_count server_parse_count bind_count client_login_count"),
        ("SHOW STATS_AVERAGES", "database server_assignment_count xact_count query_count bytes_received bytes_sent xact_time query_time wait_time avg_client_parse_count avg_server_parse_count avg_bind_count avg_client_login_count"),
        ("SHOW TOTALS", "name value"),
        ("SHOW SERVERS", "type user database replication state addr port local_addr local_port connect_time request_time wait wait_us close_needed ptr link remote_pid tls application_name prepared_statements id"),
        ("SHOW CLIENTS", "type user database replication state addr port local_addr local_port connect_time request_time wait wait_us close_needed ptr link remote_pid tls application_name prepared_statements id"),
        ("SHOW DATABASES", "name host port database force_user pool_size min_pool_size reserve_pool_size server_lifetime pool_mode load_balance_hosts max_connections current_connections max_client_connections current_client_connections paused disabled"),
        ("SHOW USERS", "name pool_size reserve_pool_size pool_mode max_user_connections current_connections max_user_client_connections current_client_connections"),
        ("SHOW CONFIG", "key value default changeable"),
        ("SHOW LISTS", "list items"),
        ("SHOW VERSION", "version"),
        ("SHOW STATE", "key value"),
        ("SHOW MEM", "name size used free memtotal"),
        ("SHOW FDS", "fd task user database addr port cancel link client_encoding std_strings datestyle timezone password scram_client_key scram_server_key"),
    ];
    for (query, expected) in cases {
        let (columns, _) = show(&client, query).await;
        assert_eq!(columns, words(expected), "{query}");
    }
    let (_, pools) = show(&client, "show pools").await;
    assert_eq!(pools[0][0..4], [Some("app".into()), Some("alice".into()), Some("3".into()), Some("1".into())]);
    assert_eq!(pools[0][16], None, "load_balance_hosts is NULL when not set");
    let (_, clients) = show(&client, "show clients").await;
    assert_eq!(clients[0][9].as_deref(), Some("1970-01-01 00:00:00 UTC"));
    let (_, lists) = show(&client, "show lists").await;
    assert_eq!(lists.len(), 14);
    let (_, version) = show(&client, "show version").await;
    assert!(version[0][0].as_deref().unwrap_or_default().starts_with("PgBouncer 1.25.2"));
    let (_, totals) = show(&client, "show totals").await;
    assert!(totals.contains(&vec![Some("total_xact_count".into()), Some("7".into())]));
}

#[tokio::test]
async fn admin_commands_reach_the_backend_and_errors_use_pgbouncers_text() {
    let (client, backend, _) = connect(Access::Admin).await;
    client.simple_query("PAUSE app").await.unwrap();
    assert_eq!(show(&client, "SHOW STATE").await.1[1], vec![Some("paused".into()), Some("yes".into())]);
    assert_eq!(error_of(&client, "pause").await, ("08P01".into(), "already suspended/paused".into()));
    client.simple_query("resume app;").await.unwrap();
    assert_eq!(error_of(&client, "RESUME").await, ("08P01".into(), "pooler is not paused/suspended".into()));
    client.simple_query("KILL app").await.unwrap();
    assert_eq!(error_of(&client, "kill nope").await.1, "no such database: nope");
    assert_eq!(error_of(&client, "kill_client 9").await.1, "client not found");
    for q in ["RECONNECT", "RECONNECT app", "WAIT_CLOSE", "DISABLE app", "ENABLE app", "SHUTDOWN WAIT_FOR_CLIENTS"] {
        client.simple_query(q).await.unwrap_or_else(|e| panic!("{q}: {e}"));
    }
    assert_eq!(
        error_of(&client, "RELOAD").await,
        ("F0000".into(), "RELOAD failed, see logs for additional details".into())
    );
    assert_eq!(
        error_of(&client, "SUSPEND").await.1,
        "SUSPEND (online restart by socket hand-over) is not supported by this pooler"
    );
    assert_eq!(
        error_of(&client, "SET default_pool_size = 30").await.1,
        "SET (edit pooler.toml and RELOAD) is not supported by this pooler"
    );
    assert_eq!(error_of(&client, "FOO").await, ("08P01".into(), "invalid command 'FOO', use SHOW HELP;".into()));
    assert_eq!(error_of(&client, "DISABLE").await.1, "a database is required");
    // SHOW HELP answers with a notice and completes.
    client.simple_query("SHOW HELP").await.unwrap();
    // An empty query is fine, as in PostgreSQL.
    client.simple_query(";").await.unwrap();
    let calls = backend.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        vec![
            "pause Some(\"app\")",
            "pause None",
            "resume Some(\"app\")",
            "resume None",
            "kill Some(\"app\")",
            "kill Some(\"nope\")",
            "kill_client 9",
            "reconnect None",
            "reconnect Some(\"app\")",
            "wait_close None",
            "disable app",
            "enable app",
            "shutdown WaitForClients",
            "reload",
        ]
    );
}

#[tokio::test]
async fn stats_users_may_only_show() {
    let (client, backend, _) = connect(Access::Stats).await;
    show(&client, "SHOW POOLS").await;
    for q in ["PAUSE", "RESUME app", "KILL app", "RELOAD", "SHUTDOWN", "SET a = b", "DISABLE app"] {
        assert_eq!(error_of(&client, q).await, ("08P01".into(), "admin access needed".into()), "{q}");
    }
    assert!(backend.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn extended_protocol_is_refused_and_the_session_ends() {
    let (client, _, session) = connect(Access::Admin).await;
    let err = client.query("SHOW POOLS", &[]).await.unwrap_err();
    let text = err.as_db_error().map(|e| e.message().to_string()).unwrap_or_else(|| err.to_string());
    assert_eq!(text, "extended query protocol not supported by admin console");
    assert!(matches!(session.await.unwrap(), Err(SessionError::Protocol('P'))));
}

#[tokio::test]
async fn terminate_ends_the_session_cleanly() {
    let (client, _, session) = connect(Access::Admin).await;
    drop(client);
    assert!(session.await.unwrap().is_ok());
}

#[tokio::test]
async fn oversized_query_is_refused() {
    let backend = Memory::default();
    let (mut client, mut server) = tokio::io::duplex(1 << 16);
    let options = SessionOptions { max_query_len: 100, ..Default::default() };
    let mut buf = BytesMut::new();
    let q = format!("Q\0\0\x01\0{}", "x".repeat(40));
    client.write_all(q.as_bytes()).await.unwrap();
    let r = serve_admin(&mut server, &mut buf, Access::Admin, &backend, options).await;
    assert!(matches!(r, Err(SessionError::Read(ReadError::BadLength { .. }))));
}

/// psql itself: connect, run SHOW commands, `\q`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_runs_show_commands_and_quits() {
    let Ok(psql) = which_psql() else {
        panic!("psql is needed for this test (Debian: postgresql-client-15)");
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let backend = Arc::new(Memory::default());
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        console(stream, Access::Admin, backend).await
    });
    let output = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(psql)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "admin",
                "-d",
                "pgbouncer",
                "-X",
                "-A",
                "-v",
                "ON_ERROR_STOP=0",
            ])
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
            .wait_with_output_after_input(b"SHOW POOLS;\nshow version;\nbogus;\n\\q\n"),
    )
    .await
    .expect("psql finished")
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stdout.contains("database|user|cl_active"), "{stdout}\n{stderr}");
    assert!(stdout.contains("app|alice|3|1"), "{stdout}");
    assert!(stdout.contains("PgBouncer 1.25.2"), "{stdout}");
    assert!(stderr.contains("invalid command 'bogus;', use SHOW HELP;"), "{stderr}");
    assert!(server.await.unwrap().is_ok(), "\\q ends the session with Terminate");
}

fn which_psql() -> Result<std::path::PathBuf, ()> {
    for dir in ["/usr/bin", "/usr/lib/postgresql/15/bin"] {
        let p = std::path::Path::new(dir).join("psql");
        if p.exists() {
            return Ok(p);
        }
    }
    Err(())
}

trait WaitWithInput {
    async fn wait_with_output_after_input(self, input: &[u8]) -> std::io::Result<std::process::Output>;
}

impl WaitWithInput for tokio::process::Child {
    async fn wait_with_output_after_input(mut self, input: &[u8]) -> std::io::Result<std::process::Output> {
        if let Some(mut stdin) = self.stdin.take() {
            stdin.write_all(input).await?;
        }
        self.wait_with_output().await
    }
}

#[test]
fn access_comes_from_admin_users_then_stats_users() {
    let admins = vec!["dba".to_string(), "both".to_string()];
    let stats = vec!["prom".to_string(), "both".to_string()];
    assert_eq!(Access::for_user(&admins, &stats, "dba"), Some(Access::Admin));
    assert_eq!(Access::for_user(&admins, &stats, "both"), Some(Access::Admin));
    assert_eq!(Access::for_user(&admins, &stats, "prom"), Some(Access::Stats));
    assert_eq!(Access::for_user(&admins, &stats, "app"), None);
}
