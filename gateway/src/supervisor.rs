//! The supervisor: owns every long-lived task of the gateway (the accept loop, the admin
//! server, each canister's relay and poller), their handles, restarts and shutdown.
//!
//! - **Spawning.** The accept loop and the admin server start with the gateway; a canister's
//!   relay when its hub is created and its poller when a client attaches while none runs (the
//!   hub asks with a [`Need`]; it spawns nothing itself).
//! - **Failures.** A worker that panics or ends with [`WorkerExit::Failed`] is logged with its
//!   cause, marked down in [`crate::health`] (`/healthz` answers 503 naming it) and restarted
//!   after a backoff (100 ms, doubling to 5 s; reset once a worker ran 30 s), counted in
//!   `ic_ws_gateway_worker_restarts_total{worker}`. A failed relay or poller also closes every
//!   client attached to its canister with 1012 (reconnect and resume): any of them may have
//!   had messages in the dead worker's hands (a batch being relayed, a page being delivered);
//!   resuming re-delivers what they have not verified and re-sends what the canister has not
//!   accepted, so nothing is lost. What is still in the relay queue survives the worker (the
//!   queue belongs to the hub) and goes to the restarted one.
//! - **Sessions** are not supervised here: one per connection, each catches its own panic
//!   (`crate::session::run`) so that it ends only that connection.
//! - **Shutdown.** [`Supervisor::wait_for`] lets `Gateway::shutdown` wait for the accept loop
//!   to stop and the relays to flush; [`Supervisor::stop`] aborts what is left. Nothing is
//!   restarted once its stop signal is set.

use crate::canister::CanisterApi;
use crate::health::{panic_message, WorkerExit};
use crate::hub::{Hub, Need, Shared};
use crate::outbox::CloseWith;
use futures_util::FutureExt;
use ic_ws_protocol::frames::close_code;
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// First restart delay of a failed worker.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest restart delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A worker that ran this long before failing starts its backoff over.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// How often a held restart (test hook `hold-restarts`) looks again.
const HOLD_POLL: Duration = Duration::from_millis(20);

/// The delay before the restart that follows `failures` consecutive failures.
pub fn backoff(failures: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1u32 << failures.min(10))
        .min(MAX_BACKOFF)
}

/// A supervised worker and what it needs to (re)start.
#[derive(Clone)]
enum Job {
    Accept,
    Admin,
    Relay(Arc<Hub>),
    Poller(Arc<Hub>),
}

impl Job {
    /// The `worker` label.
    fn kind(&self) -> &'static str {
        match self {
            Job::Accept => "accept",
            Job::Admin => "admin",
            Job::Relay(_) => "relay",
            Job::Poller(_) => "poller",
        }
    }

    /// The name in logs and `/healthz`.
    fn name(&self) -> String {
        match self {
            Job::Accept | Job::Admin => self.kind().to_string(),
            Job::Relay(hub) | Job::Poller(hub) => format!("{} {}", self.kind(), hub.canister),
        }
    }
}

/// Worker instances running or waiting for their restart, by kind (what shutdown waits for).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Running {
    /// The accept loop.
    pub accept: usize,
    /// The admin server.
    pub admin: usize,
    /// Relays.
    pub relays: usize,
    /// Pollers.
    pub pollers: usize,
}

impl Running {
    fn slot(&mut self, job: &Job) -> &mut usize {
        match job {
            Job::Accept => &mut self.accept,
            Job::Admin => &mut self.admin,
            Job::Relay(_) => &mut self.relays,
            Job::Poller(_) => &mut self.pollers,
        }
    }
}

/// The sockets the accept loop and the admin server serve; each (re)start gets a new handle
/// on the same socket, so a restart keeps the port and the connections waiting in its backlog.
pub struct Listeners {
    /// Client WebSockets.
    pub client: std::net::TcpListener,
    /// The admin server, if enabled.
    pub admin: Option<std::net::TcpListener>,
    /// TLS for the client listener.
    pub tls: Option<crate::tls::Acceptor>,
}

/// A handle on the supervisor task.
pub struct Supervisor {
    task: JoinHandle<()>,
    running: watch::Receiver<Running>,
    stop: watch::Sender<bool>,
}

impl Supervisor {
    /// Starts the supervisor, which starts the accept loop and the admin server. The accept
    /// loop stops when `stop_accepting` is set, the admin server when `stop_admin` is.
    pub fn start<C: CanisterApi>(
        shared: Arc<Shared<C>>,
        listeners: Listeners,
        stop_accepting: watch::Receiver<bool>,
        stop_admin: watch::Receiver<bool>,
    ) -> Self {
        let (running_tx, running) = watch::channel(Running::default());
        let (stop, stop_rx) = watch::channel(false);
        let needs = shared.take_needs();
        let state = State {
            shared,
            listeners,
            stop_accepting,
            stop_admin,
            running: running_tx,
            set: JoinSet::new(),
            pending: Vec::new(),
            failures: HashMap::new(),
        };
        Supervisor {
            task: tokio::spawn(state.run(needs, stop_rx)),
            running,
            stop,
        }
    }

