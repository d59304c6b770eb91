//! The journal writer: one thread that group-commits transactions from the source into the journal, and
//! holds the source back (backpressure) while the journal is over its size cap.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::journal::{Journal, JournalError};
use crate::source::{SourceStatus, WriterMsg};

fn body_rows(b: &common::event::Body) -> u64 {
    match b {
        common::event::Body::Transaction(changes) => changes.iter().map(|c| c.rows.len() as u64).sum(),
        common::event::Body::Ddl { .. } => 0,
    }
}

/// Most transactions written in one atomic batch.
const MAX_GROUP: usize = 2048;

pub struct Writer {
    pub journal: Arc<Journal>,
    pub rx: mpsc::Receiver<WriterMsg>,
    pub max_bytes: u64,
    pub status: Arc<SourceStatus>,
    pub shutdown: CancellationToken,
}

impl Writer {
    /// Runs until every sender is gone; blocking (run it on its own thread).
    pub fn run(mut self) -> Result<(), JournalError> {
        let mut group = Vec::with_capacity(MAX_GROUP);
        let mut permits = Vec::with_capacity(MAX_GROUP);
        let mut barriers = Vec::new();
        while let Some(msg) = self.rx.blocking_recv() {
            self.wait_for_space();
            let mut next = Some(msg);
            while let Some(msg) = next.take() {
                match msg {
                    WriterMsg::Commit(c, permit) => {
                        group.push(c);
                        permits.push(permit);
                    }
                    WriterMsg::Barrier(tx) => barriers.push(tx),
                }
                if group.len() < MAX_GROUP && barriers.is_empty() {
                    next = self.rx.try_recv().ok();
                }
            }
            let (txns, rows) = (group.len() as u64, group.iter().flat_map(|c| &c.bodies).map(body_rows).sum::<u64>());
            self.journal.append(std::mem::take(&mut group))?;
            self.status.counters.transactions.inc_by(txns);
            self.status.counters.rows.inc_by(rows);
            // Durable: their memory may be used again.
            permits.clear();
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
