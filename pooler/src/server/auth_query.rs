//! auth_query through auth_user's own server connection (PgBouncer's way of finding a user the
//! auth file does not list): one connection per server and database, opened on first use with
//! auth_user's password from the auth file, kept for the next lookup and replaced when it
//! breaks. The query runs with the extended protocol, `$1` bound to the user name. Secrets are
//! not cached: each login asks again, so a changed or removed password takes effect at once.

use super::wire::read_message;
use super::{LoginTarget, ServerConn};
use crate::auth::{AuthQueryRunner, LookupError};
use crate::protocol::tag::backend;
use crate::protocol::ErrorFields;
use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use postgres_protocol::message::frontend;
use postgres_protocol::IsNull;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The auth_user connections kept between lookups, by (server, database).
#[derive(Default)]
pub struct AuthConnections {
    idle: Mutex<HashMap<String, ServerConn>>,
}

impl AuthConnections {
    fn take(&self, key: &str) -> Option<ServerConn> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).remove(key)
    }

    fn put(&self, key: String, conn: ServerConn) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).entry(key).or_insert(conn);
    }
}

/// Runs auth_query as auth_user on one database's server.
pub struct AuthQueryOnServer {
    pub connections: Arc<AuthConnections>,
    /// auth_user's login to the database's server.
    pub login: LoginTarget,
    /// Bounds the whole lookup (connect, query): server_connect_timeout.
    pub timeout: Duration,
}

impl AuthQueryOnServer {
    fn key(&self) -> String {
        format!("{}/{}/{}", self.login.addr, self.login.dbname, self.login.user)
    }

    async fn connection(&self) -> Result<ServerConn, LookupError> {
        if let Some(conn) = self.connections.take(&self.key()) {
            if !conn.stream.is_closed_or_dirty() {
                return Ok(conn);
            }
        }
        ServerConn::connect(&self.login)
            .await
            .map_err(|e| LookupError::Query(format!("cannot log in as auth_user {:?}: {e}", self.login.user)))
    }
}

#[async_trait]
impl AuthQueryRunner for AuthQueryOnServer {
    async fn password_of(&self, query: &str, user: &str) -> Result<Option<Option<String>>, LookupError> {
        let lookup = async {
            let mut conn = self.connection().await?;
            let answer = run(&mut conn, query, user).await?;
            self.connections.put(self.key(), conn);
            Ok(answer)
        };
        match crate::clock::timeout(self.timeout, lookup).await {
            Ok(answer) => answer,
            Err(_) => Err(LookupError::Query(format!("no answer within {:?} (server_connect_timeout)", self.timeout))),
        }
    }
}

fn protocol(e: impl std::fmt::Display) -> LookupError {
    LookupError::Query(e.to_string())
}

/// Parse/Bind/Execute/Sync of `query` with `$1` = `user` (text); the second column of the
/// first row. A connection that fails here is dropped by the caller (not put back).
async fn run(conn: &mut ServerConn, query: &str, user: &str) -> Result<Option<Option<String>>, LookupError> {
    let mut out = BytesMut::new();
    frontend::parse("", query, [25u32], &mut out).map_err(protocol)?;
    frontend::bind(
        "",
        "",
        [0i16],
        [user],
        |value, buf| {
            buf.extend_from_slice(value.as_bytes());
            Ok(IsNull::No)
        },
        [0i16],
        &mut out,
    )
    .map_err(|_| protocol("cannot encode the auth_query parameter"))?;
    frontend::execute("", 1, &mut out).map_err(protocol)?;
    frontend::sync(&mut out);
    conn.stream.send(&out).await.map_err(protocol)?;
    let mut buf = BytesMut::new();
    let (mut answer, mut failure) = (None, None);
    loop {
        let (tag, body) = read_message(&mut conn.stream, &mut buf).await.map_err(protocol)?;
        match tag {
            backend::DATA_ROW if answer.is_none() => answer = Some(second_column(&body)?),
            backend::ERROR_RESPONSE => {
                let fields = ErrorFields::parse(&body).map_err(protocol)?;
                failure = Some(format!("{} {}", fields.code, fields.message));
            }
            backend::READY_FOR_QUERY => {
                return match failure {
                    Some(f) => Err(LookupError::Query(f)),
                    None => Ok(answer),
                };
            }
            _ => {}
        }
    }
}

/// Column 2 of a DataRow body (`None` for NULL).
fn second_column(mut body: &[u8]) -> Result<Option<String>, LookupError> {
    let bad = || LookupError::Query("auth_query must return two columns (user name, password)".into());
    if body.len() < 2 || body.get_i16() < 2 {
        return Err(bad());
    }
    let mut value = None;
    for column in 0..2 {
        if body.len() < 4 {
            return Err(bad());
        }
        let len = body.get_i32();
        let bytes = if len < 0 {
            None
        } else {
            let len = len as usize;
            if body.len() < len {
                return Err(bad());
            }
            let (v, rest) = body.split_at(len);
            body = rest;
            Some(v)
        };
        if column == 1 {
            value = bytes.map(|b| String::from_utf8_lossy(b).into_owned());
        }
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::second_column;

    fn row(columns: &[Option<&str>]) -> Vec<u8> {
        let mut body = (columns.len() as i16).to_be_bytes().to_vec();
        for c in columns {
            match c {
                Some(v) => {
                    body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    body.extend_from_slice(v.as_bytes());
                }
                None => body.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        body
    }

    #[test]
    fn the_password_is_the_second_column_and_null_is_none() {
        assert_eq!(second_column(&row(&[Some("bob"), Some("md5abc")])).unwrap(), Some("md5abc".into()));
        assert_eq!(second_column(&row(&[Some("bob"), None])).unwrap(), None);
        assert!(second_column(&row(&[Some("bob")])).is_err());
        assert!(second_column(&row(&[Some("bob"), Some("x")])[..9]).is_err());
    }
}
