//! Test doubles around a `Session`: client message builders, a mock PostgreSQL backend that
//! answers like the real one and reports anything PostgreSQL would refuse (a Bind of a
//! statement it does not have, a Parse of a name it already has), and a driver that plays the
//! I/O loop, checking at every release that nothing is left in flight.

use super::{Action, ParamMap, ServerState, Session, SessionConfig, SessionError};
use crate::protocol::frame::body;
use crate::protocol::{FrameLimits, Framer, Inspect};
use bytes::{Buf, BytesMut};
use std::collections::{HashMap, VecDeque};

pub(super) fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn cstrs(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for part in parts {
        out.extend_from_slice(part);
        out.push(0);
    }
    out
}

/// Messages a client sends.
pub(super) mod client {
    use super::{cstrs, msg};

    pub fn parse(name: &str, query: &str) -> Vec<u8> {
        let mut body = cstrs(&[name.as_bytes(), query.as_bytes()]);
        body.extend_from_slice(&[0, 0]);
        msg(b'P', &body)
    }
    pub fn bind(name: &str) -> Vec<u8> {
        bind_with_param(name, None)
    }
    /// A Bind with one text parameter when `value` is given.
    pub fn bind_with_param(name: &str, value: Option<&[u8]>) -> Vec<u8> {
        let mut body = cstrs(&[b"", name.as_bytes()]);
        match value {
            None => body.extend_from_slice(&[0, 0, 0, 0]),
            Some(value) => {
                body.extend_from_slice(&[0, 0, 0, 1]);
                body.extend_from_slice(&(value.len() as i32).to_be_bytes());
                body.extend_from_slice(value);
            }
        }
        body.extend_from_slice(&[0, 0]);
        msg(b'B', &body)
    }
    pub fn describe_statement(name: &str) -> Vec<u8> {
        msg(b'D', &[&[b'S'][..], &cstrs(&[name.as_bytes()])].concat())
    }
    pub fn close_statement(name: &str) -> Vec<u8> {
        msg(b'C', &[&[b'S'][..], &cstrs(&[name.as_bytes()])].concat())
    }
    pub fn describe_portal() -> Vec<u8> {
        msg(b'D', &[b'P', 0])
    }
    pub fn execute() -> Vec<u8> {
        msg(b'E', &[0, 0, 0, 0, 0])
    }
    pub fn sync() -> Vec<u8> {
        msg(b'S', b"")
    }
    pub fn flush() -> Vec<u8> {
        msg(b'H', b"")
    }
    pub fn query(sql: &str) -> Vec<u8> {
        msg(b'Q', &cstrs(&[sql.as_bytes()]))
    }
    pub fn terminate() -> Vec<u8> {
        msg(b'X', b"")
    }
    pub fn copy_data(data: &[u8]) -> Vec<u8> {
        msg(b'd', data)
    }
    pub fn copy_done() -> Vec<u8> {
        msg(b'c', b"")
    }
}

/// Splits a byte stream into (tag, body) messages.
pub(super) fn messages(stream: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let framer = Framer::new(FrameLimits::default());
    let mut out = Vec::new();
    let mut rest = stream;
    while let Ok(crate::protocol::Frame::Whole { header, message }) = framer.peek(rest, |_| Inspect::Whole) {
        out.push((header.tag, body(message).to_vec()));
        rest = &rest[message.len()..];
    }
    assert!(rest.is_empty(), "stream ends inside a message");
    out
}

pub(super) fn tags(stream: &[u8]) -> String {
    messages(stream).iter().map(|(tag, _)| char::from(*tag)).collect()
}

fn split_cstr(buf: &[u8]) -> (Vec<u8>, &[u8]) {
    let end = buf.iter().position(|&b| b == 0).expect("NUL-terminated string");
    (buf[..end].to_vec(), &buf[end + 1..])
}

/// Just enough of a PostgreSQL backend to hold the pooler to the protocol.
#[derive(Debug, Default)]
pub(super) struct MockServer {
    pub(super) statements: HashMap<Vec<u8>, Vec<u8>>,
    portal: Vec<u8>,
    inbox: Vec<u8>,
    pub(super) outbox: Vec<u8>,
    status: u8,
    skipping: bool,
    copy_in: Option<bool>,
    pub(super) params: HashMap<String, String>,
    /// Syncs and Queries PostgreSQL ignores (Sync during copy-in, Query while skipping to Sync).
    pub(super) ignored: usize,
    /// Parse messages processed (not skipped).
    pub(super) parses: usize,
}

