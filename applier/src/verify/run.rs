//! The verifier task: takes up a verification (started through the admin service or left in
//! `replica_meta.verify` by a previous process), compares its tables one after another in rounds of chunks,
//! each round anchored at the journal boundary of the primary's snapshot (see [`crate::verify`]).

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::chunk::{Range, RowSum};
use common::convert::WireError;
use common::event::{RowChange, TableChange, Value};
use common::proto;
use common::retry::RetryPolicy;
use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::admin::AdminCmd;
use crate::config::Config;
use crate::copy::board::{CopyBoard, Floors};
use crate::copy::worker::Pacer;
use crate::error::{meta, ApplyError};
use crate::metrics::ApplierMetrics;
use crate::reader_client::{self, refused, ReaderClient};
use crate::stream::StreamState;
use crate::table::{QuarantineBoard, TableKey};
use crate::verify::board::{self, Difference, TableState, TableVerify, VerifyBoard, SAMPLE};
use crate::verify::secondary::{self, RowDiff};

/// Longest wait for the checkpoint to reach a round's boundary.
const REACH_WAIT: Duration = Duration::from_secs(60);
/// Rows compared per round (one snapshot on each side).
const ROUND_ROWS: u32 = 100_000;
/// How often a table's progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Holds the apply loop at or below an offset until dropped.
struct Floor<'a> {
    floors: &'a Floors,
    id: u64,
}

impl<'a> Floor<'a> {
    fn new(floors: &'a Floors, at: u64) -> Self {
        Self { floors, id: floors.register(at) }
    }

    fn raise(&self, to: u64) {
        self.floors.set(self.id, to);
    }
}

impl Drop for Floor<'_> {
    fn drop(&mut self) {
        self.floors.clear(self.id);
    }
}

/// The primary's side of one round: the boundary, the table's shape, and the chunks still streaming.
struct Round {
    boundary: u64,
    key_kind: String,
    shape: TableChange,
    parts: tonic::Streaming<proto::ChecksumPart>,
    /// Set when the secondary lacks a column the primary has: the table differs, nothing else is compared.
    columns_missing: Option<String>,
}

pub struct Verifier {
    pub config: Arc<Config>,
    pub board: Arc<VerifyBoard>,
    pub copy: Arc<CopyBoard>,
    pub quarantined: QuarantineBoard,
    pub stream: Arc<StreamState>,
    pub applied: watch::Receiver<u64>,
    pub commands: mpsc::Sender<AdminCmd>,
    pub metrics: ApplierMetrics,
}

/// What a verifier is working on: the verification's generation, and whether it repairs.
#[derive(Clone, Copy)]
struct Job {
    generation: u64,
    repair: bool,
}

