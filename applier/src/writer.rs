//! The writer: applies planned groups of records to the secondary on one connection, exactly once.
//!
//! Invariant: the checkpoint row in `replica_meta.checkpoint` names the last journal offset whose changes
//! are committed on the secondary. Row changes of one or more consecutive records are applied in one
//! secondary transaction that also moves the checkpoint, so a crash at any point leaves either all of them
//! and the new checkpoint, or none and the old one; the applier then resumes at checkpoint + 1.
//!
//! DDL commits implicitly in MariaDB and cannot share that transaction. A DDL record is applied alone:
//! first `ddl_pending` is set to its offset, then the statement runs, then the checkpoint moves to it. If
//! the process dies after the statement but before the checkpoint, the DDL is run again at restart, and the
//! "already exists / does not exist" errors are then taken to mean it had been applied.
//!
//! A source transaction too large for memory arrives as several records (fragments: every one but the last
//! `continues`); the planner hands it over in several groups. They are applied into one secondary transaction
//! that stays open between groups, and only the group with the last fragment moves the checkpoint and
//! commits. A crash or a failure before that rolls the whole transaction back; its earlier fragments are no
//! longer in memory, so the apply loop reads it again from its first record (checkpoint + 1) and the attempt
//! starts over. The exactly-once argument is the same as for one group: the checkpoint and the transaction's
//! changes commit together, or neither does.
//!
//! Transient errors are retried with the retry policy until they pass or the applier stops. A permanent
//! error in a group of several records is narrowed down by applying them one at a time; on a single record it
//! stops the applier, or (with `--skip-failing-tables`) counts against its table until the table is
//! quarantined and its changes skipped.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::event::{Body, Column, ColumnType, Record, TableChange, Value};
use common::position::GtidState;
use common::retry::{Retry, RetryPolicy};
use futures_util::FutureExt;
use mysql_async::prelude::Queryable;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::checkpoint;
use crate::config::Config;
use crate::conflict::{self, Conflict, ConflictMode};
use crate::copy::state::Progress;
use crate::drift;
use crate::error::{codes, meta, statement, ApplyError};
use crate::identity::{self, Identity};
use crate::long;
use crate::metrics::ApplierMetrics;
use crate::net::NetTable;
use crate::parents::{self, ParentRef};
use crate::rows;
use crate::secondary::Secondary;
use crate::sql;
use crate::table::{TableKey, TableMode, Tables};
use crate::versioned::{self, Period};

/// A table's columns as checked against the secondary, which of them the secondary generates, and whether it
/// takes part in foreign keys there.
#[derive(Debug)]
struct Shape {
    columns: Vec<Column>,
    generated: Vec<usize>,
    /// It has a foreign key or is referenced by one: its changes are applied in source order, updates as
    /// UPDATEs, with foreign key checks as the primary's session had them, so that cascades happen here as
    /// they did there (InnoDB performs them below the binlog).
    in_foreign_keys: bool,
    /// For parallel apply: the parents its rows depend on (none outside foreign keys); None when its changes
    /// must be barriers (see [`crate::parents`]).
    parents: Option<Vec<ParentRef>>,
    /// Its AUTO_INCREMENT column: the highest row inserted and deleted within a group is written and deleted
    /// again, so the counter ends where the primary's does (see [`crate::net`]).
    auto_increment: Option<String>,
    /// Its unique keys on the secondary: with one besides the primary key, net updates are applied as deletes
    /// and inserts, never in place (see [`crate::net`]); for parallel apply, how its rows are told apart.
    identity: Identity,
    /// A system-versioned table: its period columns (also in `generated`); applied in source order by
    /// [`crate::versioned`].
    period: Option<Period>,
}

/// Where a versioned table's period columns `start` and `end` are among a change's columns; an error for
/// transaction-precise versioning (BIGINT UNSIGNED periods, transaction ids local to each server).
fn period_of(c: &TableChange, start: &str, end: &str) -> Result<Period, String> {
    let find = |name: &str| c.columns.iter().position(|col| col.name.eq_ignore_ascii_case(name));
    match (find(start), find(end)) {
        (Some(s), Some(e)) if c.columns[s].ty == ColumnType::Timestamp && c.columns[e].ty == ColumnType::Timestamp => {
            Ok(Period { start: s, end: e })
        }
        (Some(_), Some(_)) => Err(format!(
            "{}.{} is versioned by transaction ids, which are local to each server and cannot be replicated; \
             exclude it with REPLICA_EXCLUDE",
            c.schema, c.table
        )),
        _ => Err(format!("the primary did not log the period columns {start}, {end} of {}.{}", c.schema, c.table)),
    }
}

