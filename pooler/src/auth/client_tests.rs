//! tokio-postgres (a real client library) logs in against `authenticate` over an
//! in-process duplex stream: every method, right and wrong passwords, unknown users.

use super::*;
use crate::auth::userlist::{AuthFile, Userlist};
use crate::protocol::message::{write_authentication_ok, write_backend_key_data, write_ready_for_query};
use crate::protocol::{parse_startup_packet, StartupPacket, TransactionStatus};
use async_trait::async_trait;
use std::path::Path;
use tokio::io::AsyncReadExt;
use tokio_postgres::error::SqlState;

struct Fixed(Userlist);

#[async_trait]
impl CredentialSource for Fixed {
    async fn lookup(&self, user: &str) -> Result<Option<StoredSecret>, LookupError> {
        Ok(self.0.get(user).cloned())
    }
}

fn users() -> Fixed {
    let scram = ScramVerifier::derive("scram-pw", b"fixed test salt!", 4096).to_text();
    let md5 = md5_stored("md5-pw", "hashed");
    let text = format!("\"plainuser\" \"plain-pw\"\n\"hashed\" \"{md5}\"\n\"scrammed\" \"{scram}\"\n");
    Fixed(Userlist::parse(Path::new("userlist.txt"), &text).unwrap())
}

/// Serves one login on `stream` and returns what `authenticate` returned.
async fn serve(
    mut stream: tokio::io::DuplexStream,
    auth_type: AuthType,
    creds: Fixed,
) -> Result<ServerCredential, ClientAuthError> {
    let mut buf = BytesMut::new();
    let startup = loop {
        if let Some((packet, used)) = parse_startup_packet(&buf).unwrap() {
            let _ = buf.split_to(used);
            match packet {
                StartupPacket::Startup(s) => break s,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(stream.read_buf(&mut buf).await.unwrap() > 0);
    };
    let result = authenticate(&mut stream, &mut buf, startup.user(), auth_type, &creds).await;
    if result.is_ok() {
        let mut out = BytesMut::new();
        write_authentication_ok(&mut out);
        write_backend_key_data(1, &[0, 0, 0, 2], &mut out);
        write_ready_for_query(TransactionStatus::Idle, &mut out);
        wire::send(&mut stream, &out).await.unwrap();
        // Wait for the client's Terminate or EOF.
        let _ = stream.read_buf(&mut buf).await;
    }
    result
}

async fn login(
    auth_type: AuthType,
    user: &str,
    password: &str,
) -> (Result<(), tokio_postgres::Error>, Result<ServerCredential, ClientAuthError>) {
    let (client_side, server_side) = tokio::io::duplex(4096);
    let server = tokio::spawn(serve(server_side, auth_type, users()));
    let mut config = tokio_postgres::Config::new();
    config.user(user).password(password).dbname("app");
    let client = match config.connect_raw(client_side, tokio_postgres::NoTls).await {
        Ok((client, connection)) => {
            drop(client);
            let _ = connection.await;
            Ok(())
        }
        Err(e) => Err(e),
    };
    (client, server.await.unwrap())
}

fn assert_28p01(result: &Result<(), tokio_postgres::Error>, user: &str) {
    let err = result.as_ref().expect_err("login must fail");
    let db = err.as_db_error().unwrap_or_else(|| panic!("expected a server error, got {err}"));
    assert_eq!(db.code(), &SqlState::INVALID_PASSWORD);
    assert_eq!(db.severity(), "FATAL");
    assert_eq!(db.message(), format!("password authentication failed for user \"{user}\""));
}

#[tokio::test]
async fn scram_against_a_stored_verifier_returns_keys_that_match_the_verifier() {
    let (client, server) = login(AuthType::ScramSha256, "scrammed", "scram-pw").await;
    client.unwrap();
    let ServerCredential::ScramKeys(keys) = server.unwrap() else { panic!("expected keys") };
    let StoredSecret::Scram(v) = users().0.get("scrammed").cloned().unwrap() else { unreachable!() };
    assert_eq!(keys, ScramKeys::from_password("scram-pw", &v.salt, v.iterations));
}

#[tokio::test]
async fn scram_against_a_plain_password_returns_the_password() {
    let (client, server) = login(AuthType::ScramSha256, "plainuser", "plain-pw").await;
    client.unwrap();
    assert_eq!(server.unwrap(), ServerCredential::Password("plain-pw".into()));
}

#[tokio::test]
async fn scram_wrong_password_and_unknown_user_get_28p01() {
    let (client, server) = login(AuthType::ScramSha256, "scrammed", "nope").await;
    assert_28p01(&client, "scrammed");
    assert!(matches!(server, Err(ClientAuthError::Failed { .. })));
    let (client, _) = login(AuthType::ScramSha256, "ghost", "nope").await;
    assert_28p01(&client, "ghost");
    // An md5 hash cannot serve SCRAM: refused with the same error.
    let (client, _) = login(AuthType::ScramSha256, "hashed", "md5-pw").await;
    assert_28p01(&client, "hashed");
}

#[tokio::test]
async fn md5_with_plain_and_hashed_passwords() {
    let (client, server) = login(AuthType::Md5, "plainuser", "plain-pw").await;
    client.unwrap();
    assert_eq!(server.unwrap(), ServerCredential::Password("plain-pw".into()));
    let (client, server) = login(AuthType::Md5, "hashed", "md5-pw").await;
    client.unwrap();
    assert!(matches!(server.unwrap(), ServerCredential::Md5Hash(_)));
    let (client, _) = login(AuthType::Md5, "hashed", "wrong").await;
    assert_28p01(&client, "hashed");
    let (client, _) = login(AuthType::Md5, "ghost", "x").await;
    assert_28p01(&client, "ghost");
}

#[tokio::test]
async fn md5_auth_type_uses_scram_for_scram_secrets_like_pgbouncer() {
    let (client, server) = login(AuthType::Md5, "scrammed", "scram-pw").await;
    client.unwrap();
    assert!(matches!(server.unwrap(), ServerCredential::ScramKeys(_)));
}

#[tokio::test]
async fn plain_checks_every_kind_of_stored_secret() {
    for (user, pw) in [("plainuser", "plain-pw"), ("hashed", "md5-pw"), ("scrammed", "scram-pw")] {
        let (client, server) = login(AuthType::Plain, user, pw).await;
        client.unwrap_or_else(|e| panic!("{user}: {e}"));
        assert!(server.is_ok());
        let (client, _) = login(AuthType::Plain, user, "wrong").await;
        assert_28p01(&client, user);
    }
}

#[tokio::test]
async fn trust_lets_anyone_in() {
    let (client, server) = login(AuthType::Trust, "ghost", "").await;
    client.unwrap();
    assert_eq!(server.unwrap(), ServerCredential::None);
}

#[tokio::test]
async fn garbage_instead_of_a_password_message_is_a_protocol_error() {
    let (mut client_side, mut server_side) = tokio::io::duplex(4096);
    let creds = users();
    let client = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        client_side.write_all(b"Q\0\0\0\x05x").await.unwrap();
        let mut seen = Vec::new();
        let _ = client_side.read_to_end(&mut seen).await;
        seen
    });
    let mut buf = BytesMut::new();
    let got = authenticate(&mut server_side, &mut buf, "plainuser", AuthType::Md5, &creds).await;
    assert!(matches!(got, Err(ClientAuthError::Protocol(_))), "{got:?}");
    drop(server_side);
    let seen = client.await.unwrap();
    assert!(seen.windows(5).any(|w| w == b"08P01"));
}

#[test]
fn auth_file_is_a_credential_source() {
    fn takes(_: &dyn CredentialSource) {}
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("u");
    std::fs::write(&path, "").unwrap();
    takes(&AuthFile::open(&path).unwrap());
}
