//! The initial copy through the reader: tables copied in key-ordered chunks, each from its own consistent
//! snapshot of the primary, woven into the journal stream so that the secondary ends equal to the primary.
//!
//! # Why no update is lost or applied twice
//!
//! Every chunk the reader serves comes with a *boundary* B: its snapshot holds exactly the journal records
//! up to offset B (see the reader's `snapshot` module). The applier's apply loop owns one position, the
//! checkpoint S, and places each chunk **exactly when S = B**: it never applies a record past the boundary of
//! a chunk that has been asked for and not yet placed (each fetch registers a *floor* first: the last offset
//! received, which every later snapshot contains, raised to B when B is known). The chunk's rows, its
//! per-table state (last key copied, rows) and the checkpoint are written in one secondary transaction.
//!
//! While a table is being copied, records touching it are applied *leniently*: an UPDATE or DELETE that finds
//! no row is not an error (the row is not copied yet), and chunks are written with REPLACE. This keeps one
//! invariant for every key k of a table being copied, at every checkpoint S: if k has been copied or touched
//! by a record since the copy began, the secondary's row k equals the primary's row k as of S; otherwise the
//! secondary has no row k. It holds when the copy begins (tables are created empty at the boundary S0 of the
//! definitions). Applying record S+1 keeps it: a touched key gets the record's after image, or is removed,
//! exactly as on the primary. Placing a chunk at S = B keeps it: the chunk holds the primary's rows as of B
//! for the keys after the last copied key up to the chunk's last key, and REPLACE makes the secondary's rows
//! equal to them (a touched key already equal to them is rewritten unchanged). Chunks follow each other in
//! key order from the start of the key, so when the last chunk is placed every key has been copied: the whole
//! table equals the primary as of S, and from then on it is applied strictly, like any other table. No record
//! is applied twice because S only moves forward, one record at a time, in the same transactions as the data;
//! no record is lost because S moves through every offset and each chunk waits for its own boundary.
//!
//! A table without a primary key or a unique NOT NULL key is read in one snapshot; its records are skipped
//! until that single chunk is placed at its boundary, and applied strictly after it (the Vitess rule for an
//! uncopied range). A table re-copied with `ResyncTable` is first re-created at the boundary of its definition
//! (its records skipped until then), then copied the same way, while every other table keeps streaming.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::event::{RowChange, TableChange, Value};
use common::proto::{ListTablesRequest, ReadChunkRequest};
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;

pub type TableKey = (String, String);

/// Parts (up to 1,000 rows or 2 MiB each, as the reader cuts them) buffered per chunk.
const PARTS_BUFFER: usize = 12;

/// One table's copy progress, as `GetStatus` shows it.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub state: String,
    pub key_kind: String,
    pub last_key: Option<Vec<Value>>,
    pub rows_copied: u64,
    pub rows_estimated: u64,
    pub chunks: u64,
}

/// What a placed chunk changed.
#[derive(Debug, Clone)]
pub struct ChunkOutcome {
    pub last_key: Option<Vec<Value>>,
    pub rows: u64,
    /// The chunk reached the end of the table.
    pub end: bool,
}

/// Work for the apply loop, placed when its checkpoint equals `boundary`.
pub enum CopyItem {
    /// (Re-)create a table from the primary's definition, then copy it from the start.
    Create {
        id: u64,
        boundary: u64,
        table: TableKey,
        statement: String,
        key_kind: String,
        rows_estimated: u64,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// Rows of one chunk; `parts` streams them (the first part already received is `shape` without rows).
    Chunk {
        id: u64,
        boundary: u64,
        /// The key the chunk starts after; it is written only if the table's copy is still there.
        after_key: Option<Vec<Value>>,
        shape: TableChange,
        key_kind: String,
        limit: u32,
        parts: mpsc::Receiver<Result<TableChange, String>>,
        done: oneshot::Sender<Result<ChunkOutcome, String>>,
    },
    /// The table no longer exists on the primary.
    Gone { table: TableKey },
}

impl CopyItem {
    /// The table of a chunk (chunks of one table are written one at a time, in order).
    pub fn chunk_table(&self) -> Option<TableKey> {
        match self {
            CopyItem::Chunk { shape, .. } => Some((shape.schema.clone(), shape.table.clone())),
            _ => None,
        }
    }

