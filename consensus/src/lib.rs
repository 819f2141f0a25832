//! The distributed configuration store (DCS) that pgha agents agree through.
//!
//! Today this crate owns the one thing every pgha crate shares: reading TOML config files with
//! errors that name the file, the key and what is allowed (`config_file`). The cluster-state types,
//! the `Dcs` trait and its etcd and built-in Raft backends land here next.

pub mod config_file;
pub mod dcs;
pub mod etcd;
pub mod kv;
