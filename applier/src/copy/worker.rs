//! Copy workers: each takes a table from the queue, fetches its definition or its next chunk from the reader,
//! and hands it to the apply loop, which places it at its boundary. The next chunk is fetched while the
//! previous one is being written; a failed step starts again from what is written, after a pause.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::event::{RowChange, TableChange, Value};
use common::proto::{ListTablesRequest, ReadChunkRequest};
use common::retry::RetryPolicy;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::config::Config;
use crate::copy::board::CopyBoard;
use crate::copy::state::{ChunkOutcome, CopyState, KeyKind};
use crate::copy::CopyItem;
use crate::error::ApplyError;
use crate::reader_client::{self, refused};
use crate::stream::StreamState;
use crate::table::TableKey;

/// Parts (up to 1,000 rows or 2 MiB each, as the reader cuts them) buffered per chunk.
const PARTS_BUFFER: usize = 12;

/// What the workers need.
#[derive(Clone)]
pub struct Workers {
    pub config: Arc<Config>,
    pub board: Arc<CopyBoard>,
    pub stream: Arc<StreamState>,
    pub items: mpsc::Sender<CopyItem>,
}

impl Workers {
    /// Runs `config.copy_workers` workers until `stop`; each copies one table at a time from the queue.
    pub async fn run(self, stop: CancellationToken) {
        let pacer = Arc::new(Pacer::new(self.config.copy_rows_per_second));
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..self.config.copy_workers.max(1) {
            workers.spawn(self.clone().work(pacer.clone(), stop.clone()));
        }
        while workers.join_next().await.is_some() {}
    }

    async fn work(self, pacer: Arc<Pacer>, stop: CancellationToken) {
        while let Some(table) = self.board.next_table(&stop).await {
            self.board.table_began(&table);
            if !self.copy_table(&table, &pacer, &stop).await {
                return;
            }
        }
    }

