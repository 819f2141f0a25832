//! The pooler's login toward a real PostgreSQL 15 (harness instance, SCRAM on TCP): with a
//! password, and PgBouncer's SCRAM pass-through: a client proves itself to the pooler against
//! the verifier auth_query read from pg_shadow, and the pooler logs in to PostgreSQL with the
//! ClientKey/ServerKey it recovered, never seeing the password.

use bytes::BytesMut;
use harness::{PgInstance, PgOptions};
use pooler::auth::{
    authenticate, login_to_server, AuthQuery, Credentials, ServerCredential, ServerLoginError, StoredSecret,
};
use pooler::config::{AuthType, PoolerConfig};
use pooler::protocol::message::{write_authentication_ok, write_ready_for_query};
use pooler::protocol::{parse_startup_packet, StartupMessage, StartupPacket, TransactionStatus};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `pg` as `user`, logs in with `credential` and runs `SELECT current_user`.
async fn server_login(pg: &PgInstance, user: &str, credential: &ServerCredential) -> Result<String, ServerLoginError> {
    let mut stream = TcpStream::connect(("127.0.0.1", pg.port())).await.expect("PostgreSQL accepts TCP");
    let startup = StartupMessage::new(0, [("user", user), ("database", "postgres")]).unwrap();
    let mut out = BytesMut::new();
    startup.encode(&mut out).unwrap();
    stream.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    login_to_server(&mut stream, &mut buf, user, credential, TIMEOUT).await?;
    // After AuthenticationOk: ParameterStatus..., BackendKeyData, ReadyForQuery; then a query.
    let mut out = BytesMut::new();
    postgres_protocol::message::frontend::query("SELECT current_user", &mut out).unwrap();
    stream.write_all(&out).await.unwrap();
    let mut ready = 0;
    let mut value = String::new();
    while ready < 2 {
        let m = pooler::auth::wire::read_message(&mut stream, &mut buf, 1 << 20).await.unwrap();
        match m.tag {
            b'Z' => ready += 1,
            b'D' => value = String::from_utf8_lossy(&m.body[6..]).into_owned(),
            b'E' => panic!("query failed: {:?}", String::from_utf8_lossy(&m.body)),
            _ => {}
        }
    }
    Ok(value)
}

async fn started_pg() -> PgInstance {
    let mut pg = PgInstance::init("auth", PgOptions::default()).await.unwrap();
    pg.start().await.unwrap();
    pg.sql("CREATE ROLE alice LOGIN PASSWORD 'alice-secret'").await.unwrap();
    pg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooler_logs_in_to_postgres_with_scram_and_a_password() {
    let pg = started_pg().await;
    let who = server_login(&pg, "alice", &ServerCredential::Password("alice-secret".into())).await.unwrap();
    assert_eq!(who, "alice");
    let err = server_login(&pg, "alice", &ServerCredential::Password("wrong".into())).await.unwrap_err();
    assert_eq!(err.sqlstate(), Some("28P01"), "{err}");
}

/// Serves one client login on `stream` with the given credentials and returns its result.
async fn pooler_side(
    mut stream: tokio::io::DuplexStream,
    creds: Credentials,
) -> Result<ServerCredential, pooler::auth::ClientAuthError> {
    let mut buf = BytesMut::new();
    let startup = loop {
        if let Some((StartupPacket::Startup(s), used)) = parse_startup_packet(&buf).unwrap() {
            let _ = buf.split_to(used);
            break s;
        }
        assert!(stream.read_buf(&mut buf).await.unwrap() > 0);
    };
    let result = authenticate(&mut stream, &mut buf, startup.user(), AuthType::ScramSha256, &creds).await;
    if result.is_ok() {
        let mut out = BytesMut::new();
        write_authentication_ok(&mut out);
        write_ready_for_query(TransactionStatus::Idle, &mut out);
        stream.write_all(&out).await.unwrap();
        let _ = stream.read_buf(&mut buf).await;
    }
    result
}

async fn client_login(
    creds: Credentials,
    user: &str,
    password: &str,
) -> (Result<(), tokio_postgres::Error>, Result<ServerCredential, pooler::auth::ClientAuthError>) {
    let (client_side, server_side) = tokio::io::duplex(4096);
    let server = tokio::spawn(pooler_side(server_side, creds));
    let mut config = tokio_postgres::Config::new();
    config.user(user).password(password).dbname("postgres");
    let client = match config.connect_raw(client_side, tokio_postgres::NoTls).await {
        Ok((client, conn)) => {
            drop(client);
            let _ = conn.await;
            Ok(())
        }
        Err(e) => Err(e),
    };
    (client, server.await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_pass_through_with_keys_from_the_pg_authid_verifier() {
    let pg = started_pg().await;
    // auth_query through auth_user's connection (the superuser here), PgBouncer's default query.
    let admin = pg.connect().await.unwrap();
    let query = PoolerConfig::default().auth_query;
    let creds = Credentials { file: None, query: Some(Arc::new(AuthQuery::new(query, Arc::new(admin)))) };
    use pooler::auth::CredentialSource;
    let stored = creds.lookup("alice").await.unwrap();
    assert!(matches!(stored, Some(StoredSecret::Scram(_))), "pg_shadow holds a SCRAM verifier");
    assert_eq!(creds.lookup("nobody").await.unwrap(), None);

    let (client, server) = client_login(creds.clone(), "alice", "alice-secret").await;
    client.unwrap();
    let credential = server.unwrap();
    assert!(matches!(credential, ServerCredential::ScramKeys(_)));
    assert_eq!(server_login(&pg, "alice", &credential).await.unwrap(), "alice");

    // The wrong password never reaches PostgreSQL: the pooler answers 28P01 itself.
    let (client, _) = client_login(creds.clone(), "alice", "guess").await;
    let err = client.unwrap_err();
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("28P01"), "{err}");

    // After the password changes on the server, old keys are refused by PostgreSQL, typed.
    pg.sql("ALTER ROLE alice PASSWORD 'rotated'").await.unwrap();
    let err = server_login(&pg, "alice", &credential).await.unwrap_err();
    assert!(
        matches!(err, ServerLoginError::Scram(_)) || err.sqlstate() == Some("28P01"),
        "old keys must not log in: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_pass_through_with_the_verifier_copied_into_auth_file() {
    let pg = started_pg().await;
    let verifier = pg.sql_value("SELECT rolpassword FROM pg_authid WHERE rolname = 'alice'").await.unwrap().unwrap();
    assert!(verifier.starts_with("SCRAM-SHA-256$"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("userlist.txt");
    std::fs::write(&path, format!("\"alice\" \"{verifier}\"\n")).unwrap();
    let file = pooler::auth::AuthFile::open(&path).unwrap();
    let creds = Credentials { file: Some(Arc::new(file)), query: None };
    let (client, server) = client_login(creds, "alice", "alice-secret").await;
    client.unwrap();
    let credential = server.unwrap();
    assert_eq!(server_login(&pg, "alice", &credential).await.unwrap(), "alice");
}
