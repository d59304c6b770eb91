//! Copy work done by the apply loop on the secondary, each exactly at its boundary: setting up an initial
//! copy, re-creating a table, placing a chunk, and marking a table for a re-copy (see [`crate::copy`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::proto::{ListTablesRequest, ListTablesResponse, TableDefinition};
use common::retry::RetryPolicy;
use mysql_async::prelude::Queryable;
use mysql_async::TxOpts;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::checkpoint;
use crate::config::Config;
use crate::copy::board::CopyBoard;
use crate::copy::chunk::{self, Chunk, ChunkDone};
use crate::copy::order;
use crate::copy::state::{ChunkOutcome, CopyState, KeyKind, Progress};
use crate::copy::CopyItem;
use crate::error::{meta, ApplyError};
use crate::metrics::ApplierMetrics;
use crate::reader_client::{self, refused};
use crate::sql;
use crate::table::{TableKey, Tables};
use crate::writer::Writer;

/// The apply loop's side of the copy. It changes the secondary only through the writer's connection (or, for
/// chunks, connections of the pool while the writer waits), and each table's mode only through [`Tables`].
pub struct Placer {
    config: Arc<Config>,
    board: Arc<CopyBoard>,
    /// Connections that write chunks.
    pool: mysql_async::Pool,
    /// Tables with a chunk being written (their next chunk waits).
    writing: HashSet<TableKey>,
    /// Where written chunks are reported, back to the apply loop.
    results: mpsc::Sender<ChunkDone>,
    metrics: ApplierMetrics,
}

/// The secondary's foreign keys as (child, parent) tables.
async fn foreign_keys(conn: &mut mysql_async::Conn) -> Result<Vec<(TableKey, TableKey)>, ApplyError> {
    common::mariadb::foreign_key_edges(conn).await.map_err(meta("reading the secondary's foreign keys"))
}

fn log_waits(name: &str, waits: &std::collections::BTreeMap<TableKey, std::collections::BTreeSet<TableKey>>) {
    for (table, parents) in waits {
        let parents: Vec<String> = parents.iter().map(|(s, t)| format!("{s}.{t}")).collect();
        info!(consumer = %name, schema = %table.0, table = %table.1, waits_for = %parents.join(", "),
              "table copied after the tables it references (foreign keys)");
    }
}

fn create_database(statement: &str, name: &str) -> String {
    match statement.strip_prefix("CREATE DATABASE ") {
        Some(rest) if !rest.starts_with("IF NOT EXISTS") => format!("CREATE DATABASE IF NOT EXISTS {rest}"),
        Some(_) => statement.to_owned(),
        None => format!("CREATE DATABASE IF NOT EXISTS {}", sql::ident(name)),
    }
}

impl Placer {
    pub fn new(
        config: Arc<Config>,
        board: Arc<CopyBoard>,
        results: mpsc::Sender<ChunkDone>,
        metrics: ApplierMetrics,
    ) -> Self {
        let pool = crate::secondary::pool(&config);
        Self { config, board, pool, writing: HashSet::new(), results, metrics }
    }

    /// Whether a chunk of `table` is being written.
    pub fn is_writing(&self, table: &TableKey) -> bool {
        self.writing.contains(table)
    }

    fn set_progress(&self, key: &TableKey, p: Progress, tables: &mut Tables) {
        tables.set_copy_mode(key, p.mode());
        self.board.set(key, p);
    }

    /// Takes the copy state the secondary kept across a restart: unfinished copies resume from their last
    /// chunk.
    pub async fn restore(&self, copies: Vec<(TableKey, Progress)>, tables: &mut Tables) -> Result<(), ApplyError> {
        if copies.iter().any(|(_, p)| p.mode().is_some()) {
            let keys: Vec<TableKey> = copies.iter().map(|(k, _)| k.clone()).collect();
            let mut conn = self.pool.get_conn().await.map_err(meta("reading the secondary's foreign keys"))?;
            let waits = order::waits(&keys, &foreign_keys(&mut conn).await?);
            log_waits(&self.config.name, &waits);
            self.board.set_waits(waits);
        }
        for (key, progress) in copies {
            if progress.mode().is_some() {
                info!(consumer = %self.config.name, schema = %key.0, table = %key.1, rows_copied = progress.rows_copied,
                      "resuming the copy of a table from its last chunk");
                self.board.enqueue(key.clone());
            }
            self.set_progress(&key, progress, tables);
        }
        Ok(())
    }

