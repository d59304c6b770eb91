//! `replica-applier`: applies the reader's journal to one secondary, exactly once.
//!
//! # Map
//!
//! ```text
//!  reader ──gRPC──▶ stream ──records──▶ plan ──groups──▶ writer ──SQL + checkpoint──▶ secondary
//!    ▲   (subscribe, bounded   (planner:     (one connection:   (rows, net, sql, drift,
//!    │    buffer, acks)          grouping,     retries, quarantine) checkpoint, secondary)
//!    │                           floors)            ▲
//!    │                                              │ at each chunk's boundary
//!    ├──ListTables / ReadChunk── copy::worker ──items──▶ copy::place ──▶ copy::chunk (own connections)
//!    └──ChecksumChunks────────── verify::run (floors; own connection: snapshots at a boundary, repairs)
//!
//!  apply_loop: the one owner of the checkpoint; drives plan → writer and copy::place, admin commands, health checks
//!  health: NOT_SERVING when stalled or disconnected      admin: replica.v1.Applier (status, pause, resync)
//! ```
//!
//! | stage | file | owns |
//! | --- | --- | --- |
//! | stream from the reader | [`stream`], [`reader_client`] | the subscription, the receive buffer, acks |
//! | a new journal | [`relocate`] | finding the checkpoint's place in it by GTID |
//! | planner | [`plan`], [`net`] | grouping limits, the carried record, net changes per key |
//! | parallel apply | [`parallel`], [`identity`], [`parents`] | workers, write sets (with foreign keys' parent rows), the low-water mark over their commits |
//! | writer | [`writer`], [`rows`], [`long`], [`versioned`], [`sql`], [`ddl`], [`drift`], [`secondary`], [`checkpoint`] | the secondary connection, the checkpoint |
//! | local writes on the secondary | [`conflict`] | detection and resolution (`REPLICA_CONFLICTS`) |
//! | per-table policy | [`table`] | copy modes and quarantines |
//! | initial copy | [`copy`] | copy state machine, workers, floors, chunk placement |
//! | online verification | [`verify`] | comparing with the primary at a journal boundary, repairs |
//! | apply loop | [`apply_loop`] | the order of everything that moves the checkpoint |
//! | health, admin (gRPC and HTTP JSON), metrics | [`health`], [`admin`], [`http_api`], [`metrics`] | |
//! | errors | [`error`] | the one taxonomy and retry classification |
//!
//! This file only wires the stages together and waits for them.

pub mod admin;
pub mod apply_loop;
pub mod checkpoint;
pub mod config;
pub mod conflict;
pub mod copy;
pub mod ddl;
pub mod drift;
pub mod error;
pub mod health;
pub mod http_api;
pub mod identity;
pub mod long;
pub mod metrics;
pub mod net;
pub mod parallel;
pub mod parents;
pub mod plan;
pub mod reader_client;
pub mod relocate;
pub mod rows;
pub mod secondary;
pub mod sql;
pub mod stream;
pub mod table;
pub mod verify;
pub mod versioned;
pub mod writer;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::apply_loop::{ApplyLoop, Inputs};
use crate::config::Config;
use crate::copy::board::CopyBoard;
use crate::error::ApplyError;
use crate::metrics::ApplierMetrics;
use crate::stream::{Records, StreamState};
use crate::table::QuarantineBoard;
use crate::verify::board::VerifyBoard;
use crate::writer::Writer;

/// Runs the applier until `shutdown` (Ok) or a permanent error.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), ApplyError> {
    let config = Arc::new(config);
    let metrics = ApplierMetrics::default();
    let (applied_tx, applied_rx) = watch::channel(0u64);
    let tasks = tokio_util::task::TaskTracker::new();
    let board = Arc::new(CopyBoard::default());
    let verify = Arc::new(VerifyBoard::default());
    let quarantined = QuarantineBoard::default();
    // Health, status and metrics answer from the start: NOT_SERVING until the secondary has answered and the
    // health watch takes over (an applier waiting for its secondary must not look healthy, nor be invisible).
    let (serving_tx, serving_rx) = watch::channel(false);
    let (admin_tx, admin_rx) = mpsc::channel(16);
    let state = Arc::new(admin::AdminState {
        config: config.clone(),
        board: board.clone(),
        quarantined: quarantined.clone(),
        commands: admin_tx.clone(),
        verify: verify.clone(),
        applied: applied_rx.clone(),
        serving: serving_rx,
        metrics: metrics.clone(),
    });
    if let Some(addr) = config.admin_addr {
        serve_admin(addr, state.clone(), &tasks, &shutdown).await?;
    }
    if let Some(addr) = config.http_addr {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| ApplyError::Listen {
            addr,
            setting: "REPLICA_HTTP_ADDR",
            source,
        })?;
        let stop = shutdown.clone();
        tasks.spawn(async move {
            if let Err(e) = http_api::serve(listener, state, stop).await {
                warn!(error = %e, %addr, "admin HTTP endpoint failed");
            }
        });
    }
    if let Some(addr) = config.metrics_addr {
        let serve = common::metrics::serve(addr, Arc::new(metrics.registry()), shutdown.clone());
        tasks.spawn(async move {
            if let Err(e) = serve.await {
                warn!(error = %e, %addr, "metrics endpoint failed");
            }
        });
    }
    let wiring = Wiring { board, verify, quarantined, applied_tx, applied_rx, serving_tx, admin_tx, admin_rx };
    let result = apply(config.clone(), metrics, wiring, &tasks, &shutdown).await;
    shutdown.cancel();
    tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
    result
}

