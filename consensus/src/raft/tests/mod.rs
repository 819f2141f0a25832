//! Tests of the Raft log store (openraft's conformance suite, persistence, crash safety) and of the
//! TCP transport (a 3-member cluster on 127.0.0.1).

mod cluster;
mod log_store;