    /// Sets up an initial copy: the primary's definitions at their boundary B0, tables created empty, every
    /// table's copy state and the checkpoint B0 in one transaction. Refuses non-empty tables unless --resync.
    /// Returns false if the applier stopped first.
    pub async fn begin_copy(
        &mut self,
        writer: &mut Writer,
        tables: &mut Tables,
        stop: &CancellationToken,
    ) -> Result<bool, ApplyError> {
        let Some(defs) = self.definitions(stop).await? else { return Ok(false) };
        let defined: Vec<_> = defs.tables.iter().filter(|t| t.schema != "replica_meta").collect();
        let (name, resync) = (self.config.name.clone(), self.config.resync);
        let journal_id = writer.journal_id().to_owned();
        let conn = writer.secondary().conn().await?;
        let non_empty = non_empty_tables(conn, &defined).await?;
        if !non_empty.is_empty() && !resync {
            return Err(ApplyError::NonEmptyTarget { tables: non_empty.join(", ") });
        }
        let ddl = meta("creating the primary's schemas and tables");
        for s in defs.schemas.iter().filter(|s| s.name != "replica_meta") {
            conn.query_drop(create_database(&s.create_statement, &s.name)).await.map_err(ddl)?;
        }
        for t in &defined {
            let ddl = meta("creating the primary's tables");
            conn.query_drop(format!("DROP TABLE IF EXISTS {}.{}", sql::ident(&t.schema), sql::ident(&t.name)))
                .await
                .map_err(ddl)?;
            conn.query_drop(format!("USE {}", sql::ident(&t.schema))).await.map_err(ddl)?;
            conn.query_drop(&t.create_statement).await.map_err(ddl)?;
        }
        let keys: Vec<TableKey> = defined.iter().map(|t| (t.schema.clone(), t.name.clone())).collect();
        let waits = order::waits(&keys, &foreign_keys(conn).await?);
        let boundary = defs.boundary_offset;
        let mut tx = conn.start_transaction(TxOpts::default()).await.map_err(meta("starting the copy"))?;
        checkpoint::reset(&mut tx, &name).await?;
        let mut progress = Vec::new();
        for t in &defined {
            let key = (t.schema.clone(), t.name.clone());
            // A table that waits for its parents is skipped until its copy begins (see [`crate::copy::order`]).
            let state = if waits.contains_key(&key) { CopyState::Pending } else { CopyState::Copying };
            let p = Progress::start(state, KeyKind::parse(&t.key_kind), t.estimated_rows);
            checkpoint::save_copy_state(&mut tx, &name, &key, &p, boundary).await?;
            progress.push((key, p));
        }
        checkpoint::save(&mut tx, &name, boundary, "", "", 0).await?;
        checkpoint::set_journal(&mut tx, &name, &journal_id).await?;
        tx.commit().await.map_err(meta("starting the copy"))?;
        writer.moved_to(boundary);
        writer.forget_gtid();
        tables.lift_all();
        self.metrics.quarantined(0);
        let estimated: u64 = progress.iter().map(|(_, p)| p.rows_estimated).sum();
        log_waits(&name, &waits);
        self.board.set_waits(waits);
        for (key, p) in progress {
            self.set_progress(&key, p, tables);
            self.board.enqueue(key);
        }
        info!(consumer = %name, tables = defined.len(), rows_estimated = estimated, boundary_offset = boundary,
              "initial copy begins: tables created, streaming from the definitions' boundary");
        Ok(true)
    }

