//! Extended-query messages that name prepared statements (Parse, Bind, Describe, Close): reading
//! the names out of client messages and writing the same messages with a server-side name.
//! Owns byte layouts only; which name maps to which is the session's business.
//!
//! Bind is rewritten by replacing its header and names only: the parameter bytes after them are
//! forwarded untouched, so a Bind with a 100 MB parameter is never re-encoded.

use super::frame::{Header, HEADER_LEN};
use super::message::{split_cstr, MessageError};
use super::tag::frontend;
use bytes::{BufMut, BytesMut};
use postgres_protocol::message::frontend as pg_frontend;
use thiserror::Error;

/// A message the pooler builds toward a server cannot be encoded.
#[derive(Debug, Error)]
pub enum EncodeError {
    #[error("the rewritten message would exceed the protocol's length limit")]
    TooLong,
    #[error("cannot encode message: {0}")]
    Io(#[from] std::io::Error),
}

/// A Parse body: the statement name, and its definition (query text, NUL, parameter count and
/// parameter type OIDs) kept as the bytes the client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseMessage<'a> {
    pub statement: &'a [u8],
    pub definition: &'a [u8],
}

impl<'a> ParseMessage<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, MessageError> {
        let (statement, definition) = split_cstr(body, "Parse")?;
        let (_query, types) = split_cstr(definition, "Parse")?;
        let Some((&[hi, lo], oids)) = types.split_first_chunk::<2>() else {
            return Err(MessageError::Truncated("Parse"));
        };
        let count = i16::from_be_bytes([hi, lo]);
        if count < 0 {
            return Err(MessageError::Invalid("Parse"));
        }
        match oids.len().cmp(&(count.unsigned_abs() as usize * 4)) {
            std::cmp::Ordering::Less => Err(MessageError::Truncated("Parse")),
            std::cmp::Ordering::Greater => Err(MessageError::TrailingBytes("Parse")),
            std::cmp::Ordering::Equal => Ok(ParseMessage { statement, definition }),
        }
    }

    /// The query text.
    pub fn query(&self) -> &'a [u8] {
        split_cstr(self.definition, "Parse").map(|(query, _)| query).unwrap_or_default()
    }
}

/// Writes a Parse of `definition` (as kept from a client's Parse) under `statement`. Ours:
/// postgres-protocol's encoder wants the query as `&str`, and query text is in the client's
/// encoding, not necessarily UTF-8.
pub fn write_parse(statement: &str, definition: &[u8], buf: &mut BytesMut) -> Result<(), EncodeError> {
    let len = 4 + statement.len() + 1 + definition.len();
    let len = i32::try_from(len).map_err(|_| EncodeError::TooLong)?;
    buf.put_u8(frontend::PARSE);
    buf.put_i32(len);
    buf.put_slice(statement.as_bytes());
    buf.put_u8(0);
    buf.put_slice(definition);
    Ok(())
}

/// The start of a Bind body: the portal and statement names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindPrefix<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    /// Bytes of the body up to and including the statement name's NUL.
    pub len: usize,
}

impl<'a> BindPrefix<'a> {
    /// Reads the names from the first bytes of a Bind body; `None` if they are not all there yet.
    pub fn parse(body_start: &'a [u8]) -> Option<Self> {
        let (portal, rest) = split_cstr(body_start, "Bind").ok()?;
        let (statement, _) = split_cstr(rest, "Bind").ok()?;
        Some(BindPrefix { portal, statement, len: portal.len() + statement.len() + 2 })
    }
}

/// Writes the header and names of `original`'s Bind with `statement` as its statement name.
/// The caller then forwards the original bytes after `HEADER_LEN + prefix.len` unchanged.
pub fn write_bind_prefix(
    original: Header,
    prefix: &BindPrefix<'_>,
    statement: &[u8],
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let len = bind_len(original, prefix, statement)?;
    // One reservation for the whole prefix; the puts then only copy.
    buf.reserve(bind_head_size(prefix, statement));
    put_bind_head(len, prefix, statement, buf);
    Ok(())
}

/// The length field of `original`'s Bind once its statement name is `statement`.
fn bind_len(original: Header, prefix: &BindPrefix<'_>, statement: &[u8]) -> Result<i32, EncodeError> {
    let len = i64::from(original.len) - prefix.statement.len() as i64 + statement.len() as i64;
    i32::try_from(len).map_err(|_| EncodeError::TooLong)
}

/// Bytes of a Bind's type, length and names.
fn bind_head_size(prefix: &BindPrefix<'_>, statement: &[u8]) -> usize {
    1 + 4 + prefix.portal.len() + 1 + statement.len() + 1
}

