//! The `pgbouncer` admin console: PgBouncer's commands (parsed in `command`), typed SHOW rows
//! with PgBouncer's column names (`rows`), their wire encoding (`resultset`), the boundary to
//! the pooler (`backend::AdminBackend`) and the session loop for an authenticated admin or
//! stats user (`session`). No sockets of its own.

pub mod backend;
pub mod command;
pub mod config_rows;
pub mod resultset;
pub mod rows;
pub mod session;

pub use backend::{AdminBackend, AdminError};
pub use command::{Command, ParseError, Show, ShutdownMode};
pub use session::{serve_admin, Access, SessionError, SessionOptions, ADMIN_DATABASE};
