//! `replica-applier`: applies the reader's journal to one secondary, exactly once.
//!
//! Data flow: a subscription task streams records from the reader (resubscribing with backoff after any
//! interruption, from the next offset it needs) into a small bounded channel; the apply loop groups
//! consecutive records into one secondary transaction that also moves the checkpoint ([`apply`]); an ack
//! task reports the applied offset to the reader at most every 100 ms. The secondary's checkpoint is the
//! truth: acks only drive the reader's retention and monitoring.

pub mod admin;
pub mod apply;
pub mod checkpoint;
pub mod config;
pub mod copy;
pub mod drift;
pub mod error;
pub mod metrics;
pub mod net;
pub mod place;
pub mod sql;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::event::{Body, Record};
use common::proto::journal_client::JournalClient;
use common::proto::{AckRequest, SubscribeRequest};
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::admin::AdminCmd;
use crate::apply::Applier;
use crate::config::Config;
use crate::copy::{CopyItem, CopyShared};
use crate::error::ApplyError;

/// Records buffered between the subscription and the apply loop: enough for large groups of small
/// transactions (a 256-record buffer kept sysbench-sized groups at ~1,000 rows and the applier at 1.17× of
/// native replication instead of 1.46×). Their memory is bounded by [`BUFFER_BYTES`].
const RECORD_BUFFER: usize = 2048;
/// Approximate bytes of records received but not yet applied.
const BUFFER_BYTES: u32 = 64 << 20;

/// A record, its weight, and its share of the receive budget, released once it is applied.
type Received = (Record, Weight, tokio::sync::OwnedSemaphorePermit);

/// Row changes and approximate bytes of a record, for bounding transactions and buffers.
#[derive(Debug, Clone, Copy)]
struct Weight {
    rows: usize,
    bytes: u64,
}
const ACK_INTERVAL: Duration = Duration::from_millis(100);

/// Runs the applier until `shutdown` (Ok) or a permanent error.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), ApplyError> {
    let config = Arc::new(config);
    let (applied_tx, applied_rx) = watch::channel(0u64);
    let (chunk_tx, mut chunk_rx) = mpsc::channel(16);
    let mut applier = Applier::start(config.clone(), applied_tx, shutdown.clone(), chunk_tx).await?;
    if applier.needs_copy {
        applier.begin_copy().await?;
        if shutdown.is_cancelled() {
            return Ok(());
        }
    }
    info!(consumer = %config.name, offset = applier.applied, reader = %config.reader_url, "applier starting");
    let shared = applier.shared.clone();
    shared.received.store(applier.applied, Ordering::SeqCst);
    let (items_tx, mut items_rx) = mpsc::channel(16);
    let (admin_tx, mut admin_rx) = mpsc::channel(16);
    if let Some(addr) = config.admin_addr {
        let state = admin::AdminState {
            config: config.clone(),
            shared: shared.clone(),
            commands: admin_tx,
            applied: applied_rx.clone(),
            metrics: applier.metrics.clone(),
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| ApplyError::Task(format!("cannot listen on {addr} (REPLICA_ADMIN_ADDR): {e}")))?;
        info!(addr = %listener.local_addr().map_err(|e| ApplyError::Task(e.to_string()))?, "admin gRPC listening");
        let stop = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = admin::serve(listener, state, stop).await {
                warn!(error = %e, "admin gRPC service failed");
            }
        });
    }
    tokio::spawn(watch_health(config.clone(), shared.clone(), applied_rx.clone(), shutdown.clone()));
    let copy_stop = shutdown.child_token();
    let workers = tokio::spawn(copy::run_workers(config.clone(), shared.clone(), items_tx, copy_stop.clone()));

    applier.metrics.quarantined(applier.quarantined_tables().len());
    if let Some(addr) = config.metrics_addr {
        let serve = common::metrics::serve(addr, Arc::new(applier.metrics.registry()), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = serve.await {
                warn!(error = %e, %addr, "metrics endpoint failed");
            }
        });
    }
    let (tx, mut rx) = mpsc::channel(RECORD_BUFFER);
    let stream_stop = shutdown.child_token();
    let budget = Arc::new(tokio::sync::Semaphore::new(BUFFER_BYTES as usize));
    let subscription = tokio::spawn(subscribe_loop(
        config.clone(),
        applier.applied + 1,
        tx,
        budget,
        shared.clone(),
        stream_stop.clone(),
    ));
    // Stopped only after the apply loop, so that its final ack covers the last commit.
    let ack_stop = CancellationToken::new();
    let acks = tokio::spawn(ack_loop(config.clone(), applied_rx, ack_stop.clone()));

    let result =
        apply_loop(&config, &mut applier, &mut rx, &mut items_rx, &mut chunk_rx, &mut admin_rx, &shutdown).await;
    copy_stop.cancel();
    let _ = workers.await;
    stream_stop.cancel();
    ack_stop.cancel();
    let _ = subscription.await;
    // The ack loop sends a final ack of what is committed before it ends.
    let _ = tokio::time::timeout(Duration::from_secs(5), acks).await;
    info!(consumer = %config.name, offset = applier.applied, "applier stopped");
    result
}