    /// The primary's definitions and their boundary, from the reader (retried while it cannot answer; None if
    /// the applier stops first). Registers this consumer at the boundary, so the journal keeps what the copy
    /// needs.
    async fn definitions(&self, stop: &CancellationToken) -> Result<Option<ListTablesResponse>, ApplyError> {
        let mut retry = RetryPolicy::new(Duration::from_millis(200), self.config.retry_max).start();
        let request =
            ListTablesRequest { schema: String::new(), table: String::new(), consumer: self.config.name.clone() };
        loop {
            let attempt = async {
                let mut client = reader_client::connect(&self.config).await?;
                client
                    .list_tables(request.clone())
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(refused("ListTables"))
            };
            match attempt.await {
                Ok(defs) => return Ok(Some(defs)),
                Err(e) if !e.is_transient() => return Err(e),
                Err(e) => {
                    let pause = retry.next_delay();
                    warn!(consumer = %self.config.name, error = %common::lifecycle::error_chain(&e), retry_in = ?pause,
                          "cannot start the initial copy yet; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(None),
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }

    /// Runs one copy item; its boundary equals the checkpoint. Only a permanent error that stops the applier
    /// is returned; the worker hears of every other outcome.
    pub async fn place(&mut self, item: CopyItem, writer: &mut Writer, tables: &mut Tables) -> Result<(), ApplyError> {
        match item {
            CopyItem::Gone { table } => {
                let p = Progress { state: CopyState::Gone, ..self.board.get(&table).unwrap_or_default() };
                warn!(consumer = %self.config.name, schema = %table.0, table = %table.1,
                      "table no longer exists on the primary: its copy ended (if it was renamed, resync the new name)");
                let conn = writer.secondary().conn().await?;
                checkpoint::save_copy_state(conn, &self.config.name, &table, &p, 0).await?;
                self.set_progress(&table, p, tables);
                Ok(())
            }
            CopyItem::Create { boundary, table, statement, key_kind, rows_estimated, done, .. } => {
                let p = Progress::start(CopyState::Copying, key_kind, rows_estimated);
                let result = self.create_table(boundary, &table, &statement, p, writer, tables).await;
                if let Err(e) = &result {
                    writer.secondary().failed(e);
                }
                let _ = done.send(result);
                Ok(())
            }
            CopyItem::Chunk { id, boundary, after_key, shape, key_kind, limit, parts, done } => {
                // Written on its own connection, concurrently with other chunks at the same boundary; the
                // apply loop stays at the boundary (the chunk's floor) until `chunk_done`.
                let key = (shape.schema.clone(), shape.table.clone());
                let before = self.board.get(&key).unwrap_or_default();
                if before.state != CopyState::Copying || before.last_key != after_key {
                    // An earlier chunk of the table was not written (or the table was re-synced): fetch again.
                    let why = "the chunk does not follow what is written; fetching again".to_owned();
                    let _ = done.send(Err(ApplyError::StaleChunk { table: key, why }));
                    self.board.floors.clear(id);
                    return Ok(());
                }
                self.writing.insert(key.clone());
                let (pool, name, board, results) =
                    (self.pool.clone(), self.config.name.clone(), self.board.clone(), self.results.clone());
                let chunk = Chunk { boundary, shape, key_kind, limit, parts, before };
                tokio::spawn(async move {
                    let result = chunk::write(&pool, &name, chunk).await;
                    if let Ok((p, _)) = &result {
                        // Before the worker hears of it, so its next chunk starts after this one.
                        board.set(&key, p.clone());
                    }
                    let _ = results.send(ChunkDone { id, key, boundary, result, done }).await;
                });
                Ok(())
            }
        }
    }

    /// Takes the result of a chunk written by [`Placer::place`]. Only a permanent error that stops the
    /// applier is returned.
    pub async fn chunk_done(
        &mut self,
        d: ChunkDone,
        writer: &mut Writer,
        tables: &mut Tables,
    ) -> Result<(), ApplyError> {
        let ChunkDone { id, key, boundary, result, done } = d;
        self.writing.remove(&key);
        self.board.floors.clear(id);
        match result {
            Ok((p, outcome)) => {
                if outcome.end {
                    info!(consumer = %self.config.name, schema = %key.0, table = %key.1, rows = p.rows_copied,
                          chunks = p.chunks, "table copied; its changes are applied strictly from now on");
                }
                self.set_progress(&key, p, tables);
                self.metrics.copied(outcome.rows);
                let _ = done.send(Ok(outcome));
                Ok(())
            }
            Err(e) if e.is_transient() => {
                self.metrics.retried();
                let _ = done.send(Err(e));
                Ok(())
            }
            Err(e) => {
                self.metrics.failed();
                let reason = common::lifecycle::error_chain(&e);
                error!(consumer = %self.config.name, schema = %key.0, table = %key.1, error = %reason, "copying a chunk failed");
                if !self.config.skip_failing_tables {
                    let _ = done.send(Err(ApplyError::Stopping));
                    return Err(e);
                }
                writer.quarantine(key.clone(), boundary, &reason, tables).await?;
                let p = Progress { state: CopyState::Done, ..self.board.get(&key).unwrap_or_default() };
                self.set_progress(&key, p, tables);
                let _ = done.send(Ok(ChunkOutcome { last_key: None, rows: 0, end: true }));
                Ok(())
            }
        }
    }

    async fn create_table(
        &mut self,
        boundary: u64,
        table: &TableKey,
        statement: &str,
        p: Progress,
        writer: &mut Writer,
        tables: &mut Tables,
    ) -> Result<(), ApplyError> {
        let name = self.config.name.clone();
        let conn = writer.secondary().conn().await?;
        let ddl = meta("re-creating a table from the primary's definition");
        conn.query_drop(format!("CREATE DATABASE IF NOT EXISTS {}", sql::ident(&table.0))).await.map_err(ddl)?;
        conn.query_drop(format!("DROP TABLE IF EXISTS {}.{}", sql::ident(&table.0), sql::ident(&table.1)))
            .await
            .map_err(ddl)?;
        conn.query_drop(format!("USE {}", sql::ident(&table.0))).await.map_err(ddl)?;
        conn.query_drop(statement).await.map_err(ddl)?;
        checkpoint::save_copy_state(conn, &name, table, &p, boundary).await?;
        writer.forget_shape(table);
        info!(consumer = %name, schema = %table.0, table = %table.1, boundary_offset = boundary,
              "table re-created from the primary's definition; copying it");
        self.set_progress(table, p, tables);
        Ok(())
    }

    /// Marks a table for a re-copy: its changes are skipped until it is re-created from the primary's
    /// definition and copied again. Also lifts a quarantine.
    pub async fn resync_table(
        &mut self,
        schema: &str,
        table: &str,
        writer: &mut Writer,
        tables: &mut Tables,
    ) -> Result<String, ApplyError> {
        let key = (schema.to_owned(), table.to_owned());
        if self.board.get(&key).is_some_and(|p| p.state.active()) {
            return Ok(format!("{schema}.{table} is already being copied"));
        }
        let name = self.config.name.clone();
        let p = Progress::start(CopyState::Pending, KeyKind::None, 0);
        // With the tables that reference it, after it (see [`crate::copy::order`]).
        let result: Result<Vec<TableKey>, ApplyError> = async {
            let conn = writer.secondary().conn().await?;
            let edges = foreign_keys(conn).await?;
            let all: Vec<TableKey> = order::with_descendants(&key, &edges)
                .into_iter()
                .filter(|t| *t == key || !self.board.get(t).is_some_and(|p| p.state.active()))
                .collect();
            let mut tx = conn.start_transaction(TxOpts::default()).await.map_err(meta("marking a re-copy"))?;
            for t in &all {
                checkpoint::save_copy_state(&mut tx, &name, t, &p, 0).await?;
                checkpoint::unquarantine(&mut tx, &name, &t.0, &t.1).await?;
            }
            tx.commit().await.map_err(meta("marking a re-copy"))?;
            let waits = order::waits(&all, &edges);
            log_waits(&name, &waits);
            self.board.add_waits(waits);
            Ok(all)
        }
        .await;
        let all = match result {
            Ok(all) => all,
            Err(e) => {
                writer.secondary().failed(&e);
                return Err(e);
            }
        };
        for t in &all {
            tables.lift(t);
            self.set_progress(t, p.clone(), tables);
            self.board.enqueue(t.clone());
        }
        self.metrics.quarantined(tables.quarantined_count());
        let children: Vec<String> = all[1..].iter().map(|(s, t)| format!("{s}.{t}")).collect();
        info!(consumer = %name, schema, table, with = %children.join(", "), "table marked for a re-copy");
        if children.is_empty() {
            Ok(format!("{schema}.{table} will be re-created from the primary's definition and copied again"))
        } else {
            Ok(format!(
                "{schema}.{table} will be re-created from the primary's definition and copied again, then the tables \
                 that reference it: {}",
                children.join(", ")
            ))
        }
    }
}

/// `schema.table` of each defined table that exists on the secondary with rows in it.
async fn non_empty_tables(
    conn: &mut mysql_async::Conn,
    defined: &[&TableDefinition],
) -> Result<Vec<String>, ApplyError> {
    let mut non_empty = Vec::new();
    for t in defined {
        let exists: Option<u8> = conn
            .exec_first(
                "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                (&t.schema, &t.name),
            )
            .await
            .map_err(meta("looking for existing tables"))?;
        if exists.is_some() {
            let any: Option<u8> = conn
                .query_first(format!("SELECT 1 FROM {}.{} LIMIT 1", sql::ident(&t.schema), sql::ident(&t.name)))
                .await
                .map_err(meta("looking for existing rows"))?;
            if any.is_some() {
                non_empty.push(format!("{}.{}", t.schema, t.name));
            }
        }
    }
    Ok(non_empty)
}
