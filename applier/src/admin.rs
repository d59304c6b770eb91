//! The applier's admin gRPC service `replica.v1.Applier` (with reflection and health): copy status,
//! pause/resume, and per-table re-copies, which the apply loop carries out.

use std::sync::Arc;
use std::time::Duration;

use common::proto::applier_server::{Applier as AdminApi, ApplierServer};
use common::proto::{self, GetInfoRequest};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;

use crate::apply::Applier;
use crate::config::Config;
use crate::copy::CopyShared;
use crate::metrics::ApplierMetrics;

/// Requests the apply loop carries out between transactions.
pub enum AdminCmd {
    Resync { schema: String, table: String, reply: oneshot::Sender<Result<String, String>> },
}

pub async fn handle(applier: &mut Applier, cmd: AdminCmd) {
    match cmd {
        AdminCmd::Resync { schema, table, reply } => {
            let _ = reply.send(applier.resync_table(&schema, &table).await);
        }
    }
}

pub struct AdminState {
    pub config: Arc<Config>,
    pub shared: Arc<CopyShared>,
    pub commands: mpsc::Sender<AdminCmd>,
    pub applied: watch::Receiver<u64>,
    pub metrics: ApplierMetrics,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin service settings: {0}")]
    Settings(String),
    #[error("admin gRPC service failed")]
    Serve(#[from] tonic::transport::Error),
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    stop: CancellationToken,
) -> Result<(), AdminError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    let mut serving = state.shared.serving.subscribe();
    let health_stop = stop.clone();
    tokio::spawn(async move {
        loop {
            let s = if *serving.borrow_and_update() { ServingStatus::Serving } else { ServingStatus::NotServing };
            health.set_service_status("", s).await;
            health.set_service_status("replica.v1.Applier", s).await;
            tokio::select! {
                _ = health_stop.cancelled() => return,
                r = serving.changed() => if r.is_err() { return },
            }
        }
    });
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(common::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = state.config.security.server_tls().map_err(AdminError::Settings)? {
        builder = builder.tls_config(tls)?;
    }
    let token = state.config.security.require_token();
    let mut server = builder.add_service(health_service).add_service(ApplierServer::with_interceptor(state, token));
    if let (Ok(v1), Ok(v1alpha)) = (reflection().build_v1(), reflection().build_v1alpha()) {
        server = server.add_service(v1).add_service(v1alpha);
    }
    server
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async move {
            stop.cancelled().await
        })
        .await?;
    Ok(())
}

#[tonic::async_trait]
impl AdminApi for AdminState {
    async fn get_status(
        &self,
        _: Request<proto::GetStatusRequest>,
    ) -> Result<Response<proto::GetStatusResponse>, Status> {
        let shared = &self.shared;
        let tables: Vec<proto::TableProgress> = shared
            .progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|((schema, table), p)| proto::TableProgress {
                schema: schema.clone(),
                table: table.clone(),
                state: p.state.clone(),
                rows_copied: p.rows_copied,
                rows_estimated: p.rows_estimated.max(p.rows_copied),
                chunks: p.chunks,
                key_kind: p.key_kind.clone(),
            })
            .collect();
        let (rows_copied, rows_estimated) = shared.totals();
        let copying = shared.copying();
        let rate = shared.rate();
        let eta =
            if copying && rate > 0.0 { (rows_estimated.saturating_sub(rows_copied) as f64 / rate) as u64 } else { 0 };
        let applied = *self.applied.borrow();
        let head = async {
            let mut client = crate::connect(&self.config).await.ok()?;
            let info = client.get_info(GetInfoRequest {}).await.ok()?;
            Some(info.into_inner().last_offset)
        };
        let head = tokio::time::timeout(Duration::from_secs(2), head).await.ok().flatten().unwrap_or(0);
        let quarantined = shared
            .quarantined
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|((schema, table), (since, error))| proto::QuarantinedTable {
                schema: schema.clone(),
                table: table.clone(),
                since_offset: *since,
                error: error.clone(),
            })
            .collect();
        Ok(Response::new(proto::GetStatusResponse {
            phase: if copying { "copying" } else { "streaming" }.into(),
            copy_paused: *shared.paused.borrow(),
            tables,
            rows_copied,
            rows_estimated,
            copy_rows_per_second: rate,
            eta_seconds: eta,
            applied_offset: applied,
            reader_last_offset: head,
            lag_records: head.saturating_sub(applied),
            lag_seconds: self.metrics.lag_seconds(),
            quarantined,
            consumer: self.config.name.clone(),
        }))
    }

    async fn pause_copy(
        &self,
        _: Request<proto::PauseCopyRequest>,
    ) -> Result<Response<proto::PauseCopyResponse>, Status> {
        self.shared.paused.send_replace(true);
        tracing::info!(consumer = %self.config.name, "copy paused");
        Ok(Response::new(proto::PauseCopyResponse { paused: true }))
    }

    async fn resume_copy(
        &self,
        _: Request<proto::ResumeCopyRequest>,
    ) -> Result<Response<proto::ResumeCopyResponse>, Status> {
        self.shared.paused.send_replace(false);
        tracing::info!(consumer = %self.config.name, "copy resumed");
        Ok(Response::new(proto::ResumeCopyResponse { paused: false }))
    }

    async fn resync_table(
        &self,
        req: Request<proto::ResyncTableRequest>,
    ) -> Result<Response<proto::ResyncTableResponse>, Status> {
        let req = req.into_inner();
        if req.schema.is_empty() || req.table.is_empty() {
            return Err(Status::invalid_argument("schema and table are required"));
        }
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(AdminCmd::Resync { schema: req.schema, table: req.table, reply })
            .await
            .map_err(|_| Status::unavailable("the applier is stopping"))?;
        match answer.await {
            Ok(Ok(message)) => Ok(Response::new(proto::ResyncTableResponse { message })),
            Ok(Err(e)) => Err(Status::failed_precondition(e)),
            Err(_) => Err(Status::unavailable("the applier is stopping")),
        }
    }
}
