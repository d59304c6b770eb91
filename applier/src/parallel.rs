//! Parallel apply: transactions whose rows do not overlap are applied on several secondary connections
//! (workers) at once; wherever they overlap, in source order. The apply loop's writer stays the one owner of
//! the checkpoint and applies everything the workers cannot reason about itself, alone.
//!
//! **Scheduling.** Each journal transaction's write set is the set of its rows' keys: the values of the primary
//! key and of every other unique key (but NULLs) of every before and after image, per table (a table with a key
//! whose values compare by collation or as floats, or that indexes a prefix, counts as one key: all its changes
//! conflict; see [`crate::identity`]), and for a child table in foreign keys the keys of the parent rows each
//! image references (see [`crate::parents`]). A transaction goes to
//! the worker that still holds an earlier transaction sharing a key with it (each worker applies its queue in
//! order), to an idle worker when none does (or the one that took the previous record, while its queue is
//! short), and waits while workers of two or more such transactions are still busy. So two transactions that
//! share a key are applied in source order, and a transaction is applied whole (a worker commits one or more
//! whole transactions at a time). A table without a primary key counts as one key too (its rows are located
//! by their whole image). Everything else is a *barrier*, applied by the writer alone after every worker is
//! done: DDL, tables whose foreign keys reach further than one level ([`crate::parents`]) or system-versioned,
//! tables being copied or quarantined, fragments of a large transaction, and copy work and admin commands between
//! transactions. A received group with a barrier is applied by the writer whole (one drain, one commit).
//!
//! **What a reader of the secondary sees.** Per-key order and transaction atomicity always; not the primary's
//! commit order across keys: a later transaction on other rows may be visible before an earlier one. With one
//! worker everything commits in source order; with `--commit-order`, workers commit in turn (each waits until
//! every earlier offset has committed), and a received group of several goes to the writer whole.
//!
//! **Exactly once.** The checkpoint row names the low-water mark `W`: every offset up to it is committed. A
//! worker's transaction inserts a row into `replica_meta.applied` listing its offsets, in the same transaction
//! as their changes, so an offset above `W` is committed exactly when such a row lists it. The apply loop moves
//! `W` over the offsets committed without a gap and, in one transaction, saves it and deletes the rows it
//! covers. After a crash the applier reads `W` and the rows, streams from `W + 1` and skips the offsets the
//! rows list: they are committed, and the rest are applied again. Skipping is safe because a transaction is
//! only ever committed after every earlier transaction sharing a key with it (its worker applies them first,
//! or it waited for their worker), so a committed transaction never precedes an uncommitted one on the same
//! rows: re-applying the uncommitted ones in source order, after the committed ones, gives each row the value
//! the primary gave it last. A predecessor's worker connections may still be committing after it is killed:
//! each holds a named lock of its own, and the apply loop's connection waits for all of them to be gone
//! before it reads anything (see [`crate::secondary`]).
//!
//! A worker that meets a permanent error hands its transactions back: the apply loop waits for the others,
//! then applies them alone, in source order, where the usual error handling (quarantine) takes over.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::event::{Body, Record, RowChange, Value};
use common::position::{BinlogPosition, Gtid};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::checkpoint;
use crate::config::Config;
use crate::error::ApplyError;
use crate::parents::ParentRef;
use crate::plan::{Group, Limits};
use crate::stream::Weight;
use crate::table::{TableMode, Tables};
use crate::writer::{Applied, Keys, Writer};

/// Jobs queued per worker.
const QUEUE: usize = 1024;
/// Jobs queued on a busy worker beyond which the next free record goes to another one.
const STICK: u64 = 64;
/// How often the checkpoint is saved while workers are busy; once they have been idle for `SAVE_IDLE`; and
/// before any barrier.
const SAVE_EVERY: Duration = Duration::from_millis(200);
const SAVE_IDLE: Duration = Duration::from_millis(5);