fn weight(r: &Record) -> Weight {
    match &r.body {
        Body::Ddl { statement, .. } => Weight { rows: 0, bytes: statement.len() as u64 },
        Body::Transaction(changes) => Weight {
            rows: r.row_count(),
            bytes: changes
                .iter()
                .flat_map(|c| &c.rows)
                .flat_map(|row| row.values())
                .map(|v| v.approx_size() as u64)
                .sum(),
        },
    }
}

async fn apply_loop(
    config: &Config,
    applier: &mut Applier,
    rx: &mut mpsc::Receiver<Result<Received, ApplyError>>,
    items: &mut mpsc::Receiver<CopyItem>,
    chunks: &mut mpsc::Receiver<place::ChunkDone>,
    admin: &mut mpsc::Receiver<AdminCmd>,
    shutdown: &CancellationToken,
) -> Result<(), ApplyError> {
    let shared: Arc<CopyShared> = applier.shared.clone();
    let mut floors = shared.floors_changed.subscribe();
    let mut health = tokio::time::interval(config.health_interval);
    health.tick().await;
    let mut carry: Option<Received> = None;
    // Copy items by (boundary, id), waiting for the checkpoint to reach their boundary.
    let mut waiting: BTreeMap<(u64, u64), CopyItem> = BTreeMap::new();
    let (mut items_open, mut admin_open) = (true, true);
    loop {
        // Items whose boundary is reached, except a chunk of a table whose previous chunk is being written.
        while let Some(key) = waiting
            .iter()
            .take_while(|((boundary, _), _)| *boundary <= applier.applied)
            .find(|(_, item)| item.chunk_table().is_none_or(|t| !applier.writing.contains(&t)))
            .map(|(key, _)| *key)
        {
            let Some(item) = waiting.remove(&key) else { break };
            let (boundary, id) = key;
            if boundary < applier.applied {
                warn!(consumer = %config.name, boundary, applied = applier.applied, "copy item arrived behind the checkpoint; it is fetched again");
                place::reply_stale(item, "the chunk arrived behind the checkpoint");
            } else {
                let chunk = matches!(item, CopyItem::Chunk { .. });
                applier.place(item).await?;
                if chunk {
                    // Its floor holds the loop at the boundary until the chunk is written (or refused).
                    continue;
                }
            }
            shared.clear_floor(id);
        }
        // Never past the boundary of a chunk being fetched (see copy.rs).
        let limit = shared.limit();
        if carry.as_ref().is_none_or(|(r, _, _)| r.offset.0 > limit) {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                item = items.recv(), if items_open => match item {
                    Some(item) => match item.id_and_boundary() {
                        Some((id, boundary)) => {
                            waiting.insert((boundary, id), item);
                        }
                        None => applier.place(item).await?,
                    },
                    None => items_open = false,
                },
                written = chunks.recv() => if let Some(written) = written {
                    let id = written.id;
                    let result = applier.chunk_done(written).await;
                    shared.clear_floor(id);
                    result?;
                },
                cmd = admin.recv(), if admin_open => match cmd {
                    Some(cmd) => admin::handle(applier, cmd).await,
                    None => admin_open = false,
                },
                changed = floors.changed() => if changed.is_err() { return Ok(()) },
                _ = health.tick() => applier.health_check().await,
                r = rx.recv(), if carry.is_none() => match r {
                    Some(r) => carry = Some(r?),
                    None => return Ok(()),
                },
            }
            continue;
        }
        let Some((first, first_weight, permit)) = carry.take() else { continue };
        let mut permits = vec![permit];
        let mut expected = applier.applied + 1;
        check_offset(&first, expected)?;
        expected += 1;
        let is_ddl = matches!(first.body, Body::Ddl { .. });
        let (mut rows, mut bytes) = (first_weight.rows, first_weight.bytes);
        let mut group = vec![first];
        let started = Instant::now();
        while !is_ddl && rows < config.batch_rows && bytes < config.batch_bytes && started.elapsed() < config.batch_time
        {
            let Ok(next) = rx.try_recv() else { break };
            let (next, w, permit) = next?;
            check_offset(&next, expected)?;
            expected += 1;
            if matches!(next.body, Body::Ddl { .. }) || next.offset.0 > limit {
                carry = Some((next, w, permit));
                break;
            }
            permits.push(permit);
            rows += w.rows;
            bytes += w.bytes;
            group.push(next);
        }
        if !applier.apply(&group).await? {
            return Ok(());
        }
        drop(permits);
        health.reset();
    }
}

