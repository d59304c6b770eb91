//! The journal writer: one thread that group-commits transactions from the source into the journal, and
//! holds the source back (backpressure) while the journal is over its size cap.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::error::ReaderError;
use crate::journal::{Journal, JournalError, ResumeState};
use crate::pipeline::{Committed, SourceStatus};

/// Transactions buffered between the source and the writer.
const QUEUE: usize = 1024;

/// Messages to the journal writer.
enum WriterMsg {
    /// A transaction and the share of the in-flight byte budget it holds until it is durable.
    /// (Boxed: a message is a pointer wide, so the queue stays small.)
    Commit(Box<Committed>, OwnedSemaphorePermit),
    /// Answered once everything sent before it is durable, with the journal's resume state; with `restart`,
    /// the fragments of an unfinished transaction are discarded first (the source reads it again).
    Barrier { done: oneshot::Sender<Option<ResumeState>>, restart: bool },
}

/// How the source hands transactions to the writer. The writer ends when every handle is gone.
#[derive(Clone)]
pub struct WriterHandle(mpsc::Sender<WriterMsg>);

/// A handle that does not keep the writer running (for snapshot reads, which must not outlive the source).
#[derive(Clone)]
pub struct WeakWriterHandle(mpsc::WeakSender<WriterMsg>);

impl WriterHandle {
    /// Queues a committed transaction; waits while the queue is full (backpressure on the source).
    pub async fn commit(&self, c: Committed, permit: OwnedSemaphorePermit) -> Result<(), ReaderError> {
        self.0.send(WriterMsg::Commit(Box::new(c), permit)).await.map_err(|_| ReaderError::WriterStopped)
    }

    /// Waits until everything queued before is durable; returns the journal's resume state then.
    pub async fn barrier(&self) -> Result<Option<ResumeState>, ReaderError> {
        barrier(&self.0, false).await
    }

    /// As [`WriterHandle::barrier`], and discards the fragments of a transaction whose end never came: the
    /// source calls it before each (re)connection, which reads that transaction again from its start.
    pub async fn restart(&self) -> Result<Option<ResumeState>, ReaderError> {
        barrier(&self.0, true).await
    }

    pub fn downgrade(&self) -> WeakWriterHandle {
        WeakWriterHandle(self.0.downgrade())
    }
}

impl WeakWriterHandle {
    /// As [`WriterHandle::barrier`], while the writer runs.
    pub async fn barrier(&self) -> Result<Option<ResumeState>, ReaderError> {
        barrier(&self.0.upgrade().ok_or(ReaderError::WriterStopped)?, false).await
    }
}

async fn barrier(tx: &mpsc::Sender<WriterMsg>, restart: bool) -> Result<Option<ResumeState>, ReaderError> {
    let (done, answer) = oneshot::channel();
    tx.send(WriterMsg::Barrier { done, restart }).await.map_err(|_| ReaderError::WriterStopped)?;
    answer.await.map_err(|_| ReaderError::WriterStopped)
}

fn body_rows(b: &common::event::Body) -> u64 {
    match b {
        common::event::Body::Transaction(changes) => changes.iter().map(|c| c.rows.len() as u64).sum(),
        common::event::Body::Ddl { .. } | common::event::Body::Piece(_) => 0,
    }
}

/// Most transactions written in one atomic batch.
const MAX_GROUP: usize = 2048;

pub struct Writer {
    journal: Arc<Journal>,
    rx: mpsc::Receiver<WriterMsg>,
    max_bytes: u64,
    status: Arc<SourceStatus>,
    shutdown: CancellationToken,
}

impl Writer {
    /// A writer for `journal` capped at `max_bytes`, and the handle to feed it.
    pub fn new(
        journal: Arc<Journal>,
        max_bytes: u64,
        status: Arc<SourceStatus>,
        shutdown: CancellationToken,
    ) -> (Self, WriterHandle) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Self { journal, rx, max_bytes, status, shutdown }, WriterHandle(tx))
    }

    /// Runs until every sender is gone; blocking (run it on its own thread).
    pub fn run(mut self) -> Result<(), JournalError> {
        let mut group = Vec::with_capacity(MAX_GROUP);
        let mut permits = Vec::with_capacity(MAX_GROUP);
        let mut barriers = Vec::new();
        let mut restart = false;
        while let Some(msg) = self.rx.blocking_recv() {
            self.wait_for_space();
            let mut next = Some(msg);
            while let Some(msg) = next.take() {
                match msg {
                    WriterMsg::Commit(c, permit) => {
                        group.push(*c);
                        permits.push(permit);
                    }
                    WriterMsg::Barrier { done, restart: r } => {
                        barriers.push(done);
                        restart |= r;
                    }
                }
                if group.len() < MAX_GROUP && barriers.is_empty() {
                    next = self.rx.try_recv().ok();
                }
            }
            let txns = group.iter().filter(|c| !c.continues).count() as u64;
            let rows = group.iter().flat_map(|c| &c.bodies).map(body_rows).sum::<u64>();
            let started = std::time::Instant::now();
            let records = group.len();
            self.journal.append(std::mem::take(&mut group))?;
            debug!(
                transactions = txns,
                records,
                rows,
                head = self.journal.head(),
                ms = started.elapsed().as_millis() as u64,
                "journal batch durable"
            );
            self.status.counters.transactions.inc_by(txns);
            self.status.counters.rows.inc_by(rows);
            // Durable: their memory may be used again.
            permits.clear();
            if std::mem::take(&mut restart) {
                self.journal.discard_unfinished()?;
            }
            for tx in barriers.drain(..) {
                let _ = tx.send(self.journal.resume());
            }
        }
        self.journal.flush()
    }

    /// Blocks while the journal holds more than the cap; trimming (or shutdown) ends the wait.
    fn wait_for_space(&self) {
        if self.journal.bytes() <= self.max_bytes {
            return;
        }
        self.status.backpressure.store(true, Ordering::Relaxed);
        warn!(
            journal_bytes = self.journal.bytes(),
            cap = self.max_bytes,
            "journal is over its size cap: reading from the primary is paused until consumers ack and records are trimmed"
        );
        while self.journal.bytes() > self.max_bytes && !self.shutdown.is_cancelled() {
            std::thread::sleep(Duration::from_millis(200));
        }
        self.status.backpressure.store(false, Ordering::Relaxed);
        info!(journal_bytes = self.journal.bytes(), "journal is below its size cap again: reading resumes");
    }
}
