//! Accepting connections: the TCP accept loop, optional TLS (rustls), the WebSocket handshake
//! with per-connection limits, and the gateway-wide limits (maximum connections, per-IP
//! connection rate). A refused client still gets a WebSocket close with 4006 so it knows why.
//!
//! Memory per idle connection is kept small: the handshake runs in its own boxed future that is
//! freed when it completes, the read buffer starts at `--read-buffer-size`, and writes are not
//! buffered (each frame goes straight to the socket).

use crate::canister::CanisterApi;
use crate::error::{GatewayError, Result};
use crate::hub::Shared;
use crate::metrics::{ErrorKind, Metrics, Rejection};
use crate::outbox::CloseWith;
use crate::ratelimit::IpRateLimiter;
use ic_ws_protocol::frames::close_code;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Loads a TLS certificate chain and private key (PEM files) into an acceptor.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| GatewayError::Tls(format!("certificate {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(GatewayError::Tls(format!(
            "no certificate in {}",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| GatewayError::Tls(format!("private key {}: {e}", key.display())))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| GatewayError::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| GatewayError::Tls(format!("certificate and key do not fit: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The soft limit on open files of this process (from /proc/self/limits), if known.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Binds the client listener.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(|source| GatewayError::Bind {
        addr: addr.to_string(),
        source,
    })?;
    let bind = |s: &tokio::net::TcpSocket| -> std::io::Result<()> {
        s.set_reuseaddr(true)?;
        s.bind(addr)
    };
    bind(&socket).map_err(|source| GatewayError::Bind {
        addr: addr.to_string(),
        source,
    })?;
    socket.listen(4096).map_err(|source| GatewayError::Bind {
        addr: addr.to_string(),
        source,
    })
}

fn ws_config<C>(shared: &Shared<C>) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(shared.config.read_buffer_size)
        .write_buffer_size(0)
        .max_message_size(Some(shared.config.max_message_size))
        .max_frame_size(Some(shared.config.max_frame_size))
}

/// Accepts connections until `stop` is set.
pub async fn accept_loop<C: CanisterApi>(
    shared: Arc<Shared<C>>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
) {
    let limiter = Arc::new(IpRateLimiter::new(
        shared.config.ip_connect_rate,
        shared.config.ip_connect_burst,
    ));
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                let reject =
                    if shared.metrics.connections.get() as usize >= shared.config.max_connections {
                        shared.metrics.rejected(Rejection::MaxConnections);
                        Some(CloseWith::new(
                            close_code::OVERLOADED,
                            "overloaded: too many connections",
                        ))
                    } else if !limiter.allow(peer.ip(), Instant::now()) {
                        shared.metrics.rejected(Rejection::RateLimited);
                        Some(CloseWith::new(
                            close_code::OVERLOADED,
                            "overloaded: too many new connections from this address",
                        ))
                    } else {
                        None
                    };
                let guard = ConnGuard::new(shared.metrics.clone(), reject.is_none());
                tokio::spawn(handle(
                    shared.clone(),
                    tcp,
                    peer,
                    tls.clone(),
                    reject,
                    guard,
                ));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    tracing::info!("stopped accepting connections");
}

/// Counts a connection for its lifetime.
struct ConnGuard {
    metrics: Arc<Metrics>,
    counted: bool,
}

impl ConnGuard {
    fn new(metrics: Arc<Metrics>, counted: bool) -> Self {
        if counted {
            metrics.connections.inc();
            metrics.connections_total.inc();
        }
        ConnGuard { metrics, counted }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.counted {
            self.metrics.connections.dec();
        }
    }
}

async fn handle<C: CanisterApi>(
    shared: Arc<Shared<C>>,
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    reject: Option<CloseWith>,
    guard: ConnGuard,
) {
    let _guard = guard;
    match tls {
        None => Box::pin(serve(shared, tcp, peer, reject)).await,
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(shared.config.handshake_timeout(), acceptor.accept(tcp));
            match Box::pin(handshake).await {
                Ok(Ok(stream)) => Box::pin(serve(shared, stream, peer, reject)).await,
                Ok(Err(e)) => {
                    shared.metrics.error(ErrorKind::Handshake);
                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                }
                Err(_) => {
                    shared.metrics.error(ErrorKind::Handshake);
                    tracing::debug!(%peer, "TLS handshake timed out");
                }
            }
        }
    }
}

async fn serve<C, S>(shared: Arc<Shared<C>>, stream: S, peer: SocketAddr, reject: Option<CloseWith>)
where
    C: CanisterApi,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handshake = tokio_tungstenite::accept_async_with_config(stream, Some(ws_config(&shared)));
    let mut ws = match Box::pin(tokio::time::timeout(
        shared.config.handshake_timeout(),
        handshake,
    ))
    .await
    {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            shared.metrics.error(ErrorKind::Handshake);
            tracing::debug!(%peer, "WebSocket handshake failed: {e}");
            return;
        }
        Err(_) => {
            shared.metrics.error(ErrorKind::Handshake);
            tracing::debug!(%peer, "WebSocket handshake timed out");
            return;
        }
    };
    if let Some(close) = reject {
        crate::session::send_close(&mut ws, &close).await;
        return;
    }
    Box::pin(crate::session::run(shared, ws, peer)).await;
}
