//! The Prometheus endpoint both binaries serve at `GET /metrics` (OpenMetrics text) when
//! `REPLICA_METRICS_ADDR` is set.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// Serves `registry` on `addr` until `shutdown`.
pub async fn serve(addr: SocketAddr, registry: Arc<Registry>, shutdown: CancellationToken) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move {
                let mut body = String::new();
                // Writing into a String cannot fail.
                let _ = prometheus_client::encoding::text::encode(&mut body, &registry);
                ([(CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "metrics listening");
    axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
}
