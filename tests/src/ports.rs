//! Free TCP ports on 127.0.0.1, picked at run time.
//!
//! Ports come from below the kernel's ephemeral range (`ip_local_port_range`, usually from
//! 32768): a port taken from inside it with a bind to port 0 is free only until the process
//! that should listen on it binds it, and in between any outgoing connection of a test running
//! alongside (a pooler test opens hundreds) may get it as its local port, so the listener then
//! fails with "address in use". Below the range nothing is handed out by the kernel; each test
//! process starts at its own offset (from its pid) and checks that the port binds. Ports handed
//! out by this test process are remembered so that two servers of one test never get the
//! same number. Test processes running side by side (nextest runs each test in its own) also
//! claim each port in a shared directory (`/tmp/pgha-test-ports/<port>`, created exclusively and
//! holding the claimer's pid; a claim whose process is gone is taken over), so two of them never
//! get the same port while one of them has not bound it yet. If the range starts too low, a bind
//! to port 0 is the fallback.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;

/// The lowest port handed out.
const LOWEST: u32 = 10_000;

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next().and_then(|lo| lo.parse::<u32>().ok()))
        .unwrap_or(32_768);
    if ephemeral_start >= LOWEST + 1_000 {
        let span = ephemeral_start - LOWEST;
        let start = std::process::id().wrapping_mul(7_919) % span;
        for i in 0..span.min(2_000) {
            let port = (LOWEST + (start + i * 13) % span) as u16;
            if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err() {
                continue;
            }
            let mut seen = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
            if seen.get_or_insert_with(HashSet::new).contains(&port) || !claim(port) {
                continue;
            }
            seen.get_or_insert_with(HashSet::new).insert(port);
            return Ok(port);
        }
    }
    for _ in 0..100 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port();
        let mut seen = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
        if seen.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    anyhow::bail!("could not find a free port on 127.0.0.1")
}

/// Where test processes claim ports.
const CLAIMS: &str = "/tmp/pgha-test-ports";

/// Claims `port` for this process across test processes: false when a live process holds it.
fn claim(port: u16) -> bool {
    let dir = std::path::Path::new(CLAIMS);
    if std::fs::create_dir_all(dir).is_err() {
        // No shared directory: the bind check alone has to do.
        return true;
    }
    let path = dir.join(port.to_string());
    let me = std::process::id();
    for _ in 0..2 {
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut file) => {
                use std::io::Write;
                return file.write_all(me.to_string().as_bytes()).is_ok();
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let holder = std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse::<i32>().ok());
                match holder {
                    Some(pid) if pid as u32 == me => return true,
                    Some(pid) if std::path::Path::new(&format!("/proc/{pid}")).exists() => return false,
                    // The holder is gone (or the file is half written by a claimer right now:
                    // then the bind check and the other claimer's own check still stand).
                    Some(_) => {
                        let _ = std::fs::remove_file(&path);
                    }
                    None => return false,
                }
            }
            Err(_) => return true,
        }
    }
    false
}
