//! Orderly shutdown on SIGTERM or Ctrl-C:
//! 1. stop accepting connections (`/healthz` turns 503);
//! 2. close every client with `--shutdown-close-code` (1012: reconnect and resume) and stop
//!    the pollers; each closed session queues its `ws_close`;
//! 3. once the sessions are gone, the relays flush everything queued (messages, closes) to the
//!    canisters and exit;
//! 4. the process exits. Nothing is lost: clients resume (here after a restart, or elsewhere)
//!    from their last verified message, and re-send their unacknowledged messages.
//!
//! Every step is bounded by `--shutdown-timeout-ms`.

use crate::canister::CanisterApi;
use crate::hub::Shared;
use crate::supervisor::Supervisor;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C: shutting down"),
                }
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM ({e}); Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Steps 2-3 (the caller stopped accepting already).
pub async fn drain<C: CanisterApi>(
    shared: &Arc<Shared<C>>,
    supervisor: &mut Supervisor,
    deadline: Instant,
) {
    shared.closing.send_replace(true);
    while shared.metrics.connections.get() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let left = shared.metrics.connections.get();
    if left > 0 {
        tracing::warn!(left, "shutdown: some connections did not close in time");
    }
    shared.draining.send_replace(true);
    let flushed = tokio::time::timeout_at(deadline, supervisor.wait_for(|r| r.relays == 0)).await;
    if flushed.is_err() {
        let left = supervisor.running().relays;
        tracing::warn!(left, "shutdown: relays did not flush in time");
    }
}