#[inline(always)]
fn put_bind_head(len: i32, prefix: &BindPrefix<'_>, statement: &[u8], buf: &mut impl BufMut) {
    buf.put_u8(frontend::BIND);
    buf.put_i32(len);
    buf.put_slice(prefix.portal);
    buf.put_u8(0);
    buf.put_slice(statement);
    buf.put_u8(0);
}

/// A rewritten Bind's type, length and names, held inline: the usual one (an unnamed portal and
/// our statement name) takes a few dozen bytes, and a Bind per execution then allocates and
/// shares no buffer.
#[derive(Clone, Copy)]
pub struct BindHead {
    bytes: [u8; Self::CAPACITY],
    len: u8,
}

impl BindHead {
    const CAPACITY: usize = 46;

    /// The head of `original`'s Bind with `statement` as its statement name, as
    /// `write_bind_prefix` writes it; None if it does not fit inline (a long portal name).
    #[inline]
    pub fn new(original: Header, prefix: &BindPrefix<'_>, statement: &[u8]) -> Result<Option<Self>, EncodeError> {
        let len = bind_len(original, prefix, statement)?;
        let size = bind_head_size(prefix, statement);
        if size > Self::CAPACITY {
            return Ok(None);
        }
        let mut bytes = [0u8; Self::CAPACITY];
        put_bind_head(len, prefix, statement, &mut &mut bytes[..]);
        Ok(Some(BindHead { bytes, len: size as u8 }))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for BindHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("BindHead").field(&String::from_utf8_lossy(self.as_bytes())).finish()
    }
}

/// What a Describe or Close names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    Statement,
    Portal,
}

impl TargetKind {
    pub fn as_byte(self) -> u8 {
        match self {
            TargetKind::Statement => b'S',
            TargetKind::Portal => b'P',
        }
    }
}

/// The body of a Describe or Close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    pub kind: TargetKind,
    pub name: &'a [u8],
}

impl<'a> Target<'a> {
    pub fn parse(body: &'a [u8], what: &'static str) -> Result<Self, MessageError> {
        let Some((&kind, rest)) = body.split_first() else {
            return Err(MessageError::Truncated(what));
        };
        let kind = match kind {
            b'S' => TargetKind::Statement,
            b'P' => TargetKind::Portal,
            _ => return Err(MessageError::Invalid(what)),
        };
        let (name, rest) = split_cstr(rest, what)?;
        if !rest.is_empty() {
            return Err(MessageError::TrailingBytes(what));
        }
        Ok(Target { kind, name })
    }
}

/// Describe toward a server (postgres-protocol's encoder).
pub fn write_describe(kind: TargetKind, name: &str, buf: &mut BytesMut) -> Result<(), EncodeError> {
    undo_on_error(buf, |buf| pg_frontend::describe(kind.as_byte(), name, buf))
}

/// Close toward a server (postgres-protocol's encoder).
pub fn write_close(kind: TargetKind, name: &str, buf: &mut BytesMut) -> Result<(), EncodeError> {
    undo_on_error(buf, |buf| pg_frontend::close(kind.as_byte(), name, buf))
}

/// A simple Query toward a server (postgres-protocol's encoder).
pub fn write_query(sql: &str, buf: &mut BytesMut) -> Result<(), EncodeError> {
    undo_on_error(buf, |buf| pg_frontend::query(sql, buf))
}

/// Sync toward a server (postgres-protocol's encoder).
pub fn write_sync(buf: &mut BytesMut) {
    pg_frontend::sync(buf);
}

/// Terminate toward a server (postgres-protocol's encoder).
pub fn write_terminate(buf: &mut BytesMut) {
    pg_frontend::terminate(buf);
}

/// postgres-protocol leaves a partial message behind on error; cut it off.
fn undo_on_error(
    buf: &mut BytesMut,
    write: impl FnOnce(&mut BytesMut) -> std::io::Result<()>,
) -> Result<(), EncodeError> {
    let start = buf.len();
    write(buf).map_err(|error| {
        buf.truncate(start);
        EncodeError::Io(error)
    })
}

/// Offset of the first body byte after a Bind's names, counted from the start of the message.
pub fn bind_params_offset(prefix: &BindPrefix<'_>) -> usize {
    HEADER_LEN + prefix.len
}

#[cfg(test)]
mod tests {
    use super::super::frame::{body, read_header, FrameLimits};
    use super::*;

    fn parse_message(name: &str, query: &str, oids: &[u32]) -> BytesMut {
        let mut buf = BytesMut::new();
        pg_frontend::parse(name, query, oids.iter().copied(), &mut buf).unwrap();
        buf
    }

    #[test]
    fn parse_keeps_the_definition_bytes() {
        let buf = parse_message("s1", "select $1", &[23]);
        let parsed = ParseMessage::parse(body(&buf)).unwrap();
        assert_eq!(parsed.statement, b"s1");
        assert_eq!(parsed.query(), b"select $1");
        let mut rewritten = BytesMut::new();
        write_parse("PGHA_7", parsed.definition, &mut rewritten).unwrap();
        assert_eq!(rewritten, parse_message("PGHA_7", "select $1", &[23]));
    }

