//! The admin operations as a small HTTP JSON surface (`REPLICA_HTTP_ADDR`), for tools that speak HTTP rather
//! than gRPC: the same calls as `replica.v1.Applier`, answered by the same code, behind the same bearer token.
//!
//! | method and path | does |
//! | --- | --- |
//! | `GET /v1/status` | `GetStatus` as JSON |
//! | `GET /v1/health` | `{"serving": bool}`, 200 or 503 (no token needed, like gRPC health) |
//! | `POST /v1/copy/pause`, `POST /v1/copy/resume` | `PauseCopy`, `ResumeCopy` |
//! | `POST /v1/tables/{schema}/{table}/resync` | `ResyncTable` |
//! | `POST /v1/verify` (body `{"schema": "", "table": "", "repair": false}`, all optional) | `StartVerify` |
//! | `GET /v1/verify`, `POST /v1/verify/stop` | `GetVerify`, `StopVerify` |
//!
//! Errors are `{"error": "..."}` with the HTTP status of the gRPC code (400, 401, 404, 409, 503, 500).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use common::proto::applier_server::Applier as AdminApi;
use common::proto::{self, GetStatusResponse};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::admin::AdminState;

/// Serves the HTTP surface on `listener` until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AdminState>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/v1/status", get(status))
        .route("/v1/health", get(health))
        .route("/v1/copy/pause", post(pause))
        .route("/v1/copy/resume", post(resume))
        .route("/v1/tables/{schema}/{table}/resync", post(resync))
        .route("/v1/verify", get(get_verify).post(start_verify))
        .route("/v1/verify/stop", post(stop_verify))
        .with_state(state);
    info!(addr = %listener.local_addr()?, "admin HTTP listening");
    axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await
}

type Answer = Result<Json<Value>, Refusal>;

/// An error answer: `{"error": message}` with an HTTP status.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn error(code: StatusCode, message: &str) -> Refusal {
    Refusal(code, message.to_owned())
}

fn from_status(s: tonic::Status) -> Refusal {
    let code = match s.code() {
        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
        tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::FailedPrecondition | tonic::Code::AlreadyExists => StatusCode::CONFLICT,
        tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(code, s.message())
}

/// The bearer token, checked as the gRPC services check it.
fn authorized(state: &AdminState, headers: &HeaderMap) -> Result<(), Refusal> {
    let given = headers.get("authorization").and_then(|v| v.to_str().ok());
    if state.config.security.require_token().accepts(given) {
        Ok(())
    } else {
        Err(error(StatusCode::UNAUTHORIZED, common::grpc_security::RequireToken::REFUSAL))
    }
}

fn status_json(s: GetStatusResponse) -> Value {
    let tables: Vec<Value> = s
        .tables
        .into_iter()
        .map(|t| {
            json!({
                "schema": t.schema, "table": t.table, "state": t.state, "rows_copied": t.rows_copied,
                "rows_estimated": t.rows_estimated, "chunks": t.chunks, "key_kind": t.key_kind,
            })
        })
        .collect();
    let quarantined: Vec<Value> = s
        .quarantined
        .into_iter()
        .map(|q| json!({ "schema": q.schema, "table": q.table, "since_offset": q.since_offset, "error": q.error }))
        .collect();
    json!({
        "consumer": s.consumer,
        "phase": s.phase,
        "copy_paused": s.copy_paused,
        "rows_copied": s.rows_copied,
        "rows_estimated": s.rows_estimated,
        "copy_rows_per_second": s.copy_rows_per_second,
        "eta_seconds": s.eta_seconds,
        "applied_offset": s.applied_offset,
        "reader_last_offset": s.reader_last_offset,
        "lag_records": s.lag_records,
        "lag_seconds": s.lag_seconds,
        "behind_seconds": s.behind_seconds,
        "tables": tables,
        "quarantined": quarantined,
    })
}

async fn status(State(state): State<Arc<AdminState>>, headers: HeaderMap) -> Answer {
    authorized(&state, &headers)?;
    let s = state.get_status(tonic::Request::new(proto::GetStatusRequest {})).await.map_err(from_status)?;
    Ok(Json(status_json(s.into_inner())))
}

async fn health(State(state): State<Arc<AdminState>>) -> Response {
    let serving = *state.serving.borrow();
    let code = if serving { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(json!({ "serving": serving }))).into_response()
}

async fn pause(State(state): State<Arc<AdminState>>, headers: HeaderMap) -> Answer {
    authorized(&state, &headers)?;
    let r = state.pause_copy(tonic::Request::new(proto::PauseCopyRequest {})).await.map_err(from_status)?;
    Ok(Json(json!({ "paused": r.into_inner().paused })))
}

async fn resume(State(state): State<Arc<AdminState>>, headers: HeaderMap) -> Answer {
    authorized(&state, &headers)?;
    let r = state.resume_copy(tonic::Request::new(proto::ResumeCopyRequest {})).await.map_err(from_status)?;
    Ok(Json(json!({ "paused": r.into_inner().paused })))
}

async fn resync(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    Path((schema, table)): Path<(String, String)>,
) -> Answer {
    authorized(&state, &headers)?;
    let request = tonic::Request::new(proto::ResyncTableRequest { schema, table });
    let r = state.resync_table(request).await.map_err(from_status)?;
    Ok(Json(json!({ "message": r.into_inner().message })))
}

async fn start_verify(State(state): State<Arc<AdminState>>, headers: HeaderMap, body: axum::body::Bytes) -> Answer {
    authorized(&state, &headers)?;
    let body: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("the body is not JSON: {e}")))?
    };
    let text = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
    let request = proto::StartVerifyRequest {
        schema: text("schema"),
        table: text("table"),
        repair: body.get("repair").and_then(Value::as_bool).unwrap_or(false),
    };
    let r = state.start_verify(tonic::Request::new(request)).await.map_err(from_status)?;
    Ok(Json(json!({ "tables": r.into_inner().tables })))
}

async fn get_verify(State(state): State<Arc<AdminState>>, headers: HeaderMap) -> Answer {
    authorized(&state, &headers)?;
    let r = state.get_verify(tonic::Request::new(proto::GetVerifyRequest {})).await.map_err(from_status)?.into_inner();
    let tables: Vec<Value> = r
        .tables
        .iter()
        .map(|t| {
            json!({
                "schema": t.schema, "table": t.table, "state": t.state, "key_kind": t.key_kind,
                "chunks_compared": t.chunks_compared, "rows_compared": t.rows_compared,
                "chunks_differing": t.chunks_differing, "rows_differing": t.rows_differing,
                "rows_repaired": t.rows_repaired, "rows_per_second": t.rows_per_second, "message": t.message,
                "sample": t.sample.iter().map(|d| json!({
                    "key": d.key, "kind": d.kind, "primary_row": d.primary_row, "secondary_row": d.secondary_row,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Json(json!({
        "state": r.state, "repair": r.repair, "rows_compared": r.rows_compared, "rows_differing": r.rows_differing,
        "rows_repaired": r.rows_repaired, "rows_per_second": r.rows_per_second, "tables_differing": r.tables_differing,
        "tables": tables,
    })))
}

async fn stop_verify(State(state): State<Arc<AdminState>>, headers: HeaderMap) -> Answer {
    authorized(&state, &headers)?;
    let r = state.stop_verify(tonic::Request::new(proto::StopVerifyRequest {})).await.map_err(from_status)?;
    Ok(Json(json!({ "stopped": r.into_inner().stopped })))
}
