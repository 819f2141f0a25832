//! The distributed configuration store (DCS) that pgha agents agree through.
//!
//! It owns the cluster state in Patroni's key layout and JSON (`cluster`), the key-value
//! primitives every backend offers (`kv`), Patroni's semantics over them (`dcs`), the etcd backend
//! (`etcd`), and the replicated key space with leases that the built-in Raft backend applies
//! (`keyspace`, pure: no clock, no I/O). It also owns reading TOML config files with errors that
//! name the file, the key and what is allowed (`config_file`), which every pgha crate shares.

pub mod cluster;
pub mod config_file;
pub mod dcs;
pub mod etcd;
pub mod keyspace;
pub mod kv;
pub mod raft;
pub mod raft_member;
#[cfg(test)]
mod raft_sim;
pub mod raft_store;