/// What the secondary holds when the applier starts.
#[derive(Debug)]
pub struct Resumed {
    /// No checkpoint (or `--resync`): an initial copy must begin.
    pub needs_copy: bool,
    /// Every table's copy progress (none when a copy must begin).
    pub copies: Vec<(TableKey, Progress)>,
    /// Quarantined tables: since which offset, and why.
    pub quarantined: Vec<(TableKey, u64, String)>,
}

/// The checkpoint's GTID state; unreadable text (never written by this version) counts as unknown.
fn parse_gtid_state(consumer: &str, text: &str) -> GtidState {
    text.parse().unwrap_or_else(|e| {
        warn!(%consumer, gtid = %text, error = %e, "the checkpoint's GTID state is unreadable; treated as unknown");
        GtidState::default()
    })
}

/// Waits between attempts at applying.
fn retries(config: &Config) -> Retry {
    RetryPolicy::new(Duration::from_millis(50), config.retry_max).start()
}

/// What became of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Applied (committed, or part of the open transaction of a fragmented source transaction).
    Done,
    /// Shutdown interrupted it; nothing of it is committed.
    Stopped,
    /// A fragmented transaction failed after some of its fragments were applied and let go: it was rolled
    /// back, and must be read again from checkpoint + 1.
    ReadAgain,
}

pub struct Writer {
    config: Arc<Config>,
    /// Offset of the last record applied into the secondary transaction left open for the rest of a
    /// fragmented source transaction.
    open: Option<u64>,
    /// Waits between attempts at a fragmented transaction (which start over from the stream).
    fragmented_retry: Retry,
    secondary: Secondary,
    /// Tables whose columns were checked against the secondary (cleared after every DDL).
    shapes: HashMap<TableKey, Shape>,
    ddl_pending: Option<u64>,
    /// Last journal offset committed on the secondary.
    applied: u64,
    /// The GTID state committed on the secondary with `applied` (see [`crate::relocate`]).
    gtid: GtidState,
    /// The reader journal `applied` is in (empty until the first subscription names it).
    journal_id: String,
    applied_tx: watch::Sender<u64>,
    metrics: ApplierMetrics,
    shutdown: CancellationToken,
    /// Conflicts resolved in the open secondary transaction (recorded in it; reported once it commits).
    conflicts: Vec<Conflict>,
    /// Some(i) when this is parallel worker i (see [`crate::parallel`]): its transactions record their offsets
    /// in `replica_meta.applied` instead of moving the checkpoint, and a permanent error is handed back.
    worker: Option<usize>,
    /// Bumped whenever table shapes may have changed (DDL, a table re-created): workers then forget theirs.
    shape_generation: Arc<AtomicU64>,
    seen_generation: u64,
    /// With `--commit-order`, a worker's turn to commit: the next journal offset that may commit.
    turn: Option<Arc<watch::Sender<u64>>>,
    /// Offsets of the long-value pieces held in session variables on the secondary (see [`crate::long`]).
    pieces: Vec<u64>,
}

/// How parallel apply may tell a table's changes apart (see [`crate::parallel`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    /// By the values of its primary key and of every other unique key, compared exactly.
    Rows,
    /// Only as a whole: every change to the table conflicts with every other (no primary key, or a unique key
    /// whose values compare by collation or as floats, or index a prefix).
    Table,
}

