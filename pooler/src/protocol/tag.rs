//! Message type bytes of the v3 protocol, and which messages the pooler must see whole.
//! Owns only the byte values and the inspection policy; what to do with a message is the
//! session's business.

use super::frame::Inspect;

/// Tags of messages a client (or the pooler, as a client of a server) sends.
pub mod frontend {
    pub const BIND: u8 = b'B';
    pub const CLOSE: u8 = b'C';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const FLUSH: u8 = b'H';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const PARSE: u8 = b'P';
    /// PasswordMessage, SASLInitialResponse, SASLResponse and GSSResponse share this tag.
    pub const PASSWORD: u8 = b'p';
    pub const QUERY: u8 = b'Q';
    pub const SYNC: u8 = b'S';
    pub const TERMINATE: u8 = b'X';
}

/// Tags of messages a server sends.
pub mod backend {
    pub const AUTHENTICATION: u8 = b'R';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const BIND_COMPLETE: u8 = b'2';
    pub const CLOSE_COMPLETE: u8 = b'3';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_IN_RESPONSE: u8 = b'G';
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    pub const DATA_ROW: u8 = b'D';
    pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
    pub const NO_DATA: u8 = b'n';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const PARSE_COMPLETE: u8 = b'1';
    pub const PORTAL_SUSPENDED: u8 = b's';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ROW_DESCRIPTION: u8 = b'T';
}

/// How much of a server message the pooler must see before it passes it on.
///
/// Authentication, BackendKeyData, ReadyForQuery, ParameterStatus, ErrorResponse,
/// CommandComplete (for `DISCARD ALL` / `DEALLOCATE ALL`) and NegotiateProtocolVersion are read
/// whole; they are small. Everything else (rows, copy data, descriptions) is streamed.
pub fn backend_inspect(tag: u8) -> Inspect {
    use backend::*;
    match tag {
        AUTHENTICATION
        | BACKEND_KEY_DATA
        | READY_FOR_QUERY
        | PARAMETER_STATUS
        | ERROR_RESPONSE
        | COMMAND_COMPLETE
        | NEGOTIATE_PROTOCOL_VERSION => Inspect::Whole,
        _ => Inspect::Stream,
    }
}

/// How much of a client message the pooler must see before it passes it on.
///
/// Fixed-size control messages and authentication responses are read whole. With prepared
/// statements tracked, Parse, Describe and Close are read whole (they name statements and Parse
/// is stored), and Bind only up to its statement name: its parameters are streamed. Query,
/// Execute, FunctionCall and CopyData are always streamed.
pub fn frontend_inspect(tag: u8, track_prepared: bool) -> Inspect {
    use frontend::*;
    match tag {
        SYNC | FLUSH | TERMINATE | COPY_DONE | PASSWORD => Inspect::Whole,
        PARSE | DESCRIBE | CLOSE if track_prepared => Inspect::Whole,
        BIND if track_prepared => Inspect::Prefix,
        _ => Inspect::Stream,
    }
}
