//! The `replica.v1.Journal` gRPC service: inspection, subscriptions with live tailing, acks and consumers.
//!
//! Each subscriber gets its own task feeding a small bounded channel, so a slow subscriber only slows itself.
//! The channel is bounded by records and by [`SUBSCRIBER_BYTES`]: a record's share is released when the
//! transport takes it, so fragments of a large transaction never pile up in memory.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use common::position::GtidState;
use common::proto::journal_server::Journal as JournalApi;
use common::proto::{self, ConsumerInfo};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{debug, info};

use crate::config::{Config, Endpoint};
use crate::error::{status, ReaderError};
use crate::journal::{ConsumerState, Journal, JournalError, LocateError};
use crate::pipeline::{SourceStatus, SwitchRequest};
use crate::serve::snapshot::Snapshots;

/// Records read from sled per step of a subscription.
const READ_CHUNK: usize = 256;
/// Encoded bytes read per step of a subscription or per `Read` response (at least one record); decoded, small
/// rows take up to ten times as much.
const READ_BYTES: usize = 1 << 20;
/// Longest wait for the binlog source to answer a `SwitchPrimary`.
const SWITCH_WAIT: std::time::Duration = std::time::Duration::from_secs(60);
/// Records buffered per subscriber.
const SUBSCRIBER_BUFFER: usize = 128;
/// Bytes of records buffered per subscriber, as they are held in memory ([`common::event::Body::mem_size`];
/// a larger record takes the whole budget alone).
const SUBSCRIBER_BYTES: u32 = 8 << 20;

/// A record on its way to a subscriber, with its share of the subscriber's byte budget.
type Outgoing = (Result<proto::Record, Status>, Option<tokio::sync::OwnedSemaphorePermit>);

pub struct JournalService {
    pub journal: Arc<Journal>,
    pub config: Arc<Config>,
    pub status: Arc<SourceStatus>,
    pub shutdown: CancellationToken,
    /// Open subscriptions per consumer name.
    pub connected: Arc<Mutex<HashMap<String, usize>>>,
    pub snapshots: Arc<Snapshots>,
    /// Operators' requests to follow another primary, to the source.
    pub switch: mpsc::Sender<SwitchRequest>,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, JournalError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(status)?.map_err(status)
}

/// Decrements the connected count when a subscription ends.
struct Connection {
    name: String,
    connected: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        let mut map = self.connected.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.name) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.name);
            }
        }
    }
}

impl JournalService {
    /// Refuses offsets of another journal (`expected` empty: the caller does not say).
    fn same_journal(&self, expected: &str) -> Result<(), Status> {
        if expected.is_empty() || expected == self.journal.id() {
            return Ok(());
        }
        Err(Status::failed_precondition(format!(
            "journal changed: the offset is in journal {expected}, this reader's journal is {} (a new journal, after \
             the old one was lost); the consumer must find its place again by GTID (Locate)",
            self.journal.id()
        )))
    }

