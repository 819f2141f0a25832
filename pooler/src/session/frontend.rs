//! Client messages: which need a server connection, which the pooler answers itself, and how
//! named prepared statements are mapped onto the attached server connection (PgBouncer's
//! `max_prepared_statements` model). Decides only; the bytes move in the I/O loop.

use super::pending::{Reply, Request};
use super::statements::{ServerStatementName, Statement};
use super::{Action, PoolMode, Route, Session, SessionError, Step};
use crate::protocol::extended::{
    bind_params_offset, write_bind_prefix, write_close, write_describe, write_parse, BindHead, BindPrefix,
    ParseMessage, Target, TargetKind,
};
use crate::protocol::message::{CLOSE_COMPLETE, PARSE_COMPLETE, READY_FOR_QUERY_IDLE};
use crate::protocol::tag::frontend::*;
use crate::protocol::{Header, HEADER_LEN};
use bytes::Bytes;
use std::sync::Arc;

impl Session {
    /// Handles a whole client message, or the first piece of one (`complete` false).
    pub(super) fn frontend_message(
        &mut self,
        header: Header,
        chunk: &[u8],
        complete: bool,
        out: &mut Vec<Action>,
    ) -> Result<Step, SessionError> {
        let tag = header.tag;
        if matches!(tag, SYNC | FLUSH | TERMINATE | COPY_DONE) && header.len != 4 {
            return Err(SessionError::UnexpectedClientMessage { tag, what: "a control message with a body" });
        }
        match tag {
            TERMINATE => return Ok(Step::Terminate),
            QUERY if self.config.disable_pqexec => return Err(SessionError::SimpleQueryDisabled),
            PASSWORD => return Err(SessionError::UnexpectedClientMessage { tag, what: "an authentication message" }),
            QUERY | PARSE | BIND | DESCRIBE | CLOSE | EXECUTE | SYNC | FLUSH | FUNCTION_CALL | COPY_DATA
            | COPY_DONE | COPY_FAIL => {}
            _ => return Err(SessionError::UnexpectedClientMessage { tag, what: "an unknown message" }),
        }
        let body = chunk.get(HEADER_LEN..).unwrap_or_default();
        let tracked = self.config.tracks_prepared_statements();
        if tracked && !self.skip_until_sync && self.may_deallocate_locally(tag, body) {
            if let Some(step) = self.deallocate_locally(tag, body, complete, out)? {
                return Ok(step);
            }
        }
        if self.server.is_none() {
            return self.without_server(tag, body, tracked, out);
        }
        if self.skip_until_sync && tag != SYNC {
            // The server ignores everything up to Sync after an error; so does the pooler.
            return Ok(Step::Route(Route::Discard));
        }
        Ok(match tag {
            QUERY => self.send_and_await(Request::Query),
            PARSE if tracked => self.on_parse(body, out)?,
            BIND if tracked => self.on_bind(header, body, complete, out)?,
            DESCRIBE if tracked => self.on_describe(body, out)?,
            CLOSE if tracked => self.on_close(body, out)?,
            PARSE => self.send_and_await(Request::Parse { server_id: None, binding: None }),
            BIND => self.send_and_await(Request::Bind),
            DESCRIBE => self.send_and_await(Request::Describe),
            CLOSE => self.send_and_await(Request::Close { restore: None }),
            EXECUTE => self.send_and_await(Request::Execute),
            SYNC => {
                self.skip_until_sync = false;
                self.segment += 1;
                self.send_and_await(Request::Sync)
            }
            // Nothing in flight, nothing to flush: the server need not see it.
            FLUSH if self.pending.is_empty() => Step::Route(Route::Discard),
            FLUSH => Step::Route(Route::Forward),
            FUNCTION_CALL => self.send_and_await(Request::FunctionCall),
            COPY_DATA if self.copy_in => Step::Route(Route::Forward),
            COPY_DONE | COPY_FAIL if self.copy_in => self.send_and_await(Request::CopyEnd),
            // Sent ahead of the server's CopyInResponse: asyncpg writes a COPY's data right
            // behind its Query. The server reads them in copy mode if the request in flight
            // starts a COPY, and ignores them if it does not (then the CopyEnd, never answered,
            // leaves the queue when it comes to the front: `PendingQueue::drop_unanswered_copy_ends`).
            COPY_DATA if !self.pending.is_empty() => Step::Route(Route::Forward),
            COPY_DONE | COPY_FAIL if !self.pending.is_empty() => self.send_and_await(Request::CopyEnd),
            // Copy data after the server ended the COPY (with an error): it would ignore it.
            _ => Step::Route(Route::Discard),
        })
    }

