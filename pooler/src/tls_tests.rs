//! TLS with a self-generated certificate: configuration errors, tokio-postgres and psql with
//! sslmode=require against the in-process acceptor (SCRAM over TLS), and the server-side
//! connector in every mode against an in-process TLS server.

use super::*;
use crate::admin::resultset::{text, write_command_complete, write_data_row, write_row_description, Cell};
use crate::auth::{authenticate, userlist::Userlist};
use crate::config::AuthType;
use crate::protocol::message::{write_authentication_ok, write_ready_for_query};
use crate::protocol::{parse_startup_packet, StartupPacket, TransactionStatus};
use bytes::BytesMut;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

struct Certs {
    dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

fn certs() -> Certs {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("server.crt");
    let key = dir.path().join("server.key");
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.key_pair.serialize_pem()).unwrap();
    Certs { dir, cert, key }
}

fn client_config(mode: TlsMode, certs: &Certs) -> PoolerConfig {
    PoolerConfig {
        client_tls_sslmode: mode,
        client_tls_cert_file: Some(certs.cert.clone()),
        client_tls_key_file: Some(certs.key.clone()),
        ..Default::default()
    }
}

#[test]
fn configuration_errors_name_the_setting_and_file() {
    let c = certs();
    let missing = PoolerConfig {
        client_tls_cert_file: Some(c.dir.path().join("nope.crt")),
        ..client_config(TlsMode::Require, &c)
    };
    let e = ClientTls::from_config(&missing).unwrap_err().to_string();
    assert!(e.starts_with("client_tls_cert_file = ") && e.contains("nope.crt: cannot read the file"), "{e}");

    let not_pem = c.dir.path().join("garbage.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let bad_cert = PoolerConfig { client_tls_cert_file: Some(not_pem.clone()), ..client_config(TlsMode::Require, &c) };
    assert!(matches!(ClientTls::from_config(&bad_cert), Err(TlsError::NoCertificate { .. })));
    let bad_key = PoolerConfig { client_tls_key_file: Some(not_pem), ..client_config(TlsMode::Require, &c) };
    assert!(matches!(ClientTls::from_config(&bad_key), Err(TlsError::NoKey { .. })));

    // A key that does not belong to the certificate.
    let other = rcgen::generate_simple_self_signed(vec!["x".to_string()]).unwrap();
    let other_key = c.dir.path().join("other.key");
    std::fs::write(&other_key, other.key_pair.serialize_pem()).unwrap();
    let mismatch = PoolerConfig { client_tls_key_file: Some(other_key), ..client_config(TlsMode::Require, &c) };
    assert!(matches!(ClientTls::from_config(&mismatch), Err(TlsError::BadPair(_))), "mismatched key must be refused");

    let no_cert = PoolerConfig { client_tls_cert_file: None, ..client_config(TlsMode::Require, &c) };
    assert_eq!(
        ClientTls::from_config(&no_cert).unwrap_err().to_string(),
        "client_tls_cert_file is required when client_tls_sslmode is require"
    );
    let verify = PoolerConfig { server_tls_sslmode: TlsMode::VerifyFull, ..Default::default() };
    assert!(matches!(ServerTls::from_config(&verify), Err(TlsError::Missing { setting: "server_tls_ca_file", .. })));
}

#[test]
fn ssl_answers_follow_the_mode() {
    let c = certs();
    let disabled = ClientTls::from_config(&PoolerConfig::default()).unwrap();
    assert_eq!(disabled.ssl_answer(), SslAnswer::Refuse);
    assert!(disabled.plain_allowed());
    let prefer = ClientTls::from_config(&client_config(TlsMode::Prefer, &c)).unwrap();
    assert_eq!(prefer.ssl_answer(), SslAnswer::Accept);
    assert!(prefer.plain_allowed());
    let require = ClientTls::from_config(&client_config(TlsMode::Require, &c)).unwrap();
    assert!(!require.plain_allowed());
}

#[tokio::test]
async fn bytes_pipelined_after_the_ssl_request_are_refused() {
    let c = certs();
    let tls = ClientTls::from_config(&client_config(TlsMode::Require, &c)).unwrap();
    let (_client, server) = tokio::io::duplex(1024);
    let r = tls.answer_ssl_request(server, b"\x16\x03\x01").await;
    assert!(matches!(r, Err(TlsError::PipelinedBeforeHandshake)));
}

/// A one-connection server: SSLRequest -> TLS -> startup -> SCRAM (user "app", password
/// "app-pw") -> answers every simple query with one row `ssl` = the TLS description.
async fn serve_one(listener: TcpListener, tls: ClientTls) -> String {
    let (tcp, _) = listener.accept().await.unwrap();
    let mut tcp = tcp;
    let mut buf = BytesMut::new();
    let mut stream = loop {
        if let Some((packet, used)) = parse_startup_packet(&buf).unwrap() {
            let _ = buf.split_to(used);
            match packet {
                StartupPacket::SslRequest => break tls.answer_ssl_request(tcp, &buf).await.unwrap(),
                StartupPacket::GssEncRequest => {
                    tcp.write_all(b"N").await.unwrap();
                    continue;
                }
                other => panic!("expected SSLRequest first, got {other:?}"),
            }
        }
        assert!(tcp.read_buf(&mut buf).await.unwrap() > 0);
    };
    let description = stream.tls_description();
    let startup = loop {
        if let Some((StartupPacket::Startup(s), used)) = parse_startup_packet(&buf).unwrap() {
            let _ = buf.split_to(used);
            break s;
        }
        assert!(stream.read_buf(&mut buf).await.unwrap() > 0);
    };
    let users = Userlist::parse(Path::new("userlist.txt"), "\"app\" \"app-pw\"\n").unwrap();
    let creds = FixedUsers(users);
    authenticate(&mut stream, &mut buf, startup.user(), AuthType::ScramSha256, &creds).await.unwrap();
    let mut out = BytesMut::new();
    write_authentication_ok(&mut out);
    write_ready_for_query(TransactionStatus::Idle, &mut out);
    stream.write_all(&out).await.unwrap();
    loop {
        let m = match crate::auth::wire::read_message(&mut stream, &mut buf, 1 << 16).await {
            Ok(m) => m,
            Err(_) => break,
        };
        if m.tag == b'X' {
            break;
        }
        out.clear();
        write_row_description(&[text("ssl")], &mut out);
        write_data_row(&[Cell::Text(description.clone())], &mut out);
        write_command_complete("SELECT 1", &mut out);
        write_ready_for_query(TransactionStatus::Idle, &mut out);
        stream.write_all(&out).await.unwrap();
    }
    description
}

struct FixedUsers(Userlist);

#[async_trait::async_trait]
impl crate::auth::CredentialSource for FixedUsers {
    async fn lookup(&self, user: &str) -> Result<Option<crate::auth::StoredSecret>, crate::auth::LookupError> {
        Ok(self.0.get(user).cloned())
    }
}

#[tokio::test]
async fn tokio_postgres_with_sslmode_require_and_scram_over_tls() {
    let c = certs();
    let tls = ClientTls::from_config(&client_config(TlsMode::Require, &c)).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(serve_one(listener, tls));

    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs("test", &c.cert).unwrap() {
        roots.add(cert).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_postgres_rustls::MakeRustlsConnect::new(config);
    let dsn = format!("host=localhost hostaddr=127.0.0.1 port={port} user=app password=app-pw dbname=app sslmode=require connect_timeout=10");
    let (client, connection) = tokio_postgres::connect(&dsn, connector).await.unwrap();
    tokio::spawn(connection);
    let rows = client.simple_query("SELECT 'ssl'").await.unwrap();
    let value = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    });
    assert_eq!(value.as_deref(), Some("TLSv1.3/TLS_AES_256_GCM_SHA384"));
    drop(client);
    assert!(server.await.unwrap().starts_with("TLSv1."));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_with_sslmode_require() {
    let c = certs();
    let tls = ClientTls::from_config(&client_config(TlsMode::Require, &c)).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(serve_one(listener, tls));
    let output = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new("psql")
            .arg(format!("host=127.0.0.1 port={port} user=app dbname=app sslmode=require"))
            .args(["-X", "-A", "-t", "-c", "select 'ssl'"])
            .env("PGPASSWORD", "app-pw")
            .env("PGCONNECT_TIMEOUT", "10")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("psql finished")
    .expect("psql runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.trim().starts_with("TLSv1."), "{stdout}");
    assert!(server.await.unwrap().starts_with("TLSv1."));
}

/// A fake PostgreSQL that answers SSLRequest with `answer` and, after 'S', a TLS handshake
/// with `certs`, then echoes one byte.
async fn fake_server(answer: u8, c: &Certs) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accept = acceptor(&c.cert, &c.key, None, rustls::DEFAULT_VERSIONS).unwrap();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 8];
        tcp.read_exact(&mut request).await.unwrap();
        tcp.write_all(&[answer]).await.unwrap();
        if answer == b'S' {
            if let Ok(mut tls) = accept.accept(tcp).await {
                let mut b = [0u8; 1];
                if tls.read_exact(&mut b).await.is_ok() {
                    let _ = tls.write_all(&b).await;
                    let _ = tls.flush().await;
                }
            }
        }
    });
    port
}

