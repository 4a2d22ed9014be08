//! Accepting connections: the TCP accept loop, optional TLS (rustls), the WebSocket handshake
//! with per-connection limits, and the gateway-wide limits.
//!
//! Every accepted socket counts toward `--max-connections` from accept to close, whatever it
//! is doing: TLS or WebSocket handshake (one deadline for both, `--handshake-timeout-ms`),
//! session, or being refused. A connection is served only within the gateway-wide cap, the
//! per-source caps (`--max-connections-per-ip`, `--max-connections-per-ipv6-64`) and the
//! per-source connect rate. A refused client gets the handshake and a close with 4006 so it
//! knows why, while there is room for that (`--max-refusing` refusals in progress, a few per
//! source, each given at most [`REFUSAL_TIMEOUT`]); beyond, its socket is closed at once
//! without a handshake, so refusing costs nothing that an attacker can pile up.
//!
//! Memory per idle connection is kept small: the handshake runs in its own boxed future that is
//! freed when it completes, the read buffer starts at `--read-buffer-size`, and writes are not
//! buffered (each frame goes straight to the socket). The write buffer has a hard cap
//! ([`MAX_WRITE_BUFFER`]): unsent pongs cannot pile up in it (see `session`).

use crate::canister::CanisterApi;
use crate::error::{GatewayError, Result};
use crate::hub::Shared;
use crate::inbound::MeteredStream;
use crate::metrics::{ErrorKind, Metrics, Rejection};
use crate::outbox::CloseWith;
use crate::ratelimit::{IpRateLimiter, Slot, SourceTable};
use crate::tls;
use ic_ws_protocol::frames::close_code;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// The soft limit on open files of this process (from /proc/self/limits), if known.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Descriptors kept for everything but client connections (listeners, the agent's HTTP
/// connections, the identity and TLS files).
pub const RESERVED_FDS: u64 = 64;

/// Raises the open-files soft limit as far as the hard limit allows (as servers do: the soft
/// default is often 1,024) and returns the soft limit then in force, if known.
pub fn raise_open_files_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(e) => {
            tracing::debug!("cannot raise the open-files limit: {e}");
            open_files_limit()
        }
    }
}

/// What `--max-connections` becomes under the open-files `limit`: every connection is a
/// descriptor, so beyond `limit - RESERVED_FDS` the OS refuses them anyway (and the gateway
/// could no longer answer with 4006). The default is lowered to fit, quietly (an info line);
/// an explicit value that does not fit is kept, with a warning that says what to do.
pub fn fit_max_connections(requested: usize, explicit: bool, limit: Option<u64>) -> usize {
    let Some(limit) = limit else {
        return requested;
    };
    let room = usize::try_from(limit.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX);
    if requested <= room {
        return requested;
    }
    if explicit {
        tracing::warn!(
            limit,
            max_connections = requested,
            "--max-connections is above what the open-files limit allows ({room}): raise the hard limit (ulimit -Hn, LimitNOFILE= in systemd) or lower --max-connections"
        );
        requested
    } else {
        let fitted = room.max(1);
        tracing::info!(
            limit,
            "--max-connections defaults to {fitted} (the open-files limit minus {RESERVED_FDS}; raise the hard limit for more)"
        );
        fitted
    }
}

/// Binds the client listener.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let what = CLIENT_PORT;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(|source| GatewayError::Bind {
        what,
        addr: addr.to_string(),
        source,
    })?;
    let bind = |s: &tokio::net::TcpSocket| -> std::io::Result<()> {
        s.set_reuseaddr(true)?;
        s.bind(addr)
    };
    bind(&socket).map_err(|source| GatewayError::Bind {
        what,
        addr: addr.to_string(),
        source,
    })?;
    socket.listen(4096).map_err(|source| GatewayError::Bind {
        what,
        addr: addr.to_string(),
        source,
    })
}

/// Names of the two listening sockets in bind errors.
pub const CLIENT_PORT: &str = "the client WebSocket port (--listen)";
/// See [`CLIENT_PORT`].
pub const ADMIN_PORT: &str = "the admin port (--admin-listen: /metrics, /healthz)";

/// Largest frame the gateway writes: a client's share of one poll reply (the canister caps a
/// reply's content at 2.5 MiB, the IC caps query replies at 3 MiB) with its certificate and
/// witness, with room to spare.
pub const MAX_OUTGOING_FRAME: usize = 4 * 1024 * 1024;

