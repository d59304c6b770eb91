//! The stream from the reader: a subscription task that receives records into a bounded buffer (resubscribing
//! from the next offset it needs after any interruption), and an ack task that reports the applied offset.
//!
//! The buffer is bounded twice: by [`RECORD_BUFFER`] records and by `REPLICA_RECEIVE_BUFFER` bytes of record payload; a
//! record holds its share of the byte budget until it is applied, so memory does not grow with the backlog.
//! Acks only drive the reader's retention and monitoring: the secondary's checkpoint is the truth.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::event::Record;
use common::proto::{AckRequest, GetInfoRequest, SubscribeRequest};
use common::retry::RetryPolicy;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::error::ApplyError;
use crate::reader_client::{self, ReaderClient};

/// Records buffered between the subscription and the apply loop: enough for large groups of small
/// transactions (a 256-record buffer kept sysbench-sized groups at ~1,000 rows and the applier at 1.17× of
/// native replication instead of 1.46×). Their memory is bounded by `REPLICA_RECEIVE_BUFFER`.
pub const RECORD_BUFFER: usize = 2048;
const ACK_INTERVAL: Duration = Duration::from_millis(100);

/// Row changes and approximate bytes of a record, for bounding transactions and buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Weight {
    pub rows: usize,
    pub bytes: u64,
}

impl Weight {
    pub fn of(r: &Record) -> Self {
        Weight { rows: r.row_count(), bytes: r.body.mem_size() as u64 }
    }
}

/// A received record, its weight, and its share of the receive budget, released once it is applied.
#[derive(Debug)]
pub struct Received {
    pub record: Record,
    pub weight: Weight,
    pub permit: OwnedSemaphorePermit,
}

/// What the stream tells the rest of the applier.
#[derive(Debug, Default)]
pub struct StreamState {
    /// Last journal offset received from the reader (every snapshot taken from now on holds it: see
    /// [`crate::copy`]).
    pub received: AtomicU64,
    /// Whether the subscription to the reader is up.
    pub connected: AtomicBool,
    /// The reader journal the applied offsets are in (see [`crate::relocate`]).
    journal: std::sync::Mutex<String>,
    /// Offsets received and not yet known to be applied, with when the reader journaled them (oldest first;
    /// at most [`WAITING_TRACKED`]).
    waiting: std::sync::Mutex<std::collections::VecDeque<(u64, i64)>>,
}

/// Received records tracked for [`StreamState::oldest_waiting_ms`]: more than the receive buffer holds.
const WAITING_TRACKED: usize = 2 * RECORD_BUFFER;