    fn consumer_infos(&self) -> Result<Vec<ConsumerInfo>, JournalError> {
        let head = self.journal.head();
        let connected = self.connected.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut list: Vec<ConsumerInfo> = self
            .journal
            .consumers()?
            .into_iter()
            .map(|(name, s): (String, ConsumerState)| ConsumerInfo {
                connected: connected.contains_key(&name),
                lag_records: head.saturating_sub(s.acked),
                acked_offset: s.acked,
                last_ack_unix_ms: s.last_ack_unix_ms,
                name,
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(list)
    }
}

impl JournalService {
    /// Snapshot reads and primary switches need the binlog connection, which only the active reader has.
    fn not_standby(&self, call: &'static str) -> Result<(), Status> {
        if self.status.standby.load(Ordering::Relaxed) {
            return Err(status(ReaderError::Standby(call, self.status.lease_holder())));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl JournalApi for JournalService {
    async fn get_info(&self, _: Request<proto::GetInfoRequest>) -> Result<Response<proto::GetInfoResponse>, Status> {
        // The source position belongs to the last offset: a client waiting for a GTID then has its record.
        let (last_offset, resume) = self.journal.durable();
        let resume = resume.unwrap_or_default();
        let followed = self.status.followed();
        let journal = self.journal.clone();
        let copies = tokio::task::spawn_blocking(move || journal.copies())
            .await
            .map_err(|e| Status::internal(format!("asking the journal's store for its copies: {e}")))?;
        Ok(Response::new(proto::GetInfoResponse {
            first_offset: self.journal.first(),
            last_offset,
            source_position: Some(proto::SourcePosition {
                file: resume.position.file,
                position: resume.position.pos,
                gtid: resume.gtid.to_string(),
            }),
            journal_bytes: self.journal.bytes(),
            consumers: self.consumer_infos().map_err(status)?,
            backpressure: self.status.backpressure.load(Ordering::Relaxed),
            size_cap_bytes: self.config.journal_max_bytes,
            primary_connected: self.status.connected.load(Ordering::Relaxed),
            primary_name: self.config.primary_name.clone(),
            primary_address: followed.as_ref().map(|f| f.endpoint.to_string()).unwrap_or_default(),
            primary_server_id: followed.map_or(0, |f| f.server_id),
            primary_changes: self.status.counters.primary_changes.get(),
            journal_id: self.journal.id().to_owned(),
            journal_store: self.journal.store_kind().to_owned(),
            role: if self.status.standby.load(Ordering::Relaxed) { "standby" } else { "active" }.to_owned(),
            lease_holder: self.status.lease_holder(),
            journal_replicas: copies.configured,
            journal_replicas_current: copies.current,
            journal_leader: copies.leader,
        }))
    }

    async fn read(&self, req: Request<proto::ReadRequest>) -> Result<Response<proto::ReadResponse>, Status> {
        let req = req.into_inner();
        let limit = match req.limit {
            0 => 100,
            n => n.min(10_000) as usize,
        };
        let journal = self.journal.clone();
        let from = req.from_offset;
        let records = blocking(move || journal.read_checked(from, limit, READ_BYTES)).await?;
        Ok(Response::new(proto::ReadResponse { records: records.into_iter().map(wire).collect() }))
    }

    type SubscribeStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<proto::Record, Status>> + Send + 'static>>;

    async fn subscribe(
        &self,
        req: Request<proto::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let req = req.into_inner();
        self.same_journal(&req.journal_id)?;
        let name = req.consumer.clone();
        let journal = self.journal.clone();
        let standby = self.status.standby.load(Ordering::Relaxed);
        // 0 means: where this consumer left off, or the oldest retained record for a new one.
        let from = {
            let journal = journal.clone();
            let name = name.clone();
            let requested = req.from_offset;
            blocking(move || {
                let known = journal.consumer(&name)?;
                let mut first = journal.first();
                let from = match (requested, known) {
                    (0, Some(s)) => s.acked + 1,
                    (0, None) => first,
                    (n, _) => n,
                };
                let mut head = journal.promised();
                if standby && from > head + 1 {
                    // A standby follows the active reader's writes a moment late: read them now.
                    journal.reload(false)?;
                    (first, head) = (journal.first(), journal.promised());
                    if from > head + 1 {
                        return Err(JournalError::Behind { offset: from, head });
                    }
                }
                if from < first || from > head + 1 {
                    return Err(JournalError::OutOfRange { offset: from, first, last: head });
                }
                journal.register(&name, from)?;
                Ok(from)
            })
            .await?
        };
        info!(consumer = %name, offset = from, "subscriber connected");
        *self.connected.lock().unwrap_or_else(|p| p.into_inner()).entry(name.clone()).or_default() += 1;
        let guard = Connection { name: name.clone(), connected: self.connected.clone() };
        let (tx, rx) = mpsc::channel::<Outgoing>(SUBSCRIBER_BUFFER);
        let budget = Arc::new(tokio::sync::Semaphore::new(SUBSCRIBER_BYTES as usize));
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let mut head_rx = journal.watch_head();
            let mut next = from;
            loop {
                let head = *head_rx.borrow_and_update();
                if next > head {
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => break,
                        _ = tx.closed() => break,
                        changed = head_rx.changed() => if changed.is_err() { break },
                    }
                    continue;
                }
                let j = journal.clone();
                let chunk = blocking(move || j.read_checked(next, READ_CHUNK, READ_BYTES)).await;
                let records = match chunk {
                    Ok(r) => r,
                    Err(status) => {
                        let _ = tx.send((Err(status), None)).await;
                        break;
                    }
                };
                for checked in records {
                    next = checked.0.offset.0 + 1;
                    let share = checked.0.body.mem_size().clamp(1, SUBSCRIBER_BYTES as usize) as u32;
                    let wire = wire(checked);
                    let permit = tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => return,
                        p = budget.clone().acquire_many_owned(share) => match p {
                            Ok(p) => p,
                            Err(_) => return,
                        },
                    };
                    if tx.send((Ok(wire), Some(permit))).await.is_err() {
                        debug!(consumer = %name, "subscriber went away");
                        return;
                    }
                }
            }
            debug!(consumer = %name, "subscription ended");
        });
        // The share is released as the transport takes the record.
        let stream = tokio_stream::StreamExt::map(ReceiverStream::new(rx), |(record, _permit)| record);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn ack(&self, req: Request<proto::AckRequest>) -> Result<Response<proto::AckResponse>, Status> {
        let req = req.into_inner();
        self.same_journal(&req.journal_id)?;
        let journal = self.journal.clone();
        let acked = blocking(move || journal.ack(&req.consumer, req.offset)).await?;
        Ok(Response::new(proto::AckResponse { acked_offset: acked }))
    }

    async fn list_consumers(
        &self,
        _: Request<proto::ListConsumersRequest>,
    ) -> Result<Response<proto::ListConsumersResponse>, Status> {
        Ok(Response::new(proto::ListConsumersResponse { consumers: self.consumer_infos().map_err(status)? }))
    }

    async fn remove_consumer(
        &self,
        req: Request<proto::RemoveConsumerRequest>,
    ) -> Result<Response<proto::RemoveConsumerResponse>, Status> {
        let name = req.into_inner().name;
        let journal = self.journal.clone();
        let n = name.clone();
        let removed = blocking(move || journal.remove_consumer(&n)).await?;
        info!(consumer = %name, removed, "consumer removed");
        Ok(Response::new(proto::RemoveConsumerResponse { removed }))
    }

    async fn list_tables(
        &self,
        req: Request<proto::ListTablesRequest>,
    ) -> Result<Response<proto::ListTablesResponse>, Status> {
        self.not_standby("ListTables")?;
        Ok(Response::new(self.snapshots.list_tables(req.into_inner()).await.map_err(status)?))
    }

    type ReadChunkStream = ReceiverStream<Result<proto::ChunkPart, Status>>;

    async fn read_chunk(
        &self,
        req: Request<proto::ReadChunkRequest>,
    ) -> Result<Response<Self::ReadChunkStream>, Status> {
        self.not_standby("ReadChunk")?;
        let req = req.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let snapshots = self.snapshots.clone();
        tokio::spawn(async move {
            let (schema, table) = (req.schema.clone(), req.table.clone());
            if let Err(e) = snapshots.read_chunk(req, tx.clone()).await {
                debug!(schema = %schema, table = %table, error = %e, "chunk read failed");
                let _ = tx.send(Err(status(e))).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type ChecksumChunksStream = ReceiverStream<Result<proto::ChecksumPart, Status>>;

    async fn checksum_chunks(
        &self,
        req: Request<proto::ChecksumChunksRequest>,
    ) -> Result<Response<Self::ChecksumChunksStream>, Status> {
        self.not_standby("ChecksumChunks")?;
        let req = req.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let snapshots = self.snapshots.clone();
        tokio::spawn(async move {
            let (schema, table) = (req.schema.clone(), req.table.clone());
            if let Err(e) = snapshots.checksum_chunks(req, tx.clone()).await {
                debug!(schema = %schema, table = %table, error = %e, "checksum failed");
                let _ = tx.send(Err(status(e))).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn switch_primary(
        &self,
        req: Request<proto::SwitchPrimaryRequest>,
    ) -> Result<Response<proto::SwitchPrimaryResponse>, Status> {
        self.not_standby("SwitchPrimary")?;
        let address = req.into_inner().address;
        let to = Endpoint::parse(address.trim(), self.config.primary_port).map_err(Status::invalid_argument)?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        info!(%to, "asked to follow another primary");
        self.switch
            .send(SwitchRequest { to, reply })
            .await
            .map_err(|_| Status::unavailable("the reader is stopping: its binlog source has stopped"))?;
        match tokio::time::timeout(SWITCH_WAIT, answer).await {
            Ok(Ok(Ok(message))) => Ok(Response::new(proto::SwitchPrimaryResponse { message })),
            Ok(Ok(Err(message))) => Err(Status::failed_precondition(message)),
            Ok(Err(_)) => Err(Status::unavailable("the reader is stopping: its binlog source has stopped")),
            Err(_) => Err(Status::deadline_exceeded(
                "the binlog source did not take the request within 60s (it is connecting, or held back by the \
                 journal's size cap); the request is still queued and may yet be carried out — check GetInfo",
            )),
        }
    }

    async fn locate(&self, req: Request<proto::LocateRequest>) -> Result<Response<proto::LocateResponse>, Status> {
        let text = req.into_inner().applied_gtid;
        let applied: GtidState =
            text.parse().map_err(|e| Status::invalid_argument(format!("applied_gtid {text:?}: {e}")))?;
        let journal = self.journal.clone();
        let located = tokio::task::spawn_blocking(move || journal.locate(&applied)).await.map_err(status)?;
        match located {
            Ok(offset) => {
                info!(applied = %text, offset, "consumer located by GTID");
                Ok(Response::new(proto::LocateResponse { offset, journal_id: self.journal.id().to_owned() }))
            }
            Err(LocateError::Journal(e)) => Err(status(e)),
            Err(e @ LocateError::NotYet { .. }) => Err(Status::unavailable(e.to_string())),
            Err(e) => Err(Status::failed_precondition(e.to_string())),
        }
    }
}

/// A journal record on the wire, with the checksum it was verified against.
fn wire((record, crc32c): (common::event::Record, Option<u32>)) -> proto::Record {
    proto::Record { crc32c, ..proto::Record::from(record) }
}
