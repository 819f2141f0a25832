//! The pooler's TLS connector toward a real PostgreSQL 15 with ssl = on (a self-generated
//! certificate for `localhost`): require and verify-full encrypt, then the SCRAM login runs over
//! TLS, and PostgreSQL's own pg_stat_ssl confirms the session is encrypted.

use bytes::BytesMut;
use harness::{PgInstance, PgOptions};
use pooler::auth::{login_to_server, ServerCredential};
use pooler::config::{PoolerConfig, TlsMode};
use pooler::protocol::StartupMessage;
use pooler::tls::{ServerTls, TlsError};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

async fn pg_with_ssl(dir: &std::path::Path) -> (PgInstance, std::path::PathBuf) {
    let mut pg = PgInstance::init("tls", PgOptions::default().param("ssl", "on")).await.unwrap();
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let data = pg.data_dir();
    let owner = std::fs::metadata(&data).unwrap();
    for (name, pem) in [("server.crt", generated.cert.pem()), ("server.key", generated.key_pair.serialize_pem())] {
        let path = data.join(name);
        std::fs::write(&path, pem).unwrap();
        std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid())).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let ca = dir.join("ca.crt");
    std::fs::write(&ca, generated.cert.pem()).unwrap();
    pg.start().await.unwrap();
    pg.sql("CREATE ROLE alice LOGIN PASSWORD 'alice-secret'").await.unwrap();
    (pg, ca)
}

/// Connects with `mode`, logs in as alice and returns pg_stat_ssl.ssl for the session.
async fn ssl_of_session(pg: &PgInstance, ca: &std::path::Path, mode: TlsMode, host: &str) -> Result<String, TlsError> {
    let config =
        PoolerConfig { server_tls_sslmode: mode, server_tls_ca_file: Some(ca.to_path_buf()), ..Default::default() };
    let tls = ServerTls::from_config(&config)?;
    let tcp = TcpStream::connect(("127.0.0.1", pg.port())).await.unwrap();
    let mut stream = tls.connect(tcp, host).await?;
    let startup = StartupMessage::new(0, [("user", "alice"), ("database", "postgres")]).unwrap();
    let mut out = BytesMut::new();
    startup.encode(&mut out).unwrap();
    stream.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    let credential = ServerCredential::Password("alice-secret".into());
    login_to_server(&mut stream, &mut buf, "alice", &credential, Duration::from_secs(10)).await.unwrap();
    let mut out = BytesMut::new();
    postgres_protocol::message::frontend::query(
        "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        &mut out,
    )
    .unwrap();
    stream.write_all(&out).await.unwrap();
    stream.flush().await.unwrap();
    let (mut ready, mut value) = (0, String::new());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooler_reaches_postgres_over_tls_in_require_and_verify_full() {
    let dir = tempfile::tempdir().unwrap();
    let (pg, ca) = pg_with_ssl(dir.path()).await;
    assert_eq!(ssl_of_session(&pg, &ca, TlsMode::Require, "127.0.0.1").await.unwrap(), "true");
    assert_eq!(ssl_of_session(&pg, &ca, TlsMode::VerifyFull, "localhost").await.unwrap(), "true");
    assert_eq!(ssl_of_session(&pg, &ca, TlsMode::VerifyCa, "db.example").await.unwrap(), "true");
    assert!(matches!(ssl_of_session(&pg, &ca, TlsMode::VerifyFull, "db.example").await, Err(TlsError::Handshake(_))));
    assert_eq!(ssl_of_session(&pg, &ca, TlsMode::Disable, "127.0.0.1").await.unwrap(), "false");
}
