//! Whole-message reads on a connection outside the relay loop (server login, the pooler's own
//! queries): the framing is the relay's, the message is small and read whole.

use crate::protocol::frame::{read_header, FrameLimits, HEADER_LEN};
use bytes::{Buf, Bytes, BytesMut};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Messages read whole here are login and query-answer messages; bigger ones are refused.
const MAX_WHOLE: u32 = 1 << 20;

/// Reads one message; `buf` keeps bytes that arrived after it.
pub async fn read_message<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut BytesMut) -> io::Result<(u8, Bytes)> {
    let limits = FrameLimits { max_message_len: MAX_WHOLE, max_inspected_len: MAX_WHOLE };
    loop {
        let header = read_header(buf, &limits).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if let Some(header) = header {
            if buf.len() >= header.total_len() {
                let mut message = buf.split_to(header.total_len());
                message.advance(HEADER_LEN);
                return Ok((header.tag, message.freeze()));
            }
        }
        buf.reserve(4096);
        if stream.read_buf(buf).await? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection"));
        }
    }
}
