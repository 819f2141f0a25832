//! The login exchange toward a PostgreSQL server, after the pooler sent its StartupMessage:
//! answer AuthenticationCleartextPassword, MD5Password and SASL (SCRAM-SHA-256 with a password
//! through postgres-protocol, or with a ClientKey/ServerKey pair) until AuthenticationOk.
//! Messages after AuthenticationOk (ParameterStatus, BackendKeyData, ReadyForQuery) stay in
//! the caller's buffer.

use super::client::ServerCredential;
use super::scram::{ScramError, ScramKeysClient};
use super::secret::md5_response_from_stored;
use super::wire::{self, code, ReadError, MAX_AUTH_MESSAGE_LEN};
use crate::protocol::message::ErrorFields;
use bytes::{Buf, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};

/// An ErrorResponse the server sent during login, with the fields a log or client needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    pub severity: String,
    pub code: String,
    pub message: String,
}

/// Why the pooler could not log in to a server.
#[derive(Debug, Error)]
pub enum ServerLoginError {
    #[error("server refused the login: {} {}: {}", .0.severity, .0.code, .0.message)]
    Refused(ServerError),
    #[error("server asks for a password for user {user:?}, but the pooler has none (add it to auth_file)")]
    NoPassword { user: String },
    #[error("server asks for {method} for user {user:?}, which the stored secret cannot answer: {hint}")]
    CannotAnswer { user: String, method: &'static str, hint: &'static str },
    #[error("server asks for an authentication method the pooler does not support (code {0})")]
    Unsupported(u32),
    #[error("server offers no SASL mechanism the pooler supports (offered: {0})")]
    NoMechanism(String),
    #[error("SCRAM login failed: {0}")]
    Scram(String),
    #[error("server sent an unexpected message during login: {0}")]
    Protocol(String),
    #[error("server did not finish the login within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Read(#[from] ReadError),
}

impl ServerLoginError {
    /// The server's SQLSTATE, when the server refused.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ServerLoginError::Refused(e) => Some(&e.code),
            _ => None,
        }
    }
}

/// Logs in as `user` with `credential`, bounded by `timeout` (server_connect_timeout).
/// Returns once AuthenticationOk is read; later messages are left in `buf`.
pub async fn login_to_server<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    user: &str,
    credential: &ServerCredential,
    timeout: Duration,
) -> Result<(), ServerLoginError> {
    match crate::clock::timeout(timeout, run(stream, buf, user, credential)).await {
        Ok(result) => result,
        Err(_) => Err(ServerLoginError::Timeout(timeout)),
    }
}

enum Sasl {
    Password(Box<ScramSha256>),
    Keys(ScramKeysClient),
}

