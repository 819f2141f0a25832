//! Property tests of the session: random pipelines of prepared-statement traffic, cut at random
//! points, across random server switches, checked against PostgreSQL's own semantics. The mock
//! server fails a run if the pooler ever Binds or Describes a statement that server connection
//! lacks (or Parses a name it already has); the harness fails it if a server is released
//! before ReadyForQuery 'I' answered everything in flight.

use super::sim::{client, login_params, transaction_config, Harness};
use super::{Action, PoolMode, Session, SessionConfig, TrackedParam};
use proptest::prelude::*;
use std::collections::HashMap;

#[derive(Debug, Clone)]
enum Op {
    Parse(u8, u8),
    /// A Parse PostgreSQL refuses: the rest of its pipeline segment is skipped.
    ParseBad(u8),
    /// Bind and Execute.
    Bind(u8),
    Describe(u8),
    Close(u8),
    Sync,
    Begin,
    Commit,
    Select,
    Flush,
    /// SQL `DEALLOCATE s<n>` through the unnamed statement, as psycopg sends it (Parse, Bind,
    /// Execute): the pooler answers it.
    Deallocate(u8),
    DeallocateAll,
    /// A query through the unnamed statement (Parse, Bind, Execute): the server's to answer,
    /// also right after a DEALLOCATE the pooler answered.
    Unnamed(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..4u8, 0..3u8).prop_map(|(name, query)| Op::Parse(name, query)),
        1 => (0..4u8).prop_map(Op::ParseBad),
        5 => (0..4u8).prop_map(Op::Bind),
        1 => (0..4u8).prop_map(Op::Describe),
        2 => (0..4u8).prop_map(Op::Close),
        3 => Just(Op::Sync),
        1 => Just(Op::Begin),
        1 => Just(Op::Commit),
        1 => Just(Op::Select),
        1 => Just(Op::Flush),
        1 => (0..4u8).prop_map(Op::Deallocate),
        1 => Just(Op::DeallocateAll),
        2 => (0..3u8).prop_map(Op::Unnamed),
    ]
}

/// One move of the I/O loop: client bytes arrive, server bytes arrive, or everything in
/// flight is answered (a client waiting for its results).
#[derive(Debug, Clone)]
enum IoStep {
    Client(usize),
    Server(usize),
    Settle,
}

fn io_step() -> impl Strategy<Value = IoStep> {
    prop_oneof![
        4 => (1usize..40).prop_map(IoStep::Client),
        4 => (1usize..40).prop_map(IoStep::Server),
        1 => Just(IoStep::Settle),
    ]
}

/// What a client sends and what PostgreSQL itself would answer.
#[derive(Debug, Default)]
struct Program {
    /// PostgreSQL's view of the client's statements.
    defined: HashMap<u8, Vec<u8>>,
    /// The pooler's view while an error in the current segment has not come back yet: it
    /// binds names as it sends them.
    optimistic: HashMap<u8, Vec<u8>>,
    aborted: bool,
    in_segment: bool,
    in_block: bool,
    bad: usize,
    stream: Vec<u8>,
    /// Stream offsets right after each Sync or Query: where a client may wait for answers.
    boundaries: Vec<usize>,
    expected: String,
    binds: Vec<Vec<u8>>,
}

impl Program {
    fn emit(&mut self, bytes: Vec<u8>, answers: &str) {
        self.stream.extend_from_slice(&bytes);
        if !self.aborted {
            self.expected.push_str(answers);
        }
    }

    /// Which names a Bind or Describe may use now without being refused by the pooler.
    fn view(&self) -> &HashMap<u8, Vec<u8>> {
        if self.aborted {
            &self.optimistic
        } else {
            &self.defined
        }
    }

    fn sync(&mut self) {
        self.stream.extend_from_slice(&client::sync());
        self.expected.push('Z');
        self.boundaries.push(self.stream.len());
        if self.aborted {
            self.optimistic = self.defined.clone();
            self.aborted = false;
        }
        self.in_segment = false;
    }

