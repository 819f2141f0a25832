//! The pooler's io_uring relaying thread: started with the pooler (`runtime::run`), it enters
//! the tokio runtime (so the tokio sockets, tasks and channels a relay touches work there too,
//! woken across threads) and runs the relays handed to it (`spawn`) until the pooler stops.

use super::executor::{self, Spawner};
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

pub struct Engine {
    spawner: Spawner,
    stop: Arc<tokio::sync::Notify>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Engine {
    /// Starts the thread; fails if the kernel refuses the ring (io_uring disabled, or older
    /// than 6.1) or the thread cannot start.
    pub fn start(runtime: tokio::runtime::Handle) -> io::Result<Engine> {
        let stop = Arc::new(tokio::sync::Notify::new());
        let (tx, rx) = std::sync::mpsc::channel();
        let stopped = stop.clone();
        let thread = std::thread::Builder::new().name("pgha-ring".into()).spawn(move || {
            let _entered = runtime.enter();
            let started = tx.clone();
            let ran = executor::block_on(async move {
                let _ = started.send(Spawner::current());
                stopped.notified().await;
            });
            if let Err(e) = ran {
                let _ = tx.send(Err(e));
            }
        })?;
        let spawner = match rx.recv() {
            Ok(spawner) => spawner?,
            Err(_) => return Err(io::Error::other("the io_uring relaying thread stopped at its start")),
        };
        Ok(Engine { spawner, stop, thread: Mutex::new(Some(thread)) })
    }

    /// Runs `task` on the ring thread.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.spawner.spawn(task);
    }

    /// Stops the thread: the relays still on it are dropped there (their sockets closed).
    pub fn stop(&self) {
        self.stop.notify_one();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop.notify_one();
    }
}
