//! The login exchange toward a client, after its StartupMessage: pick the method from
//! auth_type and the stored secret (as PgBouncer does), run it, and on failure send
//! PostgreSQL's own FATAL 28P01 `password authentication failed for user "x"`, the same for
//! unknown users. Returns what the pooler may use to log in to servers as that user.
//! AuthenticationOk and everything after it are the caller's.

use super::credentials::{CredentialSource, LookupError};
use super::scram::{ScramError, ScramKeys, ScramServer};
use super::secret::{md5_response_from_stored, md5_stored, ScramVerifier, StoredSecret, DEFAULT_ITERATIONS};
use super::wire::{self, code, ReadError, MAX_AUTH_MESSAGE_LEN};
use crate::config::AuthType;
use crate::protocol::{ErrorResponse, Severity};
use bytes::BytesMut;
use subtle::ConstantTimeEq;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};

/// How the pooler can log in to a server as the authenticated user.
#[derive(Clone, PartialEq, Eq)]
pub enum ServerCredential {
    /// Nothing known (trust): the server must not ask for a password, or the database entry
    /// must name a user with a stored password.
    None,
    /// The plain password.
    Password(String),
    /// A stored `md5...` hash: enough for md5 toward the server.
    Md5Hash(String),
    /// ClientKey/ServerKey from the client's SCRAM proof: enough for SCRAM toward a server
    /// that stores the same verifier.
    ScramKeys(ScramKeys),
}

impl ServerCredential {
    /// A stored password as what logs in to a server: the password or its md5 hash; nothing
    /// from a SCRAM verifier (it cannot answer a server's challenge) or an unknown user.
    pub fn from_stored(secret: Option<StoredSecret>) -> ServerCredential {
        match secret {
            Some(StoredSecret::Plain(p)) => ServerCredential::Password(p),
            Some(StoredSecret::Md5(h)) => ServerCredential::Md5Hash(h),
            _ => ServerCredential::None,
        }
    }
}

impl std::fmt::Debug for ServerCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ServerCredential::None => "None",
            ServerCredential::Password(_) => "Password(..)",
            ServerCredential::Md5Hash(_) => "Md5Hash(..)",
            ServerCredential::ScramKeys(_) => "ScramKeys(..)",
        })
    }
}