/// One journal transaction for a worker.
struct Job {
    /// Its place in its worker's queue.
    seq: u64,
    record: Record,
    weight: Weight,
    _permit: OwnedSemaphorePermit,
}

enum Msg {
    Apply(Job),
    /// The apply loop applied what the worker handed back: take jobs again.
    Resume,
}

/// What the checkpoint needs to pass an offset.
struct Passed {
    gtid: Option<Gtid>,
    source: BinlogPosition,
}

enum Done {
    /// Jobs through `through` committed in one transaction, recorded in `replica_meta.applied` under `first`.
    Committed { lane: usize, through: u64, first: u64, last: u64, passed: Vec<(u64, Passed)> },
    /// Jobs through `through` not applied: the first met `error` (or an earlier job of the worker did).
    Returned { lane: usize, through: u64, jobs: Vec<Job>, error: Option<ApplyError> },
}

struct Lane {
    tx: mpsc::Sender<Msg>,
    /// Jobs sent and jobs finished (committed or returned), as sequence numbers.
    sent: u64,
    done: u64,
    task: JoinHandle<()>,
}

/// What a record is to the scheduler.
enum Kind {
    /// Committed by a worker before a restart.
    Skip,
    /// For a worker, with its write set.
    Parallel(Vec<u64>),
    /// For the writer alone.
    Barrier,
}

pub struct Parallel {
    name: String,
    lanes: Vec<Lane>,
    done_rx: mpsc::Receiver<Done>,
    hasher: foldhash::fast::RandomState,
    /// The last job that touched each key: its lane and sequence number.
    touched: HashMap<u64, (usize, u64)>,
    /// Offsets above the checkpoint known to be committed, waiting for the checkpoint to reach them.
    committed: BTreeMap<u64, Passed>,
    /// Offsets a predecessor's workers committed above its checkpoint: skipped when they come again.
    skip: BTreeSet<u64>,
    /// Rows of `replica_meta.applied`: first offset → last offset.
    rows: BTreeMap<u64, u64>,
    /// Jobs handed back by a worker that failed, applied by the writer once every worker is done.
    returned: Vec<Job>,
    /// Highest offset handed out (to a worker, skipped, or applied by the writer) since the last drain.
    planned: u64,
    /// Source position of the checkpoint as it moved (None until it moves in this run).
    at: Option<BinlogPosition>,
    /// The checkpoint offset last saved, and when.
    saved: u64,
    last_save: Instant,
    /// Since when no worker holds a job (None while one does).
    idle_since: Option<Instant>,
    /// The worker the last record went to.
    last_lane: Option<usize>,
    /// With `--commit-order`: the next offset that may commit (workers wait for their turn).
    turn: Option<Arc<watch::Sender<u64>>>,
    shutdown: CancellationToken,
}

impl Parallel {
    /// `config.apply_workers` workers beside `writer` (none for one: the writer applies everything).
    pub fn new(config: &Arc<Config>, writer: &Writer, limits: Limits, shutdown: CancellationToken) -> Self {
        let count = if config.apply_workers > 1 { config.apply_workers } else { 0 };
        let (done_tx, done_rx) = mpsc::channel(count * (2 * QUEUE + 2) + 1);
        let turn = (count > 0 && config.commit_order).then(|| Arc::new(watch::channel(writer.applied() + 1).0));
        let lanes = (0..count)
            .map(|i| {
                let (tx, rx) = mpsc::channel(QUEUE);
                let worker = writer.worker(i + 1, turn.clone());
                let task = tokio::spawn(lane(i, worker, rx, done_tx.clone(), limits, turn.clone(), shutdown.clone()));
                Lane { tx, sent: 0, done: 0, task }
            })
            .collect();
        Self {
            name: config.name.clone(),
            lanes,
            done_rx,
            hasher: foldhash::fast::RandomState::default(),
            touched: HashMap::new(),
            committed: BTreeMap::new(),
            skip: BTreeSet::new(),
            rows: BTreeMap::new(),
            returned: Vec::new(),
            planned: 0,
            at: None,
            saved: writer.applied(),
            last_save: Instant::now(),
            idle_since: None,
            last_lane: None,
            turn,
            shutdown,
        }
    }