/// Hard cap on a connection's WebSocket write buffer: one outgoing frame plus a few control
/// frames. Writes are unbuffered (`write_buffer_size(0)`), so the buffer only holds what the
/// socket has not taken yet; a pong that does not fit waits in tungstenite's single pending
/// control-frame slot, where a newer pong replaces it.
pub const MAX_WRITE_BUFFER: usize = MAX_OUTGOING_FRAME + 4096;

/// Time a refused connection is given for its handshake and the 4006 close.
pub const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Refusals in progress per source (IPv4 address, IPv6 address or /64).
const REFUSING_PER_SOURCE: usize = 4;

fn ws_config<C>(shared: &Shared<C>) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(shared.config.read_buffer_size)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(Some(shared.config.max_message_size))
        .max_frame_size(Some(shared.config.max_frame_size))
}

/// What to do with a new connection.
#[derive(Debug, PartialEq, Eq)]
enum Admission {
    Serve,
    /// Handshake, then close 4006 with this reason.
    Refuse(Rejection, &'static str),
    /// Close the socket at once.
    Drop(Rejection),
}

/// The accept loop's limits: the gateway-wide count (in the metrics), the per-source counts
/// and the per-source connect rate.
struct Gate {
    metrics: Arc<Metrics>,
    sources: Arc<SourceTable>,
    limiter: IpRateLimiter,
    max_connections: usize,
    max_refusing: usize,
}

impl Gate {
    fn new<C>(shared: &Shared<C>) -> Self {
        let c = &shared.config;
        Gate {
            metrics: shared.metrics.clone(),
            sources: Arc::new(SourceTable::new(c.source_limits(), REFUSING_PER_SOURCE)),
            limiter: IpRateLimiter::new(c.ip_connect_rate, c.ip_connect_burst),
            max_connections: c.max_connections,
            max_refusing: c.max_refusing,
        }
    }

