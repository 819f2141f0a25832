//! Logging in to PostgreSQL as a client would: StartupMessage, then cleartext, md5 or
//! SCRAM-SHA-256 (postgres-protocol's client side) with the user's password from the auth
//! file, then the ParameterStatus values and BackendKeyData up to ReadyForQuery.

use super::wire::read_message;
use super::{BackendKey, LoginTarget, ServerError};
use crate::protocol::message::{BackendKeyData, ParameterStatus};
use crate::protocol::tag::backend;
use crate::protocol::ErrorFields;
use crate::stream::Stream;
use bytes::{Buf, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;
use std::collections::HashMap;
use std::path::Path;
use tokio::io::AsyncWriteExt;

/// A password as an auth file stores it.
#[derive(Clone, PartialEq, Eq)]
pub enum UserPassword {
    Plain(String),
    /// `md5...` or `SCRAM-SHA-256$...`: good for checking clients, not for logging in.
    Hashed,
}

impl std::fmt::Debug for UserPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a secret.
        f.write_str(match self {
            UserPassword::Plain(_) => "Plain(..)",
            UserPassword::Hashed => "Hashed",
        })
    }
}

/// Passwords the pooler logs in to servers with: PgBouncer's userlist.txt
/// (`"user" "password"` per line, `;` or `#` comments).
#[derive(Debug, Default, Clone)]
pub struct ServerPasswords {
    users: HashMap<String, UserPassword>,
}

impl ServerPasswords {
    pub fn load(path: &Path) -> std::io::Result<Self> {
        Ok(Self::parse(&std::fs::read_to_string(path)?))
    }

    pub fn parse(text: &str) -> Self {
        let mut users = HashMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
                continue;
            }
            let fields = quoted_fields(line);
            if let [user, password, ..] = fields.as_slice() {
                let password =
                    if password.starts_with("md5") && password.len() == 35 || password.starts_with("SCRAM-SHA-256$") {
                        UserPassword::Hashed
                    } else {
                        UserPassword::Plain(password.clone())
                    };
                users.insert(user.clone(), password);
            }
        }
        ServerPasswords { users }
    }

    pub fn get(&self, user: &str) -> Option<&UserPassword> {
        self.users.get(user)
    }
}

/// `"a" "b""c"` -> [a, b"c]
fn quoted_fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut field = String::new();
        while let Some(c) = chars.next() {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    field.push('"');
                } else {
                    break;
                }
            } else {
                field.push(c);
            }
        }
        fields.push(field);
    }
    fields
}

type Login = (Stream, BackendKey, Vec<(String, String)>);

pub(super) async fn login(mut stream: Stream, target: &LoginTarget) -> Result<Login, ServerError> {
    let mut out = BytesMut::new();
    let params = [("user", target.user.as_str()), ("database", target.dbname.as_str())];
    frontend::startup_message(params, &mut out).map_err(|e| ServerError::Protocol(e.to_string()))?;
    stream.write_all(&out).await?;
    out.clear();
    let mut buf = BytesMut::new();
    let mut scram: Option<ScramSha256> = None;
    let mut key = None;
    let mut reported = Vec::new();
    let protocol = |e: std::io::Error| ServerError::Protocol(e.to_string());
    loop {
        let (tag, mut body) = read_message(&mut stream, &mut buf).await?;
        match tag {
            backend::AUTHENTICATION => {
                if body.len() < 4 {
                    return Err(ServerError::Protocol("short authentication request".into()));
                }
                let code = body.get_u32();
                match code {
                    0 => continue,
                    3 | 5 | 10 => {
                        let password = match &target.password {
                            Some(UserPassword::Plain(p)) => p.as_str(),
                            _ => return Err(ServerError::NoPassword { user: target.user.clone() }),
                        };
                        match code {
                            3 => frontend::password_message(password.as_bytes(), &mut out).map_err(protocol)?,
                            5 => {
                                let salt: [u8; 4] = body
                                    .get(..4)
                                    .and_then(|s| s.try_into().ok())
                                    .ok_or_else(|| ServerError::Protocol("md5 request without salt".into()))?;
                                let hash = postgres_protocol::authentication::md5_hash(
                                    target.user.as_bytes(),
                                    password.as_bytes(),
                                    salt,
                                );
                                frontend::password_message(hash.as_bytes(), &mut out).map_err(protocol)?;
                            }
                            _ => {
                                let offers_scram = body.split(|&b| b == 0).any(|m| m == SCRAM_SHA_256.as_bytes());
                                if !offers_scram {
                                    return Err(ServerError::Protocol("server offers no SCRAM-SHA-256".into()));
                                }
                                let client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                                frontend::sasl_initial_response(SCRAM_SHA_256, client.message(), &mut out)
                                    .map_err(protocol)?;
                                scram = Some(client);
                            }
                        }
                    }
                    11 => {
                        let client =
                            scram.as_mut().ok_or_else(|| ServerError::Protocol("SASL continue out of turn".into()))?;
                        client.update(&body).map_err(protocol)?;
                        frontend::sasl_response(client.message(), &mut out).map_err(protocol)?;
                    }
                    12 => {
                        let client =
                            scram.as_mut().ok_or_else(|| ServerError::Protocol("SASL final out of turn".into()))?;
                        client.finish(&body).map_err(protocol)?;
                        continue;
                    }
                    other => return Err(ServerError::Protocol(format!("unsupported authentication request {other}"))),
                }
                stream.write_all(&out).await?;
                out.clear();
            }
            backend::PARAMETER_STATUS => {
                let status = ParameterStatus::parse(&body).map_err(|e| ServerError::Protocol(e.to_string()))?;
                reported.push((status.name.to_owned(), status.value.to_owned()));
            }
            backend::BACKEND_KEY_DATA => {
                let data = BackendKeyData::parse(&body).map_err(|e| ServerError::Protocol(e.to_string()))?;
                key = Some(BackendKey { process_id: data.process_id, secret_key: data.secret_key.to_vec() });
            }
            backend::ERROR_RESPONSE => {
                let fields = ErrorFields::parse(&body).map_err(|e| ServerError::Protocol(e.to_string()))?;
                return Err(ServerError::Refused {
                    code: fields.code.into_owned(),
                    message: fields.message.into_owned(),
                });
            }
            backend::NOTICE_RESPONSE | backend::NEGOTIATE_PROTOCOL_VERSION => {}
            backend::READY_FOR_QUERY => {
                if !buf.is_empty() {
                    return Err(ServerError::Protocol("bytes after the login's ReadyForQuery".into()));
                }
                let key = key.unwrap_or(BackendKey { process_id: 0, secret_key: vec![0; 4] });
                return Ok((stream, key, reported));
            }
            other => return Err(ServerError::Protocol(format!("unexpected message {:?} during login", other as char))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userlist_lines_are_read_like_pgbouncer() {
        let text = "; comment\n\"app\" \"s3\"\"cret\"\n\"hashed\" \"md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"\n\n";
        let passwords = ServerPasswords::parse(text);
        assert_eq!(passwords.get("app"), Some(&UserPassword::Plain("s3\"cret".into())));
        assert_eq!(passwords.get("hashed"), Some(&UserPassword::Hashed));
        assert_eq!(passwords.get("nobody"), None);
    }
}