    /// Reads what a predecessor's workers committed above the checkpoint (to skip it when it comes again).
    pub async fn recover(&mut self, writer: &mut Writer) -> Result<(), ApplyError> {
        let checkpoint = writer.applied();
        let rows = checkpoint::applied_rows(writer.secondary().conn().await?, &self.name).await?;
        for (first, offsets) in rows {
            self.rows.insert(first, offsets.last().copied().unwrap_or(first));
            self.skip.extend(offsets.into_iter().filter(|&o| o > checkpoint));
        }
        self.saved = checkpoint;
        self.set_turn(writer);
        if !self.skip.is_empty() {
            info!(consumer = %self.name, checkpoint, committed_above = self.skip.len(),
                  through = self.skip.last().copied().unwrap_or_default(),
                  "transactions applied in parallel above the checkpoint are skipped when they come again");
        }
        Ok(())
    }

    /// With `--commit-order`, after the writer applied (or skipped) everything handed out: the next offset is
    /// the next to commit.
    fn set_turn(&self, writer: &Writer) {
        if let Some(turn) = &self.turn {
            turn.send_replace(writer.applied() + 1);
        }
    }

    /// The last offset handed out: the next record must follow it.
    pub fn planned(&self, writer: &Writer) -> u64 {
        self.planned.max(writer.applied_through())
    }

    /// Whether any worker holds jobs.
    pub fn busy(&self) -> bool {
        self.lanes.iter().any(|l| l.sent > l.done)
    }

    /// Whether offsets committed by a predecessor's workers are still to be skipped (their offsets belong to
    /// the journal they were applied from).
    pub fn skipping(&self) -> bool {
        !self.skip.is_empty()
    }

    /// Applies a group: records for the workers are handed to them, the rest applied by the writer.
    pub async fn apply(
        &mut self,
        group: Group,
        writer: &mut Writer,
        tables: &mut Tables,
    ) -> Result<Applied, ApplyError> {
        if self.lanes.is_empty() && self.skip.is_empty() {
            return writer.apply(&group.records, tables).await;
        }
        self.take_done(writer).await?;
        if !self.lanes.is_empty() && !writer.in_transaction() {
            // Unknown shapes make records barriers; the writer reports why when it applies them.
            if let Err(e) = writer.learn_shapes(&group.records, tables).await {
                info!(consumer = %self.name, error = %common::lifecycle::error_chain(&e),
                      "table shapes could not be checked: applied without workers");
            }
        }
        let mut run: Vec<Record> = Vec::new();
        let mut run_permits = Vec::new();
        let mut in_fragment = writer.in_transaction();
        let mut kinds = Vec::with_capacity(group.records.len());
        for record in &group.records {
            kinds.push(self.classify(record, in_fragment, writer, tables));
            in_fragment = record.continues;
        }
        // A group with a barrier is applied by the writer whole: one drain and one commit for all of it, rather
        // than one per barrier (with a barrier in every few transactions, that is far faster). In commit order
        // so is any group of several: workers could only commit its transactions one at a time, where the
        // writer commits them together, in order by construction.
        let whole = kinds.iter().any(|k| matches!(k, Kind::Barrier))
            || (self.turn.is_some() && kinds.iter().filter(|k| matches!(k, Kind::Parallel(_))).count() > 1);
        if whole {
            for k in kinds.iter_mut().filter(|k| matches!(k, Kind::Parallel(_))) {
                *k = Kind::Barrier;
            }
        }
        let workers = kinds.iter().filter(|k| matches!(k, Kind::Parallel(_))).count() as u64;
        writer.metrics().planned("worker", workers);
        writer.metrics().planned("writer", kinds.iter().filter(|k| matches!(k, Kind::Barrier)).count() as u64);
        let Group { records, permits, weights } = group;
        for (((record, permit), weight), kind) in records.into_iter().zip(permits).zip(weights).zip(kinds) {
            match kind {
                Kind::Barrier => {
                    run.push(record);
                    run_permits.push(permit);
                    continue;
                }
                Kind::Skip => {
                    let applied = self.alone(&mut run, writer, tables).await?;
                    if applied != Applied::Done {
                        return Ok(applied);
                    }
                    // In commit order nothing after it may commit before the checkpoint passes it.
                    if self.turn.is_some() && !self.drain(writer, tables).await? {
                        return Ok(Applied::Stopped);
                    }
                    self.skip.remove(&record.offset.0);
                    self.planned = record.offset.0;
                    self.pass(record.offset.0, record.gtid, record.source, writer);
                    self.set_turn(writer);
                }
                Kind::Parallel(keys) => {
                    let applied = self.alone(&mut run, writer, tables).await?;
                    if applied != Applied::Done {
                        return Ok(applied);
                    }
                    if !self.dispatch(record, weight, permit, keys, writer, tables).await? {
                        return Ok(Applied::Stopped);
                    }
                }
            }
            run_permits.clear();
        }
        let applied = self.alone(&mut run, writer, tables).await?;
        drop(run_permits);
        Ok(applied)
    }

