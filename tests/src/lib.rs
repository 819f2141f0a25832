//! The pgha test harness: real PostgreSQL 15, etcd and `pgha` processes on 127.0.0.1 with free
//! ports and scratch dirs, a fault-injecting TCP relay, and waits with clear failure messages.
//! Every process is killed (as a whole process group) and every directory removed when its
//! handle is dropped, also when the test panics; PR_SET_PDEATHSIG covers a killed test process.

pub mod agent_checks;
pub mod agent_scenarios;
pub mod backup;
pub mod cluster;
pub mod dcs_suite;
pub mod etcd;
pub mod haproxy;
pub mod patroni;
pub mod pgha;
pub mod pki;
pub mod pooler;
pub mod ports;
pub mod postgres;
pub mod process;
pub mod raft;
pub mod relay;
pub mod scratch;
pub mod wait;

pub use etcd::EtcdCluster;
pub use pgha::{pgha_bin, run_pgha, PghaProcess};
pub use postgres::{PgInstance, PgOptions, StopMode};
pub use raft::{RaftGroup, RaftTimingMs};
pub use relay::{Direction, FaultRelay};
pub use wait::wait_for;