    /// Decides about a connection from `ip` and, unless it is dropped, counts it (the guard
    /// uncounts it when the connection ends).
    fn admit(&mut self, ip: IpAddr, now: Instant) -> (Admission, Option<ConnGuard>) {
        let held = usize::try_from(self.metrics.connections.get()).unwrap_or(0);
        let admission = if held >= self.max_connections {
            Admission::Refuse(
                Rejection::MaxConnections,
                "overloaded: too many connections",
            )
        } else if !self.sources.try_take(ip, Slot::Served) {
            Admission::Refuse(
                Rejection::SourceLimit,
                "overloaded: too many connections from this address",
            )
        } else if !self.limiter.allow(ip, now) {
            self.sources.release(ip, Slot::Served);
            Admission::Refuse(
                Rejection::RateLimited,
                "overloaded: too many new connections from this address",
            )
        } else {
            return (
                Admission::Serve,
                Some(ConnGuard::new(
                    &self.metrics,
                    &self.sources,
                    ip,
                    Slot::Served,
                )),
            );
        };
        let Admission::Refuse(why, _) = admission else {
            return (admission, None);
        };
        self.metrics.rejected(why);
        let refusing = usize::try_from(self.metrics.connections_refusing.get()).unwrap_or(0);
        if refusing < self.max_refusing
            && held < self.max_connections.saturating_add(self.max_refusing)
            && self.sources.try_take(ip, Slot::Refusing)
        {
            let guard = ConnGuard::new(&self.metrics, &self.sources, ip, Slot::Refusing);
            (admission, Some(guard))
        } else {
            self.metrics.refused_unanswered.inc();
            (Admission::Drop(why), None)
        }
    }
}

/// Accepts connections until `stop` is set.
pub async fn accept_loop<C: CanisterApi>(
    shared: Arc<Shared<C>>,
    listener: TcpListener,
    tls: Option<tls::Acceptor>,
    mut stop: watch::Receiver<bool>,
) {
    let mut gate = Gate::new(&shared);
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((tcp, peer)) => match gate.admit(peer.ip(), Instant::now()) {
                (Admission::Serve, Some(guard)) => {
                    let _ = tcp.set_nodelay(true);
                    tokio::spawn(handle(shared.clone(), tcp, peer, tls.clone(), None, guard));
                }
                (Admission::Refuse(_, reason), Some(guard)) => {
                    let _ = tcp.set_nodelay(true);
                    let close = CloseWith::new(close_code::OVERLOADED, reason);
                    tokio::spawn(handle(
                        shared.clone(),
                        tcp,
                        peer,
                        tls.clone(),
                        Some(close),
                        guard,
                    ));
                }
                (admission, _) => {
                    tracing::debug!(%peer, ?admission, "connection refused without a handshake");
                    drop(tcp);
                }
            },
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    tracing::info!("stopped accepting connections");
}

/// Counts a connection for its lifetime: in the gateway-wide gauge and in its source's slots.
struct ConnGuard {
    metrics: Arc<Metrics>,
    sources: Arc<SourceTable>,
    ip: IpAddr,
    slot: Slot,
}

impl ConnGuard {
    /// Counts a connection whose source slot was taken already.
    fn new(metrics: &Arc<Metrics>, sources: &Arc<SourceTable>, ip: IpAddr, slot: Slot) -> Self {
        metrics.connections.inc();
        match slot {
            Slot::Served => metrics.connections_total.inc(),
            Slot::Refusing => metrics.connections_refusing.inc(),
        }
        ConnGuard {
            metrics: metrics.clone(),
            sources: sources.clone(),
            ip,
            slot,
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.metrics.connections.dec();
        if self.slot == Slot::Refusing {
            self.metrics.connections_refusing.dec();
        }
        self.sources.release(self.ip, self.slot);
    }
}

async fn handle<C: CanisterApi>(
    shared: Arc<Shared<C>>,
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<tls::Acceptor>,
    reject: Option<CloseWith>,
    guard: ConnGuard,
) {
    let _guard = guard;
    let timeout = match reject {
        None => shared.config.handshake_timeout(),
        Some(_) => shared.config.handshake_timeout().min(REFUSAL_TIMEOUT),
    };
    // One deadline for the TLS and the WebSocket handshakes together; a shutdown ends them.
    let now = tokio::time::Instant::now();
    // (A timeout so large that the deadline overflows is no deadline to wait for: now.)
    let deadline = now.checked_add(timeout).unwrap_or(now);
    let mut closing = shared.closing.subscribe();
    let handshake = async {
        let ws = match tls {
            None => accept_ws(&shared, tcp).await.map(Either::Plain),
            Some(acceptor) => match tls::accept(&acceptor, tcp).await {
                Ok(stream) => accept_ws(&shared, stream).await.map(Either::Tls),
                Err(e) => Err(format!("TLS handshake failed: {e}")),
            },
        };
        ws
    };
    let ws = tokio::select! {
        r = tokio::time::timeout_at(deadline, Box::pin(handshake)) => r,
        _ = closing.wait_for(|c| *c) => return,
    };
    match ws {
        Ok(Ok(Either::Plain(ws))) => Box::pin(serve(shared, ws, peer, reject)).await,
        Ok(Ok(Either::Tls(ws))) => Box::pin(serve(shared, ws, peer, reject)).await,
        Ok(Err(e)) => {
            shared.metrics.error(ErrorKind::Handshake);
            tracing::debug!(%peer, "{e}");
        }
        Err(_) => {
            shared.metrics.error(ErrorKind::Handshake);
            tracing::debug!(%peer, "handshake timed out");
        }
    }
}

/// A plain or a TLS WebSocket.
enum Either<A, B> {
    Plain(A),
    Tls(B),
}

/// The WebSocket handshake on `stream` (TCP, or TLS after its handshake). Everything read from
/// then on is metered: frame headers are charged to the memory ledger before tungstenite
/// reserves their announced length (`crate::inbound`).
async fn accept_ws<C, S>(
    shared: &Shared<C>,
    stream: S,
) -> std::result::Result<tokio_tungstenite::WebSocketStream<MeteredStream<S>>, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let stream = MeteredStream::new(
        stream,
        shared.metrics.memory.clone(),
        shared.config.max_frame_size,
        shared.config.max_open_frame_size,
    )
    .with_frame_timeout(shared.config.frame_timeout());
    tokio_tungstenite::accept_async_with_config(stream, Some(ws_config(shared)))
        .await
        .map_err(|e| format!("WebSocket handshake failed: {e}"))
}

async fn serve<C, S>(
    shared: Arc<Shared<C>>,
    mut ws: tokio_tungstenite::WebSocketStream<MeteredStream<S>>,
    peer: SocketAddr,
    reject: Option<CloseWith>,
) where
    C: CanisterApi,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if let Some(close) = reject {
        crate::session::send_close(&mut ws, &close).await;
        return;
    }
    let opened = ws.get_ref().opened();
    Box::pin(crate::session::run_metered(shared, ws, peer, Some(opened))).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::fake::FakeCanister;
    use candid::Principal;

