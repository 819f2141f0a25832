//! The pgha pooler: PgBouncer-style connection pooling in session and transaction modes.
//!
//! Pure parts: `config` (pooler.toml, PgBouncer's setting names), `protocol` (v3 wire framing
//! and messages) and `session` (the per-client state machine for transaction pooling and
//! prepared statements). I/O parts: `listener` accepts, `client` runs a client's startup and
//! relay loop, `pool` lends `server` connections, `topology` says where each database lives,
//! `cancel` routes cancel requests, `stats` counts, `shutdown` drains, `clock` keeps the timers
//! off the relaying runtime, `runtime` ties them up.

pub mod admin;
pub mod auth;
pub mod buffers;
pub mod cancel;
pub mod client;
pub mod clock;
pub mod cluster_feed;
pub mod config;
pub mod connections;
pub mod console;
#[doc(hidden)]
pub mod fuzz;
pub mod listener;
pub mod metrics;
pub mod pool;
pub mod protocol;
pub mod ring;
pub mod runtime;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod stats;
pub mod stream;
pub mod takeover;
pub mod tcp;
pub mod tick;
pub mod tls;
pub mod topology;