impl Verifier {
    /// Runs until `stop`: resumes what `replica_meta.verify` holds, then every verification started.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut retry = RetryPolicy::new(Duration::from_millis(200), self.config.retry_max).start();
        let mut conn = loop {
            match self.resume().await {
                Ok(conn) => break conn,
                Err(e) => {
                    warn!(consumer = %self.config.name, error = %common::lifecycle::error_chain(&e),
                          "cannot read the verification state; retrying");
                    if !retry.wait(&stop).await {
                        return;
                    }
                }
            }
        };
        let mut changed = self.board.changed.subscribe();
        let mut saved = 0;
        loop {
            let job = {
                let v = self.board.lock();
                Job { generation: v.generation, repair: v.repair }
            };
            if job.generation != saved {
                // A new or stopped verification: saved whole before it is worked on.
                let v = self.board.lock().clone();
                match board::save_all(&mut conn, &self.config.name, &v).await {
                    Ok(()) => saved = job.generation,
                    Err(e) => {
                        warn!(consumer = %self.config.name, error = %common::lifecycle::error_chain(&e),
                              "cannot save the verification state; retrying");
                        conn = match self.reconnect(&stop, &mut retry).await {
                            Some(c) => c,
                            None => return,
                        };
                        continue;
                    }
                }
            }
            let open = self.board.lock().tables.values().any(|t| t.state.open());
            if open && self.current(job) {
                // Tables are verified `--verify-workers` at a time, one secondary connection each (the first
                // worker takes this one), under one rate limit.
                let claimed = Mutex::new(HashSet::new());
                let pacer = Pacer::new(self.config.verify_rows_per_second);
                let workers = self.config.verify_workers.max(1);
                let mut first = Some(conn);
                let mut slots = Vec::with_capacity(workers);
                for _ in 0..workers {
                    slots.push(self.worker(first.take(), job, &claimed, &pacer, &stop));
                }
                let mut conns = futures_util::future::join_all(slots).await.into_iter().flatten();
                conn = match conns.next() {
                    Some(c) => c,
                    None => match self.reconnect(&stop, &mut retry).await {
                        Some(c) => c,
                        None => return,
                    },
                };
                continue;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                r = changed.changed() => if r.is_err() { return },
            }
            if stop.is_cancelled() {
                return;
            }
        }
    }

    /// One worker of `job`: takes open tables no other worker has and verifies each to its end, reconnecting
    /// after transient failures (the table is taken again). Ends when no table is left for it, the
    /// verification changes, or on `stop`; returns its connection, if it has one.
    async fn worker(
        &self,
        mut conn: Option<Conn>,
        job: Job,
        claimed: &Mutex<HashSet<TableKey>>,
        pacer: &Pacer,
        stop: &CancellationToken,
    ) -> Option<Conn> {
        let mut retry = RetryPolicy::new(Duration::from_millis(200), self.config.retry_max).start();
        loop {
            if stop.is_cancelled() || !self.current(job) {
                return conn;
            }
            let table = {
                let v = self.board.lock();
                let mut claimed = claimed.lock().unwrap_or_else(|p| p.into_inner());
                let next =
                    v.tables.iter().find(|(k, t)| t.state.open() && !claimed.contains(*k)).map(|(k, _)| k.clone());
                if let Some(k) = &next {
                    claimed.insert(k.clone());
                }
                next
            };
            let Some(table) = table else { return conn };
            let mut c = match conn.take() {
                Some(c) => c,
                None => match self.connect().await {
                    Ok(c) => c,
                    Err(e) => {
                        warn!(consumer = %self.config.name, error = %common::lifecycle::error_chain(&e),
                              "cannot connect to the secondary to verify; retrying");
                        claimed.lock().unwrap_or_else(|p| p.into_inner()).remove(&table);
                        if !retry.wait(stop).await {
                            return None;
                        }
                        continue;
                    }
                },
            };
            match self.table(&mut c, &table, job, pacer, stop).await {
                Ok(()) => {
                    retry.reset();
                    conn = Some(c);
                }
                Err(e) => {
                    warn!(consumer = %self.config.name, schema = %table.0, table = %table.1,
                          error = %common::lifecycle::error_chain(&e), "verification interrupted; retrying");
                    // Taken again (by this worker or another) after the wait, on a new connection.
                    claimed.lock().unwrap_or_else(|p| p.into_inner()).remove(&table);
                    if !retry.wait(stop).await {
                        return None;
                    }
                }
            }
        }
    }

    async fn connect(&self) -> Result<Conn, ApplyError> {
        Conn::new(crate::secondary::opts(&self.config)).await.map_err(meta("connecting to verify"))
    }

    async fn reconnect(&self, stop: &CancellationToken, retry: &mut common::retry::Retry) -> Option<Conn> {
        loop {
            if !retry.wait(stop).await {
                return None;
            }
            match self.connect().await {
                Ok(c) => return Some(c),
                Err(e) => warn!(consumer = %self.config.name, error = %common::lifecycle::error_chain(&e),
                                "cannot connect to the secondary to verify; retrying"),
            }
        }
    }

    /// Connects and takes up the verification a previous process left unfinished, if any.
    async fn resume(&mut self) -> Result<Conn, ApplyError> {
        let mut conn = self.connect().await?;
        let mut left = board::load(&mut conn, &self.config.name).await?;
        let mut v = self.board.lock();
        if v.generation > 0 {
            // A verification was started while this one was being read: the new one wins.
            return Ok(conn);
        }
        if left.tables.values().any(|t| t.state.open()) {
            let tables = left.tables.len();
            info!(consumer = %self.config.name, tables, repair = left.repair, "resuming the verification left unfinished");
            left.began = Some((Instant::now(), left.tables.values().map(|t| t.rows).sum()));
        }
        // Unfinished, finished or stopped: shown by GetVerify until a new one starts.
        left.generation = v.generation;
        *v = left;
        drop(v);
        Ok(conn)
    }

    /// Whether the verification this job belongs to is still the current one.
    fn current(&self, job: Job) -> bool {
        let v = self.board.lock();
        v.generation == job.generation && !v.stopped
    }

    fn update(&self, table: &TableKey, f: impl FnOnce(&mut TableVerify)) -> Option<TableVerify> {
        let mut v = self.board.lock();
        let t = v.tables.get_mut(table)?;
        f(t);
        Some(t.clone())
    }

    async fn save(&self, conn: &mut Conn, table: &TableKey, job: Job) -> Result<(), ApplyError> {
        let t = self.board.lock().tables.get(table).cloned();
        match t {
            Some(t) if self.current(job) => board::save(conn, &self.config.name, table, &t, job.repair).await,
            _ => Ok(()),
        }
    }

    /// Compares one table to its end, saving after every round.
    async fn table(
        &self,
        conn: &mut Conn,
        table: &TableKey,
        job: Job,
        pacer: &Pacer,
        stop: &CancellationToken,
    ) -> Result<(), ApplyError> {
        let (schema, name) = (&table.0, &table.1);
        if let Some(why) = self.skip(table) {
            info!(consumer = %self.config.name, schema = %schema, table = %name, reason = %why, "table not verified");
            self.update(table, |t| {
                t.state = TableState::Skipped;
                t.message = why;
            });
            return self.save(conn, table, job).await;
        }
        let first = self.update(table, |t| {
            t.state = TableState::Verifying;
            t.began = Some((Instant::now(), t.rows));
        });
        if first.is_some_and(|t| t.chunks == 0) {
            info!(consumer = %self.config.name, schema = %schema, table = %name, repair = job.repair, "verifying table");
        }
        self.save(conn, table, job).await?;
        let mut client = reader_client::connect(&self.config).await?;
        let mut logged = Instant::now();
        loop {
            if stop.is_cancelled() || !self.current(job) {
                return Ok(());
            }
            let after = self.board.lock().tables.get(table).and_then(|t| t.last_key.clone()).unwrap_or_default();
            let (end, rows) = match self.round(conn, &mut client, table, &after, job).await {
                Ok(r) => r,
                Err(e) if e.is_not_found() => {
                    self.update(table, |t| {
                        t.state = TableState::Skipped;
                        t.message = "the table is no longer on the primary".into();
                    });
                    return self.save(conn, table, job).await;
                }
                Err(e) if !e.is_transient() => {
                    let message = common::lifecycle::error_chain(&e);
                    warn!(consumer = %self.config.name, schema = %schema, table = %name, error = %message, "verification failed");
                    self.update(table, |t| {
                        t.state = TableState::Failed;
                        t.message = message;
                    });
                    return self.save(conn, table, job).await;
                }
                Err(e) => return Err(e),
            };
            if end {
                let t = self.update(table, |t| {
                    t.ended = Some(Instant::now());
                    t.state = if t.rows_differing == 0 && t.message.is_empty() {
                        TableState::Equal
                    } else if job.repair && t.rows_repaired >= t.rows_differing && t.message.is_empty() {
                        TableState::Repaired
                    } else {
                        TableState::Differs
                    };
                });
                self.save(conn, table, job).await?;
                if let Some(t) = t {
                    let result = t.state.as_str();
                    info!(consumer = %self.config.name, schema = %schema, table = %name, result, rows = t.rows,
                          chunks = t.chunks, rows_differing = t.rows_differing, rows_repaired = t.rows_repaired,
                          rows_per_second = t.rows_per_second().round(), "table verified");
                }
                return Ok(());
            }
            self.save(conn, table, job).await?;
            if logged.elapsed() >= PROGRESS_EVERY {
                logged = Instant::now();
                if let Some(t) = self.board.lock().tables.get(table) {
                    info!(consumer = %self.config.name, schema = %schema, table = %name, rows = t.rows,
                          rows_differing = t.rows_differing, rows_per_second = t.rows_per_second().round(),
                          "verification progress");
                }
            }
            pacer.take(rows).await;
        }
    }

    /// Chunks per round: about [`ROUND_ROWS`] rows, or half a second's worth under `--verify-rows-per-second`, so
    /// that pacing stays smooth and progress is saved often.
    fn chunks_per_round(&self) -> u32 {
        let rate = self.config.verify_rows_per_second;
        let rows = if rate > 0 { (rate / 2).min(u64::from(ROUND_ROWS)) as u32 } else { ROUND_ROWS };
        (rows / self.config.verify_chunk_rows).clamp(1, 1000)
    }

    /// Why `table` cannot be compared now, if it cannot.
    fn skip(&self, table: &TableKey) -> Option<String> {
        if self.copy.get(table).is_some_and(|p| p.state.active()) {
            return Some("the table is being copied; verify it when its copy is done".into());
        }
        let quarantined = self.quarantined.lock().unwrap_or_else(|p| p.into_inner());
        if quarantined.contains_key(table) {
            return Some("the table is quarantined; re-copy it with ResyncTable".into());
        }
        None
    }

    /// Asks the reader for checksums (or rows) after `after`; the apply loop is held at the returned boundary
    /// by the returned floor, and the checkpoint has reached it.
    async fn at_boundary<'a>(
        &'a self,
        client: &mut ReaderClient,
        table: &TableKey,
        req: proto::ChecksumChunksRequest,
    ) -> Result<(Round, Floor<'a>), ApplyError> {
        let floor = Floor::new(&self.copy.floors, self.stream.received.load(Ordering::SeqCst));
        let mut parts = client.checksum_chunks(req).await.map_err(refused("ChecksumChunks"))?.into_inner();
        let first = parts.message().await.map_err(refused("ChecksumChunks"))?.ok_or(ApplyError::ReaderEnded)?;
        let boundary = first.boundary_offset;
        floor.raise(boundary);
        let shape = first
            .shape
            .ok_or_else(|| ApplyError::Wire(WireError("a checksum response without the table's shape")))
            .and_then(|s| Ok(TableChange::try_from(s)?))?;
        let mut applied = self.applied.clone();
        let reached = tokio::time::timeout(REACH_WAIT, applied.wait_for(|a| *a >= boundary)).await;
        let missed = |why: String| ApplyError::VerifyMissed { table: table.clone(), why };
        match reached {
            Ok(Ok(a)) if *a == boundary => {}
            Ok(Ok(a)) => return Err(missed(format!("the checkpoint passed the boundary {boundary} (at {})", *a))),
            Ok(Err(_)) => return Err(ApplyError::Stopping),
            Err(_) => {
                return Err(missed(format!("the checkpoint did not reach the boundary {boundary} in {REACH_WAIT:?}")))
            }
        }
        Ok((Round { boundary, key_kind: first.key_kind, shape, parts, columns_missing: None }, floor))
    }

    /// Checks that the checkpoint, as `conn`'s transaction sees it (with a shared lock when `lock`), is `boundary`.
    async fn check_checkpoint(
        &self,
        conn: &mut impl Queryable,
        table: &TableKey,
        boundary: u64,
        lock: bool,
    ) -> Result<(), ApplyError> {
        let lock = if lock { " LOCK IN SHARE MODE" } else { "" };
        let stmt = format!("SELECT applied_offset FROM replica_meta.checkpoint WHERE consumer = ?{lock}");
        let at: Option<u64> =
            conn.exec_first(stmt, (&self.config.name,)).await.map_err(meta("reading the checkpoint to verify"))?;
        if at != Some(boundary) {
            let why = format!("the secondary is at offset {at:?}, not at the boundary {boundary}");
            return Err(ApplyError::VerifyMissed { table: table.clone(), why });
        }
        Ok(())
    }

    /// One round: chunks after `after` checksummed on both sides at one boundary, differing chunks narrowed
    /// (and repaired). Returns whether the table's end was reached and the rows compared.
    async fn round(
        &self,
        conn: &mut Conn,
        client: &mut ReaderClient,
        table: &TableKey,
        after: &[Value],
        job: Job,
    ) -> Result<(bool, u64), ApplyError> {
        let req = proto::ChecksumChunksRequest {
            schema: table.0.clone(),
            table: table.1.clone(),
            after_key: after.iter().cloned().map(Into::into).collect(),
            chunk_rows: self.config.verify_chunk_rows,
            // About ROUND_ROWS rows per snapshot: fewer rounds (each holds the apply loop for a moment).
            max_chunks: self.chunks_per_round(),
            upto_key: Vec::new(),
            with_rows: false,
        };
        let began = Instant::now();
        let (mut round, floor) = self.at_boundary(client, table, req).await?;
        let reached = began.elapsed();
        conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            .await
            .map_err(meta("beginning a verify snapshot"))?;
        let checked = self.check_checkpoint(conn, table, round.boundary, false).await;
        // The snapshot is taken: the apply loop goes on.
        drop(floor);
        if let Err(e) = checked {
            let _ = conn.query_drop("ROLLBACK").await;
            return Err(e);
        }
        let result = self.compare_chunks(conn, &mut round, after).await;
        let _ = conn.query_drop("COMMIT").await;
        let (differing, end, compared, chunks, last) = result?;
        debug!(consumer = %self.config.name, schema = %table.0, table = %table.1, boundary = round.boundary, chunks,
               rows = compared, differing = differing.len(), boundary_ms = reached.as_millis() as u64,
               round_ms = began.elapsed().as_millis() as u64, "verify round");
        let keyless = round.shape.primary_key.is_empty();
        self.update(table, |t| {
            t.key_kind = round.key_kind.clone();
            t.chunks += chunks;
            t.rows += compared;
            t.chunks_differing += differing.len() as u64;
            if let Some(last) = &last {
                t.last_key = Some(last.clone());
            }
        });
        if let Some(why) = &round.columns_missing {
            warn!(consumer = %self.config.name, schema = %table.0, table = %table.1, reason = %why, "table differs");
            self.update(table, |t| t.message = why.clone());
            return Ok((true, compared));
        }
        let mut differing_rows = 0;
        let mut repaired = 0;
        for (after, upto, primary, mine) in differing {
            if keyless {
                let (d, r) = self.keyless_differs(table, primary, mine, job).await?;
                differing_rows += d;
                repaired += r;
            } else {
                let (d, r) = self.narrow(conn, client, table, &after, &upto, job).await?;
                differing_rows += d;
                repaired += r;
            }
        }
        self.metrics.verified(compared, differing_rows, repaired);
        Ok((end, compared))
    }

    /// Compares the round's chunks with the secondary's rows of the same key ranges, in the open snapshot.
    #[allow(clippy::type_complexity)]
    async fn compare_chunks(
        &self,
        conn: &mut Conn,
        round: &mut Round,
        after: &[Value],
    ) -> Result<(Vec<(Vec<Value>, Vec<Value>, RowSum, RowSum)>, bool, u64, u64, Option<Vec<Value>>), ApplyError> {
        let columns = match secondary::columns(conn, &round.shape).await? {
            Ok(c) => c,
            Err(why) => {
                round.columns_missing = Some(why);
                return Ok((Vec::new(), true, 0, 0, None));
            }
        };
        let mut prev = after.to_vec();
        let (mut differing, mut end, mut compared, mut chunks) = (Vec::new(), false, 0, 0);
        while let Some(part) = round.parts.message().await.map_err(refused("ChecksumChunks"))? {
            let Some(chunk) = part.chunk else { continue };
            let last: Vec<Value> = values(chunk.last_key)?;
            end = part.end;
            let upto: Vec<Value> = if end { Vec::new() } else { last.clone() };
            let range = Range { after: &prev, upto: &upto, limit: None };
            let mine = secondary::range_sum(conn, &round.shape, &columns, range).await?;
            let theirs = RowSum::from_wire(chunk.rows, &chunk.checksum)
                .ok_or_else(|| ApplyError::Wire(WireError("a chunk checksum that is not 16 bytes")))?;
            compared += chunk.rows;
            chunks += 1;
            if mine != theirs {
                if end && !last.is_empty() {
                    // The open end is narrowed in two parts: up to the primary's last key as of B, then past it
                    // (rows the secondary has beyond, and whatever was inserted since). Narrowing `(prev, ∞)` in
                    // one walk would chase every row appended on the primary meanwhile.
                    differing.push((prev.clone(), last.clone(), theirs, mine));
                    differing.push((last.clone(), Vec::new(), theirs, mine));
                } else {
                    differing.push((prev.clone(), upto, theirs, mine));
                }
            }
            if !last.is_empty() {
                prev = last;
            }
            if end {
                break;
            }
        }
        let last = if prev.is_empty() { None } else { Some(prev) };
        Ok((differing, end, compared, chunks, last))
    }

    /// A keyless table differs: reported as a whole; with repair, re-copied (ResyncTable).
    async fn keyless_differs(
        &self,
        table: &TableKey,
        primary: RowSum,
        mine: RowSum,
        job: Job,
    ) -> Result<(u64, u64), ApplyError> {
        let d = Difference {
            key: String::new(),
            kind: "table",
            primary: format!("{} rows", primary.rows),
            secondary: format!("{} rows", mine.rows),
        };
        warn!(consumer = %self.config.name, schema = %table.0, table = %table.1, primary_rows = primary.rows,
              secondary_rows = mine.rows, "table without a key differs from the primary (whole-table checksum)");
        let rows = primary.rows.max(mine.rows).max(1);
        let mut repaired = 0;
        if job.repair {
            let (reply, answer) = oneshot::channel();
            let cmd = AdminCmd::Resync { schema: table.0.clone(), table: table.1.clone(), reply };
            self.commands.send(cmd).await.map_err(|_| ApplyError::Stopping)?;
            answer.await.map_err(|_| ApplyError::Stopping)??;
            info!(consumer = %self.config.name, schema = %table.0, table = %table.1, "table without a key is re-copied to repair it");
            repaired = rows;
        }
        self.update(table, |t| {
            t.rows_differing += rows;
            t.rows_repaired += repaired;
            if t.sample.len() < SAMPLE {
                t.sample.push(d);
            }
        });
        Ok((rows, repaired))
    }

    /// Narrows the key range (after, upto] (to the end when `upto` is empty) to rows, at new boundaries, and
    /// repairs them with `job.repair`. Returns the rows that differ and the rows repaired.
    async fn narrow(
        &self,
        conn: &mut Conn,
        client: &mut ReaderClient,
        table: &TableKey,
        after: &[Value],
        upto: &[Value],
        job: Job,
    ) -> Result<(u64, u64), ApplyError> {
        let mut after = after.to_vec();
        let (mut differing, mut repaired) = (0, 0);
        loop {
            let req = proto::ChecksumChunksRequest {
                schema: table.0.clone(),
                table: table.1.clone(),
                after_key: after.iter().cloned().map(Into::into).collect(),
                // Past the end, larger steps: what was appended since the round is read in few of them.
                chunk_rows: if upto.is_empty() {
                    self.config.verify_chunk_rows.saturating_mul(10)
                } else {
                    self.config.verify_chunk_rows
                },
                max_chunks: 1,
                upto_key: upto.iter().cloned().map(Into::into).collect(),
                with_rows: true,
            };
            let (mut round, floor) = self.at_boundary(client, table, req).await?;
            let part =
                round.parts.message().await.map_err(refused("ChecksumChunks"))?.ok_or(ApplyError::ReaderEnded)?;
            let chunk =
                part.chunk.ok_or_else(|| ApplyError::Wire(WireError("a narrowing response without its chunk")))?;
            let last = values(chunk.last_key)?;
            let range_end: Vec<Value> = if part.end { upto.to_vec() } else { last.clone() };
            let rows: Vec<RowChange> = chunk
                .rows_read
                .into_iter()
                .map(RowChange::try_from)
                .collect::<Result<_, _>>()
                .map_err(ApplyError::Wire)?;
            let primary = secondary::primary_rows(rows, &chunk.row_hashes);
            // Held at the boundary: the secondary's rows are the ones as of it, and a repair lands exactly there.
            let mut tx = conn.start_transaction(Default::default()).await.map_err(meta("beginning a verify repair"))?;
            self.check_checkpoint(&mut tx, table, round.boundary, true).await?;
            let columns = match secondary::columns(&mut tx, &round.shape).await? {
                Ok(c) => c,
                Err(why) => return Err(ApplyError::VerifyMissed { table: table.clone(), why }),
            };
            let range = Range { after: &after, upto: &range_end, limit: None };
            let diffs = secondary::diff(&mut tx, &round.shape, &columns, range, primary).await?;
            let fixed = if job.repair && !diffs.is_empty() {
                secondary::repair(&mut tx, &round.shape, &diffs).await?
            } else {
                0
            };
            tx.commit().await.map_err(meta("committing a verify repair"))?;
            drop(floor);
            self.report(table, &diffs, fixed > 0, round.boundary);
            differing += diffs.len() as u64;
            repaired += fixed;
            if part.end || last.is_empty() {
                return Ok((differing, repaired));
            }
            after = last;
        }
    }

    /// Logs the differing rows and keeps a sample for GetVerify.
    fn report(&self, table: &TableKey, diffs: &[RowDiff], repaired: bool, boundary: u64) {
        let consumer = &self.config.name;
        let sample_left = SAMPLE.saturating_sub(self.board.lock().tables.get(table).map_or(0, |t| t.sample.len()));
        for d in diffs.iter().take(sample_left) {
            let diff = d.difference();
            warn!(consumer = %consumer, schema = %table.0, table = %table.1, key = %diff.key, kind = diff.kind,
                  primary_row = %diff.primary, secondary_row = %diff.secondary, offset = boundary, repaired,
                  "row differs from the primary");
        }
        if diffs.len() > sample_left {
            warn!(consumer = %consumer, schema = %table.0, table = %table.1, rows = diffs.len() - sample_left, repaired,
                  "more rows differ from the primary");
        }
        self.update(table, |t| {
            t.rows_differing += diffs.len() as u64;
            if repaired {
                t.rows_repaired += diffs.len() as u64;
            }
            t.sample.extend(diffs.iter().take(sample_left).map(RowDiff::difference));
        });
    }
}

fn values(key: Vec<proto::Value>) -> Result<Vec<Value>, ApplyError> {
    key.into_iter().map(Value::try_from).collect::<Result<_, _>>().map_err(ApplyError::Wire)
}
