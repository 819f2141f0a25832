//! Patroni's `postgresql.callbacks`: a program run as `<program> <event> <role> <scope>` when the
//! agent starts, stops, restarts or reloads PostgreSQL, or when it changes role (promoted:
//! `primary`; demoted: `replica`). Runs each in the background as the PostgreSQL OS user, and, as
//! Patroni does, kills a callback still running when the next one fires. Owns only that.

use crate::config::CallbacksConfig;
use crate::postgres::os_user::RunAs;
use std::process::Stdio;

/// What happened to PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Start,
    Stop,
    Restart,
    Reload,
    RoleChange,
}

impl Event {
    /// The event's name, as the program's first argument (Patroni's callback names).
    pub fn name(self) -> &'static str {
        match self {
            Event::Start => "on_start",
            Event::Stop => "on_stop",
            Event::Restart => "on_restart",
            Event::Reload => "on_reload",
            Event::RoleChange => "on_role_change",
        }
    }
}

/// The callbacks of one agent, and the one running now.
pub struct Callbacks {
    config: CallbacksConfig,
    scope: String,
    run_as: Option<RunAs>,
    running: Option<(Event, tokio::process::Child)>,
}

impl Callbacks {
    pub fn new(config: CallbacksConfig, scope: &str, run_as: Option<RunAs>) -> Callbacks {
        Callbacks { config, scope: scope.to_owned(), run_as, running: None }
    }

    fn program(&self, event: Event) -> Option<&std::path::Path> {
        match event {
            Event::Start => self.config.on_start.as_deref(),
            Event::Stop => self.config.on_stop.as_deref(),
            Event::Restart => self.config.on_restart.as_deref(),
            Event::Reload => self.config.on_reload.as_deref(),
            Event::RoleChange => self.config.on_role_change.as_deref(),
        }
    }

    /// At the agent's exit: waits up to `limit` for the running callback (on_stop, usually)
    /// rather than leave it to be killed with the agent's process group.
    pub async fn finish(&mut self, limit: std::time::Duration) {
        if let Some((event, mut child)) = self.running.take() {
            if tokio::time::timeout(limit, child.wait()).await.is_err() {
                tracing::warn!(
                    callback = event.name(),
                    "callback still running at exit after {limit:?}; left to finish"
                );
            }
        }
    }

    /// Starts the program for `event` with `role` (`primary` or `replica`), if one is set.
    pub fn fire(&mut self, event: Event, role: &str) {
        let Some(program) = self.program(event).map(std::path::Path::to_path_buf) else { return };
        if let Some((previous, mut child)) = self.running.take() {
            if matches!(child.try_wait(), Ok(None)) {
                tracing::warn!(
                    callback = previous.name(),
                    "callback still running when {} fired: killed, as Patroni does",
                    event.name()
                );
                let _ = child.start_kill();
            }
        }
        let mut command = tokio::process::Command::new(&program);
        command.args([event.name(), role, self.scope.as_str()]).stdin(Stdio::null());
        if let Some(owner) = self.run_as {
            command.uid(owner.uid.as_raw()).gid(owner.gid.as_raw());
        }
        match command.spawn() {
            Ok(child) => {
                tracing::info!(callback = event.name(), role, program = %program.display(), "callback started");
                self.running = Some((event, child));
            }
            Err(e) => tracing::warn!(
                callback = event.name(),
                program = %program.display(),
                "callback could not be started: {e}"
            ),
        }
    }
}
