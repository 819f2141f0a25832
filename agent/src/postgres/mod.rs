//! Control of the local PostgreSQL through its own programs and SQL.

pub mod archiving;
pub mod binaries;
pub mod control;
pub mod os_user;