async fn server_connect(mode: TlsMode, c: &Certs, answer: u8, host: &str) -> Result<bool, TlsError> {
    let config =
        PoolerConfig { server_tls_sslmode: mode, server_tls_ca_file: Some(c.cert.clone()), ..Default::default() };
    let tls = ServerTls::from_config(&config)?;
    let port = fake_server(answer, c).await;
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut stream = tls.connect(tcp, host).await?;
    if stream.is_tls() {
        stream.write_all(b"x").await.unwrap();
        stream.flush().await.unwrap();
        let mut b = [0u8; 1];
        stream.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"x");
    }
    Ok(stream.is_tls())
}

#[tokio::test]
async fn server_connector_in_every_mode() {
    let c = certs();
    assert!(server_connect(TlsMode::Require, &c, b'S', "127.0.0.1").await.unwrap(), "require: no verification");
    assert!(server_connect(TlsMode::Prefer, &c, b'S', "127.0.0.1").await.unwrap());
    assert!(!server_connect(TlsMode::Prefer, &c, b'N', "127.0.0.1").await.unwrap(), "prefer falls back to plain");
    assert!(matches!(
        server_connect(TlsMode::Require, &c, b'N', "x").await,
        Err(TlsError::ServerRefusedTls("require"))
    ));
    assert!(matches!(server_connect(TlsMode::Require, &c, b'E', "x").await, Err(TlsError::BadServerAnswer('E'))));
    assert!(server_connect(TlsMode::VerifyFull, &c, b'S', "localhost").await.unwrap());
    assert!(matches!(server_connect(TlsMode::VerifyFull, &c, b'S', "db.example").await, Err(TlsError::Handshake(_))));
    assert!(server_connect(TlsMode::VerifyCa, &c, b'S', "db.example").await.unwrap(), "verify-ca ignores the name");
    // A certificate from another CA fails both verify modes.
    let other = certs();
    let config = PoolerConfig {
        server_tls_sslmode: TlsMode::VerifyCa,
        server_tls_ca_file: Some(other.cert.clone()),
        ..Default::default()
    };
    let tls = ServerTls::from_config(&config).unwrap();
    let port = fake_server(b'S', &c).await;
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    assert!(matches!(tls.connect(tcp, "localhost").await, Err(TlsError::Handshake(_))));
    // disable and allow send no SSLRequest at all.
    for mode in [TlsMode::Disable, TlsMode::Allow] {
        let tls = ServerTls::from_config(&PoolerConfig { server_tls_sslmode: mode, ..Default::default() }).unwrap();
        let (ours, mut theirs) = tokio::io::duplex(64);
        let stream = tls.connect(ours, "x").await.unwrap();
        assert!(!stream.is_tls());
        drop(stream);
        let mut seen = Vec::new();
        theirs.read_to_end(&mut seen).await.unwrap();
        assert!(seen.is_empty(), "{mode:?} sent {seen:?}");
    }
}