    fn simple(&mut self, sql: &str, answers: &str) {
        if self.in_segment {
            self.sync();
        }
        self.emit(client::query(sql), answers);
        self.boundaries.push(self.stream.len());
    }

    /// Ops that would make PostgreSQL and a pipelining pooler disagree (redefining or closing
    /// names after an error the pooler has not seen yet) are left out, as are errors inside
    /// transaction blocks.
    fn apply(&mut self, op: &Op) {
        let name = |n: u8| format!("s{n}");
        match *op {
            Op::Parse(n, q) => {
                let query = format!("SELECT {q}").into_bytes();
                if self.aborted {
                    if self.optimistic.contains_key(&n) {
                        return;
                    }
                    self.emit(client::parse(&name(n), &format!("SELECT {q}")), "");
                } else {
                    if self.defined.contains_key(&n) {
                        self.emit(client::close_statement(&name(n)), "3");
                    }
                    self.emit(client::parse(&name(n), &format!("SELECT {q}")), "1");
                    self.defined.insert(n, query.clone());
                }
                self.optimistic.insert(n, query);
                self.in_segment = true;
            }
            Op::ParseBad(n) => {
                if self.in_block || self.aborted || self.defined.contains_key(&n) {
                    return;
                }
                self.bad += 1;
                let query = format!("bad {}", self.bad);
                self.emit(client::parse(&name(n), &query), "E");
                self.aborted = true;
                self.optimistic.insert(n, query.into_bytes());
                self.in_segment = true;
            }
            Op::Bind(n) => {
                let Some(query) = self.view().get(&n).cloned() else { return };
                if !self.aborted {
                    self.binds.push(query);
                }
                self.emit([client::bind(&name(n)), client::execute()].concat(), "2DC");
                self.in_segment = true;
            }
            Op::Describe(n) => {
                if !self.view().contains_key(&n) {
                    return;
                }
                self.emit(client::describe_statement(&name(n)), "tT");
                self.in_segment = true;
            }
            Op::Close(n) => {
                if self.aborted {
                    return;
                }
                self.emit(client::close_statement(&name(n)), "3");
                self.defined.remove(&n);
                self.optimistic.remove(&n);
                self.in_segment = true;
            }
            Op::Sync => self.sync(),
            Op::Begin if !self.in_block => {
                self.simple("BEGIN", "CZ");
                self.in_block = true;
            }
            Op::Commit if self.in_block => {
                self.simple("COMMIT", "CZ");
                self.in_block = false;
            }
            Op::Begin | Op::Commit => {}
            Op::Select => self.simple("SELECT 1", "TDCZ"),
            Op::Flush => self.emit(client::flush(), ""),
            Op::Deallocate(n) => {
                // PostgreSQL would refuse an unknown name; after an error it skips the lot.
                if self.aborted || !self.defined.contains_key(&n) {
                    return;
                }
                let sql = format!("DEALLOCATE {}", name(n));
                self.emit([client::parse("", &sql), client::bind(""), client::execute()].concat(), "12C");
                self.defined.remove(&n);
                self.optimistic.remove(&n);
                self.in_segment = true;
            }
            Op::DeallocateAll => {
                if self.aborted {
                    return;
                }
                let steps = [client::parse("", "DEALLOCATE ALL"), client::bind(""), client::execute()];
                self.emit(steps.concat(), "12C");
                self.defined.clear();
                self.optimistic.clear();
                self.in_segment = true;
            }
            Op::Unnamed(q) => {
                let query = format!("SELECT 1{q}");
                if !self.aborted {
                    self.binds.push(query.clone().into_bytes());
                }
                self.emit([client::parse("", &query), client::bind(""), client::execute()].concat(), "12DC");
                self.in_segment = true;
            }
        }
    }

    fn build(ops: &[Op]) -> Self {
        let mut program = Program::default();
        for op in ops {
            program.apply(op);
        }
        if program.in_segment {
            program.sync();
        }
        if program.in_block {
            program.simple("COMMIT", "CZ");
        }
        program
    }
}