    /// No server attached: what can be answered without one is, the rest waits for one.
    fn without_server(
        &mut self,
        tag: u8,
        body: &[u8],
        tracked: bool,
        out: &mut Vec<Action>,
    ) -> Result<Step, SessionError> {
        if self.config.pool_mode == PoolMode::Session {
            return Ok(Step::NeedServer);
        }
        Ok(match tag {
            // Nothing is in flight, so the client is idle: answer for the server.
            SYNC => {
                out.push(Action::ToClient(Bytes::from_static(READY_FOR_QUERY_IDLE)));
                Step::Route(Route::Discard)
            }
            FLUSH | COPY_DATA | COPY_DONE | COPY_FAIL => Step::Route(Route::Discard),
            CLOSE if tracked => {
                let target = Target::parse(body, "Close").map_err(SessionError::ClientMessage)?;
                if target.kind == TargetKind::Statement {
                    self.statements.remove(target.name);
                }
                out.push(Action::ToClient(Bytes::from_static(CLOSE_COMPLETE)));
                Step::Route(Route::Discard)
            }
            _ => Step::NeedServer,
        })
    }

    /// Forwards the message and awaits its answer.
    fn send_and_await(&mut self, request: Request) -> Step {
        self.pending.push(request, Reply::Forward);
        Step::Route(Route::Forward)
    }

    /// Parse of a named statement: answered locally if the server already has the same
    /// definition, else sent under our name.
    fn on_parse(&mut self, body: &[u8], out: &mut Vec<Action>) -> Result<Step, SessionError> {
        let parse = ParseMessage::parse(body).map_err(SessionError::ClientMessage)?;
        if parse.statement.is_empty() {
            return Ok(self.send_and_await(Request::Parse { server_id: None, binding: None }));
        }
        let binding = self.statements.bind(parse.statement, parse.definition);
        self.prepared.client_parse = self.prepared.client_parse.saturating_add(1);
        let server = self.server.as_mut().ok_or(SessionError::NoServer)?;
        if server.statements.touch(&binding.statement, self.segment).is_some() {
            self.pending.push(Request::Parse { server_id: None, binding: Some(binding) }, Reply::Fake(PARSE_COMPLETE));
            self.drain_fakes(out);
            return Ok(Step::Route(Route::Discard));
        }
        let id = self.prepare_on_server(binding.statement.clone())?;
        write_parse(ServerStatementName::new(id).as_str(), parse.definition, &mut self.scratch)?;
        self.flush_scratch_to_server(out);
        self.pending.push(Request::Parse { server_id: Some(id), binding: Some(binding) }, Reply::Forward);
        Ok(Step::Route(Route::Discard))
    }

    /// Bind of a named statement: its names are rewritten, its parameters forwarded untouched.
    fn on_bind(
        &mut self,
        header: Header,
        body: &[u8],
        complete: bool,
        out: &mut Vec<Action>,
    ) -> Result<Step, SessionError> {
        let Some(prefix) = BindPrefix::parse(body) else {
            if complete {
                return Err(SessionError::ClientMessage(crate::protocol::MessageError::Truncated("Bind")));
            }
            if body.len() >= self.config.limits.max_inspected_len as usize {
                return Err(SessionError::UnexpectedClientMessage { tag: BIND, what: "a Bind with oversized names" });
            }
            return Ok(Step::NeedMore);
        };
        if prefix.statement.is_empty() {
            return Ok(self.send_and_await(Request::Bind));
        }
        let name = self.ensure_prepared(prefix.statement)?;
        // The server has the statement (every execution but the first on a connection): the
        // head alone, inline. Else it follows the Parse in the scratch buffer.
        let inline = if self.scratch.is_empty() { BindHead::new(header, &prefix, name.as_bytes())? } else { None };
        match inline {
            Some(head) => out.push(Action::BindHead(head)),
            None => {
                write_bind_prefix(header, &prefix, name.as_bytes(), &mut self.scratch)?;
                self.flush_scratch_to_server(out);
            }
        }
        self.prepared.bind = self.prepared.bind.saturating_add(1);
        self.pending.push(Request::Bind, Reply::Forward);
        Ok(Step::Replace { replaced: bind_params_offset(&prefix) })
    }

