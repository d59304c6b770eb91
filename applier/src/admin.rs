//! The applier's admin gRPC service `replica.v1.Applier` (with reflection and health): copy status,
//! pause/resume, and per-table re-copies, which the apply loop carries out between transactions.

use std::sync::Arc;
use std::time::Duration;

use common::proto::applier_server::{Applier as AdminApi, ApplierServer};
use common::proto::{self, GetInfoRequest};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::config::Config;
use crate::copy::board::CopyBoard;
use crate::error::{self, ApplyError};
use crate::metrics::ApplierMetrics;
use crate::reader_client;
use crate::table::QuarantineBoard;
use crate::verify::board::VerifyBoard;

/// Requests the apply loop carries out between transactions.
#[derive(Debug)]
pub enum AdminCmd {
    Resync { schema: String, table: String, reply: oneshot::Sender<Result<String, ApplyError>> },
}

/// What the admin service reads and where it sends its commands.
pub struct AdminState {
    pub config: Arc<Config>,
    pub board: Arc<CopyBoard>,
    pub quarantined: QuarantineBoard,
    pub commands: mpsc::Sender<AdminCmd>,
    pub verify: Arc<VerifyBoard>,
    pub applied: watch::Receiver<u64>,
    pub serving: watch::Receiver<bool>,
    pub metrics: ApplierMetrics,
}

/// Serves on `listener` until `stop`, with health following `state.serving`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AdminState>,
    stop: CancellationToken,
) -> Result<(), ApplyError> {
    let (router, health) =
        common::grpc_server::router(&state.config.security).map_err(|e| ApplyError::AdminSettings(e.to_string()))?;
    let mut serving = state.serving.clone();
    let health_stop = stop.clone();
    tokio::spawn(async move {
        loop {
            let now = *serving.borrow_and_update();
            common::grpc_server::report(&health, "replica.v1.Applier", now).await;
            tokio::select! {
                _ = health_stop.cancelled() => return,
                r = serving.changed() => if r.is_err() { return },
            }
        }
    });
    let token = state.config.security.require_token();
    let service = tonic::service::interceptor::InterceptedService::new(ApplierServer::from_arc(state), token);
    let router = router.add_service(service);
    Ok(common::grpc_server::serve(router, listener, stop).await?)
}

#[tonic::async_trait]
impl AdminApi for AdminState {
    async fn get_status(
        &self,
        _: Request<proto::GetStatusRequest>,
    ) -> Result<Response<proto::GetStatusResponse>, Status> {
        let board = &self.board;
        let tables: Vec<proto::TableProgress> = board
            .snapshot()
            .into_iter()
            .map(|((schema, table), p)| proto::TableProgress {
                schema,
                table,
                state: p.state.as_str().into(),
                rows_copied: p.rows_copied,
                rows_estimated: p.rows_estimated.max(p.rows_copied),
                chunks: p.chunks,
                key_kind: p.key_kind.as_str().into(),
            })
            .collect();
        let (rows_copied, rows_estimated) = board.totals();
        let copying = board.copying();
        let rate = board.rate();
        let eta =
            if copying && rate > 0.0 { (rows_estimated.saturating_sub(rows_copied) as f64 / rate) as u64 } else { 0 };
        let applied = *self.applied.borrow();
        let head = async {
            let mut client = reader_client::connect(&self.config).await.ok()?;
            let info = client.get_info(GetInfoRequest {}).await.ok()?;
            Some(info.into_inner().last_offset)
        };
        let head = tokio::time::timeout(Duration::from_secs(2), head).await.ok().flatten().unwrap_or(0);
        let quarantined = self
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
            copy_paused: *board.paused.borrow(),
            tables,
            rows_copied,
            rows_estimated,
            copy_rows_per_second: rate,
            eta_seconds: eta,
            applied_offset: applied,
            reader_last_offset: head,
            lag_records: head.saturating_sub(applied),
            lag_seconds: self.metrics.lag_seconds(),
            behind_seconds: self.metrics.behind_seconds(),
            quarantined,
            consumer: self.config.name.clone(),
        }))
    }

    async fn pause_copy(
        &self,
        _: Request<proto::PauseCopyRequest>,
    ) -> Result<Response<proto::PauseCopyResponse>, Status> {
        self.board.paused.send_replace(true);
        tracing::info!(consumer = %self.config.name, "copy paused");
        Ok(Response::new(proto::PauseCopyResponse { paused: true }))
    }

    async fn resume_copy(
        &self,
        _: Request<proto::ResumeCopyRequest>,
    ) -> Result<Response<proto::ResumeCopyResponse>, Status> {
        self.board.paused.send_replace(false);
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
        fn stopping<E>(_: E) -> Status {
            error::status(&ApplyError::Stopping)
        }
        self.commands.send(AdminCmd::Resync { schema: req.schema, table: req.table, reply }).await.map_err(stopping)?;
        match answer.await.map_err(stopping)? {
            Ok(message) => Ok(Response::new(proto::ResyncTableResponse { message })),
            Err(e) => Err(error::status(&e)),
        }
    }

    async fn start_verify(
        &self,
        req: Request<proto::StartVerifyRequest>,
    ) -> Result<Response<proto::StartVerifyResponse>, Status> {
        let req = req.into_inner();
        if req.schema.is_empty() && !req.table.is_empty() {
            return Err(Status::invalid_argument("a table needs its schema"));
        }
        let mut client = reader_client::connect(&self.config).await.map_err(|e| error::status(&e))?;
        let listed = client
            .list_tables(proto::ListTablesRequest {
                schema: req.schema.clone(),
                table: req.table.clone(),
                consumer: String::new(),
            })
            .await
            .map_err(|s| error::status(&reader_client::refused("ListTables")(s)))?
            .into_inner();
        let tables: Vec<(String, String)> = listed.tables.into_iter().map(|t| (t.schema, t.name)).collect();
        if tables.is_empty() {
            let what = if req.schema.is_empty() {
                "no table".to_owned()
            } else {
                format!("no table {}.{}", req.schema, req.table)
            };
            return Err(Status::not_found(format!(
                "the reader serves {what} (check the names and the reader's filters)"
            )));
        }
        let names = tables.iter().map(|(s, t)| format!("{s}.{t}")).collect();
        tracing::info!(consumer = %self.config.name, tables = tables.len(), repair = req.repair, "verification started");
        self.verify.start(tables, req.repair);
        Ok(Response::new(proto::StartVerifyResponse { tables: names }))
    }

    async fn get_verify(
        &self,
        _: Request<proto::GetVerifyRequest>,
    ) -> Result<Response<proto::GetVerifyResponse>, Status> {
        Ok(Response::new(self.verify.lock().report()))
    }

    async fn stop_verify(
        &self,
        _: Request<proto::StopVerifyRequest>,
    ) -> Result<Response<proto::StopVerifyResponse>, Status> {
        let stopped = self.verify.stop();
        if stopped {
            tracing::info!(consumer = %self.config.name, "verification stopped");
        }
        Ok(Response::new(proto::StopVerifyResponse { stopped }))
    }
}
