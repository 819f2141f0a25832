//! Named prepared statements in transaction pooling, PgBouncer's `max_prepared_statements`
//! model: what each client has prepared under its own names, and what each server connection
//! has prepared under ours (`PGHA_<n>`), with a least-recently-used bound per server connection.
//! Owns the two maps only; the messages that keep them true are the session's.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// A statement's definition as a client sent it in Parse: query text, parameter count and
/// parameter types. Two Parses with the same definition are the same statement to a server.
#[derive(Debug)]
pub(crate) struct Statement {
    definition: Box<[u8]>,
    fingerprint: u64,
}

impl Statement {
    pub(crate) fn new(definition: &[u8]) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        definition.hash(&mut hasher);
        Statement { definition: definition.into(), fingerprint: hasher.finish() }
    }

    pub(crate) fn definition(&self) -> &[u8] {
        &self.definition
    }
}

impl PartialEq for Statement {
    /// The same object (a client's statement found in the map of the server it prepared it
    /// on) is equal without comparing the query text.
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other) || (self.fingerprint == other.fingerprint && self.definition == other.definition)
    }
}

impl Eq for Statement {}

impl Hash for Statement {
    /// The fingerprint was computed once at Parse; a lookup per Bind hashes 8 bytes, not the query.
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.fingerprint);
    }
}

/// The server-side name of a statement: `PGHA_<id>`, built without allocating.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ServerStatementName {
    bytes: [u8; 25],
    len: u8,
}

impl ServerStatementName {
    pub const PREFIX: &'static str = "PGHA_";