    fn on_describe(&mut self, body: &[u8], out: &mut Vec<Action>) -> Result<Step, SessionError> {
        let target = Target::parse(body, "Describe").map_err(SessionError::ClientMessage)?;
        if target.kind == TargetKind::Portal || target.name.is_empty() {
            return Ok(self.send_and_await(Request::Describe));
        }
        let name = self.ensure_prepared(target.name)?;
        write_describe(TargetKind::Statement, name.as_str(), &mut self.scratch)?;
        self.flush_scratch_to_server(out);
        self.pending.push(Request::Describe, Reply::Forward);
        Ok(Step::Route(Route::Discard))
    }

    /// Close of a named statement: the client's name goes, the server keeps the statement for
    /// other clients (its LRU bound evicts it eventually), and the pooler answers.
    fn on_close(&mut self, body: &[u8], out: &mut Vec<Action>) -> Result<Step, SessionError> {
        let target = Target::parse(body, "Close").map_err(SessionError::ClientMessage)?;
        if target.kind == TargetKind::Portal || target.name.is_empty() {
            return Ok(self.send_and_await(Request::Close { restore: None }));
        }
        let restore = self.statements.remove(target.name);
        self.pending.push(Request::Close { restore }, Reply::Fake(CLOSE_COMPLETE));
        self.drain_fakes(out);
        Ok(Step::Route(Route::Discard))
    }

    /// The server-side name of the client's statement `name`, queueing a Parse first if the
    /// attached server does not have it (its completion is swallowed: the client did not ask
    /// for it). When the server has it (every execution but the first on a connection) no
    /// reference to the statement is taken.
    fn ensure_prepared(&mut self, name: &[u8]) -> Result<ServerStatementName, SessionError> {
        let Some(statement) = self.statements.get(name) else {
            return Err(SessionError::UnknownStatement { name: String::from_utf8_lossy(name).into_owned() });
        };
        let server = self.server.as_mut().ok_or(SessionError::NoServer)?;
        if let Some(server_name) = server.statements.touch(statement, self.segment) {
            return Ok(server_name);
        }
        let statement = statement.clone();
        let id = self.prepare_on_server(statement.clone())?;
        let server_name = ServerStatementName::new(id);
        write_parse(server_name.as_str(), statement.definition(), &mut self.scratch)?;
        self.pending.push(Request::Parse { server_id: Some(id), binding: None }, Reply::Swallow);
        Ok(server_name)
    }

    /// Registers `statement` on the attached server, first closing the least recently used
    /// ones if it is full. The caller writes the Parse after the Closes in the scratch buffer.
    fn prepare_on_server(&mut self, statement: Arc<Statement>) -> Result<u64, SessionError> {
        let capacity = self.config.max_prepared_statements.max(1) as usize;
        let server = self.server.as_mut().ok_or(SessionError::NoServer)?;
        while server.statements.len() >= capacity {
            let Some(evicted) = server.statements.evict_least_recently_used() else { break };
            write_close(TargetKind::Statement, ServerStatementName::new(evicted).as_str(), &mut self.scratch)?;
            self.pending.push(Request::Close { restore: None }, Reply::Swallow);
        }
        self.prepared.server_parse = self.prepared.server_parse.saturating_add(1);
        Ok(server.statements.insert(statement, self.segment))
    }
}
