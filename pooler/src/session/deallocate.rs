//! SQL `DEALLOCATE` of a client's protocol-level statements, answered by the pooler. Drivers
//! send it: psycopg 3 (before 3.2 or with libpq before 17) runs `DEALLOCATE _pg3_N` when its
//! statement cache evicts a statement, and `DEALLOCATE ALL` after a ROLLBACK or a DROP, through
//! the extended protocol with the unnamed statement. The server does not know the client's
//! names (it has the pooler's), so passed on, the first fails ("prepared statement does not
//! exist") and the second wipes the statements every other client shares on that server
//! connection. Here either only drops the client's names, as Close does (`on_close`), and the
//! pooler answers each message of it itself, in order with the server's answers (`Reply::Fake`).
//! Names the pooler does not track (SQL-level PREPARE) pass on to the server as before.

use super::pending::{Reply, Request};
use super::{Action, Session, SessionError, Step};
use crate::protocol::extended::{BindPrefix, ParseMessage, Target, TargetKind};
use crate::protocol::message::{split_cstr, BIND_COMPLETE, CLOSE_COMPLETE, PARSE_COMPLETE, READY_FOR_QUERY_IDLE};
use crate::protocol::tag::frontend::{BIND, CLOSE, DESCRIBE, EXECUTE, PARSE, QUERY};
use crate::protocol::TransactionStatus;
use bytes::Bytes;

const NO_DATA: &[u8] = &[b'n', 0, 0, 0, 4];
/// ParameterDescription with no parameters.
const NO_PARAMETERS: &[u8] = &[b't', 0, 0, 0, 6, 0, 0];
const DEALLOCATE_COMPLETE: &[u8] = b"C\0\0\0\x0fDEALLOCATE\0";
const DEALLOCATE_ALL_COMPLETE: &[u8] = b"C\0\0\0\x13DEALLOCATE ALL\0";
const READY_IN_TRANSACTION: &[u8] = &[b'Z', 0, 0, 0, 5, b'T'];

/// What a `DEALLOCATE` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Deallocate {
    All,
    /// As PostgreSQL resolves it: unquoted names folded to lower case.
    Name(Vec<u8>),
}

impl Deallocate {
    fn complete(&self) -> &'static [u8] {
        match self {
            Deallocate::All => DEALLOCATE_ALL_COMPLETE,
            Deallocate::Name(_) => DEALLOCATE_COMPLETE,
        }
    }
}

/// `DEALLOCATE [PREPARE] { name | ALL } [;]`, and nothing else, as one statement.
pub(crate) fn parse(sql: &[u8]) -> Option<Deallocate> {
    let mut rest = trim(sql);
    rest = trim(rest.strip_suffix(b";").unwrap_or(rest));
    rest = keyword(rest, b"deallocate")?;
    if let Some(after) = keyword(rest, b"prepare") {
        rest = after;
    }
    if let Some(after) = keyword(rest, b"all") {
        return after.is_empty().then_some(Deallocate::All);
    }
    let (name, after) = identifier(rest)?;
    trim(after).is_empty().then_some(Deallocate::Name(name))
}

fn trim(s: &[u8]) -> &[u8] {
    s.trim_ascii()
}

/// `s` after the keyword `word` (any case) and the spaces after it; None if `s` does not
/// start with it as a whole word.
fn keyword<'a>(s: &'a [u8], word: &[u8]) -> Option<&'a [u8]> {
    let head = s.get(..word.len())?;
    if !head.eq_ignore_ascii_case(word) {
        return None;
    }
    let rest = &s[word.len()..];
    match rest.first() {
        None => Some(rest),
        Some(c) if c.is_ascii_whitespace() => Some(trim(rest)),
        Some(_) => None,
    }
}

/// A name, quoted ("" inside for a quote) or not (folded to lower case), and what follows.
fn identifier(s: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    if let Some(quoted) = s.strip_prefix(b"\"") {
        let mut name = Vec::new();
        let mut i = 0;
        loop {
            match quoted.get(i)? {
                b'"' if quoted.get(i + 1) == Some(&b'"') => {
                    name.push(b'"');
                    i += 2;
                }
                b'"' => return (!name.is_empty()).then(|| (name, &quoted[i + 1..])),
                c => {
                    name.push(*c);
                    i += 1;
                }
            }
        }
    }
    let end = s.iter().position(|c| !(c.is_ascii_alphanumeric() || *c == b'_' || *c == b'$' || *c >= 0x80));
    let end = end.unwrap_or(s.len());
    if end == 0 || s[0].is_ascii_digit() || s[0] == b'$' {
        return None;
    }
    Some((s[..end].to_ascii_lowercase(), &s[end..]))
}

/// Whether SQL starting with `first` may be a `DEALLOCATE` (its first letter, or a space).
fn may_start_deallocate(first: Option<&u8>) -> bool {
    first.is_some_and(|c| c | 0x20 == b'd' || c.is_ascii_whitespace())
}

