//! Server messages the pooler writes itself (ErrorResponse, ReadyForQuery, ParameterStatus,
//! BackendKeyData, AuthenticationOk, the fixed completions) and the fields it reads out of
//! server messages. Owns byte layouts only: it never decides when a message is sent.

use super::frame::HEADER_LEN;
use super::tag::backend;
use bytes::{BufMut, Bytes, BytesMut};
use std::borrow::Cow;
use thiserror::Error;

/// ParseComplete, ready to send.
pub const PARSE_COMPLETE: &[u8] = &[backend::PARSE_COMPLETE, 0, 0, 0, 4];
/// BindComplete, ready to send.
pub const BIND_COMPLETE: &[u8] = &[backend::BIND_COMPLETE, 0, 0, 0, 4];
/// CloseComplete, ready to send.
pub const CLOSE_COMPLETE: &[u8] = &[backend::CLOSE_COMPLETE, 0, 0, 0, 4];
/// ReadyForQuery with status idle, ready to send.
pub const READY_FOR_QUERY_IDLE: &[u8] = &[backend::READY_FOR_QUERY, 0, 0, 0, 5, b'I'];

/// A message body that does not have the layout its tag promises.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MessageError {
    #[error("{0} message is truncated")]
    Truncated(&'static str),
    #[error("{0} message has bytes after its last field")]
    TrailingBytes(&'static str),
    #[error("{0} message is not valid UTF-8")]
    NotUtf8(&'static str),
    #[error("ReadyForQuery carries unknown transaction status {:?}", char::from(*.0))]
    UnknownTransactionStatus(u8),
    #[error("{0} message has an invalid field")]
    Invalid(&'static str),
    #[error("ErrorResponse lacks its {:?} field", char::from(*.0))]
    MissingField(u8),
}

/// The transaction status a ReadyForQuery reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransactionStatus {
    /// `I`: not in a transaction block.
    #[default]
    Idle,
    /// `T`: in a transaction block.
    InTransaction,
    /// `E`: in a failed transaction block.
    Failed,
}

impl TransactionStatus {
    pub fn from_byte(byte: u8) -> Result<Self, MessageError> {
        match byte {
            b'I' => Ok(TransactionStatus::Idle),
            b'T' => Ok(TransactionStatus::InTransaction),
            b'E' => Ok(TransactionStatus::Failed),
            other => Err(MessageError::UnknownTransactionStatus(other)),
        }
    }

    pub fn as_byte(self) -> u8 {
        match self {
            TransactionStatus::Idle => b'I',
            TransactionStatus::InTransaction => b'T',
            TransactionStatus::Failed => b'E',
        }
    }
}

/// Severity of an ErrorResponse or NoticeResponse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
    Panic,
    Warning,
    Notice,
    Info,
    Log,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Panic => "PANIC",
            Severity::Warning => "WARNING",
            Severity::Notice => "NOTICE",
            Severity::Info => "INFO",
            Severity::Log => "LOG",
        }
    }
}

/// An ErrorResponse the pooler sends a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorResponse<'a> {
    pub severity: Severity,
    /// Five-character SQLSTATE, e.g. `08P01`.
    pub code: &'a str,
    pub message: &'a str,
    pub detail: Option<&'a str>,
    pub hint: Option<&'a str>,
}

impl<'a> ErrorResponse<'a> {
    pub fn new(severity: Severity, code: &'a str, message: &'a str) -> Self {
        ErrorResponse { severity, code, message, detail: None, hint: None }
    }

    pub fn with_detail(mut self, detail: &'a str) -> Self {
        self.detail = Some(detail);
        self
    }

    pub fn with_hint(mut self, hint: &'a str) -> Self {
        self.hint = Some(hint);
        self
    }

    /// Appends the message to `buf`. NUL bytes inside a field are dropped: they would end it.
    pub fn encode(&self, buf: &mut BytesMut) {
        self.encode_as(backend::ERROR_RESPONSE, buf);
    }

    /// The same fields as a NoticeResponse (severity NOTICE, WARNING, ...).
    pub fn encode_notice(&self, buf: &mut BytesMut) {
        self.encode_as(backend::NOTICE_RESPONSE, buf);
    }

