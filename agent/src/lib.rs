//! The pgha agent: one per database node. It owns the local PostgreSQL (bootstrap, replicas,
//! promote, demote, rewind) and, with its peers, keeps exactly one primary through the DCS.
//!
//! `ha` decides (pure), `runtime` gathers inputs and acts, `postgres` drives the local server,
//! `cluster_view` maps DCS keys to the engine's view, `history` the timeline switches to the
//! `history` key, `service` assembles a node from `config`.

pub mod api;
pub mod callbacks;
pub mod cluster_view;
pub mod config;
pub mod dynamic;
pub mod ha;
pub mod history;
pub mod postgres;
pub mod raft_dcs;
pub mod runtime;
pub mod service;
pub mod status;