/// A `DEALLOCATE` in the unnamed statement, and the portal it was bound to.
#[derive(Debug, Default)]
pub(crate) struct LocalUnnamed {
    statement: Option<Deallocate>,
    /// The portal name and what its Execute deallocates.
    portal: Option<(Vec<u8>, Deallocate)>,
}

impl Session {
    /// Answers the client's message itself if it belongs to a `DEALLOCATE` of its statements
    /// (see the module); None for every other message, which goes its usual way. Costs one
    /// comparison for a message that cannot be one.
    pub(super) fn deallocate_locally(
        &mut self,
        tag: u8,
        body: &[u8],
        complete: bool,
        out: &mut Vec<Action>,
    ) -> Result<Option<Step>, SessionError> {
        let unnamed_in_use = self.local_unnamed.is_some();
        match tag {
            QUERY => {
                // A simple Query replaces the unnamed statement and portal.
                self.local_unnamed = None;
                if !may_start_deallocate(body.first()) {
                    return Ok(None);
                }
                if !complete {
                    // A DEALLOCATE is short: the rest of one that came in pieces is awaited.
                    return Ok((body.len() < 128).then_some(Step::NeedMore));
                }
                self.query_deallocate(body, out)
            }
            PARSE if body.first() == Some(&0) => {
                // A new unnamed statement replaces the last one, DEALLOCATE or not.
                self.local(|local| local.statement = None);
                // A malformed Parse goes its usual way, which says what is wrong with it.
                let Ok(message) = ParseMessage::parse(body) else { return Ok(None) };
                let Some(deallocate) = parse(message.query()).filter(|d| self.tracks(d)) else { return Ok(None) };
                self.local_unnamed.get_or_insert_default().statement = Some(deallocate);
                self.answer(Request::Parse { server_id: None, binding: None }, PARSE_COMPLETE, out);
                Ok(Some(Step::Route(super::Route::Discard)))
            }
            BIND if unnamed_in_use => {
                let Some(BindPrefix { portal, statement, .. }) = BindPrefix::parse(body) else { return Ok(None) };
                let local = self.local_unnamed.get_or_insert_default();
                let statement = if statement.is_empty() { local.statement.clone() } else { None };
                // A Bind to a portal replaces what it held.
                if local.portal.as_ref().is_some_and(|(name, _)| name == portal) {
                    local.portal = None;
                }
                let Some(deallocate) = statement else {
                    self.local(|_| {});
                    return Ok(None);
                };
                local.portal = Some((portal.to_vec(), deallocate));
                self.answer(Request::Bind, BIND_COMPLETE, out);
                Ok(Some(Step::Route(super::Route::Discard)))
            }
            DESCRIBE if unnamed_in_use => {
                let Ok(Target { kind, name }) = Target::parse(body, "Describe") else { return Ok(None) };
                let Some(unnamed) = self.local_unnamed.as_ref() else { return Ok(None) };
                let local = match kind {
                    TargetKind::Statement => name.is_empty() && unnamed.statement.is_some(),
                    TargetKind::Portal => unnamed.portal.as_ref().is_some_and(|(portal, _)| portal == name),
                };
                if !local {
                    return Ok(None);
                }
                if kind == TargetKind::Statement {
                    self.answer(Request::Describe, NO_PARAMETERS, out);
                }
                self.answer(Request::Describe, NO_DATA, out);
                Ok(Some(Step::Route(super::Route::Discard)))
            }
            EXECUTE if unnamed_in_use => {
                let Ok((portal, _)) = split_cstr(body, "Execute") else {
                    return Ok((!complete).then_some(Step::NeedMore));
                };
                let deallocate = self.local_unnamed.as_ref().and_then(|local| local.portal.as_ref());
                let Some((_, deallocate)) = deallocate.filter(|(name, _)| name == portal).cloned() else {
                    return Ok(None);
                };
                self.deallocate(&deallocate, out);
                Ok(Some(Step::Route(super::Route::Discard)))
            }
            CLOSE if unnamed_in_use => {
                let Ok(Target { kind, name }) = Target::parse(body, "Close") else { return Ok(None) };
                let Some(unnamed) = self.local_unnamed.as_mut() else { return Ok(None) };
                let local = match kind {
                    TargetKind::Statement => name.is_empty() && unnamed.statement.take().is_some(),
                    TargetKind::Portal => unnamed.portal.take_if(|(portal, _)| portal == name).is_some(),
                };
                self.local(|_| {});
                if !local {
                    return Ok(None);
                }
                self.answer(Request::Close { restore: None }, CLOSE_COMPLETE, out);
                Ok(Some(Step::Route(super::Route::Discard)))
            }
            _ => Ok(None),
        }
    }

    /// Changes the local unnamed state, if any, and drops it once it holds nothing.
    fn local(&mut self, change: impl FnOnce(&mut LocalUnnamed)) {
        if let Some(local) = self.local_unnamed.as_mut() {
            change(local);
            if local.statement.is_none() && local.portal.is_none() {
                self.local_unnamed = None;
            }
        }
    }

