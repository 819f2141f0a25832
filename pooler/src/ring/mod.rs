//! The io_uring engine (relay_engine = io_uring, the default): the thread that relays logged-in
//! clients on plain sockets sleeps in `io_uring_enter` instead of epoll. On this machine a relay with no work of its own spends
//! 0.74–0.82 × PgBouncer's CPU per transaction on such a ring and 0.88–0.95 × on epoll
//! (docs/pooler.md, "The floor of a relay on each engine"). `engine` starts that thread,
//! `executor` runs its tasks and the ring, `provided` keeps the buffers receives fill, `socket`
//! reads and writes a stream socket through them, `homed` lets one sit in values other
//! threads hold (`crate::stream::Stream::Ring`).

pub mod engine;
pub mod executor;
pub mod homed;
mod provided;
pub mod socket;