    /// Waits until `done` holds for the running workers (or the supervisor is gone).
    pub async fn wait_for(&mut self, done: impl FnMut(&Running) -> bool) {
        let _ = self.running.wait_for(done).await;
    }

    /// The running workers now.
    pub fn running(&self) -> Running {
        *self.running.borrow()
    }

    /// Aborts every worker still running and waits for the supervisor to end.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

/// A failed worker waiting for its restart.
struct Pending {
    at: Instant,
    job: Job,
}

/// Consecutive failures of a worker and when its current instance started.
struct Failures {
    count: u32,
    started: Instant,
}

type WorkerFuture = Pin<Box<dyn Future<Output = WorkerExit> + Send>>;

struct State<C> {
    shared: Arc<Shared<C>>,
    listeners: Listeners,
    stop_accepting: watch::Receiver<bool>,
    stop_admin: watch::Receiver<bool>,
    running: watch::Sender<Running>,
    set: JoinSet<(Job, Result<WorkerExit, String>)>,
    pending: Vec<Pending>,
    failures: HashMap<String, Failures>,
}

impl<C: CanisterApi> State<C> {
    async fn run(
        mut self,
        needs: Option<mpsc::UnboundedReceiver<Need>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let Some(mut needs) = needs else {
            tracing::error!("a second supervisor for the same gateway state: not started");
            return;
        };
        self.start(Job::Accept);
        if self.listeners.admin.is_some() {
            self.start(Job::Admin);
        }
        loop {
            let next_restart = self.pending.iter().map(|p| p.at).min();
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                Some(need) = needs.recv() => match need {
                    Need::Relay(hub) => self.start(Job::Relay(hub)),
                    Need::Poller(hub) => self.start(Job::Poller(hub)),
                },
                Some(joined) = self.set.join_next(), if !self.set.is_empty() => match joined {
                    Ok((job, result)) => self.exited(job, result),
                    // Tasks are only aborted below, after the loop.
                    Err(e) => tracing::error!("a supervised task was cancelled: {e}"),
                },
                _ = sleep_until(next_restart), if next_restart.is_some() => self.restart_due(),
            }
        }
        self.set.shutdown().await;
    }

    fn publish(&self, job: &Job, up: bool) {
        self.running.send_modify(|r| {
            let n = r.slot(job);
            *n = if up {
                n.saturating_add(1)
            } else {
                n.saturating_sub(1)
            };
        });
    }

    fn start(&mut self, job: Job) {
        self.publish(&job, true);
        self.spawn(job);
    }

    fn spawn(&mut self, job: Job) {
        let worker = self.with_panic_hook(&job, self.worker(&job));
        self.failures
            .entry(job.name())
            .and_modify(|f| f.started = Instant::now())
            .or_insert(Failures {
                count: 0,
                started: Instant::now(),
            });
        self.set.spawn(async move {
            let result = AssertUnwindSafe(worker)
                .catch_unwind()
                .await
                .map_err(|panic| panic_message(panic.as_ref()));
            (job, result)
        });
    }

    /// With `--test-hook-dir`, the accept loop and the admin server panic (once) when the file
    /// `panic-accept` / `panic-admin` appears (see `crate::testhook`); the relay and the poller
    /// have hooks in their own loops. Without the flag the worker is returned unchanged.
    fn with_panic_hook(&self, job: &Job, worker: WorkerFuture) -> WorkerFuture {
        if self.shared.config.test_hook_dir.is_none() || !matches!(job, Job::Accept | Job::Admin) {
            return worker;
        }
        let (shared, hook) = (self.shared.clone(), format!("panic-{}", job.kind()));
        Box::pin(async move {
            let watch = async {
                loop {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if crate::testhook::fire(&shared.config, &hook) {
                        return;
                    }
                }
            };
            tokio::select! {
                exit = worker => exit,
                () = watch => panic!("test hook {hook}"),
            }
        })
    }

