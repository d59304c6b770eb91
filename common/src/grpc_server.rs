//! The gRPC server setup both binaries share: TLS (and client certificates) as configured, the standard
//! health service, and reflection (v1 and v1alpha: older grpcurl builds only speak v1alpha) so that grpcurl
//! works without .proto files. Each binary adds its own service behind the bearer token.

use tokio_util::sync::CancellationToken;
use tonic::transport::server::Router;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::grpc_security::ServeSecurityArgs;

#[derive(Debug, thiserror::Error)]
pub enum ServerSetupError {
    #[error("gRPC TLS settings: {0}")]
    Tls(String),
    #[error("gRPC TLS settings")]
    TlsConfig(#[source] tonic::transport::Error),
    #[error("gRPC reflection")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// A router with health and reflection, over TLS if configured, and the health reporter to keep up to date.
pub fn router(security: &ServeSecurityArgs) -> Result<(Router, HealthReporter), ServerSetupError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let (v1, v1alpha) = (reflection().build_v1()?, reflection().build_v1alpha()?);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = security.server_tls().map_err(ServerSetupError::Tls)? {
        builder = builder.tls_config(tls).map_err(ServerSetupError::TlsConfig)?;
        tracing::info!(client_certificates = security.tls_client_ca.is_some(), "gRPC serves TLS");
    }
    let router = builder.add_service(health_service).add_service(v1).add_service(v1alpha);
    Ok((router, health))
}

/// Serves `router` on `listener` until `stop`.
pub async fn serve(
    router: Router,
    listener: tokio::net::TcpListener,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    router.serve_with_incoming_shutdown(incoming(listener), async move { stop.cancelled().await }).await
}

/// Accepted connections with `TCP_NODELAY`: a stream of small messages (one record, one chunk) must not wait
/// for the peer's delayed ACK (Nagle's algorithm held records back about 40 ms each time, measured in the lag
/// benchmark). `serve_with_incoming` leaves socket options to the caller.
fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Reports the whole server and `service` as serving or not.
pub async fn report(health: &HealthReporter, service: &str, serving: bool) {
    let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
    health.set_service_status("", status).await;
    health.set_service_status(service, status).await;
}