    /// Whether the message may be one the pooler answers itself (a DEALLOCATE, or a step of
    /// one): a look at one byte or one field, so that the others pay nothing more (and
    /// `needs_server_first` lets the session see such a message before a server is taken).
    #[inline]
    pub(super) fn may_deallocate_locally(&self, tag: u8, body: &[u8]) -> bool {
        match tag {
            QUERY => self.local_unnamed.is_some() || may_start_deallocate(body.first()),
            // An unnamed Parse also replaces a local DEALLOCATE, which must then be forgotten.
            PARSE => body.first() == Some(&0) && (self.local_unnamed.is_some() || may_start_deallocate(body.get(1))),
            _ => self.local_unnamed.is_some(),
        }
    }

    /// Whether the pooler holds what `deallocate` names (else the server's own answer stands:
    /// a statement made with SQL PREPARE, or a name nobody prepared).
    fn tracks(&self, deallocate: &Deallocate) -> bool {
        match deallocate {
            Deallocate::All => true,
            Deallocate::Name(name) => self.statements.get(name).is_some(),
        }
    }

    /// A simple Query that is one `DEALLOCATE`: answered (CommandComplete, ReadyForQuery) when
    /// nothing is in flight and the transaction has not failed (there PostgreSQL answers with
    /// an error, and so does the server).
    fn query_deallocate(&mut self, body: &[u8], out: &mut Vec<Action>) -> Result<Option<Step>, SessionError> {
        let sql = body.strip_suffix(b"\0").unwrap_or(body);
        let Some(deallocate) = parse(sql).filter(|d| self.tracks(d)) else { return Ok(None) };
        if !self.pending.is_empty() {
            return Ok(None);
        }
        let ready = match (self.server.is_some(), self.transaction) {
            (false, _) | (true, TransactionStatus::Idle) => READY_FOR_QUERY_IDLE,
            (true, TransactionStatus::InTransaction) => READY_IN_TRANSACTION,
            (true, TransactionStatus::Failed) => return Ok(None),
        };
        self.deallocate(&deallocate, out);
        if self.server.is_none() {
            out.push(Action::ToClient(Bytes::from_static(ready)));
        } else {
            // Answered after the CommandComplete: ReadyForQuery as the server would send it.
            self.pending.push(Request::Sync, Reply::Fake(ready));
            self.drain_fakes(out);
        }
        Ok(Some(Step::Route(super::Route::Discard)))
    }

    /// Drops the client's names and answers CommandComplete; a dropped name comes back if the
    /// server skips the request (an error earlier in the pipeline).
    fn deallocate(&mut self, deallocate: &Deallocate, out: &mut Vec<Action>) {
        let restore = match deallocate {
            Deallocate::All => {
                self.statements.clear();
                None
            }
            Deallocate::Name(name) => self.statements.remove(name),
        };
        self.answer(Request::Close { restore }, deallocate.complete(), out);
    }

    /// Sends `answer` now when nothing is in flight and no server is attached, else queues it
    /// behind the server's answers to what came before.
    fn answer(&mut self, request: Request, answer: &'static [u8], out: &mut Vec<Action>) {
        if self.server.is_none() {
            out.push(Action::ToClient(Bytes::from_static(answer)));
        } else {
            self.pending.push(request, Reply::Fake(answer));
            self.drain_fakes(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{parse, Deallocate};

    fn name(s: &str) -> Option<Deallocate> {
        Some(Deallocate::Name(s.as_bytes().to_vec()))
    }

    #[test]
    fn deallocate_statements_are_recognised_as_postgresql_reads_them() {
        assert_eq!(parse(b"DEALLOCATE _pg3_0"), name("_pg3_0"));
        assert_eq!(parse(b"  deallocate prepare S_1 ;  "), name("s_1"));
        assert_eq!(parse(b"DEALLOCATE \"S_1\""), name("S_1"));
        assert_eq!(parse(b"DEALLOCATE \"a\"\"b\""), name("a\"b"));
        assert_eq!(parse(b"DEALLOCATE ALL"), Some(Deallocate::All));
        assert_eq!(parse(b"deallocate prepare all;"), Some(Deallocate::All));
        // A statement named "all" is not ALL.
        assert_eq!(parse(b"DEALLOCATE \"all\""), name("all"));
        for other in [
            &b"DEALLOCATE"[..],
            b"DEALLOCATE a b",
            b"DEALLOCATE a; SELECT 1",
            b"DEALLOCATEa",
            b"DEALLOCATE 1a",
            b"DEALLOCATE \"unterminated",
            b"DEALLOCATE \"\"",
            b"SELECT 1",
            b"DISCARD ALL",
            b"DEALLOCATE ALL x",
        ] {
            assert_eq!(parse(other), None, "{}", String::from_utf8_lossy(other));
        }
    }
}