fn check_offset(r: &Record, expected: u64) -> Result<(), ApplyError> {
    if r.offset.0 == expected {
        Ok(())
    } else {
        Err(ApplyError::Gap { expected, got: r.offset.0 })
    }
}

/// A client of the reader's journal service that sends the bearer token.
pub(crate) type ReaderClient = JournalClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, common::grpc_security::BearerToken>,
>;

pub(crate) async fn connect(config: &Config) -> Result<ReaderClient, ApplyError> {
    let reader_err = |reason: String| ApplyError::Reader { url: config.reader_url.clone(), reason };
    let mut endpoint = tonic::transport::Endpoint::from_shared(config.reader_url.clone())
        .map_err(|e| reader_err(e.to_string()))?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20));
    if let Some(tls) = config.reader_tls.client_tls().map_err(reader_err)? {
        endpoint = endpoint.tls_config(tls).map_err(|e| reader_err(format!("TLS settings: {e}")))?;
    }
    let channel = endpoint.connect().await.map_err(|e| reader_err(common::lifecycle::error_chain(&e)))?;
    let token = common::grpc_security::BearerToken::new(config.security.auth_token.as_ref()).map_err(reader_err)?;
    // One record is one source transaction, which can be far larger than gRPC's 4 MiB default.
    Ok(JournalClient::with_interceptor(channel, token).max_decoding_message_size(usize::MAX))
}