pub(super) const LOGIN_PARAMS: [(&str, &str); 6] = [
    ("client_encoding", "UTF8"),
    ("DateStyle", "ISO, MDY"),
    ("TimeZone", "UTC"),
    ("IntervalStyle", "postgres"),
    ("standard_conforming_strings", "on"),
    ("application_name", ""),
];

impl MockServer {
    pub(super) fn new() -> Self {
        let params = LOGIN_PARAMS.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        MockServer { status: b'I', params, ..Default::default() }
    }

    pub(super) fn state(&self) -> Box<ServerState> {
        Box::new(ServerState::new(ParamMap::from_pairs(self.params.iter().map(|(k, v)| (k.as_str(), v.as_str())))))
    }

    pub(super) fn receive(&mut self, bytes: &[u8]) {
        self.inbox.extend_from_slice(bytes);
    }

    pub(super) fn has_unprocessed_input(&self) -> bool {
        !self.inbox.is_empty()
    }

    fn send(&mut self, tag: u8, body: &[u8]) {
        self.outbox.extend_from_slice(&msg(tag, body));
    }

    fn error(&mut self, message: &str) {
        self.send(b'E', &cstrs(&[b"SERROR", b"VERROR", b"C42000", format!("M{message}").as_bytes(), b""]));
        if self.status == b'T' {
            self.status = b'E';
        }
    }

    /// Answers every complete message received; `bound` gets the query of each executed Bind.
    pub(super) fn process(&mut self, bound: &mut Vec<Vec<u8>>) -> Result<(), String> {
        let inbox = std::mem::take(&mut self.inbox);
        let mut rest = &inbox[..];
        while rest.len() >= 5 {
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            if rest.len() < len + 1 {
                break;
            }
            let (tag, body) = (rest[0], &rest[5..len + 1]);
            rest = &rest[len + 1..];
            self.handle(tag, body, bound)?;
        }
        self.inbox = rest.to_vec();
        Ok(())
    }

    fn handle(&mut self, tag: u8, body: &[u8], bound: &mut Vec<Vec<u8>>) -> Result<(), String> {
        if let Some(extended) = self.copy_in {
            return self.handle_copy(tag, extended);
        }
        if tag == b'S' {
            self.skipping = false;
            let status = self.status;
            self.send(b'Z', &[status]);
            return Ok(());
        }
        if self.skipping && tag == b'Q' {
            self.ignored += 1;
        }
        // PostgreSQL ignores copy messages outside copy mode (a client that wrote a COPY's
        // data before the COPY failed).
        if self.skipping || matches!(tag, b'H' | b'X' | b'd' | b'c' | b'f') {
            return Ok(());
        }
        match tag {
            b'Q' => self.simple_query(&split_cstr(body).0),
            b'P' => {
                let (name, rest) = split_cstr(body);
                let (query, _) = split_cstr(rest);
                if !name.is_empty() && self.statements.contains_key(&name) {
                    return Err(format!("Parse of {:?}, which already exists", String::from_utf8_lossy(&name)));
                }
                self.parses += 1;
                if query.starts_with(b"bad") {
                    self.error("syntax error");
                    self.skipping = true;
                } else {
                    self.statements.insert(name, query);
                    self.send(b'1', b"");
                }
            }
            b'B' => {
                let (_portal, rest) = split_cstr(body);
                let (name, _) = split_cstr(rest);
                let Some(query) = self.statements.get(&name) else {
                    return Err(format!(
                        "Bind of {:?}, which this server does not have",
                        String::from_utf8_lossy(&name)
                    ));
                };
                self.portal = query.clone();
                bound.push(query.clone());
                self.send(b'2', b"");
            }
            b'D' => {
                let (name, _) = split_cstr(&body[1..]);
                if body[0] == b'S' && !self.statements.contains_key(&name) {
                    return Err(format!(
                        "Describe of {:?}, which this server does not have",
                        String::from_utf8_lossy(&name)
                    ));
                }
                if body[0] == b'S' {
                    self.send(b't', &[0, 0]);
                }
                match self.statements.get(&name) {
                    Some(query) if body[0] == b'S' && query.starts_with(b"SELECT") => {
                        self.send(b'T', &[vec![0, 1], cstrs(&[b"column"]), vec![0; 18]].concat())
                    }
                    _ => self.send(b'n', b""),
                }
            }
            b'C' => {
                let (name, _) = split_cstr(&body[1..]);
                if body[0] == b'S' {
                    self.statements.remove(&name);
                }
                self.send(b'3', b"");
            }
            b'E' => {
                if self.portal == b"COPY MISSING FROM STDIN" {
                    self.error("relation \"missing\" does not exist");
                    self.skipping = true;
                } else if self.portal == b"COPY FROM STDIN" {
                    self.copy_in = Some(true);
                    self.send(b'G', &[0, 0, 0]);
                } else {
                    self.send(b'D', &[0, 1, 0, 0, 0, 1, b'1']);
                    self.send(b'C', b"SELECT 1\0");
                }
            }
            other => return Err(format!("unexpected message {:?}", char::from(other))),
        }
        Ok(())
    }