/// Why a client was not let in. The client has been sent an ErrorResponse already where one
/// makes sense (not after the connection broke).
#[derive(Debug, Error)]
pub enum ClientAuthError {
    #[error("password authentication failed for user {user:?}: {reason}")]
    Failed { user: String, reason: &'static str },
    #[error("client sent a malformed authentication message: {0}")]
    Protocol(String),
    #[error("channel binding refused for user {0:?}: the pooler does not offer SCRAM-SHA-256-PLUS")]
    ChannelBinding(String),
    #[error("password lookup for user {user:?} failed: {error}")]
    Lookup { user: String, error: LookupError },
    #[error(transparent)]
    Read(#[from] ReadError),
}

impl ClientAuthError {
    /// A short label for metrics ("errors by kind").
    pub fn kind(&self) -> &'static str {
        match self {
            ClientAuthError::Failed { .. } => "auth_failed",
            ClientAuthError::Protocol(_) => "auth_protocol",
            ClientAuthError::ChannelBinding(_) => "auth_channel_binding",
            ClientAuthError::Lookup { .. } => "auth_lookup",
            ClientAuthError::Read(_) => "auth_io",
        }
    }
}

/// Authenticates `user` on `stream`. `buf` holds bytes already read past the StartupMessage
/// and keeps any read past the last authentication message. Unbounded: the caller bounds the
/// whole login (client_login_timeout). On success nothing has been sent after the method's
/// last message: the caller sends AuthenticationOk, ParameterStatus, BackendKeyData,
/// ReadyForQuery.
pub async fn authenticate<S, C>(
    stream: &mut S,
    buf: &mut BytesMut,
    user: &str,
    auth_type: AuthType,
    credentials: &C,
) -> Result<ServerCredential, ClientAuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    C: CredentialSource + ?Sized,
{
    if auth_type == AuthType::Trust {
        return Ok(ServerCredential::from_stored(credentials.lookup(user).await.ok().flatten()));
    }
    let secret = match credentials.lookup(user).await {
        Ok(secret) => secret,
        Err(error) => {
            let msg = "the pooler could not look up the password; see the pooler log";
            send_error(stream, "08006", msg).await;
            return Err(ClientAuthError::Lookup { user: user.to_string(), error });
        }
    };
    let method = choose(auth_type, secret.as_ref());
    let result = match (method, secret) {
        (Method::Scram, Some(StoredSecret::Scram(v))) => {
            scram(stream, buf, ScramServer::new(v), user).await.map(ServerCredential::ScramKeys)
        }
        (Method::Scram, Some(StoredSecret::Plain(p))) => {
            let mut salt = [0u8; 16];
            let _ = getrandom::fill(&mut salt);
            let verifier = ScramVerifier::derive(&p, &salt, DEFAULT_ITERATIONS);
            scram(stream, buf, ScramServer::new(verifier), user).await.map(|_| ServerCredential::Password(p))
        }
        (Method::Scram, _) => {
            scram(stream, buf, ScramServer::for_unknown_user(user), user).await.map(|_| ServerCredential::None)
        }
        (Method::Md5, secret) => md5(stream, buf, user, secret).await,
        (Method::Plain, secret) => plain(stream, buf, user, secret).await,
    };
    if let Err(e) = &result {
        match e {
            ClientAuthError::Failed { .. } => {
                send_error(stream, "28P01", &format!("password authentication failed for user \"{user}\"")).await
            }
            ClientAuthError::ChannelBinding(_) => {
                let msg =
                    "channel binding is not supported by the pooler: connect with channel_binding=prefer or disable";
                send_error(stream, "28000", msg).await
            }
            ClientAuthError::Protocol(detail) => send_error(stream, "08P01", detail).await,
            _ => {}
        }
    }
    result
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Scram,
    Md5,
    Plain,
}

/// PgBouncer's choice: `md5` uses SCRAM for users whose stored secret is a SCRAM verifier;
/// `scram-sha-256` always uses SCRAM (an md5-hashed password then cannot log in); `plain` asks
/// for the clear-text password. Unknown users get the method a known user would.
fn choose(auth_type: AuthType, secret: Option<&StoredSecret>) -> Method {
    match auth_type {
        AuthType::Md5 if matches!(secret, Some(StoredSecret::Scram(_))) => Method::Scram,
        AuthType::Md5 => Method::Md5,
        AuthType::Plain => Method::Plain,
        // Hba and Cert are decided per connection before this (`hba::HbaRules::decide`,
        // `cert::check`).
        AuthType::ScramSha256 | AuthType::Trust | AuthType::Hba | AuthType::Cert => Method::Scram,
    }
}

async fn send_error<S: AsyncWrite + Unpin>(stream: &mut S, code: &str, message: &str) {
    let bytes = ErrorResponse::new(Severity::Fatal, code, message).to_bytes();
    // Best effort: the client may already be gone.
    let _ = wire::send(stream, &bytes).await;
}

fn failed(user: &str, reason: &'static str) -> ClientAuthError {
    ClientAuthError::Failed { user: user.to_string(), reason }
}

async fn read_password_message<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<BytesMut, ClientAuthError> {
    let message = wire::read_message(stream, buf, MAX_AUTH_MESSAGE_LEN).await?;
    if message.tag != b'p' {
        return Err(ClientAuthError::Protocol(format!(
            "expected a password response, got message type {:?}",
            char::from(message.tag)
        )));
    }
    Ok(message.body)
}

async fn scram<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    mut server: ScramServer,
    user: &str,
) -> Result<ScramKeys, ClientAuthError> {
    let mut out = BytesMut::new();
    wire::write_auth_sasl(&mut out);
    wire::send(stream, &out).await.map_err(ReadError::Io)?;
    let body = read_password_message(stream, buf).await?;
    let Some((mechanism, data)) = wire::parse_sasl_initial(&body) else {
        return Err(ClientAuthError::Protocol("malformed SASLInitialResponse".into()));
    };
    if mechanism != "SCRAM-SHA-256" {
        if mechanism == "SCRAM-SHA-256-PLUS" {
            return Err(ClientAuthError::ChannelBinding(user.to_string()));
        }
        return Err(ClientAuthError::Protocol(format!("SASL mechanism {mechanism:?} was not offered")));
    }
    let server_first = server.client_first(data).map_err(|e| scram_error(e, user))?;
    out.clear();
    wire::write_auth_request(&mut out, code::SASL_CONTINUE, server_first.as_bytes());
    wire::send(stream, &out).await.map_err(ReadError::Io)?;
    let body = read_password_message(stream, buf).await?;
    let (server_final, keys) = server.client_final(&body).map_err(|e| scram_error(e, user))?;
    out.clear();
    wire::write_auth_request(&mut out, code::SASL_FINAL, server_final.as_bytes());
    wire::send(stream, &out).await.map_err(ReadError::Io)?;
    Ok(keys)
}