    pub fn id_and_boundary(&self) -> Option<(u64, u64)> {
        match self {
            CopyItem::Create { id, boundary, .. } | CopyItem::Chunk { id, boundary, .. } => Some((*id, *boundary)),
            CopyItem::Gone { .. } => None,
        }
    }
}

/// State shared by the copy workers, the apply loop and the admin service.
pub struct CopyShared {
    pub progress: Mutex<BTreeMap<TableKey, Progress>>,
    pub paused: watch::Sender<bool>,
    /// Offsets the apply loop must not pass, per chunk being fetched.
    floors: Mutex<BTreeMap<u64, u64>>,
    pub floors_changed: watch::Sender<u64>,
    /// Last journal offset received from the reader.
    pub received: AtomicU64,
    queue: Mutex<VecDeque<TableKey>>,
    queue_changed: watch::Sender<u64>,
    next_id: AtomicU64,
    pub errors: AtomicU64,
    /// (when, total rows copied) samples for the rate.
    samples: Mutex<VecDeque<(Instant, u64)>>,
    pub started: Mutex<Option<Instant>>,
    /// Whether the subscription to the reader is up.
    pub reader_connected: std::sync::atomic::AtomicBool,
    /// Whether the secondary answered the last statement or health check.
    pub secondary_ok: std::sync::atomic::AtomicBool,
    /// Serving (true) or not: false while disconnected from the reader or stalled.
    pub serving: watch::Sender<bool>,
    /// Quarantined tables with the offset since which they are skipped and why (mirrors the apply loop's).
    pub quarantined: Mutex<BTreeMap<TableKey, (u64, String)>>,
}

impl Default for CopyShared {
    fn default() -> Self {
        Self {
            progress: Mutex::default(),
            paused: watch::Sender::new(false),
            floors: Mutex::default(),
            floors_changed: watch::Sender::new(0),
            received: AtomicU64::new(0),
            queue: Mutex::default(),
            queue_changed: watch::Sender::new(0),
            next_id: AtomicU64::new(1),
            errors: AtomicU64::new(0),
            samples: Mutex::default(),
            started: Mutex::default(),
            quarantined: Mutex::default(),
            reader_connected: std::sync::atomic::AtomicBool::new(false),
            secondary_ok: std::sync::atomic::AtomicBool::new(true),
            serving: watch::Sender::new(true),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl CopyShared {
    /// The highest offset the apply loop may apply now.
    pub fn limit(&self) -> u64 {
        lock(&self.floors).values().min().copied().unwrap_or(u64::MAX)
    }

    fn set_floor(&self, id: u64, floor: u64) {
        lock(&self.floors).insert(id, floor);
        self.floors_changed.send_modify(|g| *g += 1);
    }

    pub fn clear_floor(&self, id: u64) {
        lock(&self.floors).remove(&id);
        self.floors_changed.send_modify(|g| *g += 1);
    }

    pub fn enqueue(&self, table: TableKey) {
        let mut q = lock(&self.queue);
        if !q.contains(&table) {
            q.push_back(table);
        }
        drop(q);
        self.queue_changed.send_modify(|g| *g += 1);
    }

    pub fn update(&self, table: &TableKey, f: impl FnOnce(&mut Progress)) {
        f(lock(&self.progress).entry(table.clone()).or_default());
    }

    pub fn copying(&self) -> bool {
        lock(&self.progress).values().any(|p| p.state == "pending" || p.state == "copying")
    }

    pub fn totals(&self) -> (u64, u64) {
        let p = lock(&self.progress);
        (p.values().map(|t| t.rows_copied).sum(), p.values().map(|t| t.rows_estimated.max(t.rows_copied)).sum())
    }

    /// Rows per second over the last minute.
    pub fn rate(&self) -> f64 {
        let (copied, _) = self.totals();
        let now = Instant::now();
        let mut s = lock(&self.samples);
        s.push_back((now, copied));
        while s.len() > 2 && s.front().is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(60)) {
            s.pop_front();
        }
        match (s.front(), s.back()) {
            (Some((t0, r0)), Some((t1, r1))) if t1 > t0 => (r1 - r0) as f64 / t1.duration_since(*t0).as_secs_f64(),
            _ => 0.0,
        }
    }
}

/// Keeps the copy under `rows_per_second` across all workers (0: no limit).
struct Pacer {
    rows_per_second: u64,
    next: tokio::sync::Mutex<Instant>,
}

impl Pacer {
    async fn take(&self, rows: u64) {
        if self.rows_per_second == 0 {
            return;
        }
        let mut next = self.next.lock().await;
        let now = Instant::now();
        if *next > now {
            tokio::time::sleep(*next - now).await;
        }
        *next = (*next).max(now) + Duration::from_secs_f64(rows as f64 / self.rows_per_second as f64);
    }
}

/// Runs `config.copy_workers` workers until `stop`; each copies one table at a time from the queue.
pub async fn run_workers(
    config: Arc<Config>,
    shared: Arc<CopyShared>,
    items: mpsc::Sender<CopyItem>,
    stop: CancellationToken,
) {
    let pacer = Arc::new(Pacer { rows_per_second: config.copy_rows_per_second, next: Instant::now().into() });
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..config.copy_workers.max(1) {
        workers.spawn(worker(config.clone(), shared.clone(), items.clone(), pacer.clone(), stop.clone()));
    }
    workers.spawn(report(shared.clone(), stop.clone()));
    while workers.join_next().await.is_some() {}
}

async fn next_table(shared: &CopyShared, stop: &CancellationToken) -> Option<TableKey> {
    let mut changed = shared.queue_changed.subscribe();
    loop {
        if let Some(t) = lock(&shared.queue).pop_front() {
            return Some(t);
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            r = changed.changed() => if r.is_err() { return None },
        }
    }
}

async fn worker(
    config: Arc<Config>,
    shared: Arc<CopyShared>,
    items: mpsc::Sender<CopyItem>,
    pacer: Arc<Pacer>,
    stop: CancellationToken,
) {
    while let Some(table) = next_table(&shared, &stop).await {
        // The outcome of the chunk being written, and where the next one starts.
        let mut previous: Option<oneshot::Receiver<Result<ChunkOutcome, String>>> = None;
        let mut next_after: Option<Option<Vec<Value>>> = None;
        let mut retry = common::retry::RetryPolicy::new(Duration::from_millis(200), config.retry_max).start();
        loop {
            // Paused: no new chunk starts.
            let mut paused = shared.paused.subscribe();
            while *paused.borrow_and_update() {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = paused.changed() => {}
                }
            }
            let state = lock(&shared.progress).get(&table).cloned().unwrap_or_default();
            let step = match state.state.as_str() {
                "pending" => {
                    if let Some(p) = previous.take() {
                        let _ = p.await;
                    }
                    next_after = None;
                    create(&config, &shared, &items, &table).await.map(|()| false)
                }
                "copying" => {
                    // The next chunk is fetched while the previous one is being written.
                    let after = next_after.take().unwrap_or(state.last_key);
                    let fetched = chunk(&config, &shared, &items, &pacer, &table, after).await;
                    let previous_written = match previous.take() {
                        None => Ok(()),
                        Some(p) => match p.await {
                            Ok(Ok(_)) => Ok(()),
                            Ok(Err(e)) => Err(CopyStep::Failed(e)),
                            Err(_) => Err(CopyStep::Stopped),
                        },
                    };
                    match (fetched, previous_written) {
                        (Err(e), _) | (Ok(_), Err(e)) => Err(e),
                        (Ok(None), Ok(())) => Ok(true),
                        (Ok(Some(f)), Ok(())) if f.end => match f.outcome.await {
                            Ok(Ok(_)) => Ok(true),
                            Ok(Err(e)) => Err(CopyStep::Failed(e)),
                            Err(_) => Err(CopyStep::Stopped),
                        },
                        (Ok(Some(f)), Ok(())) => {
                            previous = Some(f.outcome);
                            next_after = Some(f.last_key);
                            Ok(false)
                        }
                    }
                }
                _ => Ok(true),
            };
            match step {
                Ok(true) => break,
                Ok(false) => retry.reset(),
                Err(CopyStep::Stopped) => return,
                Err(CopyStep::Failed(e)) => {
                    // Start again from what is written (a chunk fetched meanwhile is refused as stale).
                    previous = None;
                    next_after = None;
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    let pause = retry.next_delay();
                    warn!(consumer = %config.name, schema = %table.0, table = %table.1, error = %e, retry_in = ?pause,
                          "copy step failed; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }
}

enum CopyStep {
    /// The apply loop is gone.
    Stopped,
    Failed(String),
}

/// Registers a floor for a fetch that is about to start: the last offset received, which its snapshot holds.
fn new_fetch(shared: &CopyShared) -> u64 {
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    shared.set_floor(id, shared.received.load(Ordering::SeqCst));
    id
}

async fn create(
    config: &Config,
    shared: &CopyShared,
    items: &mpsc::Sender<CopyItem>,
    table: &TableKey,
) -> Result<(), CopyStep> {
    let id = new_fetch(shared);
    let result = async {
        let mut client = crate::connect(config).await.map_err(|e| CopyStep::Failed(e.to_string()))?;
        let defs = client
            .list_tables(ListTablesRequest { schema: table.0.clone(), table: table.1.clone(), consumer: String::new() })
            .await
            .map_err(|s| CopyStep::Failed(s.message().to_owned()))?
            .into_inner();
        let def = defs
            .tables
            .into_iter()
            .next()
            .ok_or_else(|| CopyStep::Failed(format!("{}.{} not found on the primary", table.0, table.1)))?;
        shared.set_floor(id, defs.boundary_offset);
        let (done, outcome) = oneshot::channel();
        let item = CopyItem::Create {
            id,
            boundary: defs.boundary_offset,
            table: table.clone(),
            statement: def.create_statement,
            key_kind: def.key_kind,
            rows_estimated: def.estimated_rows,
            done,
        };
        items.send(item).await.map_err(|_| CopyStep::Stopped)?;
        outcome.await.map_err(|_| CopyStep::Stopped)?.map_err(CopyStep::Failed)
    }
    .await;
    if let Err(CopyStep::Failed(e)) = &result {
        if e.contains("not found") || e.contains("does not exist") {
            shared.clear_floor(id);
            let _ = items.send(CopyItem::Gone { table: table.clone() }).await;
            return Ok(());
        }
    }
    shared.clear_floor(id);
    result
}

/// A chunk handed to the apply loop, with what the worker saw of it.
struct Fetched {
    outcome: oneshot::Receiver<Result<ChunkOutcome, String>>,
    last_key: Option<Vec<Value>>,
    /// Fewer rows than asked for (or a table read whole): the last chunk.
    end: bool,
}

/// Fetches one chunk and hands it to the apply loop; None if the table is gone from the primary.
async fn chunk(
    config: &Config,
    shared: &CopyShared,
    items: &mpsc::Sender<CopyItem>,
    pacer: &Pacer,
    table: &TableKey,
    after: Option<Vec<Value>>,
) -> Result<Option<Fetched>, CopyStep> {
    let limit = config.copy_chunk_rows;
    pacer.take(u64::from(limit)).await;
    let id = new_fetch(shared);
    let mut sent = false;
    let result = async {
        let mut client = crate::connect(config).await.map_err(|e| CopyStep::Failed(e.to_string()))?;
        let request = ReadChunkRequest {
            schema: table.0.clone(),
            table: table.1.clone(),
            after_key: after.iter().flatten().map(Into::into).collect(),
            limit,
        };
        let mut stream = match client.read_chunk(request).await {
            Ok(s) => s.into_inner(),
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(None),
            Err(s) => return Err(CopyStep::Failed(s.message().to_owned())),
        };
        let first = match stream.next().await {
            Some(Ok(p)) => p,
            Some(Err(s)) if s.code() == tonic::Code::NotFound => return Ok(None),
            Some(Err(s)) => return Err(CopyStep::Failed(s.message().to_owned())),
            None => return Err(CopyStep::Failed("the reader ended the chunk before its first part".into())),
        };
        let shape: TableChange = first
            .rows
            .ok_or_else(|| CopyStep::Failed("the chunk's first part has no columns".into()))?
            .try_into()
            .map_err(|e: common::convert::WireError| CopyStep::Failed(e.to_string()))?;
        shared.set_floor(id, first.boundary_offset);
        let key_index = shape.primary_key.clone();
        let one_read = first.key_kind == "none" || key_index.is_empty();
        // Room for a whole default-sized chunk, so the next chunk is read while the previous one is written.
        let (parts_tx, parts) = mpsc::channel(PARTS_BUFFER);
        let (done, outcome) = oneshot::channel();
        let item = CopyItem::Chunk {
            id,
            boundary: first.boundary_offset,
            after_key: after.clone(),
            shape,
            key_kind: first.key_kind,
            limit,
            parts,
            done,
        };
        items.send(item).await.map_err(|_| CopyStep::Stopped)?;
        sent = true;
        let (mut rows, mut last_key) = (0u64, after);
        while let Some(part) = stream.next().await {
            let part = part
                .map_err(|s| s.message().to_owned())
                .and_then(|p| p.rows.ok_or_else(|| "empty chunk part".to_owned()))
                .and_then(|r| TableChange::try_from(r).map_err(|e| e.to_string()));
            if let Ok(p) = &part {
                rows += p.rows.len() as u64;
                if let Some(RowChange::Insert { after }) = p.rows.last() {
                    last_key = Some(key_index.iter().map(|&i| after[i as usize].clone()).collect());
                }
            }
            let failed = part.is_err();
            if parts_tx.send(part).await.is_err() || failed {
                break;
            }
        }
        Ok(Some(Fetched { outcome, last_key, end: one_read || rows < u64::from(limit) }))
    }
    .await;
    if !sent {
        // Once sent, the apply loop clears the floor when it has written (or refused) the chunk.
        shared.clear_floor(id);
    }
    match result {
        Ok(None) => {
            let _ = items.send(CopyItem::Gone { table: table.clone() }).await;
            Ok(None)
        }
        other => other,
    }
}

/// Progress bars on a terminal, progress lines in the log otherwise, and the transfer statistics at the end.
async fn report(shared: Arc<CopyShared>, stop: CancellationToken) {
    let terminal = std::io::stderr().is_terminal();
    let bars = indicatif::MultiProgress::new();
    let mut shown: HashMap<TableKey, indicatif::ProgressBar> = HashMap::new();
    let style = indicatif::ProgressStyle::with_template("{prefix:30} [{bar:30}] {pos}/{len} rows {per_sec} ETA {eta}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    let mut was_copying = false;
    let mut last_log = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(if terminal { 200 } else { 1000 })) => {}
        }
        let copying = shared.copying();
        if copying && !was_copying {
            *lock(&shared.started) = Some(Instant::now());
            shared.errors.store(0, Ordering::Relaxed);
        }
        let snapshot = lock(&shared.progress).clone();
        if terminal {
            for (key, p) in &snapshot {
                if p.state != "pending" && p.state != "copying" && !shown.contains_key(key) {
                    continue;
                }
                let bar = shown.entry(key.clone()).or_insert_with(|| {
                    let b = bars.add(indicatif::ProgressBar::new(p.rows_estimated.max(1)));
                    b.set_style(style.clone());
                    b.set_prefix(format!("{}.{}", key.0, key.1));
                    b
                });
                bar.set_length(p.rows_estimated.max(p.rows_copied).max(1));
                bar.set_position(p.rows_copied);
                if p.state == "done" || p.state == "gone" {
                    bar.finish();
                }
            }
        } else if copying && last_log.elapsed() >= Duration::from_secs(10) {
            last_log = Instant::now();
            let (copied, estimated) = shared.totals();
            let rate = shared.rate();
            let eta = if rate > 0.0 { estimated.saturating_sub(copied) as f64 / rate } else { 0.0 };
            let left = snapshot.values().filter(|p| p.state == "pending" || p.state == "copying").count();
            info!(
                rows_copied = copied,
                rows_estimated = estimated,
                rows_per_second = rate as u64,
                eta_seconds = eta as u64,
                tables_left = left,
                "copy progress"
            );
        }
        if was_copying && !copying {
            let (copied, _) = shared.totals();
            let secs = lock(&shared.started).map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0);
            let tables = snapshot.values().filter(|p| p.state == "done").count();
            info!(
                total_rows = copied,
                tables,
                seconds = format!("{secs:.1}"),
                rows_per_second = if secs > 0.0 { (copied as f64 / secs) as u64 } else { 0 },
                errors = shared.errors.load(Ordering::Relaxed),
                "copy finished: streaming"
            );
            shown.clear();
        }
        was_copying = copying;
    }
}