    fn handle_copy(&mut self, tag: u8, extended: bool) -> Result<(), String> {
        match tag {
            b'S' => self.ignored += 1,
            b'd' | b'H' => {}
            b'c' => {
                self.copy_in = None;
                self.send(b'C', b"COPY 1\0");
            }
            b'f' => {
                self.copy_in = None;
                self.error("COPY from stdin failed");
                self.skipping = extended;
            }
            other => return Err(format!("unexpected message {:?} during COPY", char::from(other))),
        }
        if self.copy_in.is_none() && !extended {
            let status = self.status;
            self.send(b'Z', &[status]);
        }
        Ok(())
    }

    fn simple_query(&mut self, sql: &[u8]) {
        let sql = String::from_utf8_lossy(sql).into_owned();
        for statement in sql.split("; ") {
            match statement {
                "BEGIN" => self.status = b'T',
                "COMMIT" | "ROLLBACK" => self.status = b'I',
                "DISCARD ALL" | "DEALLOCATE ALL" => self.statements.clear(),
                "COPY FROM STDIN" => {
                    self.copy_in = Some(false);
                    self.send(b'G', &[0, 0, 0]);
                    return;
                }
                "FAIL" => {
                    self.error("failed on purpose");
                    break;
                }
                "COPY MISSING FROM STDIN" => {
                    self.error("relation \"missing\" does not exist");
                    break;
                }
                "SELECT big" => {
                    self.send(b'T', &[vec![0, 1], cstrs(&[b"big"]), vec![0; 18]].concat());
                    self.send(b'D', &[vec![0, 1, 0, 1, 0x86, 0xa0], vec![b'x'; 100_000]].concat());
                }
                _ if statement.starts_with("SELECT") => {
                    self.send(b'T', &[vec![0, 1], cstrs(&[b"x"]), vec![0; 18]].concat());
                    self.send(b'D', &[0, 1, 0, 0, 0, 1, b'1']);
                }
                _ if statement.starts_with("SET ") => {
                    let (name, value) = statement[4..].split_once(" = ").unwrap_or(("", ""));
                    let value = value.trim_matches('\'');
                    if value == "invalid" {
                        self.error("invalid value for parameter");
                        break;
                    }
                    // PostgreSQL spells time zones its own way.
                    let value = if name == "TimeZone" { value.to_uppercase() } else { value.to_owned() };
                    if self.params.get(name) != Some(&value) {
                        self.params.insert(name.to_owned(), value.clone());
                        self.send(b'S', &cstrs(&[name.as_bytes(), value.as_bytes()]));
                    }
                }
                _ => {}
            }
            let tag = statement.split(' ').next().unwrap_or_default().to_owned();
            let tag = if statement.ends_with(" ALL") { statement.to_owned() } else { tag };
            self.send(b'C', &cstrs(&[tag.as_bytes()]));
        }
        let status = self.status;
        self.send(b'Z', &[status]);
    }
}