impl StreamState {
    pub fn journal(&self) -> String {
        self.journal.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_journal(&self, id: &str) {
        *self.journal.lock().unwrap_or_else(|p| p.into_inner()) = id.to_owned();
    }

    fn received_record(&self, offset: u64, journaled_ms: i64) {
        let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if w.back().is_some_and(|&(last, _)| last >= offset) {
            // Subscribed again from an earlier offset: what was tracked is being received again.
            w.retain(|&(o, _)| o < offset);
        }
        if w.len() < WAITING_TRACKED {
            w.push_back((offset, journaled_ms));
        }
    }

    /// When the reader journaled the oldest record received and not applied through `applied` (None when
    /// nothing waits): the applier is at least that far behind, and it grows while nothing is applied.
    pub fn oldest_waiting_ms(&self, applied: u64) -> Option<i64> {
        let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        while w.front().is_some_and(|&(o, _)| o <= applied) {
            w.pop_front();
        }
        w.front().map(|&(_, ms)| ms)
    }

    /// Forgets what was tracked (the offsets of another journal begin).
    pub fn forget_waiting(&self) {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// The subscription task's inputs.
pub struct Subscription {
    pub config: Arc<Config>,
    /// The next offset to receive.
    pub next: u64,
    pub tx: mpsc::Sender<Result<Received, ApplyError>>,
    pub state: Arc<StreamState>,
}

impl Subscription {
    /// A record buffer for the apply loop; `next` is the first offset it needs.
    pub fn new(
        config: Arc<Config>,
        next: u64,
        state: Arc<StreamState>,
    ) -> (Self, mpsc::Receiver<Result<Received, ApplyError>>) {
        state.received.store(next.saturating_sub(1), Ordering::SeqCst);
        let (tx, rx) = mpsc::channel(RECORD_BUFFER);
        (Self { config, next, tx, state }, rx)
    }

    /// Bytes that records received but not yet applied may hold in memory ([`common::event::Body::mem_size`]).
    fn buffer_bytes(&self) -> u32 {
        self.config.receive_buffer.clamp(1 << 20, u64::from(u32::MAX >> 3)) as u32
    }

    /// Streams records until `stop`, resubscribing after transient failures; a permanent one is passed on to
    /// the apply loop, which stops.
    pub async fn run(mut self, stop: CancellationToken) {
        let budget = Arc::new(Semaphore::new(self.buffer_bytes() as usize));
        let mut retry = RetryPolicy::new(Duration::from_millis(100), self.config.retry_max).start();
        loop {
            let result = self.stream(&budget, &mut retry, &stop).await;
            self.state.connected.store(false, Ordering::Relaxed);
            match result {
                Ok(()) => return,
                Err(e) if !e.is_transient() => {
                    let _ = self.tx.send(Err(e)).await;
                    return;
                }
                Err(e) => {
                    let pause = retry.next_delay();
                    let error = common::lifecycle::error_chain(&e);
                    if e.is_damage() {
                        // Nothing is applied past a record that cannot be verified; loud, since only the reader's
                        // repair (or an operator) moves on from here.
                        error!(consumer = %self.config.name, offset = self.next, error, retry_in = ?pause,
                               "a damaged journal record is not applied; asking the reader again");
                    } else {
                        warn!(consumer = %self.config.name, offset = self.next, error, retry_in = ?pause,
                              "reader stream interrupted; resubscribing");
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }

    /// One subscription: Ok when stopped, Err when interrupted.
    async fn stream(
        &mut self,
        budget: &Arc<Semaphore>,
        retry: &mut common::retry::Retry,
        stop: &CancellationToken,
    ) -> Result<(), ApplyError> {
        let mut client = reader_client::connect(&self.config).await?;
        // Offsets are only meaningful in the journal the checkpoint names; another one is the apply loop's to
        // handle (see `relocate`). The request names it too, in case the reader changes in between.
        let expected = self.state.journal();
        let serving = client.get_info(GetInfoRequest {}).await.map_err(reader_client::refused("GetInfo"))?;
        let now = serving.into_inner().journal_id;
        if now != expected {
            return Err(ApplyError::JournalChanged { was: expected, now });
        }
        let request =
            SubscribeRequest { consumer: self.config.name.clone(), from_offset: self.next, journal_id: expected };
        let mut stream = client.subscribe(request).await.map_err(reader_client::refused("Subscribe"))?.into_inner();
        info!(consumer = %self.config.name, offset = self.next, "subscribed to the reader");
        self.state.connected.store(true, Ordering::Relaxed);
        retry.reset();
        loop {
            let item = tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                item = stream.next() => item,
            };
            let record = match item {
                None => return Err(ApplyError::ReaderEnded),
                Some(Err(status)) => return Err(reader_client::refused("Subscribe")(status)),
                Some(Ok(r)) => verified(r)?,
            };
            self.next = record.offset.0 + 1;
            self.state.received.fetch_max(record.offset.0, Ordering::SeqCst);
            self.state.received_record(record.offset.0, record.journaled_unix_ms);
            let weight = Weight::of(&record);
            let share = weight.bytes.clamp(1, u64::from(self.buffer_bytes())) as u32;
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
                sent = self.tx.send(Ok(Received { record, weight, permit })) => if sent.is_err() { return Ok(()) },
            }
        }
    }
}

/// The running subscription as the apply loop sees it: its buffer, and a way to start over from an offset
/// (after a failure inside a transaction whose earlier fragments are applied and gone from memory).
pub struct Records {
    config: Arc<Config>,
    state: Arc<StreamState>,
    parent: CancellationToken,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    pub rx: mpsc::Receiver<Result<Received, ApplyError>>,
}

impl Records {
    /// Subscribes from `next`; the subscription stops with `parent` or [`Records::stop`].
    pub fn start(config: Arc<Config>, next: u64, state: Arc<StreamState>, parent: &CancellationToken) -> Self {
        let (subscription, rx) = Subscription::new(config.clone(), next, state.clone());
        let stop = parent.child_token();
        let task = tokio::spawn(subscription.run(stop.clone()));
        Self { config, state, parent: parent.clone(), stop, task, rx }
    }

    /// Drops everything buffered and subscribes again from `next`.
    pub async fn restart(&mut self, next: u64) {
        self.stop.cancel();
        self.rx.close();
        let _ = (&mut self.task).await;
        let (tx, rx) = mpsc::channel(RECORD_BUFFER);
        let subscription = Subscription { config: self.config.clone(), next, tx, state: self.state.clone() };
        self.stop = self.parent.child_token();
        self.task = tokio::spawn(subscription.run(self.stop.clone()));
        self.rx = rx;
        info!(consumer = %self.config.name, offset = next, "reading the transaction again from its first record");
    }

    pub fn state(&self) -> &Arc<StreamState> {
        &self.state
    }

    /// Stops the subscription and waits for it.
    pub async fn stop(self) {
        self.stop.cancel();
        drop(self.rx);
        let _ = self.task.await;
    }
}

/// Acks the applied offset to the reader, coalesced; a final ack when stopping.
pub async fn ack_loop(
    config: Arc<Config>,
    state: Arc<StreamState>,
    mut applied: watch::Receiver<u64>,
    stop: CancellationToken,
) {
    let mut client: Option<ReaderClient> = None;
    let mut acked = 0;
    let mut journal = state.journal();
    loop {
        let stopping = tokio::select! {
            _ = stop.cancelled() => true,
            _ = tokio::time::sleep(ACK_INTERVAL) => false,
        };
        let offset = *applied.borrow_and_update();
        let now = state.journal();
        if now != journal {
            // Moved to a new journal: its offsets start again.
            (journal, acked) = (now, 0);
        }
        if offset > acked {
            if client.is_none() {
                client = reader_client::connect(&config).await.ok();
            }
            if let Some(c) = client.as_mut() {
                let request = AckRequest { consumer: config.name.clone(), offset, journal_id: journal.clone() };
                match c.ack(request).await {
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

/// The domain record of a wire record, checked end to end: its canonical encoding must give the checksum the
/// reader verified in its journal (records journaled before checksums carry none and are taken as they are).
fn verified(wire: common::proto::Record) -> Result<Record, ApplyError> {
    let stored = wire.crc32c;
    let record = Record::try_from(wire)?;
    if let Some(stored) = stored {
        let computed = common::codec::checksum(&record)
            .map_err(|e| ApplyError::State { what: "a record's checksum".into(), reason: e.to_string() })?;
        if computed != stored {
            return Err(ApplyError::Unverified { offset: record.offset.0, stored, computed });
        }
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::event::Body;
    use common::position::{BinlogPosition, JournalOffset};

    #[test]
    fn a_record_that_differs_from_what_was_journaled_is_refused() {
        let record = Record {
            offset: JournalOffset(5),
            gtid: None,
            source: BinlogPosition { file: "binlog.000001".into(), pos: 99 },
            commit_unix_seconds: 1,
            commit_micros: 0,
            journaled_unix_ms: 2,
            body: Body::Ddl { schema: "s".into(), statement: "CREATE TABLE t (id INT)".into() },
            continues: false,
        };
        let sum = common::codec::checksum(&record).expect("checksum");
        let wire = |crc32c| common::proto::Record { crc32c, ..common::proto::Record::from(record.clone()) };
        assert_eq!(verified(wire(Some(sum))).expect("whole"), record);
        assert_eq!(verified(wire(None)).expect("an older record without a checksum"), record);
        let mut changed = wire(Some(sum));
        changed.source_position = 100;
        assert!(matches!(verified(changed), Err(ApplyError::Unverified { offset: 5, .. })));
    }
}