impl Writer {
    /// Connects, creates `replica_meta` if needed and reads the checkpoint and the applier's state.
    /// Connects to the secondary and reads the checkpoint, waiting (with backoff, WARN logs naming the secondary)
    /// while the secondary cannot be reached or refuses for a reason that may pass; None if shut down meanwhile.
    pub async fn open(
        config: Arc<Config>,
        applied_tx: watch::Sender<u64>,
        metrics: ApplierMetrics,
        shutdown: CancellationToken,
    ) -> Result<Option<(Self, Resumed)>, ApplyError> {
        let mut secondary = Secondary::new(config.clone());
        let mut retry = retries(&config);
        let mut attempts = 0u32;
        let (cp, resumed) = loop {
            match Self::resume_state(&mut secondary, &config).await {
                Ok(state) => break state,
                Err(e) if e.is_transient() => {
                    secondary.failed(&e);
                    metrics.links(false, false);
                    attempts += 1;
                    warn!(
                        consumer = %config.name,
                        secondary = %crate::secondary::addr(&config),
                        attempts,
                        error = %common::lifecycle::error_chain(&e),
                        "the secondary is not available yet; retrying"
                    );
                    if !retry.wait(&shutdown).await {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(e),
            }
        };
        applied_tx.send_replace(cp.applied_offset);
        let gtid = parse_gtid_state(&config.name, &cp.gtid);
        let writer = Self {
            fragmented_retry: retries(&config),
            open: None,
            pieces: Vec::new(),
            config,
            secondary,
            shapes: HashMap::new(),
            ddl_pending: cp.ddl_pending,
            applied: cp.applied_offset,
            gtid,
            journal_id: cp.journal_id.clone(),
            applied_tx,
            metrics,
            shutdown,
            conflicts: Vec::new(),
            worker: None,
            shape_generation: Arc::new(AtomicU64::new(0)),
            seen_generation: 0,
            turn: None,
        };
        Ok(Some((writer, resumed)))
    }

    /// Parallel worker `index` (1-based) beside this writer: its own connection, the same configuration; with
    /// `turn`, each transaction commits only when the offset `turn` holds is its first (and then moves it past
    /// its last).
    pub fn worker(&self, index: usize, turn: Option<Arc<watch::Sender<u64>>>) -> Self {
        Self {
            config: self.config.clone(),
            open: None,
            pieces: Vec::new(),
            fragmented_retry: retries(&self.config),
            secondary: Secondary::for_worker(self.config.clone(), index),
            shapes: HashMap::new(),
            ddl_pending: None,
            applied: 0,
            gtid: GtidState::default(),
            journal_id: String::new(),
            applied_tx: watch::channel(0).0,
            metrics: self.metrics.clone(),
            shutdown: self.shutdown.clone(),
            conflicts: Vec::new(),
            worker: Some(index),
            shape_generation: self.shape_generation.clone(),
            seen_generation: self.shape_generation.load(Ordering::Acquire),
            turn,
        }
    }

    /// Table shapes may have changed: every worker checks them again.
    fn shapes_changed(&mut self) {
        self.shapes.clear();
        self.shape_generation.fetch_add(1, Ordering::AcqRel);
    }

    /// How parallel apply may tell this change's rows apart, and the parent rows they depend on; None when it
    /// cannot (the table's shape is not checked yet, its foreign keys reach too far, or it is system-versioned).
    pub fn keys(&self, c: &TableChange) -> Option<(Keys, &Identity, &[ParentRef])> {
        let shape = self.shapes.get(&(c.schema.clone(), c.table.clone()))?;
        if shape.columns != c.columns || shape.period.is_some() {
            return None;
        }
        let parents = shape.parents.as_deref()?;
        // Without a primary key, rows are located by their whole image: only changes to the same table interact.
        let keys = if !c.primary_key.is_empty() && shape.identity.exact { Keys::Rows } else { Keys::Table };
        Some((keys, &shape.identity, parents))
    }

    pub fn metrics(&self) -> &ApplierMetrics {
        &self.metrics
    }

    /// Checks the shapes of the tables `group` changes (see [`Writer::keys`]).
    pub async fn learn_shapes(&mut self, group: &[Record], tables: &Tables) -> Result<(), ApplyError> {
        self.check_shapes(group, tables).await
    }

    /// The records through `offset` are committed (by parallel workers): the checkpoint may move there.
    /// `gtid` is the record's. The reader hears of it once the checkpoint is saved ([`Writer::save_advanced`]):
    /// until then a restart needs the records again, if only to skip them.
    pub fn advance(&mut self, offset: u64, gtid: Option<common::position::Gtid>) {
        if let Some(g) = gtid {
            self.gtid.advance(g);
        }
        self.applied = offset;
    }

    /// Writes the checkpoint at what [`Writer::advance`] reached and forgets the worker transactions it covers.
    pub async fn save_advanced(&mut self, source: Option<(&str, u64)>, covered: &[u64]) -> Result<(), ApplyError> {
        let (name, offset, gtid) = (self.config.name.clone(), self.applied, self.gtid.to_string());
        let conn = self.secondary.conn().await?;
        let saved = checkpoint::advance(conn, &name, offset, &gtid, source, covered).await;
        match &saved {
            Ok(()) => {
                self.applied_tx.send_replace(offset);
            }
            Err(e) => {
                self.secondary.failed(e);
                self.secondary.rollback().await;
            }
        }
        saved
    }

    /// The checkpoint (saved first when starting at `--start-offset`), copy progress and quarantines.
    async fn resume_state(
        secondary: &mut Secondary,
        config: &Config,
    ) -> Result<(checkpoint::Checkpoint, Resumed), ApplyError> {
        let conn = secondary.conn().await?;
        checkpoint::ensure_schema(conn).await?;
        let mut needs_copy = config.resync;
        let cp = match checkpoint::load(conn, &config.name).await? {
            Some(cp) => cp,
            None => match config.start_offset {
                Some(start) => {
                    let applied = start.saturating_sub(1);
                    checkpoint::save(conn, &config.name, applied, "", "", 0).await?;
                    info!(consumer = %config.name, offset = start, "no checkpoint: starting at --start-offset");
                    checkpoint::Checkpoint { applied_offset: applied, ..Default::default() }
                }
                None => {
                    info!(consumer = %config.name, "no checkpoint on the secondary: an initial copy begins");
                    needs_copy = true;
                    checkpoint::Checkpoint::default()
                }
            },
        };
        let copies = if needs_copy { Vec::new() } else { checkpoint::copy_states(conn, &config.name).await? };
        let quarantined = checkpoint::quarantined(conn, &config.name)
            .await?
            .into_iter()
            .map(|(schema, table, since, error)| ((schema, table), since, error))
            .collect();
        Ok((cp, Resumed { needs_copy, copies, quarantined }))
    }

    /// Last journal offset committed on the secondary.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Last journal offset applied, committed or in the open transaction: the next group starts after it.
    pub fn applied_through(&self) -> u64 {
        self.open.unwrap_or(self.applied)
    }

    /// Whether a fragmented source transaction is open on the secondary connection (nothing else may use
    /// the connection until it commits).
    pub fn in_transaction(&self) -> bool {
        self.open.is_some()
    }

    /// The apply loop's connection, for copy work done between transactions.
    pub fn secondary(&mut self) -> &mut Secondary {
        &mut self.secondary
    }

    /// The checkpoint was moved to `offset` in a transaction of the copy's (see [`crate::copy`]).
    pub fn moved_to(&mut self, offset: u64) {
        self.applied = offset;
        self.applied_tx.send_replace(offset);
    }

    /// Rolls back the open transaction of a fragmented source transaction, if any (its rest will not come).
    pub async fn roll_back_open(&mut self) {
        if self.open.take().is_some() {
            self.secondary.rollback().await;
        }
    }

    /// An initial copy began: the secondary's GTID state is not known until transactions are applied again.
    pub fn forget_gtid(&mut self) {
        self.gtid = GtidState::default();
    }

    /// The GTID state committed on the secondary.
    pub fn gtid(&self) -> &GtidState {
        &self.gtid
    }

    /// The reader journal the checkpoint's offset is in (empty if not named yet).
    pub fn journal_id(&self) -> &str {
        &self.journal_id
    }

    /// Names the journal the checkpoint's offset is in (the first journal subscribed to).
    pub async fn name_journal(&mut self, journal_id: &str) -> Result<(), ApplyError> {
        let conn = self.secondary.conn().await?;
        checkpoint::set_journal(conn, &self.config.name, journal_id).await?;
        self.journal_id = journal_id.to_owned();
        Ok(())
    }

    /// Moves the checkpoint into another journal, where the same transactions end at `offset`.
    pub async fn relocate(&mut self, journal_id: &str, offset: u64) -> Result<(), ApplyError> {
        let conn = self.secondary.conn().await?;
        checkpoint::relocate(conn, &self.config.name, journal_id, offset).await?;
        self.journal_id = journal_id.to_owned();
        self.ddl_pending = None;
        self.moved_to(offset);
        Ok(())
    }

    /// The table was re-created: check its shape again before its next change.
    pub fn forget_shape(&mut self, key: &TableKey) {
        self.shapes.remove(key);
        self.shape_generation.fetch_add(1, Ordering::AcqRel);
    }

    pub async fn health_check(&mut self) {
        self.secondary.ping().await;
    }

    /// Applies consecutive records (offsets `applied_through() + 1 ..`), retrying transient errors until
    /// shutdown.
    pub async fn apply(&mut self, group: &[Record], tables: &mut Tables) -> Result<Applied, ApplyError> {
        let Some(last) = group.last() else { return Ok(Applied::Done) };
        if self.open.is_some() || last.continues {
            return self.apply_fragment(group, tables).await;
        }
        Ok(if self.apply_whole(group, tables).await? { Applied::Done } else { Applied::Stopped })
    }

    /// Applies a group that holds whole transactions; Ok(false) if shutdown interrupted it.
    async fn apply_whole(&mut self, group: &[Record], tables: &mut Tables) -> Result<bool, ApplyError> {
        let (Some(first), Some(last)) = (group.first(), group.last()) else { return Ok(true) };
        let mut retry = retries(&self.config);
        loop {
            let started = std::time::Instant::now();
            let e = match self.guarded_attempt(group, tables).await {
                Ok(()) => {
                    self.metrics.applied(group);
                    self.secondary.succeeded();
                    self.moved_to(last.offset.0);
                    debug!(consumer = %self.config.name, from = first.offset.0, through = last.offset.0,
                           records = group.len(), rows = group.iter().map(Record::row_count).sum::<usize>(),
                           ms = started.elapsed().as_millis() as u64,
                           since_journaled_ms = crate::health::now_ms() - first.journaled_unix_ms, gtid = %self.gtid,
                           "secondary transaction committed");
                    return Ok(true);
                }
                Err(e) => e,
            };
            self.abandon(&e).await;
            if e.is_transient() {
                self.metrics.retried();
                warn!(consumer = %self.config.name, offset = first.offset.0, error = %common::lifecycle::error_chain(&e),
                      "transient error; retrying");
                if !self.pause(&mut retry).await {
                    return Ok(false);
                }
                continue;
            }
            if self.worker.is_some() {
                // The apply loop applies it again alone, after what the other workers hold.
                return Err(e);
            }
            if group.len() > 1 {
                // Find the record that fails: apply the group one record at a time.
                for record in group {
                    if !Box::pin(self.apply_whole(std::slice::from_ref(record), tables)).await? {
                        return Ok(false);
                    }
                }
                return Ok(true);
            }
            if !self.count_permanent(e, first.offset.0, tables, &mut retry).await? {
                return Ok(false);
            }
        }
    }

    /// Applies a group of a fragmented source transaction into the transaction left open for it, committing
    /// with the last fragment. Any failure rolls back the whole source transaction, which is read again.
    async fn apply_fragment(&mut self, group: &[Record], tables: &mut Tables) -> Result<Applied, ApplyError> {
        let (Some(first), Some(last)) = (group.first(), group.last()) else { return Ok(Applied::Done) };
        let e = match self.guarded_attempt(group, tables).await {
            Ok(()) => {
                self.metrics.applied(group);
                self.secondary.succeeded();
                if self.open.is_none() {
                    info!(consumer = %self.config.name, offset = self.applied + 1,
                          "large transaction: its fragments are applied in one secondary transaction");
                }
                debug!(consumer = %self.config.name, through = last.offset.0, ends = !last.continues,
                       "large transaction: fragment applied");
                if last.continues {
                    self.open = Some(last.offset.0);
                } else {
                    self.open = None;
                    self.fragmented_retry.reset();
                    self.moved_to(last.offset.0);
                }
                return Ok(Applied::Done);
            }
            Err(e) => e,
        };
        let started = self.applied + 1;
        self.abandon(&e).await;
        let mut retry = std::mem::replace(&mut self.fragmented_retry, retries(&self.config));
        let go_on = if e.is_transient() {
            self.metrics.retried();
            warn!(consumer = %self.config.name, offset = first.offset.0, transaction_from = started,
                  error = %common::lifecycle::error_chain(&e),
                  "transient error in a large transaction; it is rolled back and applied again from its start");
            self.pause(&mut retry).await
        } else {
            self.count_permanent(e, first.offset.0, tables, &mut retry).await?
        };
        self.fragmented_retry = retry;
        Ok(if go_on { Applied::ReadAgain } else { Applied::Stopped })
    }

    /// One attempt, with a panic turned into an error.
    async fn guarded_attempt(&mut self, group: &[Record], tables: &Tables) -> Result<(), ApplyError> {
        let first = group.first().map_or(0, |r| r.offset.0);
        match AssertUnwindSafe(self.attempt(group, tables)).catch_unwind().await {
            Ok(result) => result,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                Err(ApplyError::Panic { offset: first, what })
            }
        }
    }

    /// After a failed attempt: the open transaction (if any) is rolled back, and a broken connection dropped.
    async fn abandon(&mut self, e: &ApplyError) {
        self.open = None;
        self.secondary.failed(e);
        self.secondary.rollback().await;
    }

    /// A permanent error on one record: the applier stops, unless its table may be quarantined; then it is,
    /// after `--max-table-failures` such errors. Ok(false) if shutdown came first.
    async fn count_permanent(
        &mut self,
        e: ApplyError,
        offset: u64,
        tables: &mut Tables,
        retry: &mut Retry,
    ) -> Result<bool, ApplyError> {
        self.metrics.failed();
        let Some(key) = e.table().filter(|_| self.config.skip_failing_tables).cloned() else { return Err(e) };
        let count = tables.failed(&key);
        let reason = common::lifecycle::error_chain(&e);
        error!(consumer = %self.config.name, offset, schema = %key.0, table = %key.1, failures = count,
               max = self.config.max_table_failures, error = %reason, "permanent error");
        if count >= self.config.max_table_failures {
            self.quarantine(key, offset, &reason, tables).await?;
            return Ok(true);
        }
        Ok(self.pause(retry).await)
    }

    async fn pause(&self, retry: &mut Retry) -> bool {
        retry.wait(&self.shutdown).await
    }

    /// Skips a table's changes from `offset` on, until it is re-copied.
    pub async fn quarantine(
        &mut self,
        key: TableKey,
        offset: u64,
        reason: &str,
        tables: &mut Tables,
    ) -> Result<(), ApplyError> {
        let name = self.config.name.clone();
        let conn = self.secondary.conn().await?;
        checkpoint::quarantine(conn, &name, &key.0, &key.1, offset, reason).await?;
        error!(consumer = %name, offset, schema = %key.0, table = %key.1, error = %reason,
               "table quarantined: its changes are skipped from this offset until it is re-copied");
        tables.quarantine(key, offset, reason);
        self.metrics.quarantined(tables.quarantined_count());
        Ok(())
    }

    /// One attempt at a group: a DDL alone, or row changes and the checkpoint in one transaction.
    async fn attempt(&mut self, group: &[Record], tables: &Tables) -> Result<(), ApplyError> {
        if let [record] = group {
            if let Body::Ddl { schema, statement } = &record.body {
                return self.ddl(record, schema, statement).await;
            }
        }
        if self.worker.is_some() {
            let now = self.shape_generation.load(Ordering::Acquire);
            if now != self.seen_generation {
                self.shapes.clear();
                self.seen_generation = now;
            }
        }
        self.check_shapes(group, tables).await?;
        let name = self.config.name.clone();
        let conn = self.secondary.conn().await?;
        if self.open.is_none() {
            if !self.pieces.is_empty() {
                // A failed attempt's (their offsets come again if they are still needed).
                long::free(conn, &self.pieces).await?;
                self.pieces.clear();
            }
            conn.query_drop("START TRANSACTION").await.map_err(meta("starting a transaction"))?;
            self.conflicts.clear();
        }
        let conflicts_before = self.conflicts.len();
        let mode = self.config.conflicts;
        let tx = conn;
        // Tables with a primary key and no part in foreign keys are applied as net changes after the others,
        // which go row by row in source order; changes to different tables of the two kinds do not interact.
        // The changes as they are written: borrowed from the records, copied only where generated columns are
        // stripped (the secondary computes those).
        let mut changes: Vec<(u64, Cow<'_, TableChange>)> = Vec::new();
        for record in group {
            let cs = match &record.body {
                Body::Transaction(cs) => cs,
                Body::Piece(piece) => {
                    long::set(tx, record.offset.0, piece).await?;
                    self.pieces.push(record.offset.0);
                    continue;
                }
                Body::Ddl { .. } => unreachable!("DDL records are grouped alone"),
            };
            for c in cs {
                let key = (c.schema.clone(), c.table.clone());
                if tables.mode(&key) == TableMode::Skip {
                    continue;
                }
                let c = match self.shapes.get(&key) {
                    // A versioned table's change keeps its period columns: they tell when it happened.
                    Some(shape) if !shape.generated.is_empty() && shape.period.is_none() => {
                        Cow::Owned(sql::without_columns(c, &shape.generated))
                    }
                    _ => Cow::Borrowed(c),
                };
                changes.push((record.offset.0, c));
            }
        }
        // Tables with a long value in this group go row by row, so that each long value is bound in its own
        // record's statement (its pieces are found from that record's offset). A long value's pieces come
        // before it in its transaction, so without pieces set in this one there is none to look for.
        let long_tables: HashSet<(&str, &str)> = if self.pieces.is_empty() {
            HashSet::new()
        } else {
            changes
                .iter()
                .filter(|(_, c)| c.rows.iter().any(|r| r.values().any(|v| matches!(v, Value::Long { .. }))))
                .map(|(_, c)| (c.schema.as_str(), c.table.as_str()))
                .collect()
        };
        let mut nets: Vec<NetTable> = Vec::new();
        // The session's foreign_key_checks as this attempt set it (None: not set yet, so unknown: a failed
        // attempt may have left it on).
        let mut checks: Option<bool> = None;
        // History rows the secondary wrote by itself for versioned tables (see [`crate::versioned`]).
        let mut history_written = HashMap::new();
        for (offset, c) in &changes {
            let offset = *offset;
            let c: &TableChange = c;
            let key = (c.schema.clone(), c.table.clone());
            let lenient = tables.mode(&key) == TableMode::Lenient;
            if let Some(shape @ Shape { period: Some(period), .. }) = self.shapes.get(&key) {
                if lenient {
                    return Err(ApplyError::Drift {
                        offset,
                        table: Some(key),
                        statement: "(system-versioned table)".into(),
                        reason: "a system-versioned table cannot be copied yet; exclude it with REPLICA_EXCLUDE".into(),
                    });
                }
                versioned::apply(tx, offset, c, *period, &shape.generated, &mut history_written).await?;
                continue;
            }
            let in_foreign_keys = self.shapes.get(&key).is_some_and(|s| s.in_foreign_keys);
            if in_foreign_keys {
                // A table being copied is loaded with checks off, like the copy itself.
                let want = c.foreign_key_checks && !lenient;
                if checks != Some(want) {
                    let set = format!("SET foreign_key_checks = {}", u8::from(want));
                    tx.query_drop(&set).await.map_err(statement(offset, Some(&key), &set))?;
                    checks = Some(want);
                }
            }
            if c.primary_key.is_empty()
                || in_foreign_keys
                || long_tables.contains(&(c.schema.as_str(), c.table.as_str()))
            {
                if lenient || mode == ConflictMode::Stop {
                    rows::apply_in_order(tx, offset, c, lenient).await?;
                } else {
                    rows::apply_in_order_resolving(tx, offset, c, mode, &mut self.conflicts).await?;
                }
                continue;
            }
            match nets.iter_mut().find(|n| n.shape.schema == c.schema && n.shape.table == c.table) {
                Some(net) => net.add(c),
                None => {
                    let mut net = NetTable::new(c, offset);
                    net.add(c);
                    nets.push(net);
                }
            }
        }
        for net in &nets {
            let key = (net.shape.schema.clone(), net.shape.table.clone());
            let shape = self.shapes.get(&key);
            let counter = shape
                .and_then(|s| s.auto_increment.as_deref())
                .and_then(|name| net.shape.columns.iter().position(|col| col.name.eq_ignore_ascii_case(name)));
            let in_place = shape.is_some_and(|s| !s.identity.unique_besides_primary());
            let lenient = tables.mode(&key) == TableMode::Lenient;
            if lenient || mode == ConflictMode::Stop {
                rows::apply_net(tx, net, lenient, counter, in_place).await?;
            } else {
                rows::apply_net_resolving(tx, net, counter, mode, &mut self.conflicts).await?;
            }
        }
        conflict::record(tx, &name, &self.conflicts[conflicts_before..]).await?;
        if checks == Some(true) {
            // Back to the session's default for whatever runs next on this connection.
            tx.query_drop("SET foreign_key_checks = 0").await.map_err(meta("restoring foreign_key_checks"))?;
        }
        let last = &group[group.len() - 1];
        if last.continues {
            // The rest of the source transaction follows in the next group.
            return Ok(());
        }
        if self.worker.is_some() {
            let offsets: Vec<u64> = group.iter().map(|r| r.offset.0).collect();
            if let Some(turn) = &self.turn {
                let first = group[0].offset.0;
                let mut rx = turn.subscribe();
                debug!(consumer = %self.config.name, worker = self.worker.unwrap_or(0), first, turn = *rx.borrow(),
                       "waiting for the turn to commit");
                tokio::select! {
                    biased;
                    _ = self.shutdown.cancelled() => return Err(ApplyError::Stopping),
                    _ = rx.wait_for(|next| *next >= first || *next == 0) => {}
                }
                if *turn.borrow() == 0 {
                    return Err(ApplyError::State {
                        what: "commit order".into(),
                        reason: format!(
                            "an earlier transaction failed in another worker: offset {first} is handed back too, to be \
                             applied in order"
                        ),
                    });
                }
            }
            checkpoint::record_applied_and_commit(tx, &name, &offsets).await?;
            if let Some(turn) = &self.turn {
                turn.send_replace(last.offset.0 + 1);
            }
        } else {
            let mut gtid = self.gtid.clone();
            group.iter().filter_map(|r| r.gtid).for_each(|g| gtid.advance(g));
            let text = gtid.to_string();
            checkpoint::save_and_commit(tx, &name, last.offset.0, &text, &last.source.file, last.source.pos).await?;
            self.gtid = gtid;
        }
        if !self.pieces.is_empty() {
            long::free(tx, &self.pieces).await?;
            self.pieces.clear();
        }
        if !self.conflicts.is_empty() {
            conflict::report(&name, &self.conflicts);
            self.metrics.conflicts(&self.conflicts);
            self.conflicts.clear();
        }
        Ok(())
    }

    /// Checks, before the first change to each table (and after every DDL), that the secondary's table has the
    /// columns the primary logged, and notes which of them the secondary generates.
    async fn check_shapes(&mut self, group: &[Record], tables: &Tables) -> Result<(), ApplyError> {
        // Each table shape once per group: a group of thousands of changes to one table new to the writer
        // (after a DDL, say) reads information_schema once, not once per change.
        let mut unchecked: Vec<(u64, &TableChange)> = Vec::new();
        for record in group {
            if let Body::Transaction(changes) = &record.body {
                for c in changes {
                    let key = (c.schema.clone(), c.table.clone());
                    if tables.mode(&key) != TableMode::Skip
                        && self.shapes.get(&key).is_none_or(|s| s.columns != c.columns)
                        && !unchecked
                            .iter()
                            .any(|(_, u)| u.schema == c.schema && u.table == c.table && u.columns == c.columns)
                    {
                        unchecked.push((record.offset.0, c));
                    }
                }
            }
        }
        for (offset, c) in unchecked {
            let key = (c.schema.clone(), c.table.clone());
            let conn = self.secondary.conn().await?;
            let (found, period_names) = common::mariadb::columns_with_period(conn, &c.schema, &c.table).await.map_err(
                statement(offset, Some(&key), "(schema check against information_schema.COLUMNS and TABLES)"),
            )?;
            if let Some(reason) = drift::check(&c.schema, &c.table, &found, &c.columns) {
                return Err(ApplyError::Drift {
                    offset,
                    table: Some(key),
                    statement: "(schema check against information_schema.COLUMNS)".into(),
                    reason,
                });
            }
            let generated = drift::generated(&found, &c.columns);
            let period = match &period_names {
                None => None,
                Some((start, end)) => Some(period_of(c, start, end).map_err(|reason| ApplyError::Drift {
                    offset,
                    table: Some(key.clone()),
                    statement: "(system versioning)".into(),
                    reason,
                })?),
            };
            let in_foreign_keys = common::mariadb::in_foreign_keys(conn, &c.schema, &c.table).await.map_err(
                statement(offset, Some(&key), "(foreign keys from information_schema.REFERENTIAL_CONSTRAINTS)"),
            )?;
            let parents = if in_foreign_keys {
                parents::plan(conn, &key, &c.columns).await.map_err(statement(
                    offset,
                    Some(&key),
                    "(foreign keys from information_schema.REFERENTIAL_CONSTRAINTS and KEY_COLUMN_USAGE)",
                ))?
            } else {
                Some(Vec::new())
            };
            let auto_increment = found.iter().find(|col| col.auto_increment).map(|col| col.name.clone());
            let identity = identity::identity(conn, &c.schema, &c.table, &c.columns).await.map_err(statement(
                offset,
                Some(&key),
                "(unique keys from information_schema.STATISTICS)",
            ))?;
            let shape = Shape {
                columns: c.columns.clone(),
                generated,
                in_foreign_keys,
                parents,
                auto_increment,
                identity,
                period,
            };
            self.shapes.insert(key, shape);
        }
        Ok(())
    }

    async fn ddl(&mut self, record: &Record, schema: &str, ddl: &str) -> Result<(), ApplyError> {
        let offset = record.offset.0;
        let name = self.config.name.clone();
        let replay = self.ddl_pending == Some(offset);
        let conn = self.secondary.conn().await?;
        if !replay {
            checkpoint::mark_ddl(conn, &name, offset).await?;
            // From here a retry may find the DDL already applied.
            self.ddl_pending = Some(offset);
        }
        // As the session's default: a failed attempt at rows may have left checks on.
        let checks_off = "SET foreign_key_checks = 0";
        conn.query_drop(checks_off).await.map_err(statement(offset, None, checks_off))?;
        if !schema.is_empty() {
            let use_schema = format!("USE {}", sql::ident(schema));
            conn.query_drop(&use_schema).await.map_err(statement(offset, None, &use_schema))?;
        }
        let ddl = crate::ddl::for_secondary(ddl);
        // At the primary's time, as a native replica runs it: rows a DDL fills with the time (a column added
        // with DEFAULT CURRENT_TIMESTAMP, the row start of versioning added to a table) get the primary's.
        let at = (record.commit_unix_seconds > 0)
            .then(|| format!("SET timestamp = {}.{:06}", record.commit_unix_seconds, record.commit_micros));
        if let Some(at) = &at {
            conn.query_drop(at).await.map_err(statement(offset, None, at))?;
        }
        let ran = conn.query_drop(&ddl).await;
        if at.is_some() {
            let reset = "SET timestamp = DEFAULT";
            conn.query_drop(reset).await.map_err(statement(offset, None, reset))?;
        }
        match ran {
            Ok(()) => {}
            Err(mysql_async::Error::Server(e)) if replay && codes::DDL_ALREADY_DONE.contains(&e.code) => {
                info!(consumer = %name, offset, error = %e.message, "DDL had been applied before a restart");
            }
            Err(e) => return Err(statement(offset, None, &ddl)(e)),
        }
        let mut gtid = self.gtid.clone();
        if let Some(g) = record.gtid {
            gtid.advance(g);
        }
        checkpoint::save(conn, &name, offset, &gtid.to_string(), &record.source.file, record.source.pos).await?;
        self.gtid = gtid;
        self.ddl_pending = None;
        // Every table's shape may have changed.
        self.shapes_changed();
        Ok(())
    }
}
