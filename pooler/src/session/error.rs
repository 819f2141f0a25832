//! Why a session cannot go on, split as Neon's proxy does: what the client may read (SQLSTATE
//! and a message that says what to do) and what only the log gets (the `Display` text).
//! Every error here ends the client connection; none is a panic.

use crate::protocol::extended::EncodeError;
use crate::protocol::{ErrorResponse, FrameError, MessageError, Severity};
use bytes::Bytes;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SessionError {
    #[error("client message refused: {0}")]
    ClientFrame(#[source] FrameError),
    #[error("server message refused: {0}")]
    ServerFrame(#[source] FrameError),
    #[error("malformed client message: {0}")]
    ClientMessage(#[source] MessageError),
    #[error("malformed server message: {0}")]
    ServerMessage(#[source] MessageError),
    #[error("client sent {what} (tag {:?}) where it is not allowed", char::from(*tag))]
    UnexpectedClientMessage { tag: u8, what: &'static str },
    #[error("server sent message {:?} while the pooler expected {expected}", char::from(*tag))]
    ServerOutOfStep { tag: u8, expected: &'static str },
    #[error("prepared statement \"{name}\" does not exist")]
    UnknownStatement { name: String },
    #[error("the server rejected the client's session parameters: {message}")]
    ParameterRejected { message: String },
    #[error("the simple query protocol is disabled here (disable_pqexec): send queries with the extended protocol")]
    SimpleQueryDisabled,
    #[error("transaction blocks are not allowed in statement pooling mode")]
    TransactionInStatementMode,
    #[error("cannot build a message for the server: {0}")]
    Encode(#[from] EncodeError),
    #[error("no server connection is attached to the session")]
    NoServer,
    #[error("a server connection is already attached to the session")]
    ServerAlreadyAttached,
}

impl SessionError {
    /// True if the client caused this (as opposed to a server or the pooler).
    pub fn is_client_fault(&self) -> bool {
        matches!(
            self,
            SessionError::ClientFrame(_)
                | SessionError::ClientMessage(_)
                | SessionError::UnexpectedClientMessage { .. }
                | SessionError::UnknownStatement { .. }
                | SessionError::ParameterRejected { .. }
                | SessionError::TransactionInStatementMode
                | SessionError::SimpleQueryDisabled
        )
    }

    /// The SQLSTATE the client gets.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            SessionError::ClientFrame(FrameError::TooLong { .. } | FrameError::TooLargeToInspect { .. }) => "54000",
            SessionError::ClientFrame(_)
            | SessionError::ClientMessage(_)
            | SessionError::UnexpectedClientMessage { .. }
            | SessionError::SimpleQueryDisabled => "08P01",
            SessionError::UnknownStatement { .. } => "26000",
            SessionError::ParameterRejected { .. } => "22023",
            SessionError::TransactionInStatementMode => "0A000",
            SessionError::ServerFrame(_)
            | SessionError::ServerMessage(_)
            | SessionError::ServerOutOfStep { .. }
            | SessionError::Encode(_)
            | SessionError::NoServer
            | SessionError::ServerAlreadyAttached => "08006",
        }
    }

    /// What the client reads: its own mistakes in full, server and pooler trouble without
    /// internals (those go to the log with `Display`).
    pub fn client_message(&self) -> String {
        if self.is_client_fault() {
            self.to_string()
        } else {
            "the pooler lost its server connection in the middle of a request; reconnect and retry".to_owned()
        }
    }

    /// A FATAL ErrorResponse to send the client before closing its connection.
    pub fn to_error_response(&self) -> Bytes {
        let message = self.client_message();
        let response = ErrorResponse::new(Severity::Fatal, self.sqlstate(), &message);
        match self {
            SessionError::ClientFrame(FrameError::TooLargeToInspect { .. }) => {
                response.with_hint("send a smaller Parse, or raise the pooler's inspection limit").to_bytes()
            }
            SessionError::UnknownStatement { .. } => {
                response.with_hint("prepare the statement again after reconnecting").to_bytes()
            }
            _ => response.to_bytes(),
        }
    }
}