fn scram_error(error: ScramError, user: &str) -> ClientAuthError {
    match error {
        ScramError::ChannelBindingRequired => ClientAuthError::ChannelBinding(user.to_string()),
        ScramError::WrongProof => failed(user, "wrong password or unknown user (SCRAM)"),
        other => ClientAuthError::Protocol(other.to_string()),
    }
}

async fn md5<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    user: &str,
    secret: Option<StoredSecret>,
) -> Result<ServerCredential, ClientAuthError> {
    let mut salt = [0u8; 4];
    let _ = getrandom::fill(&mut salt);
    let mut out = BytesMut::new();
    wire::write_auth_request(&mut out, code::MD5_PASSWORD, &salt);
    wire::send(stream, &out).await.map_err(ReadError::Io)?;
    let body = read_password_message(stream, buf).await?;
    let response =
        wire::parse_password(&body).ok_or_else(|| ClientAuthError::Protocol("malformed password message".into()))?;
    let (stored, credential) = match secret {
        Some(StoredSecret::Plain(p)) if !p.is_empty() => (md5_stored(&p, user), ServerCredential::Password(p)),
        Some(StoredSecret::Md5(h)) => (h.clone(), ServerCredential::Md5Hash(h)),
        _ => return Err(failed(user, "unknown user or no usable password for md5")),
    };
    let expected = md5_response_from_stored(&stored, salt);
    if bool::from(expected.as_bytes().ct_eq(response)) {
        Ok(credential)
    } else {
        Err(failed(user, "wrong password (md5)"))
    }
}

async fn plain<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    user: &str,
    secret: Option<StoredSecret>,
) -> Result<ServerCredential, ClientAuthError> {
    let mut out = BytesMut::new();
    wire::write_auth_request(&mut out, code::CLEARTEXT_PASSWORD, &[]);
    wire::send(stream, &out).await.map_err(ReadError::Io)?;
    let body = read_password_message(stream, buf).await?;
    let given =
        wire::parse_password(&body).ok_or_else(|| ClientAuthError::Protocol("malformed password message".into()))?;
    let given = std::str::from_utf8(given).map_err(|_| failed(user, "password is not UTF-8"))?;
    if given.is_empty() {
        return Err(failed(user, "empty password"));
    }
    let ok = match &secret {
        Some(StoredSecret::Plain(p)) => bool::from(p.as_bytes().ct_eq(given.as_bytes())),
        Some(StoredSecret::Md5(h)) => bool::from(md5_stored(given, user).as_bytes().ct_eq(h.as_bytes())),
        Some(StoredSecret::Scram(v)) => {
            let derived = ScramVerifier::derive(given, &v.salt, v.iterations);
            bool::from(derived.stored_key.ct_eq(&v.stored_key))
        }
        None => false,
    };
    if !ok {
        return Err(failed(user, "wrong password or unknown user (plain)"));
    }
    Ok(match secret {
        Some(StoredSecret::Scram(v)) => {
            ServerCredential::ScramKeys(ScramKeys::from_password(given, &v.salt, v.iterations))
        }
        _ => ServerCredential::Password(given.to_string()),
    })
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
