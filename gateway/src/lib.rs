//! ic-ws-gateway: the companion gateway of ic-ws.
//!
//! It holds clients' WebSockets, relays their signed messages to canisters as batched update
//! calls and polls the canisters for certified messages, handing each client only its own,
//! with a witness pruned to them. It is untrusted by design: clients check everything it
//! delivers (docs/protocol.md).
//!
//! Modules, one concern each:
//! - [`config`]: flags and environment variables, validation;
//! - `identity`: the gateway's key file and principal;
//! - [`canister`]: the canister endpoints ([`canister::CanisterApi`]); relay and poller are
//!   generic over the trait; `agent`: its ic-agent implementation;
//! - [`listener`]: accept loop, handshake, connection limits; [`tls`]: the TLS acceptor;
//!   [`ratelimit`]: per-IP rate;
//! - [`session`]: one client connection; [`outbox`]: its bounded send buffer;
//! - [`relay`]: client -> canister batching; [`poller`]: canister -> client delivery, on
//!   the [`schedule`] policy (when to poll);
//!   per-client pruned trees come from `ic_ws_protocol::witness`; [`hub`]: the shared state
//!   they meet in;
//! - [`supervisor`]: spawns, restarts and stops every long-lived worker; [`health`]: which
//!   are down;
//! - [`metrics`] and [`admin`]: Prometheus `/metrics` and `/healthz`;
//! - [`shutdown`]: SIGTERM/Ctrl-C handling;
//! - [`fake`]: an in-memory canister for tests and gateway-only benchmarks;
//!   [`testhook`]: failures on demand for tests (hidden flag).
//!
//! Feature `server` (default) brings `agent`, `identity`, [`tls`]'s rustls acceptor and
//! `run` (what the binary does): ic-agent and rustls. Without it the crate is the library
//! core, as the fuzz harness builds it; a TLS certificate is then a startup error.
//!
//! Layers: `hub` (passive state) and `health` at the bottom; the workers `relay`, `poller`,
//! `session` (with `outbox`, `codec`) and `listener`, `admin` use them;
//! `supervisor` spawns and restarts the workers; `Gateway` (this file) starts the supervisor.
//! No module imports one above it, except that the hub names the relay queue's item type
//! (`relay::RelayItem`); it runs no worker.
//!
//! Peer data never makes the gateway panic: text is cut with `ic_ws_protocol::text`, and the
//! lints below forbid string slicing, indexing and unchecked arithmetic outside tests.
#![cfg_attr(test, allow(clippy::unwrap_used))]
#![warn(missing_docs)]
#![warn(
    clippy::string_slice,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
#![cfg_attr(
    test,
    allow(
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        reason = "tests index their own fixtures"
    )
)]

pub mod admin;
#[cfg(feature = "server")]
pub mod agent;
pub mod canister;
pub mod codec;
pub mod config;
pub mod error;
pub mod fake;
pub mod health;
pub mod hub;
#[cfg(feature = "server")]
pub mod identity;
pub mod inbound;
pub mod listener;
pub mod memory;
pub mod metrics;
pub mod outbox;
pub mod pagecap;
pub mod poller;
pub mod ratelimit;
pub mod relay;
pub mod rhythm;
pub mod schedule;
pub mod session;
pub mod shutdown;
pub mod supervisor;
pub mod testhook;
pub mod tls;
pub mod warnings;
pub mod work;

#[cfg(feature = "server")]
pub use agent::AgentCanister;
pub use canister::{CallError, CanisterApi};
pub use config::Config;
pub use error::{GatewayError, Result};

use candid::Principal;
use hub::Shared;
use metrics::Metrics;
use std::net::SocketAddr;
use std::sync::Arc;
use supervisor::{Listeners, Supervisor};
use tokio::sync::watch;

/// A running gateway.
pub struct Gateway<C: CanisterApi> {
    shared: Arc<Shared<C>>,
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    stop_accepting: watch::Sender<bool>,
    stop_admin: watch::Sender<bool>,
    supervisor: Supervisor,
}

