//! The admin HTTP server, on its own address (`--admin-listen`, default 127.0.0.1:9090) so
//! that metrics are not exposed to WebSocket clients and scraping never competes with the
//! client port: `GET /metrics` (Prometheus text format) and `GET /healthz` (200 "ok" while
//! accepting clients, 503 "shutting down" once shutdown began).

use crate::metrics::Metrics;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    closing: watch::Receiver<bool>,
}

async fn get_metrics(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn get_healthz(State(s): State<AdminState>) -> impl IntoResponse {
    if *s.closing.borrow() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}

/// Serves the admin endpoints on `listener` until `closing` is set and then `stop` is set.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    closing: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/metrics", get(get_metrics))
        .route("/healthz", get(get_healthz))
        .with_state(AdminState { metrics, closing });
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::warn!("admin server stopped: {e}");
    }
}