    fn encode_as(&self, tag: u8, buf: &mut BytesMut) {
        write_message(buf, tag, |buf| {
            let severity = self.severity.as_str();
            put_field(buf, b'S', severity);
            put_field(buf, b'V', severity);
            put_field(buf, b'C', self.code);
            put_field(buf, b'M', self.message);
            if let Some(detail) = self.detail {
                put_field(buf, b'D', detail);
            }
            if let Some(hint) = self.hint {
                put_field(buf, b'H', hint);
            }
            buf.put_u8(0);
        });
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut buf = BytesMut::new();
        self.encode(&mut buf);
        buf.freeze()
    }
}

fn put_field(buf: &mut BytesMut, code: u8, value: &str) {
    buf.put_u8(code);
    put_cstr(buf, value.as_bytes());
}

fn put_cstr(buf: &mut BytesMut, value: &[u8]) {
    for chunk in value.split(|&b| b == 0) {
        buf.put_slice(chunk);
    }
    buf.put_u8(0);
}

/// Writes `tag`, a length placeholder, the body from `body`, then patches the length.
fn write_message(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    let start = buf.len();
    buf.put_u8(tag);
    buf.put_u32(0);
    body(buf);
    // Bodies written here are built from bounded pooler-side values, far below 2 GiB.
    let len = u32::try_from(buf.len() - start - 1).unwrap_or(u32::MAX);
    buf[start + 1..start + HEADER_LEN].copy_from_slice(&len.to_be_bytes());
}

pub fn write_ready_for_query(status: TransactionStatus, buf: &mut BytesMut) {
    write_message(buf, backend::READY_FOR_QUERY, |buf| buf.put_u8(status.as_byte()));
}

/// ParameterStatus; NUL bytes in the name or value are dropped.
pub fn write_parameter_status(name: &str, value: &str, buf: &mut BytesMut) {
    write_message(buf, backend::PARAMETER_STATUS, |buf| {
        put_cstr(buf, name.as_bytes());
        put_cstr(buf, value.as_bytes());
    });
}

/// BackendKeyData: 4-byte keys for protocol 3.0, up to 256 bytes for 3.2.
pub fn write_backend_key_data(process_id: i32, secret_key: &[u8], buf: &mut BytesMut) {
    write_message(buf, backend::BACKEND_KEY_DATA, |buf| {
        buf.put_i32(process_id);
        buf.put_slice(secret_key);
    });
}

pub fn write_authentication_ok(buf: &mut BytesMut) {
    write_message(buf, backend::AUTHENTICATION, |buf| buf.put_u32(0));
}

/// Splits `buf` at its first NUL: the string and what follows it.
pub(crate) fn split_cstr<'a>(buf: &'a [u8], what: &'static str) -> Result<(&'a [u8], &'a [u8]), MessageError> {
    let end = buf.iter().position(|&b| b == 0).ok_or(MessageError::Truncated(what))?;
    Ok((&buf[..end], &buf[end + 1..]))
}

fn utf8<'a>(bytes: &'a [u8], what: &'static str) -> Result<&'a str, MessageError> {
    std::str::from_utf8(bytes).map_err(|_| MessageError::NotUtf8(what))
}

/// The status byte of a ReadyForQuery body.
pub fn parse_ready_for_query(body: &[u8]) -> Result<TransactionStatus, MessageError> {
    match body {
        [status] => TransactionStatus::from_byte(*status),
        [] => Err(MessageError::Truncated("ReadyForQuery")),
        _ => Err(MessageError::TrailingBytes("ReadyForQuery")),
    }
}

/// A ParameterStatus body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParameterStatus<'a> {
    pub name: &'a str,
    pub value: &'a str,
}

impl<'a> ParameterStatus<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, MessageError> {
        let (name, rest) = split_cstr(body, "ParameterStatus")?;
        let (value, rest) = split_cstr(rest, "ParameterStatus")?;
        if !rest.is_empty() {
            return Err(MessageError::TrailingBytes("ParameterStatus"));
        }
        Ok(ParameterStatus { name: utf8(name, "ParameterStatus")?, value: utf8(value, "ParameterStatus")? })
    }
}

/// A BackendKeyData body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendKeyData<'a> {
    pub process_id: i32,
    pub secret_key: &'a [u8],
}

