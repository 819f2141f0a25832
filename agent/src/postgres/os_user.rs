//! The unprivileged OS user that runs PostgreSQL when pgha itself runs as root.
//!
//! PostgreSQL refuses to run as root. When pgha (agent, demo or the test harness) is root, it runs
//! initdb, pg_ctl and postgres as the user `pgha`, creating it (a system user without a login
//! shell) if it is missing. When pgha is not root, PostgreSQL simply runs as the current user.

use nix::unistd::{Gid, Uid, User};
use std::path::Path;
use std::process::Command;

/// Name of the OS user created for PostgreSQL when pgha runs as root.
pub const DEFAULT_USER: &str = "pgha";

/// Who PostgreSQL's processes run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: Uid,
    pub gid: Gid,
}

#[derive(Debug, thiserror::Error)]
pub enum OsUserError {
    #[error("looking up OS user {user}: {source}")]
    Lookup { user: String, source: nix::Error },
    #[error("could not create the OS user {user} for PostgreSQL (useradd: {detail}); create it by hand: useradd --system --shell /usr/sbin/nologin {user}")]
    Create { user: String, detail: String },
    #[error("could not hand {path} to the PostgreSQL OS user: {source}")]
    Chown { path: String, source: nix::Error },
}

impl RunAs {
    /// The current user, when not root; otherwise `user` (created if missing).
    pub fn for_postgres(user: &str) -> Result<Option<RunAs>, OsUserError> {
        if !Uid::effective().is_root() {
            return Ok(None);
        }
        ensure_user(user).map(Some)
    }

    /// Gives `path` (not recursively) to this user.
    pub fn chown(&self, path: &Path) -> Result<(), OsUserError> {
        nix::unistd::chown(path, Some(self.uid), Some(self.gid))
            .map_err(|source| OsUserError::Chown { path: path.display().to_string(), source })
    }
}

/// Looks `user` up, creating it as a system user if it does not exist.
pub fn ensure_user(user: &str) -> Result<RunAs, OsUserError> {
    // Several processes (parallel tests) may race to create the user: useradd then fails because
    // the user exists or /etc/passwd is locked; look again after each attempt.
    let mut last_error = String::new();
    for attempt in 0..20 {
        if let Some(u) = lookup(user)? {
            return Ok(RunAs { uid: u.uid, gid: u.gid });
        }
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        match Command::new("useradd")
            .args(["--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", user])
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => last_error = String::from_utf8_lossy(&out.stderr).trim().to_string(),
            Err(e) => last_error = e.to_string(),
        }
    }
    match lookup(user)? {
        Some(u) => Ok(RunAs { uid: u.uid, gid: u.gid }),
        None => Err(OsUserError::Create { user: user.to_string(), detail: last_error }),
    }
}

fn lookup(user: &str) -> Result<Option<User>, OsUserError> {
    User::from_name(user).map_err(|source| OsUserError::Lookup { user: user.to_string(), source })
}