#[test]
fn tls_protocols_are_read_as_pgbouncer_spells_them() {
    let names = |text: &str| {
        protocol_versions(text).map(|v| v.iter().map(|p| format!("{:?}", p.version)).collect::<Vec<_>>().join(","))
    };
    assert_eq!(names("secure").unwrap(), "TLSv1_3,TLSv1_2");
    assert_eq!(names("all").unwrap(), "TLSv1_3,TLSv1_2");
    assert_eq!(names("legacy").unwrap(), "TLSv1_3,TLSv1_2");
    assert_eq!(names("tlsv1.3").unwrap(), "TLSv1_3");
    assert_eq!(names("TLSv1.1, tlsv1.2").unwrap(), "TLSv1_2");
    assert_eq!(names("tlsv1.2:tlsv1.3").unwrap(), "TLSv1_3,TLSv1_2");
    assert!(names("tlsv1.0,tlsv1.1").unwrap_err().contains("TLS 1.0 and 1.1 are not available"));
    assert!(names("tls1.3").unwrap_err().contains("unknown TLS protocol \"tls1.3\""));
    assert!(names("").is_err());
}

#[test]
fn a_server_client_certificate_needs_its_key() {
    let c = certs();
    let only_cert = PoolerConfig { server_tls_cert_file: Some(c.cert.clone()), ..Default::default() };
    let e = ServerTls::from_config(&only_cert).unwrap_err().to_string();
    assert!(e.contains("server_tls_key_file"), "{e}");
    let both = PoolerConfig {
        server_tls_cert_file: Some(c.cert.clone()),
        server_tls_key_file: Some(c.key.clone()),
        server_tls_sslmode: TlsMode::Require,
        ..Default::default()
    };
    ServerTls::from_config(&both).unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["x".to_string()]).unwrap();
    let other_key = c.dir.path().join("other-client.key");
    std::fs::write(&other_key, other.key_pair.serialize_pem()).unwrap();
    let mismatched = PoolerConfig { server_tls_key_file: Some(other_key), ..both };
    let e = ServerTls::from_config(&mismatched).unwrap_err().to_string();
    assert!(e.starts_with("server_tls_cert_file and server_tls_key_file do not make a usable pair"), "{e}");
}