impl<'a> BackendKeyData<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, MessageError> {
        let Some((&[a, b, c, d], key)) = body.split_first_chunk::<4>() else {
            return Err(MessageError::Truncated("BackendKeyData"));
        };
        if key.len() < 4 || key.len() > super::startup::MAX_CANCEL_KEY_LEN {
            return Err(MessageError::Invalid("BackendKeyData"));
        }
        Ok(BackendKeyData { process_id: i32::from_be_bytes([a, b, c, d]), secret_key: key })
    }
}

/// The fields of an ErrorResponse (or NoticeResponse) a server sent. Text is decoded lossily:
/// a server whose client_encoding is not UTF-8 may send other bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFields<'a> {
    /// The non-localized severity (`V`) when present, else the localized one (`S`).
    pub severity: Cow<'a, str>,
    pub code: Cow<'a, str>,
    pub message: Cow<'a, str>,
    pub detail: Option<Cow<'a, str>>,
    pub hint: Option<Cow<'a, str>>,
}

impl<'a> ErrorFields<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, MessageError> {
        let (mut localized, mut severity, mut code, mut message, mut detail, mut hint) =
            (None, None, None, None, None, None);
        let mut rest = body;
        loop {
            let Some((&field, after)) = rest.split_first() else {
                return Err(MessageError::Truncated("ErrorResponse"));
            };
            if field == 0 {
                if !after.is_empty() {
                    return Err(MessageError::TrailingBytes("ErrorResponse"));
                }
                break;
            }
            let (value, after) = split_cstr(after, "ErrorResponse")?;
            let value = String::from_utf8_lossy(value);
            match field {
                b'S' => localized = Some(value),
                b'V' => severity = Some(value),
                b'C' => code = Some(value),
                b'M' => message = Some(value),
                b'D' => detail = Some(value),
                b'H' => hint = Some(value),
                _ => {}
            }
            rest = after;
        }
        Ok(ErrorFields {
            severity: severity.or(localized).ok_or(MessageError::MissingField(b'S'))?,
            code: code.ok_or(MessageError::MissingField(b'C'))?,
            message: message.ok_or(MessageError::MissingField(b'M'))?,
            detail,
            hint,
        })
    }

    /// FATAL or PANIC: the server ends the connection after this message.
    pub fn ends_connection(&self) -> bool {
        self.severity == "FATAL" || self.severity == "PANIC"
    }
}

/// The command tag of a CommandComplete body (`SELECT 1`, `DISCARD ALL`).
pub fn parse_command_tag(body: &[u8]) -> Result<&[u8], MessageError> {
    let (tag, rest) = split_cstr(body, "CommandComplete")?;
    if !rest.is_empty() {
        return Err(MessageError::TrailingBytes("CommandComplete"));
    }
    Ok(tag)
}

#[cfg(test)]
mod tests {
    use super::super::frame::body;
    use super::*;
    use postgres_protocol::message::backend::Message;

    /// Parses what we wrote with postgres-protocol's (independent) backend parser.
    fn reparse(buf: &BytesMut) -> Message {
        let mut copy = buf.clone();
        let message = Message::parse(&mut copy).unwrap().unwrap();
        assert!(copy.is_empty(), "one message, nothing after it");
        message
    }

    #[test]
    fn error_response_is_read_back_by_postgres_protocol_and_by_us() {
        let error = ErrorResponse::new(Severity::Fatal, "57P01", "no primary available for 5 s")
            .with_detail("a failover is in progress")
            .with_hint("retry");
        let mut buf = BytesMut::new();
        error.encode(&mut buf);
        assert!(matches!(reparse(&buf), Message::ErrorResponse(_)));
        let ours = ErrorFields::parse(body(&buf)).unwrap();
        assert_eq!(ours.severity, "FATAL");
        assert_eq!(ours.code, "57P01");
        assert_eq!(ours.message, "no primary available for 5 s");
        assert_eq!(ours.detail.as_deref(), Some("a failover is in progress"));
        assert_eq!(ours.hint.as_deref(), Some("retry"));
        assert!(ours.ends_connection());
    }

