//! Server messages: matching each answer to the request it completes, following the
//! transaction status and the server's parameters, and undoing statement bookkeeping for
//! requests the server skipped. Decides only; the bytes move in the I/O loop.

use super::pending::{Pending, Reply, Request};
use super::server::ServerState;
use super::statements::ClientStatements;
use super::{PoolMode, Route, Session, SessionError, Step};
use crate::protocol::message::{parse_command_tag, parse_ready_for_query, ParameterStatus};
use crate::protocol::tag::backend::*;
use crate::protocol::{ErrorFields, Header, MessageError, TransactionStatus, HEADER_LEN};

impl Session {
    /// Handles a whole server message, or the first piece of one passed on in pieces.
    pub(super) fn backend_message(&mut self, header: Header, chunk: &[u8]) -> Result<Step, SessionError> {
        let body = chunk.get(HEADER_LEN..).unwrap_or_default();
        let in_setup = matches!(self.pending.front_request(), Some(Request::Setup));
        let tag = header.tag;
        let route = match tag {
            READY_FOR_QUERY => self.on_ready_for_query(body)?,
            PARAMETER_STATUS => self.on_parameter_status(body, in_setup)?,
            ERROR_RESPONSE => self.on_error_response(body)?,
            COMMAND_COMPLETE => self.on_command_complete(body, in_setup)?,
            PARSE_COMPLETE => self.complete(tag, "ParseComplete", |r| matches!(r, Request::Parse { .. }))?,
            BIND_COMPLETE => self.complete(tag, "BindComplete", |r| matches!(r, Request::Bind))?,
            CLOSE_COMPLETE => self.complete(tag, "CloseComplete", |r| matches!(r, Request::Close { .. }))?,
            NO_DATA => self.complete(tag, "NoData", |r| matches!(r, Request::Describe))?,
            ROW_DESCRIPTION if matches!(self.pending.front_request(), Some(Request::Describe)) => {
                self.complete(tag, "RowDescription", |r| matches!(r, Request::Describe))?
            }
            EMPTY_QUERY_RESPONSE | PORTAL_SUSPENDED
                if matches!(self.pending.front_request(), Some(Request::Execute)) =>
            {
                self.complete(tag, "an Execute result", |r| matches!(r, Request::Execute))?
            }
            COPY_IN_RESPONSE | COPY_BOTH_RESPONSE => {
                self.copy_in = true;
                passed_unless(in_setup)
            }
            ROW_DESCRIPTION
            | EMPTY_QUERY_RESPONSE
            | PORTAL_SUSPENDED
            | PARAMETER_DESCRIPTION
            | DATA_ROW
            | COPY_DATA
            | COPY_DONE
            | COPY_OUT_RESPONSE
            | FUNCTION_CALL_RESPONSE
            | NOTICE_RESPONSE
            | NOTIFICATION_RESPONSE => passed_unless(in_setup),
            _ => return Err(SessionError::ServerOutOfStep { tag, expected: "a query response" }),
        };
        Ok(Step::Route(route))
    }

    /// Pops the request `tag` completes; its reply says whether the client sees the answer.
    fn complete(
        &mut self,
        tag: u8,
        expected: &'static str,
        completes: fn(&Request) -> bool,
    ) -> Result<Route, SessionError> {
        match self.pending.front() {
            Some(Pending { request, reply: Reply::Forward | Reply::Swallow }) if completes(request) => {}
            _ => return Err(SessionError::ServerOutOfStep { tag, expected }),
        }
        let Some(pending) = self.pending.pop_front() else {
            return Err(SessionError::ServerOutOfStep { tag, expected });
        };
        if let (Request::Parse { server_id: Some(id), .. }, Some(server)) = (&pending.request, self.server.as_mut()) {
            server.statements.confirm(*id);
        }
        // Only an Execute starts a COPY in the extended protocol: a CopyEnd sent ahead of one
        // that did not is left unanswered (a failed one drops it with the rest, up to Sync).
        if matches!(pending.request, Request::Execute) && !self.copy_in {
            self.pending.drop_unanswered_copy_ends();
        }
        Ok(match pending.reply {
            Reply::Swallow => Route::Discard,
            Reply::Forward | Reply::Fake(_) => Route::Forward,
        })
    }

