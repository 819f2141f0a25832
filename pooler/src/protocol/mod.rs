//! PostgreSQL v3 wire protocol as the pooler needs it: header-only framing over `bytes`,
//! startup-phase packets, the messages the pooler writes itself and the fields it reads.
//! Owns byte layouts and length limits only: no sockets, no session state, no routing.
//!
//! Our code or postgres-protocol's:
//! - postgres-protocol (client-side by construction) encodes what the pooler sends to servers
//!   when the message is made of our own strings: StartupMessage, SSLRequest, Describe, Close,
//!   Query, Sync, Terminate; its `escape` module quotes values in the `SET` commands the
//!   session builds. Its `backend::Message` parser checks our encoders in tests.
//! - Ours: the framer (postgres-protocol's parser consumes whole messages and would materialise
//!   a 100 MB DataRow); everything a server sends a client (ErrorResponse, ReadyForQuery,
//!   ParameterStatus, BackendKeyData, AuthenticationOk), which postgres-protocol cannot encode;
//!   everything read from clients (startup packets, Parse, Bind, Describe, Close), which it
//!   cannot parse; Parse re-sent under another name (query text is in the client's encoding,
//!   not necessarily UTF-8, and postgres-protocol wants `&str`); Bind rewritten in place (only
//!   its names change, its parameters are forwarded untouched); CancelRequest (protocol 3.2
//!   keys are longer than postgres-protocol's `i32`).

pub mod extended;
pub mod frame;
pub mod message;
pub mod startup;
pub mod tag;

pub use frame::{Frame, FrameError, FrameLimits, Framer, Header, Inspect, HEADER_LEN};
pub use message::{ErrorFields, ErrorResponse, MessageError, Severity, TransactionStatus};
pub use startup::{
    option_settings, parse_startup_packet, CancelRequest, OptionsError, StartupError, StartupMessage, StartupPacket,
};

#[cfg(test)]
mod framing_props;