    /// Copies one table until it is done or gone; false when the applier stops.
    async fn copy_table(&self, table: &TableKey, pacer: &Pacer, stop: &CancellationToken) -> bool {
        // The outcome of the chunk being written, and where the next one starts.
        let mut writing: Option<oneshot::Receiver<Result<ChunkOutcome, ApplyError>>> = None;
        let mut next_after: Option<Option<Vec<Value>>> = None;
        let mut retry = RetryPolicy::new(Duration::from_millis(200), self.config.retry_max).start();
        loop {
            // Paused: no new chunk starts.
            let mut paused = self.board.paused.subscribe();
            while *paused.borrow_and_update() {
                tokio::select! {
                    _ = stop.cancelled() => return false,
                    _ = paused.changed() => {}
                }
            }
            let Some(state) = self.board.get(table) else { return true };
            let step = match state.state {
                CopyState::Pending => {
                    if let Some(w) = writing.take() {
                        let _ = w.await;
                    }
                    next_after = None;
                    self.create(table).await.map(|()| false)
                }
                CopyState::Copying => {
                    let after = next_after.take().unwrap_or(state.last_key);
                    match self.next_chunk(table, pacer, after, writing.take()).await {
                        Ok(Some(fetched)) if !fetched.end => {
                            writing = Some(fetched.outcome);
                            next_after = Some(fetched.last_key);
                            Ok(false)
                        }
                        Ok(Some(fetched)) => outcome(fetched.outcome).await.map(|_| true),
                        Ok(None) => Ok(true),
                        Err(e) => Err(e),
                    }
                }
                CopyState::Done | CopyState::Gone => Ok(true),
            };
            match step {
                Ok(true) => return true,
                Ok(false) => retry.reset(),
                Err(ApplyError::Stopping) => return false,
                Err(e) => {
                    // Start again from what is written (a chunk fetched meanwhile is refused as stale).
                    writing = None;
                    next_after = None;
                    self.board.errors.fetch_add(1, Ordering::Relaxed);
                    let pause = retry.next_delay();
                    warn!(consumer = %self.config.name, schema = %table.0, table = %table.1,
                          error = %common::lifecycle::error_chain(&e), retry_in = ?pause, "copy step failed; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return false,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }

    /// Fetches the next chunk while the previous one (`writing`) is being written, and waits for that one.
    async fn next_chunk(
        &self,
        table: &TableKey,
        pacer: &Pacer,
        after: Option<Vec<Value>>,
        writing: Option<oneshot::Receiver<Result<ChunkOutcome, ApplyError>>>,
    ) -> Result<Option<Fetched>, ApplyError> {
        let fetched = self.chunk(table, pacer, after).await;
        let written = match writing {
            None => Ok(()),
            Some(w) => outcome(w).await.map(|_| ()),
        };
        written?;
        fetched
    }

    /// Asks the reader for a table's definition and hands it to the apply loop, which re-creates the table.
    async fn create(&self, table: &TableKey) -> Result<(), ApplyError> {
        let floors = &self.board.floors;
        let id = floors.register(self.stream.received.load(Ordering::SeqCst));
        let result = async {
            let mut client = reader_client::connect(&self.config).await?;
            let request =
                ListTablesRequest { schema: table.0.clone(), table: table.1.clone(), consumer: String::new() };
            let defs = client.list_tables(request).await.map_err(refused("ListTables"))?.into_inner();
            let Some(def) = defs.tables.into_iter().next() else {
                return Err(ApplyError::TableGone { table: table.clone() });
            };
            floors.set(id, defs.boundary_offset);
            let (done, outcome) = oneshot::channel();
            let item = CopyItem::Create {
                id,
                boundary: defs.boundary_offset,
                table: table.clone(),
                statement: def.create_statement,
                key_kind: KeyKind::parse(&def.key_kind),
                rows_estimated: def.estimated_rows,
                done,
            };
            self.items.send(item).await.map_err(|_| ApplyError::Stopping)?;
            outcome.await.map_err(|_| ApplyError::Stopping)?
        }
        .await;
        floors.clear(id);
        match result {
            Err(e) if e.is_not_found() => {
                let _ = self.items.send(CopyItem::Gone { table: table.clone() }).await;
                Ok(())
            }
            other => other,
        }
    }

    /// Fetches one chunk and hands it to the apply loop; None if the table is gone from the primary.
    async fn chunk(
        &self,
        table: &TableKey,
        pacer: &Pacer,
        after: Option<Vec<Value>>,
    ) -> Result<Option<Fetched>, ApplyError> {
        let limit = self.config.copy_chunk_rows;
        pacer.take(u64::from(limit)).await;
        let floors = &self.board.floors;
        let id = floors.register(self.stream.received.load(Ordering::SeqCst));
        let mut sent = false;
        let result = self.fetch(table, id, limit, after, &mut sent).await;
        if !sent {
            // Once sent, the apply loop clears the floor when it has written (or refused) the chunk.
            floors.clear(id);
        }
        match result {
            Err(e) if e.is_not_found() => {
                let _ = self.items.send(CopyItem::Gone { table: table.clone() }).await;
                Ok(None)
            }
            other => other.map(Some),
        }
    }

    async fn fetch(
        &self,
        table: &TableKey,
        id: u64,
        limit: u32,
        after: Option<Vec<Value>>,
        sent: &mut bool,
    ) -> Result<Fetched, ApplyError> {
        let mut client = reader_client::connect(&self.config).await?;
        let request = ReadChunkRequest {
            schema: table.0.clone(),
            table: table.1.clone(),
            after_key: after.iter().flatten().cloned().map(Into::into).collect(),
            limit,
        };
        let mut stream = client.read_chunk(request).await.map_err(refused("ReadChunk"))?.into_inner();
        let first = match stream.next().await {
            Some(Ok(p)) => p,
            Some(Err(s)) => return Err(refused("ReadChunk")(s)),
            None => return Err(ApplyError::ReaderEnded),
        };
        let shape: TableChange = first
            .rows
            .ok_or(ApplyError::ReaderIncomplete { call: "ReadChunk", what: "the chunk's first part has no columns" })?
            .try_into()?;
        self.board.floors.set(id, first.boundary_offset);
        let key_index = shape.primary_key.clone();
        let key_kind = KeyKind::parse(&first.key_kind);
        let one_read = key_kind == KeyKind::None || key_index.is_empty();
        // Room for a whole default-sized chunk, so the next chunk is read while the previous one is written.
        let (parts_tx, parts) = mpsc::channel(PARTS_BUFFER);
        let (done, outcome) = oneshot::channel();
        let item = CopyItem::Chunk {
            id,
            boundary: first.boundary_offset,
            after_key: after.clone(),
            shape,
            key_kind,
            limit,
            parts,
            done,
        };
        self.items.send(item).await.map_err(|_| ApplyError::Stopping)?;
        *sent = true;
        let (mut rows, mut last_key) = (0u64, after);
        while let Some(part) = stream.next().await {
            let part = part.map_err(refused("ReadChunk")).and_then(|p| {
                let rows =
                    p.rows.ok_or(ApplyError::ReaderIncomplete { call: "ReadChunk", what: "a part has no rows" })?;
                Ok(TableChange::try_from(rows)?)
            });
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
        Ok(Fetched { outcome, last_key, end: one_read || rows < u64::from(limit) })
    }
}

/// What the apply loop made of a chunk or definition handed to it.
async fn outcome<T>(rx: oneshot::Receiver<Result<T, ApplyError>>) -> Result<T, ApplyError> {
    rx.await.map_err(|_| ApplyError::Stopping)?
}

/// A chunk handed to the apply loop, with what the worker saw of it.
struct Fetched {
    outcome: oneshot::Receiver<Result<ChunkOutcome, ApplyError>>,
    last_key: Option<Vec<Value>>,
    /// Fewer rows than asked for (or a table read whole): the last chunk.
    end: bool,
}

/// Keeps the copy (or a verification) under `rows_per_second` across all workers (0: no limit).
pub struct Pacer {
    rows_per_second: u64,
    next: tokio::sync::Mutex<Instant>,
}

impl Pacer {
    pub fn new(rows_per_second: u64) -> Self {
        Self { rows_per_second, next: Instant::now().into() }
    }

    /// Waits until `rows` more rows keep the rate.
    pub async fn take(&self, rows: u64) {
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