    fn classify(&self, record: &Record, in_fragment: bool, writer: &Writer, tables: &Tables) -> Kind {
        if self.skip.contains(&record.offset.0) {
            return Kind::Skip;
        }
        if self.lanes.is_empty() || in_fragment || record.continues {
            return Kind::Barrier;
        }
        let Body::Transaction(changes) = &record.body else { return Kind::Barrier };
        let mut keys = Vec::new();
        for c in changes {
            if tables.mode(&(c.schema.clone(), c.table.clone())) != TableMode::Strict {
                return Kind::Barrier;
            }
            let Some((kind, identity, parents)) = writer.keys(c) else { return Kind::Barrier };
            if kind == Keys::Table {
                keys.push(self.table_key(&c.schema, &c.table));
            }
            if kind == Keys::Table && parents.is_empty() {
                continue;
            }
            for row in &c.rows {
                let (before, after) = match row {
                    RowChange::Insert { after } => (None, Some(after)),
                    RowChange::Update { before, after } => (Some(before), Some(after)),
                    RowChange::Delete { before } => (Some(before), None),
                };
                for image in before.into_iter().chain(after) {
                    if kind == Keys::Rows {
                        let of_row = identity
                            .keys
                            .iter()
                            .filter_map(|(name, columns)| self.key_of(&c.schema, &c.table, name, columns, image));
                        keys.extend(of_row);
                    }
                    keys.extend(parents.iter().filter_map(|p| self.parent_key(p, image)));
                }
            }
        }
        Kind::Parallel(keys)
    }

    fn table_key(&self, schema: &str, table: &str) -> u64 {
        self.hasher.hash_one((schema, table))
    }

    /// The key of a row of `schema.table` with `image`'s values in `columns` of its unique key `key`; None when
    /// one is NULL (NULLs never collide in a unique key).
    fn key_of(&self, schema: &str, table: &str, key: &str, columns: &[usize], image: &[Value]) -> Option<u64> {
        let mut h = self.hasher.build_hasher();
        (schema, table, key).hash(&mut h);
        for &i in columns {
            match image.get(i) {
                None | Some(Value::Null) => return None,
                Some(v) => crate::net::hash_value(v, &mut h),
            }
        }
        // Never the table key of the same table.
        1u8.hash(&mut h);
        Some(h.finish())
    }

