//! The IC HTTP interface on loopback: what ic-agent, @icp-sdk/core and @dfinity/agent speak.
//!
//! Routes (all POST bodies are CBOR envelopes, see [`crate::auth`]):
//! - `GET  /api/v2/status`                              CBOR map with the root key
//! - `POST /api/v2/canister/<ecid>/call`                202, or 200 with a non-replicated reject
//! - `POST /api/v3|v4/canister/<ecid>/call`             200 certified reply, or 202 to poll
//! - `POST /api/v2|v3/canister/<ecid>/query`            node-signed reply or reject
//! - `POST /api/v2|v3/canister/<ecid>/read_state`       certificate over the requested paths
//!
//! Bodies above the IC's 2 MiB ingress limit get 413; malformed or unauthenticated requests
//! get 4xx with a text message; every browser origin is allowed (CORS, preflight included).
//! Canister execution runs on the blocking pool, so a slow canister never stalls the accept
//! loop or requests that do not need the engine.

mod handlers;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, Method, Request, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::error::{ReplicaError, Result};
use crate::replica::Replica;

/// The IC's limit on the size of an ingress message (HTTP body).
pub const MAX_REQUEST_BODY_BYTES: usize = 2 * 1024 * 1024;

/// Requests processed at once before the replica answers 503 (each may hold a blocking thread
/// while it waits for the single execution thread).
pub const MAX_IN_FLIGHT: usize = 1024;

/// How long a shutdown waits for in-flight requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Builds the router (exposed for embedding the interface into another axum server).
pub fn router(replica: Replica) -> Router {
    let in_flight = Arc::new(AtomicUsize::new(0));
    Router::new()
        .route("/api/v2/status", get(handlers::status))
        .route("/api/v2/canister/{ecid}/call", post(handlers::call_async))
        .route("/api/v3/canister/{ecid}/call", post(handlers::call_sync))
        .route("/api/v4/canister/{ecid}/call", post(handlers::call_sync))
        .route("/api/v2/canister/{ecid}/query", post(handlers::query))
        .route("/api/v3/canister/{ecid}/query", post(handlers::query))
        .route(
            "/api/v2/canister/{ecid}/read_state",
            post(handlers::read_state),
        )
        .route(
            "/api/v3/canister/{ecid}/read_state",
            post(handlers::read_state),
        )
        .fallback(handlers::not_found)
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BODY_BYTES))
        .layer(middleware::from_fn(move |request, next| {
            admission(in_flight.clone(), request, next)
        }))
        .layer(middleware::from_fn(cors))
        .with_state(replica)
}

/// Backpressure: beyond [`MAX_IN_FLIGHT`] concurrent requests the replica answers 503 with
/// `Retry-After` (agents retry 429/503) instead of queueing without bound.
async fn admission(
    in_flight: Arc<AtomicUsize>,
    request: Request<axum::body::Body>,
    next: Next,
) -> Response {
    struct Slot(Arc<AtomicUsize>);
    impl Drop for Slot {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let slot = Slot(in_flight);
    if slot.0.fetch_add(1, Ordering::SeqCst) >= MAX_IN_FLIGHT {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "ic-ws-replica is overloaded, retry later",
        )
            .into_response();
    }
    let response = next.run(request).await;
    drop(slot);
    response
}

/// Lets browser pages on any origin call the replica, as the IC's boundary nodes do.
async fn cors(request: Request<axum::body::Body>, next: Next) -> Response {
    let mut response = if request.method() == Method::OPTIONS {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, HEAD, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(
            "Accept, Authorization, Content-Type, Cookie, Range, User-Agent, X-Requested-With",
        ),
    );
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Accept-Ranges, Content-Length, Content-Range, X-Request-Id"),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("7200"),
    );
    response
}

/// A running HTTP interface. Dropping it (or calling [`ServerHandle::shutdown`]) stops the
/// server; the replica itself lives on while other handles exist.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerHandle {
    pub(crate) fn start(replica: Replica, addr: SocketAddr) -> Result<Self> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ic-ws-replica-http")
            .enable_all()
            .build()?;
        let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
        let app = router(replica);
        let thread = std::thread::Builder::new()
            .name("ic-ws-replica-server".into())
            .spawn(move || {
                let served = runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    let mut graceful_rx = shutdown_rx.clone();
                    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
                        let _ = graceful_rx.wait_for(|stop| *stop).await;
                    });
                    // Connections that never go idle must not keep a stopped server alive.
                    let mut deadline_rx = shutdown_rx;
                    let deadline = async move {
                        let _ = deadline_rx.wait_for(|stop| *stop).await;
                        tokio::time::sleep(SHUTDOWN_GRACE).await;
                    };
                    tokio::select! {
                        served = server => served,
                        () = deadline => Ok(()),
                    }
                });
                if let Err(e) = served {
                    tracing::error!("HTTP server stopped with an error: {e}");
                }
                runtime.shutdown_timeout(SHUTDOWN_GRACE);
            })
            .map_err(|e| ReplicaError::Internal(format!("cannot start the server thread: {e}")))?;
        Ok(ServerHandle {
            addr,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        })
    }

    /// The bound address (the real port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`: what agents take as their URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server and waits for it to finish.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the HTTP server thread panicked");
            }
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}