/// Plays the I/O loop around a session, with a pool of mock servers.
pub(super) struct Harness {
    pub(super) session: Session,
    client_in: BytesMut,
    pub(super) to_client: Vec<u8>,
    server: Option<MockServer>,
    server_in: BytesMut,
    pub(super) pool: Vec<(Box<ServerState>, MockServer)>,
    /// Which pooled server the next `NeedServer` gets (index modulo pool size + 1, where the
    /// last choice means a new connection); empty means the first pooled one.
    pub(super) picks: VecDeque<usize>,
    pub(super) bound: Vec<Vec<u8>>,
    pub(super) attaches: usize,
    pub(super) releases: usize,
    pub(super) terminated: bool,
    /// Client bytes consumed by the session, to count the requests that need a ReadyForQuery.
    consumed: Vec<u8>,
    /// Requests the released servers ignored as PostgreSQL does.
    ignored: usize,
    mark: usize,
    actions: Vec<Action>,
    /// Check a server out before the session runs when it would only ask for one, as the
    /// relay does (`Session::needs_server_first`); false: only on `NeedServer`.
    pub(super) eager_attach: bool,
}

impl Harness {
    pub(super) fn new(config: SessionConfig, client_params: ParamMap) -> Self {
        Harness {
            session: Session::new(config, client_params),
            client_in: BytesMut::new(),
            to_client: Vec::new(),
            server: None,
            server_in: BytesMut::new(),
            pool: Vec::new(),
            picks: VecDeque::new(),
            bound: Vec::new(),
            attaches: 0,
            releases: 0,
            terminated: false,
            consumed: Vec::new(),
            ignored: 0,
            mark: 0,
            actions: Vec::new(),
            eager_attach: true,
        }
    }

    /// From now on `new_tags` shows only what the client receives after this point.
    pub(super) fn mark(&mut self) {
        self.mark = self.to_client.len();
    }

    pub(super) fn new_tags(&self) -> String {
        tags(&self.to_client[self.mark..])
    }

    pub(super) fn attached(&self) -> Option<&MockServer> {
        self.server.as_ref()
    }

    /// The client writes `bytes`; the session handles what it can.
    pub(super) fn client_sends(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        self.client_in.extend_from_slice(bytes);
        self.pump_client()
    }

    pub(super) fn pump_client(&mut self) -> Result<(), SessionError> {
        // As the relay does (`Session::needs_server_first`).
        if self.eager_attach && self.session.needs_server_first(&self.client_in) {
            self.attach()?;
        }
        loop {
            let mut actions = std::mem::take(&mut self.actions);
            self.session.on_client_input(&self.client_in, &mut actions)?;
            let mut need_server = false;
            for action in actions.drain(..) {
                match action {
                    Action::Forward(n) => {
                        let bytes = self.client_in.split_to(n);
                        self.consumed.extend_from_slice(&bytes);
                        self.server.as_mut().expect("forward to a server that is attached").receive(&bytes);
                    }
                    Action::Discard(n) => {
                        let bytes = self.client_in.split_to(n);
                        self.consumed.extend_from_slice(&bytes);
                    }
                    Action::NeedServer => need_server = true,
                    other => self.apply_common(other),
                }
            }
            self.actions = actions;
            if !need_server || self.terminated {
                return Ok(());
            }
            self.attach()?;
        }
    }

    fn attach(&mut self) -> Result<(), SessionError> {
        assert!(self.server.is_none(), "NeedServer while a server is attached");
        let choice = self.picks.pop_front().unwrap_or(0) % (self.pool.len() + 1);
        let (state, mock) = if choice < self.pool.len() {
            self.pool.remove(choice)
        } else {
            let mock = MockServer::new();
            (mock.state(), mock)
        };
        self.server = Some(mock);
        self.attaches += 1;
        let mut actions = std::mem::take(&mut self.actions);
        self.session.attach_server(state, &mut actions)?;
        for action in actions.drain(..) {
            self.apply_common(action);
        }
        self.actions = actions;
        Ok(())
    }

