//! The HA decision engine: a pure function from what a node sees (cluster view, local
//! PostgreSQL state, configuration, time) to what it should do and one sentence saying why.
//! No I/O here: the runtime gathers the inputs, performs the actions, and logs the reason.

mod decide;
mod lsn;
pub mod member_slots;
pub mod permanent_slots;
pub mod sync;
mod view;

pub use decide::{decide, drains_before_demote, Action, Decision};
pub use lsn::Lsn;
pub use view::is_named;
pub use view::{
    ClusterView, FailoverRequest, HaConfig, LocalState, MemberView, PeerProbe, PgState, Role, ScheduledAt, StreamPoint,
    SyncKey,
};

#[cfg(test)]
mod tests;
