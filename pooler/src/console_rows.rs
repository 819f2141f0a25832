//! SHOW CLIENTS and SHOW SERVERS rows from the connection registry's entries, in PgBouncer's
//! terms: `ptr`/`link` as hex ids, client states active/waiting, server states active/idle/tested,
//! close_needed for server connections older than their pool's last RECONNECT or KILL, or to a
//! server that left the database's list.

use crate::admin::rows::SocketRow;
use crate::connections::{ClientEntry, ClientState, ServerEntry, ServerState};
use crate::pool::{CloseMark, PoolKey};
use std::collections::{HashMap, HashSet};

/// PgBouncer prints a socket's address as `ptr`; ours is its id in the same hex form.
fn ptr(id: u64) -> String {
    if id == 0 {
        String::new()
    } else {
        format!("{id:#x}")
    }
}

/// Whether the server connection must close when released (opened before its pool's last
/// RECONNECT, KILL or PAUSE drain, to a server that left the database's list, or its pool is
/// gone).
pub fn close_needed(server: &ServerEntry, marks: &HashMap<PoolKey, CloseMark>) -> bool {
    marks.get(&server.key).is_none_or(|mark| mark.closes(server.generation, &server.server))
}

pub fn client(c: &ClientEntry) -> SocketRow {
    let wait = c.waiting_for();
    let endpoints = c.endpoints();
    SocketRow {
        kind: 'C',
        user: c.user.to_string(),
        database: c.database.to_string(),
        replication: "none".into(),
        state: match c.state() {
            ClientState::Active => "active",
            ClientState::Waiting => "waiting",
        }
        .into(),
        addr: endpoints.addr(),
        port: endpoints.port(),
        local_addr: endpoints.local_addr(),
        local_port: endpoints.local_port(),
        connect_time: c.connect_time(),
        request_time: c.request_time(),
        wait: wait.as_secs() as u32,
        wait_us: wait.subsec_micros(),
        close_needed: false,
        ptr: ptr(c.id),
        link: ptr(c.server()),
        remote_pid: 0,
        tls: c.tls.to_string(),
        application_name: c.application_name.to_string(),
        prepared_statements: c.prepared_statements(),
        id: c.id,
    }
}

/// `used`: the ids of idle connections past server_check_delay ([`crate::pool::Pool::used_servers`]).
pub fn server(s: &ServerEntry, marks: &HashMap<PoolKey, CloseMark>, used: &HashSet<u64>) -> SocketRow {
    SocketRow {
        kind: 'S',
        user: s.key.user.to_string(),
        database: s.key.database.to_string(),
        replication: "none".into(),
        state: match s.state() {
            ServerState::Active => "active",
            ServerState::Idle if used.contains(&s.id) => "used",
            ServerState::Idle => "idle",
            ServerState::Tested => "tested",
            ServerState::New => "new",
        }
        .into(),
        addr: s.endpoints.addr(),
        port: s.endpoints.port(),
        local_addr: s.endpoints.local_addr(),
        local_port: s.endpoints.local_port(),
        connect_time: s.connect_time,
        request_time: s.request_time(),
        wait: 0,
        wait_us: 0,
        close_needed: close_needed(s, marks),
        ptr: ptr(s.id),
        link: if s.state() == ServerState::Active { ptr(s.client()) } else { String::new() },
        remote_pid: s.remote_pid,
        tls: s.tls.clone(),
        application_name: String::new(),
        prepared_statements: s.prepared_statements(),
        id: s.id,
    }
}