    fn on_ready_for_query(&mut self, body: &[u8]) -> Result<Route, SessionError> {
        let status = parse_ready_for_query(body).map_err(SessionError::ServerMessage)?;
        let route = match self.pending.front_request() {
            Some(Request::Setup) => {
                self.pending.pop_front();
                if let Some(server) = &self.server {
                    self.params.adopt_canonical(&server.params);
                }
                Route::Discard
            }
            Some(Request::Sync | Request::Query | Request::FunctionCall) => {
                if let Some(Pending { request: Request::Query, .. }) = self.pending.pop_front() {
                    // A simple Query that started no COPY: the server ignored copy messages
                    // the client sent ahead.
                    self.pending.drop_unanswered_copy_ends();
                }
                self.answered_ready = true;
                self.queries_answered = self.queries_answered.saturating_add(1);
                Route::Forward
            }
            // Nothing awaited: tolerated (PgBouncer does too), it changes nothing in flight.
            None => {
                self.answered_ready = true;
                Route::Forward
            }
            Some(_) => {
                return Err(SessionError::ServerOutOfStep {
                    tag: READY_FOR_QUERY,
                    expected: "an extended-query answer",
                })
            }
        };
        self.transaction = status;
        if route == Route::Forward && self.config.pool_mode == PoolMode::Statement && status != TransactionStatus::Idle
        {
            return Err(SessionError::TransactionInStatementMode);
        }
        Ok(route)
    }

    fn on_parameter_status(&mut self, body: &[u8], in_setup: bool) -> Result<Route, SessionError> {
        match ParameterStatus::parse(body) {
            Ok(status) => {
                if let Some(server) = self.server.as_mut() {
                    server.params.set_by_name(status.name, status.value);
                }
                if !in_setup {
                    self.params.set_by_name(status.name, status.value);
                }
            }
            // Not a parameter we track (those are ASCII); pass it on untouched.
            Err(MessageError::NotUtf8(_)) => {}
            Err(error) => return Err(SessionError::ServerMessage(error)),
        }
        Ok(passed_unless(in_setup))
    }

    fn on_error_response(&mut self, body: &[u8]) -> Result<Route, SessionError> {
        let fields = ErrorFields::parse(body).map_err(SessionError::ServerMessage)?;
        let front_is_query = match self.pending.front_request() {
            Some(Request::Setup) => {
                return Err(SessionError::ParameterRejected { message: fields.message.into_owned() })
            }
            front => matches!(front, Some(Request::Query | Request::FunctionCall)),
        };
        if self.copy_in {
            self.finish_copy();
            if !front_is_query {
                self.abort_until_sync();
            }
            return Ok(Route::Forward);
        }
        match self.pending.front_request() {
            // Simple protocol, an answered Sync (commit failed), or an unsolicited error:
            // ReadyForQuery (or the end of the connection) follows on its own.
            None | Some(Request::Query | Request::FunctionCall | Request::Sync) => {}
            Some(_) => self.abort_until_sync(),
        }
        Ok(Route::Forward)
    }

    fn on_command_complete(&mut self, body: &[u8], in_setup: bool) -> Result<Route, SessionError> {
        if in_setup {
            return Ok(Route::Discard);
        }
        if self.copy_in {
            self.finish_copy();
            return Ok(Route::Forward);
        }
        let tag = parse_command_tag(body).map_err(SessionError::ServerMessage)?;
        if self.config.tracks_prepared_statements() && (tag == b"DISCARD ALL" || tag == b"DEALLOCATE ALL") {
            // Every statement on the server is gone, ours under any client's name included.
            if let Some(server) = self.server.as_mut() {
                server.statements.clear();
            }
            self.statements.clear();
        }
        if matches!(self.pending.front_request(), Some(Request::Execute)) {
            return self.complete(COMMAND_COMPLETE, "CommandComplete", |r| matches!(r, Request::Execute));
        }
        Ok(Route::Forward)
    }

    /// The server left copy-in mode: drop what was sent during it.
    fn finish_copy(&mut self) {
        self.copy_in = false;
        let (statements, server) = (&mut self.statements, &mut self.server);
        self.pending.finish_copy(|pending| undo(statements, server, pending));
    }

    /// The server failed a request of the extended protocol and skips to the next Sync.
    fn abort_until_sync(&mut self) {
        let (statements, server) = (&mut self.statements, &mut self.server);
        if !self.pending.drop_until_sync(|pending| undo(statements, server, pending)) {
            self.skip_until_sync = true;
        }
    }
}

fn passed_unless(in_setup: bool) -> Route {
    if in_setup {
        Route::Discard
    } else {
        Route::Forward
    }
}

/// The server never ran `pending`: take back what the pooler recorded when sending it.
fn undo(statements: &mut ClientStatements, server: &mut Option<Box<ServerState>>, pending: Pending) {
    match pending.request {
        Request::Parse { server_id, binding } => {
            if let (Some(id), Some(server)) = (server_id, server.as_mut()) {
                server.statements.remove_id(id);
            }
            if let Some(binding) = binding {
                statements.unbind(binding);
            }
        }
        Request::Close { restore: Some(binding) } => statements.restore(binding),
        _ => {}
    }
}
