//! The pgha pooler: PgBouncer-style connection pooling in session and transaction modes, sending
//! read-write traffic to the primary and read-only traffic to healthy standbys.
//!
//! Built so far: `config` (pooler.toml, PgBouncer's setting names). The data path, pools and the
//! admin console come next.

pub mod config;