/// What the admin service and the health reporter share with the stages, made before the secondary is open.
struct Wiring {
    board: Arc<CopyBoard>,
    verify: Arc<VerifyBoard>,
    quarantined: QuarantineBoard,
    applied_tx: watch::Sender<u64>,
    applied_rx: watch::Receiver<u64>,
    serving_tx: watch::Sender<bool>,
    admin_tx: mpsc::Sender<admin::AdminCmd>,
    admin_rx: mpsc::Receiver<admin::AdminCmd>,
}

/// Opens the secondary, then runs the stream, the copy workers and the apply loop until `shutdown`.
async fn apply(
    config: Arc<Config>,
    metrics: ApplierMetrics,
    wiring: Wiring,
    tasks: &tokio_util::task::TaskTracker,
    shutdown: &CancellationToken,
) -> Result<(), ApplyError> {
    let Wiring { board, verify, quarantined, applied_tx, applied_rx, serving_tx, admin_tx, admin_rx } = wiring;
    let Some((mut writer, resumed)) =
        Writer::open(config.clone(), applied_tx, metrics.clone(), shutdown.clone()).await?
    else {
        return Ok(());
    };
    let secondary_ok = writer.secondary().ok_flag();
    let (chunks_tx, chunks_rx) = mpsc::channel(16);
    let mut apply = ApplyLoop::new(
        config.clone(),
        writer,
        board.clone(),
        chunks_tx,
        metrics.clone(),
        quarantined.clone(),
        shutdown.clone(),
    );
    if !apply.prepare(resumed, shutdown).await? {
        return Ok(());
    }
    metrics.quarantined(apply.tables.quarantined_count());
    let applied = apply.writer.applied();
    let order = match (config.apply_workers, config.commit_order) {
        (1, _) => "source order (one connection)",
        (_, true) => "the primary's commit order (REPLICA_COMMIT_ORDER)",
        _ => {
            "per row: transactions on different rows may become visible out of the primary's order \
              (REPLICA_COMMIT_ORDER=true keeps it)"
        }
    };
    info!(consumer = %config.name, offset = applied, reader = %config.reader_url, workers = config.apply_workers,
          order, "applier starting");

    let stream_state = Arc::new(StreamState::default());
    stream_state.set_journal(apply.writer.journal_id());
    let watch = health::Watch {
        config: config.clone(),
        stream: stream_state.clone(),
        secondary_ok,
        applied: applied_rx.clone(),
        serving: serving_tx,
        metrics: metrics.clone(),
    };
    tasks.spawn(watch.run(shutdown.clone()));

    // Before the copy workers start: their floors begin at the last offset received.
    let records = Records::start(config.clone(), applied + 1, stream_state.clone(), shutdown);
    let (items_tx, items_rx) = mpsc::channel(16);
    let copy_stop = shutdown.child_token();
    let workers = copy::worker::Workers {
        config: config.clone(),
        board: board.clone(),
        stream: stream_state.clone(),
        items: items_tx,
    };
    let copying = tokio::spawn(workers.run(copy_stop.clone()));
    tasks.spawn(copy::report::run(board.clone(), copy_stop.clone()));
    let verifier = verify::run::Verifier {
        config: config.clone(),
        board: verify,
        copy: board.clone(),
        quarantined,
        stream: stream_state.clone(),
        applied: applied_rx.clone(),
        commands: admin_tx,
        metrics: metrics.clone(),
    };
    let verifying = tokio::spawn(verifier.run(copy_stop.clone()));

    // Stopped only after the apply loop, so that its final ack covers the last commit.
    let ack_stop = CancellationToken::new();
    let acks = tokio::spawn(stream::ack_loop(config.clone(), stream_state.clone(), applied_rx, ack_stop.clone()));

    let mut inputs = Inputs { records, items: items_rx, chunks: chunks_rx, admin: admin_rx };
    let result = apply.run(&mut inputs, shutdown).await;
    copy_stop.cancel();
    let _ = copying.await;
    let _ = verifying.await;
    ack_stop.cancel();
    inputs.records.stop().await;
    // The ack loop sends a final ack of what is committed before it ends.
    let _ = tokio::time::timeout(Duration::from_secs(5), acks).await;
    info!(consumer = %config.name, offset = apply.writer.applied(), "applier stopped");
    result
}

/// Listens on `addr` (an error if it cannot) and serves the admin service there until `shutdown`.
async fn serve_admin(
    addr: std::net::SocketAddr,
    state: Arc<admin::AdminState>,
    tasks: &tokio_util::task::TaskTracker,
    shutdown: &CancellationToken,
) -> Result<(), ApplyError> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| ApplyError::Listen {
        addr,
        setting: "REPLICA_ADMIN_ADDR",
        source,
    })?;
    info!(addr = %listener.local_addr().unwrap_or(addr), "admin gRPC listening");
    let stop = shutdown.clone();
    tasks.spawn(async move {
        if let Err(e) = admin::serve(listener, state, stop).await {
            warn!(error = %common::lifecycle::error_chain(&e), "admin gRPC service failed");
        }
    });
    Ok(())
}
