//! The few authentication messages and the small bounded reader the login exchanges need:
//! AuthenticationXXX requests (server → client), PasswordMessage / SASLInitialResponse /
//! SASLResponse (client → server). Owns byte layouts and read limits, not the exchange logic.

use crate::protocol::frame::HEADER_LEN;
use bytes::{Buf, BufMut, BytesMut};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Authentication request codes (the int32 after an `R` tag).
pub mod code {
    pub const OK: u32 = 0;
    pub const KERBEROS_V5: u32 = 2;
    pub const CLEARTEXT_PASSWORD: u32 = 3;
    pub const MD5_PASSWORD: u32 = 5;
    pub const GSS: u32 = 7;
    pub const GSS_CONTINUE: u32 = 8;
    pub const SSPI: u32 = 9;
    pub const SASL: u32 = 10;
    pub const SASL_CONTINUE: u32 = 11;
    pub const SASL_FINAL: u32 = 12;
}

/// The longest authentication message either side accepts: PostgreSQL's
/// `PG_MAX_AUTH_TOKEN_LENGTH` (65535) plus the message's own fields.
pub const MAX_AUTH_MESSAGE_LEN: usize = 65_535 + 1024;

/// One whole message read off a stream: its tag and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub tag: u8,
    pub body: BytesMut,
}

/// Why no message could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("connection closed during authentication")]
    Closed,
    #[error("message length {len} out of range (at most {max} bytes during authentication)")]
    BadLength { len: u32, max: usize },
    #[error("I/O error during authentication: {0}")]
    Io(#[from] io::Error),
}

/// Reads one message, buffering in `buf`; bytes after it stay in `buf` for the caller.
pub async fn read_message<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    max_len: usize,
) -> Result<Message, ReadError> {
    loop {
        if buf.len() >= HEADER_LEN {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
            let body_len = (len as usize).checked_sub(4).filter(|_| (len as usize) <= max_len);
            let Some(body_len) = body_len else {
                return Err(ReadError::BadLength { len, max: max_len });
            };
            if buf.len() >= HEADER_LEN + body_len {
                let tag = buf[0];
                buf.advance(HEADER_LEN);
                let body = buf.split_to(body_len);
                return Ok(Message { tag, body });
            }
            buf.reserve(HEADER_LEN + body_len - buf.len());
        } else {
            buf.reserve(HEADER_LEN);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(ReadError::Closed);
        }
    }
}

/// Writes `bytes` and flushes.
pub async fn send<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

fn message(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    let start = buf.len();
    buf.put_u8(tag);
    buf.put_u32(0);
    body(buf);
    // Authentication messages are small (bounded by MAX_AUTH_MESSAGE_LEN), so the cast holds.
    let len = (buf.len() - start - 1) as u32;
    buf[start + 1..start + HEADER_LEN].copy_from_slice(&len.to_be_bytes());
}

/// AuthenticationXXX with an optional payload.
pub fn write_auth_request(buf: &mut BytesMut, code: u32, payload: &[u8]) {
    message(buf, b'R', |buf| {
        buf.put_u32(code);
        buf.put_slice(payload);
    });
}

/// AuthenticationSASL offering SCRAM-SHA-256 only.
pub fn write_auth_sasl(buf: &mut BytesMut) {
    write_auth_request(buf, code::SASL, b"SCRAM-SHA-256\0\0");
}

/// PasswordMessage with a NUL-terminated password or md5 response (client → server).
pub fn write_password(buf: &mut BytesMut, password: &[u8]) {
    message(buf, b'p', |buf| {
        buf.put_slice(password);
        buf.put_u8(0);
    });
}

/// SASLInitialResponse (client → server).
pub fn write_sasl_initial(buf: &mut BytesMut, mechanism: &str, data: &[u8]) {
    message(buf, b'p', |buf| {
        buf.put_slice(mechanism.as_bytes());
        buf.put_u8(0);
        // Bounded by MAX_AUTH_MESSAGE_LEN like every message here.
        buf.put_i32(data.len() as i32);
        buf.put_slice(data);
    });
}

/// SASLResponse (client → server).
pub fn write_sasl_response(buf: &mut BytesMut, data: &[u8]) {
    message(buf, b'p', |buf| buf.put_slice(data));
}

/// A SASLInitialResponse as read by a server: the mechanism and the client-first message.
pub fn parse_sasl_initial(body: &[u8]) -> Option<(&str, &[u8])> {
    let nul = body.iter().position(|&b| b == 0)?;
    let mechanism = std::str::from_utf8(&body[..nul]).ok()?;
    let rest = &body[nul + 1..];
    let len = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
    let data = &rest[4..];
    if usize::try_from(len).ok()? != data.len() {
        return None;
    }
    Some((mechanism, data))
}

/// A PasswordMessage body: the password without its terminator.
pub fn parse_password(body: &[u8]) -> Option<&[u8]> {
    match body.split_last() {
        Some((0, password)) if !password.contains(&0) => Some(password),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_split_messages_and_keeps_what_follows() {
        let mut out = BytesMut::new();
        write_password(&mut out, b"pw");
        write_password(&mut out, b"next");
        let (mut a, mut b) = tokio::io::duplex(64);
        let bytes = out.to_vec();
        let writer = tokio::spawn(async move {
            for chunk in bytes.chunks(3) {
                a.write_all(chunk).await.unwrap();
            }
        });
        let mut buf = BytesMut::new();
        let m = read_message(&mut b, &mut buf, 100).await.unwrap();
        assert_eq!((m.tag, parse_password(&m.body)), (b'p', Some(&b"pw"[..])));
        writer.await.unwrap();
        let m = read_message(&mut b, &mut buf, 100).await.unwrap();
        assert_eq!(parse_password(&m.body), Some(&b"next"[..]));
        assert!(matches!(read_message(&mut b, &mut buf, 100).await, Err(ReadError::Closed)));
    }

    #[tokio::test]
    async fn refuses_oversized_and_undersized_lengths_before_reading_bodies() {
        for len in [3u32, 101, u32::MAX] {
            let mut bytes = vec![b'p'];
            bytes.extend_from_slice(&len.to_be_bytes());
            let mut stream = &bytes[..];
            let mut buf = BytesMut::new();
            let got = read_message(&mut stream, &mut buf, 100).await;
            assert!(matches!(got, Err(ReadError::BadLength { .. })), "{len}: {got:?}");
        }
    }

    #[test]
    fn sasl_initial_round_trips_and_rejects_bad_lengths() {
        let mut buf = BytesMut::new();
        write_sasl_initial(&mut buf, "SCRAM-SHA-256", b"n,,n=,r=abc");
        let body = &buf[HEADER_LEN..];
        assert_eq!(parse_sasl_initial(body), Some(("SCRAM-SHA-256", &b"n,,n=,r=abc"[..])));
        let mut bad = body.to_vec();
        bad.push(b'x');
        assert_eq!(parse_sasl_initial(&bad), None);
        assert_eq!(parse_sasl_initial(b"SCRAM"), None);
        assert_eq!(parse_password(b"a\0b\0"), None);
    }
}