    #[test]
    fn malformed_parse_is_an_error() {
        assert!(ParseMessage::parse(b"s1\0select 1\0\0").is_err());
        assert!(ParseMessage::parse(b"s1\0select 1\0\0\x01").is_err());
        assert!(ParseMessage::parse(b"s1\0select 1\0\0\x01\0\0\0\x17\0").is_err());
        assert!(ParseMessage::parse(b"s1\0select 1\0\xff\xff").is_err());
        assert!(ParseMessage::parse(b"s1\0select 1").is_err());
        assert!(ParseMessage::parse(b"s1\0select 1\0\0\0").is_ok());
    }

    #[test]
    fn bind_rewrite_keeps_parameter_bytes() {
        let mut original = BytesMut::new();
        pg_frontend::bind(
            "portal",
            "s1",
            [1i16],
            [b"42".as_slice()],
            |v, buf| {
                buf.put_slice(v);
                Ok(postgres_protocol::IsNull::No)
            },
            [1i16],
            &mut original,
        )
        .map_err(|_| ())
        .unwrap();
        let header = read_header(&original, &FrameLimits::default()).unwrap().unwrap();
        let prefix = BindPrefix::parse(body(&original)).unwrap();
        assert_eq!((prefix.portal, prefix.statement), (&b"portal"[..], &b"s1"[..]));
        let mut rewritten = BytesMut::new();
        write_bind_prefix(header, &prefix, b"PGHA_12", &mut rewritten).unwrap();
        rewritten.extend_from_slice(&original[bind_params_offset(&prefix)..]);
        let mut expected = BytesMut::new();
        pg_frontend::bind(
            "portal",
            "PGHA_12",
            [1i16],
            [b"42".as_slice()],
            |v, buf| {
                buf.put_slice(v);
                Ok(postgres_protocol::IsNull::No)
            },
            [1i16],
            &mut expected,
        )
        .map_err(|_| ())
        .unwrap();
        assert_eq!(rewritten, expected);
    }

    proptest::proptest! {
        /// The inline head is byte for byte what `write_bind_prefix` writes, when it fits.
        #[test]
        fn bind_head_is_the_written_prefix(
            portal in proptest::collection::vec(1u8..=255, 0..40),
            client in proptest::collection::vec(1u8..=255, 1..64),
            server in proptest::collection::vec(1u8..=255, 1..30),
            params in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let mut body = portal.clone();
            body.push(0);
            body.extend_from_slice(&client);
            body.push(0);
            body.extend_from_slice(&params);
            let header = Header { tag: frontend::BIND, len: (4 + body.len()) as u32 };
            let prefix = BindPrefix::parse(&body).unwrap();
            let mut written = BytesMut::new();
            write_bind_prefix(header, &prefix, &server, &mut written).unwrap();
            match BindHead::new(header, &prefix, &server).unwrap() {
                Some(head) => proptest::prop_assert_eq!(head.as_bytes(), &written[..]),
                None => proptest::prop_assert!(written.len() > 46, "{} bytes fit inline", written.len()),
            }
        }
    }

    #[test]
    fn bind_prefix_waits_for_both_names() {
        assert_eq!(BindPrefix::parse(b""), None);
        assert_eq!(BindPrefix::parse(b"\0s"), None);
        assert_eq!(BindPrefix::parse(b"\0s1\0"), Some(BindPrefix { portal: b"", statement: b"s1", len: 4 }));
    }

    #[test]
    fn describe_and_close_targets() {
        let mut buf = BytesMut::new();
        write_describe(TargetKind::Statement, "PGHA_1", &mut buf).unwrap();
        assert_eq!(
            Target::parse(body(&buf), "Describe").unwrap(),
            Target { kind: TargetKind::Statement, name: b"PGHA_1" }
        );
        let mut buf = BytesMut::new();
        write_close(TargetKind::Portal, "", &mut buf).unwrap();
        assert_eq!(Target::parse(body(&buf), "Close").unwrap(), Target { kind: TargetKind::Portal, name: b"" });
        assert!(Target::parse(b"X\0", "Close").is_err());
        assert!(Target::parse(b"Sname", "Close").is_err());
        assert!(Target::parse(b"Sname\0x", "Close").is_err());
        assert!(Target::parse(b"", "Close").is_err());
    }

    #[test]
    fn encoder_errors_leave_the_buffer_as_it_was() {
        let mut buf = BytesMut::from(&b"keep"[..]);
        assert!(write_query("a\0b", &mut buf).is_err());
        assert_eq!(&buf[..], b"keep");
    }
}