    fn worker(&self, job: &Job) -> WorkerFuture {
        let shared = &self.shared;
        match job {
            Job::Accept => match reuse(&self.listeners.client) {
                Ok(listener) => Box::pin(
                    crate::listener::accept_loop(
                        shared.clone(),
                        listener,
                        self.listeners.tls.clone(),
                        self.stop_accepting.clone(),
                    )
                    .map(|()| WorkerExit::Done),
                ),
                Err(e) => failed(format!("cannot use the client listener: {e}")),
            },
            Job::Admin => match self.listeners.admin.as_ref().map(reuse) {
                Some(Ok(listener)) => Box::pin(
                    crate::admin::serve(
                        listener,
                        shared.metrics.clone(),
                        shared.health.clone(),
                        shared.closing.subscribe(),
                        self.stop_admin.clone(),
                    )
                    .map(|r| r.map_or_else(WorkerExit::Failed, |()| WorkerExit::Done)),
                ),
                Some(Err(e)) => failed(format!("cannot use the admin listener: {e}")),
                None => Box::pin(std::future::ready(WorkerExit::Done)),
            },
            Job::Relay(hub) => Box::pin(crate::relay::run(shared.clone(), hub.clone())),
            Job::Poller(hub) => Box::pin(crate::poller::run(shared.clone(), hub.clone())),
        }
    }

    /// Whether `job` should run (its stop signal is not set).
    fn wanted(&self, job: &Job) -> bool {
        let stopped = match job {
            Job::Accept => *self.stop_accepting.borrow(),
            Job::Admin => *self.stop_admin.borrow(),
            Job::Relay(_) => *self.shared.draining.borrow(),
            Job::Poller(_) => *self.shared.closing.borrow(),
        };
        !stopped
    }

    fn exited(&mut self, job: Job, result: Result<WorkerExit, String>) {
        let name = job.name();
        let cause = match result {
            Ok(WorkerExit::Done) => {
                self.publish(&job, false);
                return;
            }
            Ok(WorkerExit::Failed(e)) => e,
            Err(panic) => format!("panicked: {panic}"),
        };
        tracing::error!(worker = %name, "worker failed: {cause}");
        if let Job::Relay(hub) | Job::Poller(hub) = &job {
            let closed = hub.close_all(&CloseWith::new(
                close_code::SERVICE_RESTART,
                "gateway worker restarted: reconnect and resume",
            ));
            if closed > 0 {
                tracing::warn!(
                    worker = %name,
                    clients = closed,
                    "closed the canister's clients with 1012: they resume and re-send what the failed worker held"
                );
            }
        }
        if !self.wanted(&job) {
            tracing::info!(worker = %name, "not restarted: the gateway is stopping");
            self.publish(&job, false);
            return;
        }
        let failures = self.failures.entry(name.clone()).or_insert(Failures {
            count: 0,
            started: Instant::now(),
        });
        if failures.started.elapsed() >= STABLE_AFTER {
            failures.count = 0;
        }
        let delay = backoff(failures.count);
        failures.count = failures.count.saturating_add(1);
        // Metrics first: whoever sees `/healthz` change sees the metrics that go with it.
        self.shared.metrics.workers_down.inc();
        self.shared.health.set_down(&name);
        tracing::info!(worker = %name, "restarting in {delay:?}");
        self.pending.push(Pending {
            at: Instant::now()
                .checked_add(delay)
                .unwrap_or_else(Instant::now),
            job,
        });
    }

    fn restart_due(&mut self) {
        let now = Instant::now();
        if crate::testhook::holds(&self.shared.config, "hold-restarts") {
            let later = now.checked_add(HOLD_POLL).unwrap_or(now);
            for p in self.pending.iter_mut().filter(|p| p.at <= now) {
                p.at = later;
            }
            return;
        }
        let (due, later): (Vec<Pending>, Vec<Pending>) =
            self.pending.drain(..).partition(|p| p.at <= now);
        self.pending = later;
        for Pending { job, .. } in due {
            let name = job.name();
            self.shared.metrics.workers_down.dec();
            if !self.wanted(&job) {
                self.shared.health.set_up(&name);
                self.publish(&job, false);
                continue;
            }
            self.shared.metrics.worker_restarted(job.kind());
            self.shared.health.set_up(&name);
            tracing::info!(worker = %name, "worker restarted");
            self.spawn(job);
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn failed(cause: String) -> WorkerFuture {
    Box::pin(std::future::ready(WorkerExit::Failed(cause)))
}

/// A new handle on `listener`'s socket for the runtime.
fn reuse(listener: &std::net::TcpListener) -> std::io::Result<tokio::net::TcpListener> {
    let handle = listener.try_clone()?;
    handle.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let delays: Vec<u128> = (0..8).map(|n| backoff(n).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn panic_messages_are_bounded() {
        let long: Box<dyn std::any::Any + Send> = Box::new("日".repeat(5000));
        let text = panic_message(long.as_ref());
        assert!(text.len() <= 2048 && text.ends_with('…'));
        let s: Box<dyn std::any::Any + Send> = Box::new("boom");
        assert_eq!(panic_message(s.as_ref()), "boom");
        let other: Box<dyn std::any::Any + Send> = Box::new(7u8);
        assert_eq!(panic_message(other.as_ref()), "(a panic without a message)");
    }
}
