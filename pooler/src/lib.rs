//! The pgha pooler: PgBouncer-style connection pooling in session and transaction modes, sending
//! read-write traffic to the primary and read-only traffic to healthy standbys.
//!
//! Built so far: `config` (pooler.toml, PgBouncer's setting names), `protocol` (v3 wire framing
//! and the messages the pooler reads or writes, no sockets) and `session` (the per-client state
//! machine for transaction pooling and prepared statements, data in and actions out, no
//! sockets). The I/O loops, pools, routing and the admin console come next.

pub mod admin;
pub mod auth;
pub mod config;
#[doc(hidden)]
pub mod fuzz;
pub mod protocol;
pub mod session;
pub mod tls;
