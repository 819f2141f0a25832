//! Child processes that cannot outlive their test: each runs in its own process group, dies with
//! the test process (PR_SET_PDEATHSIG), and is killed as a whole group when its handle is dropped,
//! also while a test panics. Output goes to a log file that is printed when a test fails.

use anyhow::{bail, Context};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A running child process (and everything it forks into its process group).
pub struct ManagedProcess {
    name: String,
    child: Child,
    exited: Option<ExitStatus>,
    log_path: PathBuf,
}

impl ManagedProcess {
    /// Spawns `cmd` in a new process group with stdout and stderr appended to `log_path`.
    pub fn spawn(name: &str, mut cmd: Command, log_path: &Path) -> anyhow::Result<Self> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("{name}: opening log {}", log_path.display()))?;
        let log2 = log.try_clone().context("duplicating the log file handle")?;
        cmd.stdin(Stdio::null()).stdout(log).stderr(log2).process_group(0);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
        // system calls (prctl, getppid).
        unsafe {
            cmd.pre_exec(move || {
                // Runs after any uid change (which would clear the setting), so it sticks.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    // The test process died between fork and prctl.
                    return Err(std::io::Error::other("parent exited"));
                }
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("{name}: starting {:?}", cmd.get_program()))?;
        Ok(ManagedProcess { name: name.to_string(), child, exited: None, log_path: log_path.to_path_buf() })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// The process group id: the same number as the leader's pid.
    pub fn pgid(&self) -> Pid {
        self.pid()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The last `max_bytes` of the log.
    pub fn log_tail(&self, max_bytes: u64) -> String {
        tail(&self.log_path, max_bytes)
    }

    /// Whether the group leader is still running (not exited, not a zombie).
    pub fn is_running(&mut self) -> bool {
        if self.exited.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.exited = Some(status);
                false
            }
            Ok(None) => true,
            Err(_) => false,
        }
    }

    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.is_running();
        self.exited
    }

    /// Sends `sig` to the group leader only.
    pub fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        kill(self.pid(), sig).with_context(|| format!("{}: sending {sig}", self.name))
    }

    /// Sends `sig` to every process of the group (e.g. SIGSTOP to hang a whole postmaster).
    pub fn signal_group(&self, sig: Signal) -> anyhow::Result<()> {
        killpg(self.pgid(), sig).with_context(|| format!("{}: sending {sig} to the group", self.name))
    }

    /// Waits up to `timeout` for the leader to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("{} did not exit within {timeout:?}; log tail:\n{}", self.name, self.log_tail(4000));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `sig` and waits up to `timeout` for the leader to exit; kills the group either way.
    pub async fn stop(&mut self, sig: Signal, timeout: Duration) -> anyhow::Result<ExitStatus> {
        if self.is_running() {
            self.signal(sig)?;
        }
        let result = self.wait_exit(timeout).await;
        self.kill_group();
        result
    }

    /// kill -9 of the whole group, reaps the leader, and waits (up to 10 s) until no process of the
    /// group is left running. The leader exits first; its children (a postmaster's backends, which
    /// still hold the shared memory segment) may take a moment longer, and a restart in that moment
    /// fails with "pre-existing shared memory block is still in use".
    pub fn kill_group(&mut self) {
        let _ = killpg(self.pgid(), Signal::SIGCONT);
        let _ = killpg(self.pgid(), Signal::SIGKILL);
        if self.exited.is_none() {
            if let Ok(status) = self.child.wait() {
                self.exited = Some(status);
            }
        }
        let pgid = [self.pgid().as_raw()];
        let deadline = Instant::now() + Duration::from_secs(10);
        while !live_processes_in_groups(&pgid).is_empty() && Instant::now() < deadline {
            let _ = killpg(self.pgid(), Signal::SIGKILL);
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        self.kill_group();
        if std::thread::panicking() {
            eprintln!(
                "----- {} log ({}), last 8 KiB -----\n{}\n----- end of {} log -----",
                self.name,
                self.log_path.display(),
                self.log_tail(8192),
                self.name
            );
        }
    }
}

fn tail(path: &Path, max_bytes: u64) -> String {
    let Ok(mut f) = File::open(path) else { return String::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max_bytes)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Processes (pid, command line) that are alive (not zombies) in any of the given process groups.
pub fn live_processes_in_groups(pgids: &[i32]) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return found };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // Fields after the parenthesised command name: state ppid pgrp ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let (Some(state), Some(pgrp)) = (fields.first(), fields.get(2).and_then(|p| p.parse::<i32>().ok())) else {
            continue;
        };
        if *state != "Z" && *state != "X" && pgids.contains(&pgrp) {
            let cmdline = std::fs::read(entry.path().join("cmdline"))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " ").trim().to_string())
                .unwrap_or_default();
            found.push((pid, cmdline));
        }
    }
    found
}

/// The state letter of `pid` in /proc (R, S, T, Z, ...), None if it is gone.
fn state_of(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().next()?.chars().next()
}

/// Waits (blocking, at most `timeout`) until `pid` is stopped by a signal, or gone.
pub fn wait_until_stopped(pid: i32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !matches!(state_of(pid), None | Some('T') | Some('Z') | Some('X')) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The processes whose parent is `pid`.
pub fn children_of(pid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter(|&child| {
            std::fs::read_to_string(format!("/proc/{child}/stat")).ok().is_some_and(|stat| {
                // After the command name: state, then the parent's pid.
                stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

/// Waits (blocking, at most `timeout`) until none of `pids` is alive (gone or a zombie: a
/// zombie holds no memory, shared or not).
pub fn wait_gone(pids: &[i32], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while pids.iter().any(|&pid| !matches!(state_of(pid), None | Some('Z') | Some('X'))) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits up to `timeout` for every process of the given groups to be gone, else fails naming them.
pub async fn assert_no_survivors(pgids: &[i32], timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let alive = live_processes_in_groups(pgids);
        if alive.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("processes survived their test: {alive:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
