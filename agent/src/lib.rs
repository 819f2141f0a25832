//! The pgha agent: one per database node. It owns the local PostgreSQL (bootstrap, replicas,
//! promote, demote, rewind) and, with its peers, keeps exactly one primary through the DCS.
//!
//! Built so far: `postgres` (finding PostgreSQL's programs, the unprivileged OS user) and
//! `config` (agent.toml). The HA loop, the decision engine and the REST API come next.

pub mod config;
pub mod ha;
pub mod postgres;
pub mod status;