    fn gate(extra: &[&str]) -> (Gate, Arc<Shared<FakeCanister>>) {
        let mut args = vec!["ic-ws-gateway", "--canister", "aaaaa-aa"];
        args.extend_from_slice(extra);
        let config = Config::from_args(args).unwrap();
        let policy = config.canister_policy().unwrap();
        let shared = Shared::new(
            config,
            policy,
            Arc::new(FakeCanister::new()),
            Principal::anonymous(),
        );
        (Gate::new(&shared), shared)
    }

    #[test]
    fn max_connections_fits_the_open_files_limit() {
        // The default is lowered to what the limit allows; an explicit value is kept.
        assert_eq!(fit_max_connections(100_000, false, Some(20_000)), 19_936);
        assert_eq!(fit_max_connections(100_000, true, Some(20_000)), 100_000);
        assert_eq!(fit_max_connections(5_000, true, Some(20_000)), 5_000);
        assert_eq!(fit_max_connections(100_000, false, None), 100_000);
        assert_eq!(fit_max_connections(100_000, false, Some(10)), 1);
        // Raising the soft limit never lowers it.
        let before = open_files_limit();
        let after = raise_open_files_limit();
        assert!(after >= before, "{before:?} -> {after:?}");
    }

    #[tokio::test]
    async fn a_bind_error_names_the_port() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let e = bind(addr).await.unwrap_err().to_string();
        assert!(
            e.contains(&addr.to_string()) && e.contains("--listen"),
            "{e}"
        );
    }

    #[test]
    fn refusals_count_and_are_answered_only_while_affordable() {
        let (mut g, shared) = gate(&[
            "--max-connections",
            "2",
            "--max-refusing",
            "1",
            "--ip-connect-rate",
            "0",
        ]);
        let m = &shared.metrics;
        let now = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let (first, g1) = g.admit(a, now);
        let (second, g2) = g.admit("10.0.0.2".parse().unwrap(), now);
        assert_eq!((first, second), (Admission::Serve, Admission::Serve));
        let (third, g3) = g.admit(a, now);
        assert!(matches!(
            third,
            Admission::Refuse(Rejection::MaxConnections, _)
        ));
        assert_eq!((m.connections.get(), m.connections_refusing.get()), (3, 1));
        let (fourth, g4) = g.admit(a, now);
        assert_eq!(fourth, Admission::Drop(Rejection::MaxConnections));
        assert!(g4.is_none());
        assert_eq!(m.refused_unanswered.get(), 1);
        drop(g3);
        drop(g1);
        assert_eq!((m.connections.get(), m.connections_refusing.get()), (1, 0));
        let (again, _g5) = g.admit(a, now);
        assert_eq!(again, Admission::Serve, "slots are given back");
        drop(g2);
    }

    #[test]
    fn per_source_cap_and_rate_limited_sockets_hold_no_served_slot() {
        let (mut g, shared) = gate(&[
            "--max-connections-per-ip",
            "2",
            "--ip-connect-rate",
            "1",
            "--ip-connect-burst",
            "3",
        ]);
        let now = Instant::now();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let held: Vec<_> = (0..2).map(|_| g.admit(a, now)).collect();
        assert!(held.iter().all(|(x, _)| *x == Admission::Serve));
        let (over, _r) = g.admit(a, now);
        assert!(matches!(over, Admission::Refuse(Rejection::SourceLimit, _)));
        let (other, _o) = g.admit("127.0.0.2".parse().unwrap(), now);
        assert_eq!(other, Admission::Serve);
        drop(held);
        // Third token of the burst, then the rate limit (no served slot kept by it).
        assert_eq!(g.admit(a, now).0, Admission::Serve);
        let (limited, _l) = g.admit(a, now);
        assert!(matches!(
            limited,
            Admission::Refuse(Rejection::RateLimited, _)
        ));
        assert_eq!(shared.metrics.rejected_source_limit.get(), 1);
        assert_eq!(shared.metrics.rejected_rate_limited.get(), 1);
    }
}
