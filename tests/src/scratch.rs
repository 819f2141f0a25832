//! Scratch directories for one test: created under the system temp dir, handed to the
//! PostgreSQL OS user when running as root, removed when dropped (kept if PGHA_KEEP_TEST_DIRS is set).

use agent::postgres::os_user::RunAs;
use anyhow::Context;
use std::path::{Path, PathBuf};

pub struct ScratchDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl ScratchDir {
    /// A new empty directory named after `label`, owned by `owner` when given.
    pub fn new(label: &str, owner: Option<RunAs>) -> anyhow::Result<ScratchDir> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("pgha-test-{label}-"))
            .tempdir()
            .context("creating a scratch directory")?;
        if let Some(owner) = owner {
            owner.chown(dir.path())?;
        }
        let path = dir.path().to_path_buf();
        Ok(ScratchDir { dir: Some(dir), path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if std::env::var_os("PGHA_KEEP_TEST_DIRS").is_some() {
            if let Some(d) = self.dir.take() {
                eprintln!("keeping {}", d.keep().display());
            }
        }
    }
}