/// The client sends its stream up to `end`.
fn send_until(h: &mut Harness, stream: &[u8], sent: &mut usize, end: usize) -> Result<(), TestCaseError> {
    let end = end.min(stream.len());
    h.client_sends(&stream[*sent..end]).map_err(|e| TestCaseError::fail(e.to_string()))?;
    *sent = end;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn prepared_statements_survive_pipelining_and_server_switches(
        ops in prop::collection::vec(op(), 1..80),
        schedule in prop::collection::vec(io_step(), 0..50),
        picks in prop::collection::vec(0usize..4, 0..40),
        max_prepared in 1usize..5,
        own_application_name in any::<bool>(),
        eager_attach in any::<bool>(),
    ) {
        let program = Program::build(&ops);
        let mut params = login_params();
        if own_application_name {
            params.set(TrackedParam::ApplicationName, "app");
        }
        let config = SessionConfig { max_prepared_statements: max_prepared as u32, ..transaction_config() };
        let mut h = Harness::new(config, params);
        h.picks.extend(picks);
        h.eager_attach = eager_attach;
        let mut sent = 0;
        for step in schedule {
            match step {
                IoStep::Client(size) => {
                    let end = sent + size;
                    send_until(&mut h, &program.stream, &mut sent, end)?
                }
                IoStep::Server(size) => h.server_answers(size).map_err(TestCaseError::fail)?,
                IoStep::Settle => h.settle().map_err(TestCaseError::fail)?,
            }
        }
        // The rest as a client that waits for the answers to each Sync or Query.
        for &boundary in &program.boundaries {
            if boundary > sent {
                send_until(&mut h, &program.stream, &mut sent, boundary)?;
                h.settle().map_err(TestCaseError::fail)?;
            }
        }
        h.settle().map_err(TestCaseError::fail)?;
        prop_assert_eq!(h.new_tags(), program.expected);
        prop_assert_eq!(&h.bound, &program.binds);
        prop_assert!(!h.session.has_server(), "an idle client keeps no server");
        prop_assert_eq!(h.session.requests_in_flight(), 0);
        for (state, server) in &h.pool {
            prop_assert!(state.prepared_statements() <= max_prepared);
            for name in state.prepared_statement_names() {
                prop_assert!(server.statements.contains_key(name.as_str().as_bytes()), "{:?} is not on the server", name);
            }
        }
    }

    /// `needs_server_first` promises that the session, given the same bytes, would ask for
    /// a server connection before anything else (or refuse them): the relay relies on it to
    /// check one out early.
    #[test]
    fn a_message_said_to_need_a_server_first_gets_only_a_request_for_one(
        tag in prop_oneof![Just(b'Q'), Just(b'P'), Just(b'B'), Just(b'D'), Just(b'E'), Just(b'F'), Just(b'S'),
            Just(b'H'), Just(b'C'), Just(b'X'), Just(b'd'), Just(b'c'), Just(b'p'), any::<u8>()],
        len in prop_oneof![4u32..64, any::<u32>()],
        body in prop::collection::vec(any::<u8>(), 0..64),
        cut in 0usize..80,
        session_mode in any::<bool>(),
    ) {
        let mut input = vec![tag];
        input.extend_from_slice(&len.to_be_bytes());
        input.extend_from_slice(&body);
        input.truncate(cut.max(1));
        let mode = if session_mode { PoolMode::Session } else { PoolMode::Transaction };
        let mut session = Session::new(SessionConfig { pool_mode: mode, ..transaction_config() }, login_params());
        let needs = session.needs_server_first(&input);
        let mut actions = Vec::new();
        let result = session.on_client_input(&input, &mut actions);
        if needs {
            prop_assert!(result.is_err() || matches!(actions.as_slice(), [Action::NeedServer]), "{:?} {:?}", result, actions);
        }
    }
}
