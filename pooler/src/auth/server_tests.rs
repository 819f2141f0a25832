//! `login_to_server` against a scripted server on a duplex stream: every request kind, the
//! server's errors, and what stays in the buffer. The real PostgreSQL path is in
//! pooler/tests/auth_postgres.rs.

use super::*;
use crate::auth::scram::{ScramKeys, ScramServer};
use crate::auth::secret::{md5_stored, ScramVerifier};
use crate::protocol::{ErrorResponse, Severity};
use tokio::io::{AsyncWriteExt, DuplexStream};

async fn reply(stream: &mut DuplexStream, out: &mut BytesMut) {
    stream.write_all(out).await.unwrap();
    out.clear();
}

async fn expect_password(stream: &mut DuplexStream, buf: &mut BytesMut) -> Vec<u8> {
    let m = wire::read_message(stream, buf, MAX_AUTH_MESSAGE_LEN).await.unwrap();
    assert_eq!(m.tag, b'p');
    m.body.to_vec()
}

fn ok_and_ready(out: &mut BytesMut) {
    wire::write_auth_request(out, code::OK, &[]);
    // A ParameterStatus the caller must still find in its buffer.
    crate::protocol::message::write_parameter_status("server_version", "15", out);
}

/// A scripted server: asks with `request`, checks the answer with `check`, then OK or error.
async fn script<F>(request: u32, payload: Vec<u8>, check: F) -> DuplexStream
where
    F: FnOnce(&[u8]) -> bool + Send + 'static,
{
    let (client, mut server) = tokio::io::duplex(8192);
    tokio::spawn(async move {
        let mut out = BytesMut::new();
        let mut buf = BytesMut::new();
        wire::write_auth_request(&mut out, request, &payload);
        reply(&mut server, &mut out).await;
        let answer = expect_password(&mut server, &mut buf).await;
        if check(&answer) {
            ok_and_ready(&mut out);
        } else {
            ErrorResponse::new(Severity::Fatal, "28P01", "password authentication failed for user \"u\"")
                .encode(&mut out);
        }
        reply(&mut server, &mut out).await;
        let _ = server.write_all(b"").await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    client
}

async fn run_login(mut stream: DuplexStream, credential: ServerCredential) -> (Result<(), ServerLoginError>, BytesMut) {
    let mut buf = BytesMut::new();
    let r = login_to_server(&mut stream, &mut buf, "u", &credential, Duration::from_secs(5)).await;
    (r, buf)
}

#[tokio::test]
async fn cleartext_sends_the_password_and_leaves_later_messages_buffered() {
    let stream = script(code::CLEARTEXT_PASSWORD, vec![], |p| p == b"pw\0").await;
    let (r, buf) = run_login(stream, ServerCredential::Password("pw".into())).await;
    r.unwrap();
    assert_eq!(buf.first(), Some(&b'S'));
}

#[tokio::test]
async fn md5_from_password_and_from_stored_hash() {
    let salt = [9, 8, 7, 6];
    let expected = postgres_protocol::authentication::md5_hash(b"u", b"pw", salt);
    for credential in [ServerCredential::Password("pw".into()), ServerCredential::Md5Hash(md5_stored("pw", "u"))] {
        let e = expected.clone();
        let stream = script(code::MD5_PASSWORD, salt.to_vec(), move |p| p == format!("{e}\0").as_bytes()).await;
        run_login(stream, credential).await.0.unwrap();
    }
}

#[tokio::test]
async fn wrong_password_is_the_servers_error_typed() {
    let stream = script(code::CLEARTEXT_PASSWORD, vec![], |p| p == b"right\0").await;
    let (r, _) = run_login(stream, ServerCredential::Password("wrong".into())).await;
    let err = r.unwrap_err();
    assert_eq!(err.sqlstate(), Some("28P01"));
    assert!(err.to_string().contains("password authentication failed"), "{err}");
}

#[tokio::test]
async fn missing_or_unusable_credentials_are_named() {
    let stream = script(code::CLEARTEXT_PASSWORD, vec![], |_| true).await;
    assert!(matches!(run_login(stream, ServerCredential::None).await.0, Err(ServerLoginError::NoPassword { .. })));
    let stream = script(code::SASL, b"SCRAM-SHA-256\0\0".to_vec(), |_| true).await;
    let r = run_login(stream, ServerCredential::Md5Hash(md5_stored("pw", "u"))).await.0;
    assert!(matches!(r, Err(ServerLoginError::CannotAnswer { .. })), "{r:?}");
    let stream = script(code::SASL, b"SCRAM-SHA-256-PLUS\0\0".to_vec(), |_| true).await;
    let r = run_login(stream, ServerCredential::Password("pw".into())).await.0;
    assert!(matches!(r, Err(ServerLoginError::NoMechanism(_))), "{r:?}");
    let stream = script(code::GSS, vec![], |_| true).await;
    assert!(matches!(run_login(stream, ServerCredential::None).await.0, Err(ServerLoginError::Unsupported(7))));
}

/// A SCRAM server scripted with our server-side state machine.
async fn scram_server(verifier: ScramVerifier) -> DuplexStream {
    let (client, mut server) = tokio::io::duplex(8192);
    tokio::spawn(async move {
        let mut out = BytesMut::new();
        let mut buf = BytesMut::new();
        wire::write_auth_sasl(&mut out);
        reply(&mut server, &mut out).await;
        let first = expect_password(&mut server, &mut buf).await;
        let (_, data) = wire::parse_sasl_initial(&first).unwrap();
        let mut scram = ScramServer::new(verifier);
        let server_first = scram.client_first(data).unwrap();
        wire::write_auth_request(&mut out, code::SASL_CONTINUE, server_first.as_bytes());
        reply(&mut server, &mut out).await;
        let fin = expect_password(&mut server, &mut buf).await;
        match scram.client_final(&fin) {
            Ok((server_final, _)) => {
                wire::write_auth_request(&mut out, code::SASL_FINAL, server_final.as_bytes());
                ok_and_ready(&mut out);
            }
            Err(_) => ErrorResponse::new(Severity::Fatal, "28P01", "password authentication failed").encode(&mut out),
        }
        reply(&mut server, &mut out).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    client
}

#[tokio::test]
async fn scram_with_password_and_with_keys() {
    let verifier = ScramVerifier::derive("pw", b"0123456789abcdef", 4096);
    run_login(scram_server(verifier.clone()).await, ServerCredential::Password("pw".into())).await.0.unwrap();
    let keys = ScramKeys::from_password("pw", &verifier.salt, verifier.iterations);
    run_login(scram_server(verifier.clone()).await, ServerCredential::ScramKeys(keys)).await.0.unwrap();
    let wrong = ScramKeys::from_password("nope", &verifier.salt, verifier.iterations);
    let r = run_login(scram_server(verifier.clone()).await, ServerCredential::ScramKeys(wrong)).await.0;
    assert_eq!(r.unwrap_err().sqlstate(), Some("28P01"));
    let r = run_login(scram_server(verifier).await, ServerCredential::Password("nope".into())).await.0;
    assert_eq!(r.unwrap_err().sqlstate(), Some("28P01"));
}

#[tokio::test]
async fn a_silent_server_times_out() {
    let (mut client, _server) = tokio::io::duplex(64);
    let mut buf = BytesMut::new();
    let r = login_to_server(&mut client, &mut buf, "u", &ServerCredential::None, Duration::from_millis(100)).await;
    assert!(matches!(r, Err(ServerLoginError::Timeout(_))));
}
