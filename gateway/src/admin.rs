//! The admin HTTP server, on its own address (`--admin-listen`, default 127.0.0.1:9090) so
//! that metrics are not exposed to WebSocket clients and scraping never competes with the
//! client port: `GET /metrics` (Prometheus text format 0.0.4, or OpenMetrics 1.0 when the
//! request's `Accept` asks for `application/openmetrics-text`) and `GET /healthz`: 200 "ok" while
//! every worker runs, 503 "degraded: <worker> down" while a failed worker waits for its
//! restart (see [`crate::supervisor`]), 503 "shutting down" once shutdown began.

use crate::health::Health;
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
    health: Arc<Health>,
    closing: watch::Receiver<bool>,
}

async fn get_metrics(
    State(s): State<AdminState>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            s.metrics.render_openmetrics(),
        )
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            s.metrics.render(),
        )
    }
}

async fn get_healthz(State(s): State<AdminState>) -> (StatusCode, String) {
    if *s.closing.borrow() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into());
    }
    let down = s.health.down();
    if down.is_empty() {
        (StatusCode::OK, "ok\n".into())
    } else {
        let mut body = String::from("degraded:");
        for worker in down {
            body.push_str(&format!(" {worker} down (restarting);"));
        }
        body.push('\n');
        (StatusCode::SERVICE_UNAVAILABLE, body)
    }
}

/// Serves the admin endpoints on `listener` until `stop` is set (`closing` turns `/healthz`
/// 503 before).
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    closing: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let app = Router::new()
        .route("/metrics", get(get_metrics))
        .route("/healthz", get(get_healthz))
        .with_state(AdminState {
            metrics,
            health,
            closing,
        });
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| format!("admin server stopped: {e}"))
}
