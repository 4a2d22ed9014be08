//! Which long-lived workers are down: failed and waiting for their restart. The supervisor
//! marks them, `/healthz` reports them (503 naming each one). Also what a worker reports
//! when it ends ([`WorkerExit`]) and the text of a panic: the vocabulary shared by the workers
//! and the supervisor, at the bottom so that workers need not import the supervisor.

use std::collections::BTreeSet;
use std::sync::Mutex;

/// The set of workers that are down, by name (e.g. `relay <canister id>`).
#[derive(Debug, Default)]
pub struct Health {
    down: Mutex<BTreeSet<String>>,
}

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.down.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `worker` failed and is not running.
    pub fn set_down(&self, worker: &str) {
        self.lock().insert(worker.to_string());
    }

    /// `worker` runs again.
    pub fn set_up(&self, worker: &str) {
        self.lock().remove(worker);
    }

    /// The workers that are down, sorted.
    pub fn down(&self) -> Vec<String> {
        self.lock().iter().cloned().collect()
    }
}

/// How a worker ended, when it did not panic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerExit {
    /// Its work is done (stop signal, drained queue, poller idle): not restarted.
    Done,
    /// It cannot go on: restarted like a panic.
    Failed(String),
}

/// Most bytes of a panic message kept in a log line.
const MAX_CAUSE_BYTES: usize = 2048;

/// The text of a panic payload (bounded: it may quote peer data).
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = if let Some(s) = panic.downcast_ref::<&str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.as_str()
    } else {
        "(a panic without a message)"
    };
    ic_ws_protocol::text::bounded(text, MAX_CAUSE_BYTES)
}