    pub fn new(id: u64) -> Self {
        let mut digits = [0u8; 20];
        let mut n = id;
        let mut count = 0;
        loop {
            digits[19 - count] = b'0' + (n % 10) as u8;
            count += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let mut bytes = [0u8; 25];
        bytes[..5].copy_from_slice(Self::PREFIX.as_bytes());
        bytes[5..5 + count].copy_from_slice(&digits[20 - count..]);
        ServerStatementName { bytes, len: (5 + count) as u8 }
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII was written.
        std::str::from_utf8(self.as_bytes()).unwrap_or(Self::PREFIX)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for ServerStatementName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A client's name bound to a statement, kept in a pending request so the binding can be
/// undone (or restored) if the server skips the request.
#[derive(Debug, Clone)]
pub(crate) struct ClientBinding {
    pub(crate) name: Box<[u8]>,
    pub(crate) statement: Arc<Statement>,
    /// What the name meant before this binding (a re-Parse), put back if it is undone.
    pub(crate) replaced: Option<Arc<Statement>>,
}

/// The statements one client has prepared, by the client's names. The map is allocated with
/// the first statement: most clients never prepare one, and an idle client keeps 8 bytes here.
#[derive(Debug, Default)]
pub(crate) struct ClientStatements {
    by_name: Option<Box<ByName>>,
}

/// foldhash (seeded per process and map), not SipHash: a Bind looks a name up in this map and
/// the statement up in the server's. Names a client chooses land only in its own map; a
/// server's map is bounded by max_prepared_statements and keyed by a SipHash fingerprint.
type FastHash = foldhash::fast::RandomState;

type ByName = HashMap<Box<[u8]>, Arc<Statement>, FastHash>;

impl ClientStatements {
    fn map(&mut self) -> &mut ByName {
        self.by_name.get_or_insert_with(Default::default)
    }

    pub(crate) fn get(&self, name: &[u8]) -> Option<&Arc<Statement>> {
        self.by_name.as_ref()?.get(name)
    }

    /// Binds `name` to `definition`, replacing an earlier binding (as a re-Parse after a failed
    /// pipeline may). Every binding is a distinct statement object, so undoing one binding can
    /// never undo a later one of the same name and text.
    pub(crate) fn bind(&mut self, name: &[u8], definition: &[u8]) -> ClientBinding {
        let statement = Arc::new(Statement::new(definition));
        let replaced = self.map().insert(name.into(), statement.clone());
        ClientBinding { name: name.into(), statement, replaced }
    }

    pub(crate) fn remove(&mut self, name: &[u8]) -> Option<ClientBinding> {
        let (name, statement) = self.by_name.as_mut()?.remove_entry(name)?;
        Some(ClientBinding { name, statement, replaced: None })
    }

    /// Undoes `binding` if the name still means that statement: the name means again what it
    /// meant before.
    pub(crate) fn unbind(&mut self, binding: ClientBinding) {
        if !self.get(&binding.name).is_some_and(|current| Arc::ptr_eq(current, &binding.statement)) {
            return;
        }
        match binding.replaced {
            Some(previous) => {
                self.map().insert(binding.name, previous);
            }
            None => {
                self.map().remove(&binding.name);
            }
        }
    }

    /// Puts `binding` back unless the name was bound again since.
    pub(crate) fn restore(&mut self, binding: ClientBinding) {
        self.map().entry(binding.name).or_insert(binding.statement);
    }

    pub(crate) fn clear(&mut self) {
        self.by_name = None;
    }

    pub(crate) fn len(&self) -> usize {
        self.by_name.as_ref().map_or(0, |map| map.len())
    }
}

#[derive(Debug)]
struct ServerEntry {
    id: u64,
    /// `PGHA_<id>`, built once: a Bind writes it on every execution.
    name: ServerStatementName,
    last_used: u64,
    /// Set while the Parse that prepares it is unanswered: the Sync segment it was sent in.
    unconfirmed_in: Option<u64>,
}

/// The statements one server connection has prepared (or has been sent a Parse for), by
/// definition. Travels with the server connection from client to client; when it does,
/// every Parse is answered, so every entry is confirmed.
#[derive(Debug, Default)]
pub(crate) struct ServerStatements {
    by_definition: HashMap<Arc<Statement>, ServerEntry, FastHash>,
    next_id: u64,
    clock: u64,
}

impl ServerStatements {
    /// The id under which the server has `statement`, marking it used. A statement whose Parse
    /// is unanswered counts only within the Sync `segment` it was sent in: if that Parse fails
    /// or is skipped, the server skips the rest of the segment too, but not later segments.
    pub(crate) fn touch(&mut self, statement: &Statement, segment: u64) -> Option<ServerStatementName> {
        self.clock += 1;
        let clock = self.clock;
        let entry = self.by_definition.get_mut(statement)?;
        if entry.unconfirmed_in.is_some_and(|sent_in| sent_in != segment) {
            return None;
        }
        entry.last_used = clock;
        Some(entry.name)
    }

    /// Records that a Parse of `statement` is being sent in Sync `segment`; returns its new id.
    /// An older unconfirmed entry for the same definition is forgotten (if its Parse succeeds
    /// after all, the server keeps an unused statement until the connection ends).
    pub(crate) fn insert(&mut self, statement: Arc<Statement>, segment: u64) -> u64 {
        self.next_id += 1;
        self.clock += 1;
        let id = self.next_id;
        let entry = ServerEntry {
            id,
            name: ServerStatementName::new(id),
            last_used: self.clock,
            unconfirmed_in: Some(segment),
        };
        self.by_definition.insert(statement, entry);
        id
    }

    /// The Parse that prepares `id` was answered with ParseComplete.
    pub(crate) fn confirm(&mut self, id: u64) {
        if let Some(entry) = self.by_definition.values_mut().find(|entry| entry.id == id) {
            entry.unconfirmed_in = None;
        }
    }

    /// Forgets the least recently used statement and returns its id.
    pub(crate) fn evict_least_recently_used(&mut self) -> Option<u64> {
        let victim = self.by_definition.iter().min_by_key(|(_, entry)| entry.last_used).map(|(s, _)| s.clone())?;
        self.by_definition.remove(&victim).map(|entry| entry.id)
    }

    /// Forgets the statement with `id` (its Parse was skipped or failed).
    pub(crate) fn remove_id(&mut self, id: u64) {
        self.by_definition.retain(|_, entry| entry.id != id);
    }

    pub(crate) fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.by_definition.values().map(|entry| entry.id)
    }

    pub(crate) fn contains_id(&self, id: u64) -> bool {
        self.by_definition.values().any(|entry| entry.id == id)
    }

    pub(crate) fn clear(&mut self) {
        self.by_definition.clear();
    }

    pub(crate) fn len(&self) -> usize {
        self.by_definition.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_are_formatted_without_allocation() {
        assert_eq!(ServerStatementName::new(0).as_str(), "PGHA_0");
        assert_eq!(ServerStatementName::new(42).as_str(), "PGHA_42");
        assert_eq!(ServerStatementName::new(u64::MAX).as_str(), "PGHA_18446744073709551615");
    }

    #[test]
    fn same_definition_is_the_same_statement_on_a_server() {
        let mut server = ServerStatements::default();
        let a = Arc::new(Statement::new(b"select 1\0\0\0"));
        let b = Statement::new(b"select 1\0\0\0");
        let id = server.insert(a, 0);
        assert_eq!(server.touch(&b, 0), Some(ServerStatementName::new(id)));
        assert_eq!(server.touch(&Statement::new(b"select 2\0\0\0"), 0), None);
        // Same text, different parameter types: a different statement.
        assert_eq!(server.touch(&Statement::new(b"select $1\0\0\x01\0\0\0\x17"), 0), None);
        // Unconfirmed: not relied on from a later Sync segment; confirmed: from any.
        assert_eq!(server.touch(&b, 1), None);
        server.confirm(id);
        assert_eq!(server.touch(&b, 1), Some(ServerStatementName::new(id)));
    }

    #[test]
    fn eviction_takes_the_least_recently_used() {
        let mut server = ServerStatements::default();
        let one = Arc::new(Statement::new(b"one\0\0\0"));
        let two = Arc::new(Statement::new(b"two\0\0\0"));
        let id_one = server.insert(one.clone(), 0);
        let id_two = server.insert(two, 0);
        server.touch(&one, 0);
        assert_eq!(server.evict_least_recently_used(), Some(id_two));
        assert_eq!(server.evict_least_recently_used(), Some(id_one));
        assert_eq!(server.evict_least_recently_used(), None);
    }

    #[test]
    fn client_rebinding_and_undo() {
        let mut client = ClientStatements::default();
        let first = client.bind(b"s1", b"select 1\0\0\0");
        let again = client.bind(b"s1", b"select 1\0\0\0");
        client.unbind(first.clone());
        assert!(Arc::ptr_eq(client.get(b"s1").unwrap(), &again.statement), "same text, still a later binding");
        client.unbind(again);
        let other = client.bind(b"s1", b"select 2\0\0\0");
        client.unbind(first.clone());
        assert!(Arc::ptr_eq(client.get(b"s1").unwrap(), &other.statement), "a newer binding survives");
        client.unbind(other);
        assert!(Arc::ptr_eq(client.get(b"s1").unwrap(), &first.statement), "undo brings back the old meaning");
        client.unbind(first.clone());
        assert!(client.get(b"s1").is_none());
        client.restore(first.clone());
        assert!(client.get(b"s1").is_some());
        assert_eq!(client.len(), 1);
    }
}
