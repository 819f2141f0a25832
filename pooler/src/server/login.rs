//! Logging in to PostgreSQL: the StartupMessage, the authentication exchange (the shared
//! `auth::login_to_server`: cleartext, md5, SCRAM-SHA-256 with a password, an md5 hash or the
//! client's SCRAM keys), then the ParameterStatus values and BackendKeyData up to ReadyForQuery.

use super::wire::read_message;
use super::{BackendKey, LoginTarget, ServerError};
use crate::auth::{login_to_server, ServerLoginError};
use crate::protocol::message::{BackendKeyData, ParameterStatus};
use crate::protocol::tag::backend;
use crate::protocol::ErrorFields;
use crate::stream::Stream;
use bytes::BytesMut;
use postgres_protocol::message::frontend;

type Login = (Stream, BackendKey, Vec<(String, String)>);

pub(super) async fn login(mut stream: Stream, target: &LoginTarget) -> Result<Login, ServerError> {
    let mut out = BytesMut::new();
    let params = [("user", target.user.as_str()), ("database", target.dbname.as_str())];
    frontend::startup_message(params, &mut out).map_err(|e| ServerError::Protocol(e.to_string()))?;
    stream.send(&out).await?;
    let mut buf = BytesMut::new();
    login_to_server(&mut stream, &mut buf, &target.user, &target.credential, target.connect_timeout).await.map_err(
        |e| match e {
            ServerLoginError::Refused(refusal) => ServerError::Refused { code: refusal.code, message: refusal.message },
            ServerLoginError::NoPassword { user } => ServerError::NoPassword { user },
            other => ServerError::Protocol(other.to_string()),
        },
    )?;
    let mut key = None;
    let mut reported = Vec::new();
    loop {
        let (tag, body) = read_message(&mut stream, &mut buf).await?;
        match tag {
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
            backend::NOTICE_RESPONSE => {}
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