    /// The attached server answers what it got; up to `max` bytes of its answers reach the session.
    pub(super) fn server_answers(&mut self, max: usize) -> Result<(), String> {
        let Some(server) = self.server.as_mut() else { return Ok(()) };
        server.process(&mut self.bound)?;
        let n = max.min(server.outbox.len());
        let bytes: Vec<u8> = server.outbox.drain(..n).collect();
        self.server_in.extend_from_slice(&bytes);
        let mut actions = std::mem::take(&mut self.actions);
        self.session.on_server_input(&self.server_in, &mut actions).map_err(|e| e.to_string())?;
        for action in actions.drain(..) {
            match action {
                Action::Forward(n) => {
                    let bytes = self.server_in.split_to(n);
                    self.to_client.extend_from_slice(&bytes);
                }
                Action::Discard(n) => self.server_in.advance(n),
                Action::NeedServer => panic!("NeedServer from server input"),
                other => self.apply_common(other),
            }
        }
        self.actions = actions;
        Ok(())
    }

    fn apply_common(&mut self, action: Action) {
        match action {
            Action::ToServer(bytes) => self.server.as_mut().expect("bytes for an attached server").receive(&bytes),
            Action::BindHead(head) => {
                self.server.as_mut().expect("bytes for an attached server").receive(head.as_bytes())
            }
            Action::ToClient(bytes) => self.to_client.extend_from_slice(&bytes),
            Action::ReleaseServer(state) => self.release(state),
            Action::ClientTerminated => self.terminated = true,
            Action::Forward(_) | Action::Discard(_) | Action::NeedServer => unreachable!("handled by the caller"),
        }
    }

    /// A release must come right after a ReadyForQuery 'I' that answers the client's last
    /// request, with nothing left to send either way.
    fn release(&mut self, state: Box<ServerState>) {
        let mut mock = self.server.take().expect("release of an attached server");
        assert!(self.server_in.is_empty(), "released with server bytes unread");
        mock.process(&mut self.bound).expect("server input at release");
        assert!(mock.outbox.is_empty() && !mock.has_unprocessed_input(), "released with answers still coming");
        let received = messages(&self.to_client);
        // The last ReadyForQuery says idle; after it, only answers the pooler gave itself
        // (to a Parse or Close it answers, and to a DEALLOCATE's steps).
        let last_ready = received.iter().rposition(|(tag, _)| *tag == b'Z').expect("a ReadyForQuery before release");
        assert_eq!(received[last_ready].1, b"I");
        assert!(received[last_ready + 1..].iter().all(|(tag, body)| match tag {
            b'1' | b'2' | b'3' | b'n' | b't' => true,
            b'C' => body.starts_with(b"DEALLOCATE"),
            _ => false,
        }));
        let requests = messages_prefix(&self.consumed).iter().filter(|(tag, _)| matches!(tag, b'S' | b'Q')).count();
        let answers = received.iter().filter(|(tag, _)| *tag == b'Z').count();
        self.ignored += mock.ignored;
        mock.ignored = 0;
        assert_eq!(requests, answers + self.ignored, "released before every Sync/Query was answered");
        self.releases += 1;
        self.pool.push((state, mock));
    }

    /// Runs both directions until nothing moves.
    pub(super) fn settle(&mut self) -> Result<(), String> {
        for _ in 0..10_000 {
            let before = (self.to_client.len(), self.client_in.len(), self.attaches, self.releases);
            self.pump_client().map_err(|e| e.to_string())?;
            self.server_answers(usize::MAX)?;
            // A server may hold part of a message the client has not finished sending.
            let idle = self.server.as_ref().is_none_or(|s| s.outbox.is_empty());
            if idle && before == (self.to_client.len(), self.client_in.len(), self.attaches, self.releases) {
                return Ok(());
            }
        }
        Err("no quiescence".to_owned())
    }
}

/// Messages wholly contained in `stream` (which may end inside one).
fn messages_prefix(stream: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = stream;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        if rest.len() < len + 1 {
            break;
        }
        out.push((rest[0], rest[5..len + 1].to_vec()));
        rest = &rest[len + 1..];
    }
    out
}

pub(super) fn transaction_config() -> SessionConfig {
    SessionConfig {
        pool_mode: super::PoolMode::Transaction,
        max_prepared_statements: 100,
        limits: FrameLimits::default(),
        disable_pqexec: false,
    }
}

pub(super) fn login_params() -> ParamMap {
    ParamMap::from_pairs(LOGIN_PARAMS)
}
