//! What travels with a server connection from client to client: the statements prepared on it
//! and the parameter values it last reported. Owns no socket; the pool keeps one of these next
//! to each server connection.

use super::params::ParamMap;
use super::statements::{ServerStatementName, ServerStatements};

#[derive(Debug, Default)]
pub struct ServerState {
    pub(crate) statements: ServerStatements,
    pub(crate) params: ParamMap,
    /// An empty queue of pending requests whose allocation the connection carries from client
    /// to client: a session takes it when it attaches and leaves one when it lets go, so a new
    /// client's first query allocates no queue.
    pub(crate) spare_pending: super::pending::PendingQueue,
}

impl ServerState {
    /// State of a freshly logged-in connection, with the ParameterStatus values it reported.
    pub fn new(params: ParamMap) -> Self {
        ServerState { statements: ServerStatements::default(), params, spare_pending: Default::default() }
    }

    pub fn params(&self) -> &ParamMap {
        &self.params
    }

    /// Records a ParameterStatus the server sent outside a session (login, reset query).
    pub fn note_parameter_status(&mut self, name: &str, value: &str) {
        self.params.set_by_name(name, value);
    }

    /// Statements prepared on this connection under `PGHA_<n>` names.
    pub fn prepared_statements(&self) -> usize {
        self.statements.len()
    }

    /// Forgets the prepared statements (after the pool ran `DISCARD ALL` on it).
    pub fn forget_prepared_statements(&mut self) {
        self.statements.clear();
    }

    /// Names of the statements prepared (or being prepared) on this connection.
    pub fn prepared_statement_names(&self) -> impl Iterator<Item = ServerStatementName> + '_ {
        self.statements.ids().map(ServerStatementName::new)
    }

    /// True if `PGHA_<id>` is prepared (or being prepared) on this connection.
    pub fn has_prepared(&self, id: u64) -> bool {
        self.statements.contains_id(id)
    }
}