async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    user: &str,
    credential: &ServerCredential,
) -> Result<(), ServerLoginError> {
    let mut sasl: Option<Sasl> = None;
    let mut out = BytesMut::new();
    loop {
        let message = wire::read_message(stream, buf, MAX_AUTH_MESSAGE_LEN).await?;
        let mut body = message.body;
        match message.tag {
            b'R' => {}
            b'E' => return Err(ServerLoginError::Refused(server_error(&body))),
            // NegotiateProtocolVersion and notices may come before authentication.
            b'v' | b'N' => continue,
            other => return Err(ServerLoginError::Protocol(format!("message type {:?}", char::from(other)))),
        }
        if body.len() < 4 {
            return Err(ServerLoginError::Protocol("truncated authentication request".into()));
        }
        let request = body.get_u32();
        out.clear();
        match request {
            code::OK => return Ok(()),
            code::CLEARTEXT_PASSWORD => match credential {
                ServerCredential::Password(p) => wire::write_password(&mut out, p.as_bytes()),
                ServerCredential::None => return Err(ServerLoginError::NoPassword { user: user.into() }),
                _ => {
                    return Err(ServerLoginError::CannotAnswer {
                        user: user.into(),
                        method: "a clear-text password",
                        hint: "store the plain password in auth_file",
                    })
                }
            },
            code::MD5_PASSWORD => {
                let salt: [u8; 4] =
                    body[..].try_into().map_err(|_| ServerLoginError::Protocol("bad md5 salt".into()))?;
                let response =
                    match credential {
                        ServerCredential::Password(p) => {
                            postgres_protocol::authentication::md5_hash(user.as_bytes(), p.as_bytes(), salt)
                        }
                        ServerCredential::Md5Hash(h) => md5_response_from_stored(h, salt),
                        ServerCredential::None => return Err(ServerLoginError::NoPassword { user: user.into() }),
                        ServerCredential::ScramKeys(_) => return Err(ServerLoginError::CannotAnswer {
                            user: user.into(),
                            method: "md5",
                            hint:
                                "the client logged in with SCRAM; set password_encryption=scram-sha-256 on the server",
                        }),
                    };
                wire::write_password(&mut out, response.as_bytes());
            }
            code::SASL => {
                let offered: Vec<&str> = body[..]
                    .split(|&b| b == 0)
                    .filter(|m| !m.is_empty())
                    .filter_map(|m| std::str::from_utf8(m).ok())
                    .collect();
                if !offered.contains(&SCRAM_SHA_256) {
                    return Err(ServerLoginError::NoMechanism(offered.join(", ")));
                }
                let first = match credential {
                    ServerCredential::Password(p) => {
                        let client = ScramSha256::new(p.as_bytes(), ChannelBinding::unsupported());
                        let first = client.message().to_vec();
                        sasl = Some(Sasl::Password(Box::new(client)));
                        first
                    }
                    ServerCredential::ScramKeys(keys) => {
                        let client = ScramKeysClient::new(keys.clone());
                        let first = client.client_first().into_bytes();
                        sasl = Some(Sasl::Keys(client));
                        first
                    }
                    ServerCredential::None => return Err(ServerLoginError::NoPassword { user: user.into() }),
                    ServerCredential::Md5Hash(_) => return Err(ServerLoginError::CannotAnswer {
                        user: user.into(),
                        method: "SCRAM-SHA-256",
                        hint:
                            "an md5 hash cannot answer SCRAM; store the plain password or the SCRAM secret in auth_file",
                    }),
                };
                wire::write_sasl_initial(&mut out, SCRAM_SHA_256, &first);
            }
            code::SASL_CONTINUE => {
                let next = match sasl.as_mut() {
                    Some(Sasl::Password(client)) => {
                        client.update(&body).map_err(|e| ServerLoginError::Scram(e.to_string()))?;
                        client.message().to_vec()
                    }
                    Some(Sasl::Keys(client)) => client.server_first(&body).map_err(scram_error)?.into_bytes(),
                    None => return Err(ServerLoginError::Protocol("SASLContinue before SASL".into())),
                };
                wire::write_sasl_response(&mut out, &next);
            }
            code::SASL_FINAL => {
                match sasl.as_mut() {
                    Some(Sasl::Password(client)) => {
                        client.finish(&body).map_err(|e| ServerLoginError::Scram(e.to_string()))?
                    }
                    Some(Sasl::Keys(client)) => client.server_final(&body).map_err(scram_error)?,
                    None => return Err(ServerLoginError::Protocol("SASLFinal before SASL".into())),
                }
                continue;
            }
            other => return Err(ServerLoginError::Unsupported(other)),
        }
        wire::send(stream, &out).await.map_err(ReadError::Io)?;
    }
}

fn scram_error(e: ScramError) -> ServerLoginError {
    ServerLoginError::Scram(e.to_string())
}

fn server_error(body: &[u8]) -> ServerError {
    match ErrorFields::parse(body) {
        Ok(fields) => ServerError {
            severity: fields.severity.into_owned(),
            code: fields.code.into_owned(),
            message: fields.message.into_owned(),
        },
        Err(e) => ServerError {
            severity: "FATAL".into(),
            code: "08P01".into(),
            message: format!("unreadable ErrorResponse: {e}"),
        },
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