    #[test]
    fn nul_in_a_field_cannot_break_framing() {
        let mut buf = BytesMut::new();
        ErrorResponse::new(Severity::Error, "XX000", "a\0b").encode(&mut buf);
        assert_eq!(ErrorFields::parse(body(&buf)).unwrap().message, "ab");
    }

    #[test]
    fn error_fields_need_severity_code_and_message() {
        assert_eq!(ErrorFields::parse(b"SERROR\0Mx\0\0"), Err(MessageError::MissingField(b'C')));
        assert_eq!(ErrorFields::parse(b"SERROR\0Cx"), Err(MessageError::Truncated("ErrorResponse")));
        assert_eq!(ErrorFields::parse(b""), Err(MessageError::Truncated("ErrorResponse")));
        assert_eq!(ErrorFields::parse(b"\0x"), Err(MessageError::TrailingBytes("ErrorResponse")));
        let fields = ErrorFields::parse(b"SERREUR\0C42P01\0Mnope\0\0").unwrap();
        assert_eq!(fields.severity, "ERREUR");
        assert!(!fields.ends_connection());
    }

    #[test]
    fn ready_for_query_round_trip() {
        for status in [TransactionStatus::Idle, TransactionStatus::InTransaction, TransactionStatus::Failed] {
            let mut buf = BytesMut::new();
            write_ready_for_query(status, &mut buf);
            let Message::ReadyForQuery(body_) = reparse(&buf) else { panic!() };
            assert_eq!(body_.status(), status.as_byte());
            assert_eq!(parse_ready_for_query(body(&buf)), Ok(status));
        }
        let mut buf = BytesMut::new();
        write_ready_for_query(TransactionStatus::Idle, &mut buf);
        assert_eq!(&buf[..], READY_FOR_QUERY_IDLE);
        assert_eq!(parse_ready_for_query(b"X"), Err(MessageError::UnknownTransactionStatus(b'X')));
        assert_eq!(parse_ready_for_query(b""), Err(MessageError::Truncated("ReadyForQuery")));
        assert_eq!(parse_ready_for_query(b"II"), Err(MessageError::TrailingBytes("ReadyForQuery")));
    }

    #[test]
    fn parameter_status_round_trip() {
        let mut buf = BytesMut::new();
        write_parameter_status("TimeZone", "Europe/Paris", &mut buf);
        let Message::ParameterStatus(p) = reparse(&buf) else { panic!() };
        assert_eq!(p.name().unwrap(), "TimeZone");
        let ours = ParameterStatus::parse(body(&buf)).unwrap();
        assert_eq!((ours.name, ours.value), ("TimeZone", "Europe/Paris"));
        assert!(ParameterStatus::parse(b"TimeZone\0UTC").is_err());
        assert!(ParameterStatus::parse(b"a\0b\0c").is_err());
    }

    #[test]
    fn backend_key_data_round_trip() {
        let mut buf = BytesMut::new();
        write_backend_key_data(77, &[1, 2, 3, 4], &mut buf);
        let Message::BackendKeyData(k) = reparse(&buf) else { panic!() };
        assert_eq!(k.process_id(), 77);
        let ours = BackendKeyData::parse(body(&buf)).unwrap();
        assert_eq!((ours.process_id, ours.secret_key), (77, &[1u8, 2, 3, 4][..]));
        assert!(BackendKeyData::parse(&[0, 0, 0]).is_err());
        assert!(BackendKeyData::parse(&[0, 0, 0, 1, 2]).is_err());
    }

    #[test]
    fn authentication_ok_and_fixed_completions() {
        let mut buf = BytesMut::new();
        write_authentication_ok(&mut buf);
        assert!(matches!(reparse(&buf), Message::AuthenticationOk));
        assert!(matches!(reparse(&BytesMut::from(PARSE_COMPLETE)), Message::ParseComplete));
        assert!(matches!(reparse(&BytesMut::from(BIND_COMPLETE)), Message::BindComplete));
        assert!(matches!(reparse(&BytesMut::from(CLOSE_COMPLETE)), Message::CloseComplete));
    }

    #[test]
    fn command_tag() {
        assert_eq!(parse_command_tag(b"DISCARD ALL\0"), Ok(&b"DISCARD ALL"[..]));
        assert!(parse_command_tag(b"SELECT 1").is_err());
    }
}
