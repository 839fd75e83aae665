//! The loader thread that a [`Follower`](crate::cache::Follower) keeps beside the link cache (the link replica's,
//! the IP blocklist's): started once, told things over a channel, stopped and joined once.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

use parking_lot::Mutex;

pub(crate) struct Loader<C> {
    tx: Mutex<Option<Sender<C>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl<C: Send + 'static> Loader<C> {
    pub(crate) fn new() -> Self {
        Self {
            tx: Mutex::new(None),
            thread: Mutex::new(None),
        }
    }

    /// Runs `run` on a thread called `name`, with the receiving end of the channel, unless one runs already.
    pub(crate) fn start(&self, name: &str, run: impl FnOnce(Receiver<C>) + Send + 'static) {
        let mut thread = self.thread.lock();
        if thread.is_some() {
            return;
        }
        let (tx, rx) = mpsc::channel();
        *thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || run(rx))
            .ok();
        *self.tx.lock() = Some(tx);
    }

    /// Tells the thread `cmd`; nothing when it is not running.
    pub(crate) fn send(&self, cmd: C) {
        if let Some(tx) = &*self.tx.lock() {
            let _ = tx.send(cmd);
        }
    }

    /// Raises `stop` (the flag the thread's loop reads), closes the channel and waits for the thread. Idempotent.
    pub(crate) fn stop(&self, stop: &AtomicBool) {
        stop.store(true, Ordering::Release);
        drop(self.tx.lock().take());
        if let Some(h) = self.thread.lock().take() {
            let _ = h.join();
        }
    }
}