/// Streams records from `next` on, resubscribing after interruptions, until `stop`.
async fn subscribe_loop(
    config: Arc<Config>,
    mut next: u64,
    tx: mpsc::Sender<Result<Received, ApplyError>>,
    budget: Arc<tokio::sync::Semaphore>,
    shared: Arc<CopyShared>,
    stop: CancellationToken,
) {
    let mut retry = common::retry::RetryPolicy::new(Duration::from_millis(100), config.retry_max).start();
    loop {
        let result: Result<(), ApplyError> = async {
            let mut client = connect(&config).await?;
            let mut stream = client
                .subscribe(SubscribeRequest { consumer: config.name.clone(), from_offset: next })
                .await
                .map_err(ApplyError::Subscribe)?
                .into_inner();
            info!(consumer = %config.name, offset = next, "subscribed to the reader");
            shared.reader_connected.store(true, Ordering::Relaxed);
            retry.reset();
            loop {
                let item = tokio::select! {
                    biased;
                    _ = stop.cancelled() => return Ok(()),
                    item = stream.next() => item,
                };
                let record = match item {
                    None => {
                        return Err(ApplyError::Reader {
                            url: config.reader_url.clone(),
                            reason: "stream ended".into(),
                        })
                    }
                    Some(Err(status)) => return Err(ApplyError::Subscribe(status)),
                    Some(Ok(r)) => Record::try_from(r)?,
                };
                next = record.offset.0 + 1;
                // Every snapshot taken from now on holds this record (see copy.rs).
                shared.received.fetch_max(record.offset.0, Ordering::SeqCst);
                let w = weight(&record);
                let share = w.bytes.clamp(1, u64::from(BUFFER_BYTES)) as u32;
                let permit = tokio::select! {
                    biased;
                    _ = stop.cancelled() => return Ok(()),
                    p = budget.clone().acquire_many_owned(share) => match p {
                        Ok(p) => p,
                        Err(_) => return Ok(()),
                    },
                };
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return Ok(()),
                    sent = tx.send(Ok((record, w, permit))) => if sent.is_err() { return Ok(()) },
                }
            }
        }
        .await;
        shared.reader_connected.store(false, Ordering::Relaxed);
        match result {
            Ok(()) => return,
            Err(ApplyError::Subscribe(status))
                if matches!(
                    status.code(),
                    tonic::Code::OutOfRange | tonic::Code::InvalidArgument | tonic::Code::Unauthenticated
                ) =>
            {
                let _ = tx.send(Err(ApplyError::Subscribe(status))).await;
                return;
            }
            Err(e @ ApplyError::Wire(_)) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
            Err(e) => {
                let pause = retry.next_delay();
                warn!(consumer = %config.name, offset = next, error = %e, retry_in = ?pause, "reader stream interrupted; resubscribing");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

/// Acks the applied offset to the reader, coalesced; a final ack when stopping.
async fn ack_loop(config: Arc<Config>, mut applied: watch::Receiver<u64>, stop: CancellationToken) {
    let mut client: Option<ReaderClient> = None;
    let mut acked = 0;
    loop {
        let stopping = tokio::select! {
            _ = stop.cancelled() => true,
            _ = tokio::time::sleep(ACK_INTERVAL) => false,
        };
        let offset = *applied.borrow_and_update();
        if offset > acked {
            if client.is_none() {
                client = connect(&config).await.ok();
            }
            if let Some(c) = client.as_mut() {
                match c.ack(AckRequest { consumer: config.name.clone(), offset }).await {
                    Ok(_) => acked = offset,
                    Err(e) => {
                        debug!(consumer = %config.name, offset, error = %e, "ack failed; will retry");
                        client = None;
                    }
                }
            }
        }
        if stopping {
            return;
        }
    }
}

/// NOT_SERVING while the subscription to the reader is down (after a grace period) or the pipeline is stalled:
/// records are waiting but none was applied for `stall_timeout`. A stuck pipeline never looks healthy.
async fn watch_health(
    config: Arc<Config>,
    shared: Arc<CopyShared>,
    applied: watch::Receiver<u64>,
    stop: CancellationToken,
) {
    let mut last = (*applied.borrow(), Instant::now());
    let mut disconnected_since: Option<Instant> = None;
    let grace = config.stall_timeout.min(Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let now = *applied.borrow();
        if now != last.0 {
            last = (now, Instant::now());
        }
        let waiting = shared.received.load(Ordering::SeqCst) > now;
        let stalled = waiting && last.1.elapsed() >= config.stall_timeout;
        let connected = shared.reader_connected.load(Ordering::Relaxed);
        if connected {
            disconnected_since = None;
        } else if disconnected_since.is_none() {
            disconnected_since = Some(Instant::now());
        }
        let unreachable = disconnected_since.is_some_and(|t| t.elapsed() >= grace);
        let secondary_down = !shared.secondary_ok.load(Ordering::Relaxed);
        let serving = !stalled && !unreachable && !secondary_down;
        if serving != *shared.serving.borrow() {
            if stalled {
                tracing::error!(consumer = %config.name, applied_offset = now, received_offset = shared.received.load(Ordering::SeqCst),
                                stalled_for = ?last.1.elapsed(), "pipeline stalled: records are waiting but none was applied; health is NOT_SERVING");
            } else if unreachable {
                warn!(consumer = %config.name, "the reader is unreachable; health is NOT_SERVING");
            } else if secondary_down {
                warn!(consumer = %config.name, "the secondary is unreachable; health is NOT_SERVING");
            } else {
                info!(consumer = %config.name, applied_offset = now, "applying again; health is SERVING");
            }
            shared.serving.send_replace(serving);
        }
    }
}