    /// The key of the parent row a child row `image` references (its table's key when the parent's rows are not
    /// told apart); None when it references none (a NULL in the foreign key).
    fn parent_key(&self, p: &ParentRef, image: &[Value]) -> Option<u64> {
        let (schema, table) = &p.parent;
        if p.columns.is_empty() {
            return Some(self.table_key(schema, table));
        }
        self.key_of(schema, table, &p.key, &p.columns, image)
    }

    /// Hands a record to a worker: the one still holding an earlier record with a key of it, or the least busy;
    /// waits while two or more workers hold such records. False if the applier stopped meanwhile.
    async fn dispatch(
        &mut self,
        record: Record,
        weight: Weight,
        permit: OwnedSemaphorePermit,
        keys: Vec<u64>,
        writer: &mut Writer,
        tables: &mut Tables,
    ) -> Result<bool, ApplyError> {
        let lane = loop {
            if !self.returned.is_empty() && !self.drain(writer, tables).await? {
                return Ok(false);
            }
            let mut holders: Vec<usize> = Vec::new();
            for k in &keys {
                if let Some(&(lane, seq)) = self.touched.get(k) {
                    if seq > self.lanes[lane].done && !holders.contains(&lane) {
                        holders.push(lane);
                    }
                }
            }
            match holders[..] {
                [] => break self.free_lane(),
                [lane] => break lane,
                _ => {
                    if !self.wait_one(writer).await? {
                        return Ok(false);
                    }
                }
            }
        };
        if !self.busy() {
            // Everything handed out is committed: the checkpoint may have moved without the workers (a copy).
            self.set_turn(writer);
        }
        let seq = self.lanes[lane].sent + 1;
        if self.touched.len() > 4 * QUEUE * self.lanes.len() + keys.len() {
            let lanes = &self.lanes;
            self.touched.retain(|_, (l, s)| *s > lanes[*l].done);
        }
        for k in keys {
            self.touched.insert(k, (lane, seq));
        }
        self.planned = record.offset.0;
        let mut msg = Msg::Apply(Job { seq, record, weight, _permit: permit });
        loop {
            match self.lanes[lane].tx.try_send(msg) {
                Ok(()) => break,
                Err(mpsc::error::TrySendError::Full(m)) => {
                    msg = m;
                    if !self.wait_one(writer).await? {
                        return Ok(false);
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return Ok(false),
            }
        }
        self.lanes[lane].sent = seq;
        self.last_lane = Some(lane);
        self.idle_since = None;
        debug!(consumer = %self.name, offset = self.planned, worker = lane + 1, seq, "handed to a worker");
        Ok(true)
    }

    /// The worker for a record no busy worker holds keys of: an idle one (it commits at once: lag), else the one
    /// that took the record before while its queue is short (consecutive records commit together: fewer
    /// commits under a backlog, and in commit order the only way to commit more than one at a time), else the
    /// least busy.
    fn free_lane(&self) -> usize {
        let queued = |i: usize| self.lanes[i].sent - self.lanes[i].done;
        if let Some(idle) = (0..self.lanes.len()).find(|&i| queued(i) == 0) {
            return idle;
        }
        match self.last_lane {
            Some(last) if queued(last) < STICK => last,
            _ => (0..self.lanes.len()).min_by_key(|&i| queued(i)).unwrap_or(0),
        }
    }

    /// Applies the records gathered in `run` with the writer alone, once every worker is done.
    async fn alone(
        &mut self,
        run: &mut Vec<Record>,
        writer: &mut Writer,
        tables: &mut Tables,
    ) -> Result<Applied, ApplyError> {
        let (Some(first), Some(last)) = (run.first(), run.last()) else { return Ok(Applied::Done) };
        if !writer.in_transaction() && !self.drain(writer, tables).await? {
            return Ok(Applied::Stopped);
        }
        let (first, last_offset, source) = (first.offset.0, last.offset.0, last.source.clone());
        if writer.applied_through() + 1 != first {
            return Err(ApplyError::State {
                what: "parallel apply".into(),
                reason: format!("offset {first} is next, but the checkpoint is at {}", writer.applied_through()),
            });
        }
        let applied = writer.apply(run, tables).await?;
        run.clear();
        if applied == Applied::Done && !writer.in_transaction() && writer.applied() == last_offset {
            self.at = Some(source);
            self.saved = last_offset;
            self.forget_covered();
            self.set_turn(writer);
        }
        Ok(applied)
    }

    /// Waits until every worker is done, applies what failed workers handed back, and saves the checkpoint:
    /// afterwards the writer's checkpoint covers everything handed out. False if the applier stopped.
    pub async fn drain(&mut self, writer: &mut Writer, tables: &mut Tables) -> Result<bool, ApplyError> {
        while self.busy() {
            if !self.wait_one(writer).await? {
                return Ok(false);
            }
        }
        if !self.returned.is_empty() {
            let mut returned = std::mem::take(&mut self.returned);
            returned.sort_by_key(|j| j.record.offset.0);
            info!(consumer = %self.name, transactions = returned.len(), from = returned[0].record.offset.0,
                  "applying alone, in source order, what a worker handed back");
            for job in returned {
                let offset = job.record.offset.0;
                if writer.applied() + 1 != offset {
                    return Err(ApplyError::State {
                        what: "parallel apply".into(),
                        reason: format!(
                            "offset {offset} was handed back, but the checkpoint is at {}",
                            writer.applied()
                        ),
                    });
                }
                match writer.apply(std::slice::from_ref(&job.record), tables).await? {
                    Applied::Done => {}
                    Applied::Stopped => return Ok(false),
                    Applied::ReadAgain => {
                        return Err(ApplyError::State {
                            what: "parallel apply".into(),
                            reason: format!("offset {offset} was handed back as part of a large transaction"),
                        })
                    }
                }
                self.at = Some(job.record.source.clone());
                self.saved = offset;
                self.advance(writer);
            }
            for lane in &self.lanes {
                // Every job sent is done: the queue is empty and has room.
                let _ = lane.tx.try_send(Msg::Resume);
            }
        }
        if self.saved < writer.applied() || !self.rows.is_empty() {
            self.save(writer).await?;
        }
        self.planned = 0;
        self.touched.clear();
        self.set_turn(writer);
        Ok(true)
    }

    /// Takes whatever workers have finished, without waiting.
    async fn take_done(&mut self, writer: &mut Writer) -> Result<(), ApplyError> {
        while let Ok(done) = self.done_rx.try_recv() {
            self.on_done(done, writer).await?;
        }
        Ok(())
    }

    /// Waits for one worker to finish something. False if the applier stopped.
    async fn wait_one(&mut self, writer: &mut Writer) -> Result<bool, ApplyError> {
        let done = tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => return Ok(false),
            done = self.done_rx.recv() => done,
        };
        match done {
            Some(done) => {
                self.on_done(done, writer).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The next thing a worker finished (for the apply loop's select; pending while none is busy).
    pub async fn next_done(&mut self) -> Option<DoneMsg> {
        if !self.busy() {
            std::future::pending::<()>().await;
        }
        self.done_rx.recv().await.map(DoneMsg)
    }

    /// Takes note of what a worker finished; what a failed worker handed back is applied at once. False if the
    /// applier stopped meanwhile.
    pub async fn finished(
        &mut self,
        done: DoneMsg,
        writer: &mut Writer,
        tables: &mut Tables,
    ) -> Result<bool, ApplyError> {
        self.on_done(done.0, writer).await?;
        if self.returned.is_empty() {
            return Ok(true);
        }
        self.drain(writer, tables).await
    }

    async fn on_done(&mut self, done: Done, writer: &mut Writer) -> Result<(), ApplyError> {
        match done {
            Done::Committed { lane, through, first, last, passed } => {
                self.lanes[lane].done = through;
                self.rows.insert(first, last);
                for (offset, p) in passed {
                    self.committed.insert(offset, p);
                }
                self.advance(writer);
            }
            Done::Returned { lane, through, jobs, error } => {
                self.lanes[lane].done = through;
                if let Some(e) = error {
                    warn!(consumer = %self.name, worker = lane + 1, offset = jobs.first().map_or(0, |j| j.record.offset.0),
                          error = %common::lifecycle::error_chain(&e),
                          "a worker's transaction failed: it is applied again alone, after the other workers' work");
                }
                self.returned.extend(jobs);
            }
        }
        self.idle_since = (!self.busy()).then(Instant::now);
        if self.last_save.elapsed() >= SAVE_EVERY {
            self.save(writer).await?;
        }
        Ok(())
    }

    /// When the checkpoint should be saved next (None: it is saved where it is).
    pub fn save_due(&self, writer: &Writer) -> Option<tokio::time::Instant> {
        let due = match self.idle_since {
            Some(idle) => (self.last_save + SAVE_EVERY).min(idle + SAVE_IDLE),
            None => self.last_save + SAVE_EVERY,
        };
        (self.saved < writer.applied() || self.rows.values().any(|&last| last <= writer.applied())).then(|| due.into())
    }

    /// Saves the checkpoint where it moved (see [`Parallel::save_due`]).
    pub async fn save_now(&mut self, writer: &mut Writer) -> Result<(), ApplyError> {
        self.save(writer).await
    }

    /// Takes note that `offset` is committed (or was before a restart).
    fn pass(&mut self, offset: u64, gtid: Option<Gtid>, source: BinlogPosition, writer: &mut Writer) {
        self.committed.insert(offset, Passed { gtid, source });
        self.advance(writer);
    }

    /// Moves the checkpoint (in memory) over the offsets committed without a gap.
    fn advance(&mut self, writer: &mut Writer) {
        while let Some(entry) = self.committed.first_entry() {
            if *entry.key() != writer.applied() + 1 {
                break;
            }
            let (offset, passed) = entry.remove_entry();
            writer.advance(offset, passed.gtid);
            self.at = Some(passed.source);
        }
    }

    /// Forgets the rows of `replica_meta.applied` the saved checkpoint covers (the writer deleted them or will).
    fn forget_covered(&mut self) {
        let saved = self.saved;
        self.rows.retain(|_, last| *last > saved);
    }

    /// Saves the checkpoint where it moved in memory, deleting the rows it covers. A transient failure is
    /// logged and left for the next save.
    async fn save(&mut self, writer: &mut Writer) -> Result<(), ApplyError> {
        if writer.in_transaction() {
            return Ok(());
        }
        let w = writer.applied();
        let covered: Vec<u64> = self.rows.iter().filter(|(_, last)| **last <= w).map(|(first, _)| *first).collect();
        if covered.is_empty() && self.saved == w {
            return Ok(());
        }
        let source = self.at.as_ref().map(|s| (s.file.as_str(), s.pos));
        debug!(consumer = %self.name, checkpoint = w, rows = covered.len(), "saving the checkpoint of parallel apply");
        match writer.save_advanced(source, &covered).await {
            Ok(()) => {
                for first in covered {
                    self.rows.remove(&first);
                }
                self.saved = w;
                self.last_save = Instant::now();
                Ok(())
            }
            Err(e) if e.is_transient() => {
                warn!(consumer = %self.name, error = %common::lifecycle::error_chain(&e),
                      "could not save the checkpoint of parallel apply; it is saved later");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// At shutdown: lets the workers finish what they began, then saves the checkpoint.
    pub async fn close(&mut self, writer: &mut Writer) {
        for lane in std::mem::take(&mut self.lanes) {
            drop(lane.tx);
            if tokio::time::timeout(Duration::from_secs(30), lane.task).await.is_err() {
                warn!(consumer = %self.name, "a worker did not stop within 30 s");
            }
        }
        while let Ok(done) = self.done_rx.try_recv() {
            if let Done::Committed { first, last, passed, .. } = done {
                self.rows.insert(first, last);
                self.committed.extend(passed);
            }
        }
        self.advance(writer);
        if let Err(e) = self.save(writer).await {
            warn!(consumer = %self.name, error = %common::lifecycle::error_chain(&e),
                  "could not save the checkpoint at shutdown; the offsets applied are recovered at the next start");
        }
    }
}

/// Something a worker finished, for [`Parallel::finished`].
pub struct DoneMsg(Done);

/// A worker: applies its queue in order, as many queued transactions at a time as the limits allow.
async fn lane(
    index: usize,
    mut writer: Writer,
    mut rx: mpsc::Receiver<Msg>,
    done: mpsc::Sender<Done>,
    limits: Limits,
    turn: Option<Arc<watch::Sender<u64>>>,
    shutdown: CancellationToken,
) {
    let contiguous = turn.is_some();
    let mut tables = Tables::default();
    let mut failed = false;
    // A job taken from the queue that could not join the last transaction (in commit order, offsets must follow
    // each other within one).
    let mut held: Option<Job> = None;
    loop {
        let msg = match held.take() {
            Some(job) => Msg::Apply(job),
            None => tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                msg = rx.recv() => match msg { Some(m) => m, None => return },
            },
        };
        let first = match msg {
            Msg::Resume => {
                failed = false;
                continue;
            }
            Msg::Apply(job) => job,
        };
        if failed {
            let through = first.seq;
            if done.send(Done::Returned { lane: index, through, jobs: vec![first], error: None }).await.is_err() {
                return;
            }
            continue;
        }
        let (mut rows, mut bytes) = (first.weight.rows, first.weight.bytes);
        let mut jobs = vec![first];
        while rows < limits.rows && bytes < limits.bytes {
            match rx.try_recv() {
                Ok(Msg::Apply(job))
                    if contiguous && jobs.last().is_some_and(|j| j.record.offset.0 + 1 != job.record.offset.0) =>
                {
                    held = Some(job);
                    break;
                }
                Ok(Msg::Apply(job)) => {
                    rows += job.weight.rows;
                    bytes += job.weight.bytes;
                    jobs.push(job);
                }
                // Only sent after a failure, which this worker has not had.
                Ok(Msg::Resume) | Err(_) => break,
            }
        }
        let through = jobs.last().map_or(0, |j| j.seq);
        let mut records = Vec::with_capacity(jobs.len());
        let mut rest = Vec::with_capacity(jobs.len());
        for job in jobs {
            records.push(job.record);
            rest.push((job.seq, job.weight, job._permit));
        }
        let outcome = writer.apply(&records, &mut tables).await;
        let msg = match outcome {
            Ok(Applied::Done) => {
                let (first, last) = (records[0].offset.0, records[records.len() - 1].offset.0);
                let passed =
                    records.into_iter().map(|r| (r.offset.0, Passed { gtid: r.gtid, source: r.source })).collect();
                Done::Committed { lane: index, through, first, last, passed }
            }
            Ok(Applied::Stopped) => return,
            Err(ApplyError::Stopping) if shutdown.is_cancelled() => return,
            outcome => {
                failed = true;
                if let Some(turn) = &turn {
                    // Workers waiting for their turn behind this transaction give theirs back too.
                    turn.send_replace(0);
                }
                let error = match outcome {
                    Err(e) => e,
                    _ => ApplyError::State {
                        what: "parallel apply".into(),
                        reason: "a worker was asked to read a transaction again".into(),
                    },
                };
                let jobs = records
                    .into_iter()
                    .zip(rest)
                    .map(|(record, (seq, weight, permit))| Job { seq, record, weight, _permit: permit })
                    .collect();
                Done::Returned { lane: index, through, jobs, error: Some(error) }
            }
        };
        if done.send(msg).await.is_err() {
            return;
        }
    }
}
