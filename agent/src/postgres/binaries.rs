//! Finding PostgreSQL's server programs (initdb, pg_ctl, postgres, pg_basebackup, pg_rewind).
//!
//! Debian keeps them in `/usr/lib/postgresql/<major>/bin`, off PATH; other systems put them on
//! PATH. An explicit directory (config `postgresql.bin_dir` or `PGHA_PG_BIN_DIR`) always wins.

use std::path::{Path, PathBuf};

/// The PostgreSQL major version pgha manages by default.
pub const DEFAULT_MAJOR: u32 = 15;

/// Where the programs were looked for, for the error message.
#[derive(Debug, thiserror::Error)]
#[error(
    "PostgreSQL {major} server programs (initdb, postgres, pg_ctl) not found; looked in: {searched}. \
     Install them (Debian: apt-get install -y postgresql-{major}) or set postgresql.bin_dir / PGHA_PG_BIN_DIR"
)]
pub struct NotFound {
    pub major: u32,
    pub searched: String,
}

/// A directory holding initdb, postgres, pg_ctl and friends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinDir(PathBuf);

impl BinDir {
    /// Uses `explicit` if given, else `PGHA_PG_BIN_DIR`, else Debian's versioned directory,
    /// else the directory of `initdb` on PATH.
    pub fn locate(explicit: Option<&Path>, major: u32) -> Result<BinDir, NotFound> {
        let mut searched = Vec::new();
        let env = std::env::var_os("PGHA_PG_BIN_DIR").map(PathBuf::from);
        let debian = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
        let candidates =
            explicit.map(Path::to_path_buf).into_iter().chain(env).chain(std::iter::once(debian)).chain(path_dirs());
        for dir in candidates {
            if dir.join("initdb").is_file() && dir.join("postgres").is_file() {
                return Ok(BinDir(dir));
            }
            searched.push(dir.display().to_string());
            if explicit.is_some() && searched.len() == 1 {
                // An explicit directory that lacks the programs is an error, not a hint.
                break;
            }
        }
        Err(NotFound { major, searched: searched.join(", ") })
    }

    pub fn dir(&self) -> &Path {
        &self.0
    }

    /// Full path of one program, e.g. `bin.program("pg_basebackup")`.
    pub fn program(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

fn path_dirs() -> Vec<PathBuf> {
    std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_dir_without_programs_is_an_error_naming_it() {
        let err = BinDir::locate(Some(Path::new("/nonexistent/pg")), 15).unwrap_err();
        assert_eq!(err.searched, "/nonexistent/pg");
        assert!(err.to_string().contains("apt-get install -y postgresql-15"));
    }
}
