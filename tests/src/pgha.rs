//! The real `pgha` binary run as a child process, with a generated config file in a scratch dir:
//! agents and poolers in integration tests, or one-shot commands whose output a test checks.

use crate::process::ManagedProcess;
use crate::scratch::ScratchDir;
use anyhow::Context;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

/// Path of the built `pgha` binary: `PGHA_BIN`, else next to the test binary's `deps/` dir.
pub fn pgha_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("PGHA_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("locating the test binary")?;
    let profile_dir =
        exe.parent().and_then(|deps| deps.parent()).context("test binary is not in a cargo target dir")?;
    let bin = profile_dir.join("pgha");
    anyhow::ensure!(bin.is_file(), "{} not found: build it first (cargo build -p pgha) or set PGHA_BIN", bin.display());
    Ok(bin)
}

/// A long-running pgha process (agent, pooler, demo) owned by a test.
pub struct PghaProcess {
    process: ManagedProcess,
    config: PathBuf,
    _dir: ScratchDir,
}

impl PghaProcess {
    /// Writes `config_toml` to `<name>.toml` and runs `pgha <args...> --config <file>`.
    pub fn start(name: &str, args: &[&str], config_toml: &str) -> anyhow::Result<PghaProcess> {
        let dir = ScratchDir::new(&format!("pgha-{name}"), None)?;
        let config = dir.join(&format!("{name}.toml"));
        std::fs::write(&config, config_toml).context("writing the pgha config")?;
        let mut cmd = Command::new(pgha_bin()?);
        cmd.args(args).arg("--config").arg(&config);
        let process = ManagedProcess::spawn(&format!("pgha {name}"), cmd, &dir.join(&format!("{name}.log")))?;
        Ok(PghaProcess { process, config, _dir: dir })
    }

    pub fn config_path(&self) -> &PathBuf {
        &self.config
    }
    pub fn process(&mut self) -> &mut ManagedProcess {
        &mut self.process
    }
    pub fn log(&self) -> String {
        self.process.log()
    }
    pub fn pgid(&self) -> i32 {
        self.process.pgid().as_raw()
    }
}

/// Runs `pgha <args>` to completion (bounded by `timeout`) and returns its output.
pub async fn run_pgha(args: &[&str], timeout: Duration) -> anyhow::Result<Output> {
    let child = tokio::process::Command::new(pgha_bin()?).args(args).kill_on_drop(true).output();
    tokio::time::timeout(timeout, child)
        .await
        .with_context(|| format!("pgha {args:?} did not finish within {timeout:?}"))?
        .context("running pgha")
}
