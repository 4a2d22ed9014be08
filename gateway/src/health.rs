//! Which long-lived workers are down: failed and waiting for their restart. The supervisor
//! marks them, `/healthz` reports them (503 naming each one).

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