impl<C: CanisterApi> Gateway<C> {
    /// Binds the client and admin listeners and starts serving, talking to canisters through
    /// `api` as `principal`.
    pub async fn start(config: Config, api: C, principal: Principal) -> Result<Self> {
        config.validate()?;
        let policy = config.canister_policy()?;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
            _ => None,
        };
        // Each connection is a file descriptor: --max-connections must fit the open-files limit.
        let mut config = config;
        config.max_connections = listener::fit_max_connections(
            config.max_connections,
            config.max_connections != config::DEFAULT_MAX_CONNECTIONS,
            listener::raise_open_files_limit(),
        );
        let listener = listener::bind(config.listen).await?;
        let local_addr = listener.local_addr()?;
        let admin_listener =
            match config.admin_addr()? {
                Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(
                    |source| GatewayError::Bind {
                        what: listener::ADMIN_PORT,
                        addr: addr.to_string(),
                        source,
                    },
                )?),
                None => None,
            };
        let admin_addr = admin_listener
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()?;
        let shared = Shared::new(config, policy, Arc::new(api), principal);
        let (stop_accepting, stop_rx) = watch::channel(false);
        let (stop_admin, admin_stop_rx) = watch::channel(false);
        let listeners = Listeners {
            client: listener.into_std()?,
            admin: admin_listener.map(|l| l.into_std()).transpose()?,
            tls: tls.clone(),
        };
        let supervisor = Supervisor::start(shared.clone(), listeners, stop_rx, admin_stop_rx);
        tracing::info!(
            listen = %local_addr,
            admin = ?admin_addr,
            tls = tls.is_some(),
            principal = %principal,
            "ic-ws-gateway listening"
        );
        Ok(Gateway {
            shared,
            local_addr,
            admin_addr,
            stop_accepting,
            stop_admin,
            supervisor,
        })
    }

    /// The client listener's address (the real port when started with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin server's address, if enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The gateway's principal.
    pub fn principal(&self) -> Principal {
        self.shared.principal
    }

    /// Live metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The workers that are down (failed, waiting for their restart), by name.
    pub fn workers_down(&self) -> Vec<String> {
        self.shared.health.down()
    }

    /// Orderly shutdown (see [`shutdown`]): stop accepting, close clients with the shutdown
    /// close code, flush pending batches, stop.
    pub async fn shutdown(mut self) {
        let start = tokio::time::Instant::now();
        let deadline = start
            .checked_add(self.shared.config.shutdown_timeout())
            .unwrap_or(start);
        self.stop_accepting.send_replace(true);
        self.supervisor.wait_for(|r| r.accept == 0).await;
        shutdown::drain(&self.shared, &mut self.supervisor, deadline).await;
        self.stop_admin.send_replace(true);
        let _ = tokio::time::timeout_at(deadline, self.supervisor.wait_for(|r| r.admin == 0)).await;
        self.supervisor.stop().await;
        tracing::info!("ic-ws-gateway stopped");
    }
}

/// What the binary does: identity, IC agent, serve until SIGTERM/Ctrl-C, shut down.
#[cfg(feature = "server")]
pub async fn run(config: Config) -> Result<()> {
    config.validate()?;
    let (identity, principal) = identity::load_or_create(&config.identity_file)?;
    let agent = ic_agent::Agent::builder()
        .with_url(config.network.trim())
        .with_identity(identity)
        .with_verify_query_signatures(config.verify_query_signatures)
        .with_max_concurrent_requests(1024)
        .build()
        .map_err(|e| {
            GatewayError::Agent(format!("cannot build an agent for {}: {e}", config.network))
        })?;
    if !config.fetch_root_key && config::is_local_url(config.network.trim()) {
        tracing::warn!(
            network = %config.network.trim(),
            "the network is a local address but --fetch-root-key is not set: a local replica (dfx, PocketIC, icp-cli, ic-ws-replica) has its own root key, so every certificate will fail against the built-in mainnet key and every call will fail; pass --fetch-root-key (leave it off only for a tunnel to mainnet)"
        );
    }
    if config.fetch_root_key {
        agent.fetch_root_key().await.map_err(|e| {
            GatewayError::Agent(format!(
                "cannot fetch the root key from {}: {e}",
                config.network
            ))
        })?;
    }
    let ready_file = config.ready_file.clone();
    let gateway = Gateway::start(config, AgentCanister::new(agent), principal).await?;
    if let Some(path) = ready_file {
        write_ready_file(&path, &gateway)?;
    }
    shutdown::signal().await;
    gateway.shutdown().await;
    Ok(())
}

/// Writes `{"listen","admin","principal"}` atomically (temp file + rename), so a process that
/// started the gateway with port 0 learns where it listens.
pub fn write_ready_file<C: CanisterApi>(
    path: &std::path::Path,
    gateway: &Gateway<C>,
) -> Result<()> {
    let line = serde_json::json!({
        "listen": gateway.local_addr().to_string(),
        "admin": gateway.admin_addr().map(|a| a.to_string()),
        "principal": gateway.principal().to_text(),
    })
    .to_string();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{line}\n"))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
