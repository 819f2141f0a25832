//! Free TCP ports on 127.0.0.1, picked at run time.
//!
//! The kernel hands out an unused ephemeral port for a bind to port 0; the socket is closed again
//! and the number handed to the process that will listen on it. Ports handed out by this test
//! process are remembered so that two servers of one test never get the same number.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    for _ in 0..100 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port();
        let mut seen = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
        if seen.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    anyhow::bail!("could not find a free port on 127.0.0.1")
}
