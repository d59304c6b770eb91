//! Copy work done by the apply loop on the secondary: setting up an initial copy, re-creating a table,
//! writing a chunk at its boundary, and marking a table for a re-copy (see [`crate::copy`] for why).

use std::time::Duration;

use common::event::{RowChange, TableChange, Value};
use common::proto::ListTablesRequest;
use mysql_async::prelude::Queryable;
use mysql_async::TxOpts;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::apply::{mode_of, Applier};
use crate::checkpoint;
use crate::copy::{ChunkOutcome, CopyItem, Progress, TableKey};
use crate::error::{is_transient, needs_reconnect, ApplyError};
use crate::sql;

/// Longest wait for the next part of a chunk being written.
const PART_WAIT: Duration = Duration::from_secs(60);

/// Why writing a chunk failed.
pub(crate) enum ChunkFailure {
    /// Fetching it again can succeed.
    Retry(String),
    Permanent {
        statement: String,
        reason: String,
    },
}

impl From<mysql_async::Error> for ChunkFailure {
    fn from(e: mysql_async::Error) -> Self {
        if is_transient(&e) {
            ChunkFailure::Retry(e.to_string())
        } else {
            ChunkFailure::Permanent { statement: String::new(), reason: e.to_string() }
        }
    }
}

fn create_database(statement: &str, name: &str) -> String {
    match statement.strip_prefix("CREATE DATABASE ") {
        Some(rest) if !rest.starts_with("IF NOT EXISTS") => format!("CREATE DATABASE IF NOT EXISTS {rest}"),
        Some(_) => statement.to_owned(),
        None => format!("CREATE DATABASE IF NOT EXISTS {}", sql::ident(name)),
    }
}

impl Applier {
    fn set_progress(&mut self, key: &TableKey, p: Progress) {
        match mode_of(&p) {
            Some(mode) => self.modes.insert(key.clone(), mode),
            None => self.modes.remove(key),
        };
        self.shared.update(key, |x| *x = p);
    }

    fn progress(&self, key: &TableKey) -> Progress {
        self.shared.progress.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned().unwrap_or_default()
    }

    /// Sets up an initial copy: the primary's definitions at their boundary B0, tables created empty, every
    /// table's copy state and the checkpoint B0 in one transaction. Refuses non-empty tables unless --resync.
    pub async fn begin_copy(&mut self) -> Result<(), ApplyError> {
        let mut retry = common::retry::RetryPolicy::new(Duration::from_millis(200), self.config.retry_max).start();
        let defs = loop {
            let attempt = async {
                let mut client = crate::connect(&self.config).await?;
                client
                    .list_tables(ListTablesRequest {
                        schema: String::new(),
                        table: String::new(),
                        consumer: self.config.name.clone(),
                    })
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(ApplyError::Copy)
            }
            .await;
            match attempt {
                Ok(defs) => break defs,
                Err(ApplyError::Copy(s)) if s.code() != tonic::Code::Unavailable => return Err(ApplyError::Copy(s)),
                Err(e) => {
                    let pause = retry.next_delay();
                    warn!(consumer = %self.config.name, error = %e, retry_in = ?pause, "cannot start the initial copy yet; retrying");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        };
        let tables: Vec<_> = defs.tables.iter().filter(|t| t.schema != "replica_meta").collect();
        let (name, resync) = (self.config.name.clone(), self.config.resync);
        let conn = self.conn().await.map_err(ApplyError::Sql)?;
        let mut non_empty = Vec::new();
        for t in &tables {
            let exists: Option<u8> = conn
                .exec_first(
                    "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                    (&t.schema, &t.name),
                )
                .await
                .map_err(ApplyError::Sql)?;
            if exists.is_some() {
                let any: Option<u8> = conn
                    .query_first(format!("SELECT 1 FROM {}.{} LIMIT 1", sql::ident(&t.schema), sql::ident(&t.name)))
                    .await
                    .map_err(ApplyError::Sql)?;
                if any.is_some() {
                    non_empty.push(format!("{}.{}", t.schema, t.name));
                }
            }
        }
        if !non_empty.is_empty() && !resync {
            return Err(ApplyError::NonEmptyTarget { tables: non_empty.join(", ") });
        }
        for s in defs.schemas.iter().filter(|s| s.name != "replica_meta") {
            conn.query_drop(create_database(&s.create_statement, &s.name)).await.map_err(ApplyError::Sql)?;
        }
        for t in &tables {
            conn.query_drop(format!("DROP TABLE IF EXISTS {}.{}", sql::ident(&t.schema), sql::ident(&t.name)))
                .await
                .map_err(ApplyError::Sql)?;
            conn.query_drop(format!("USE {}", sql::ident(&t.schema))).await.map_err(ApplyError::Sql)?;
            conn.query_drop(&t.create_statement).await.map_err(ApplyError::Sql)?;
        }
        let boundary = defs.boundary_offset;
        let mut tx = conn.start_transaction(TxOpts::default()).await.map_err(ApplyError::Sql)?;
        checkpoint::reset(&mut tx, &name).await.map_err(ApplyError::Sql)?;
        let mut progress = Vec::new();
        for t in &tables {
            let key = (t.schema.clone(), t.name.clone());
            let p = Progress {
                state: "copying".into(),
                key_kind: t.key_kind.clone(),
                last_key: None,
                rows_copied: 0,
                rows_estimated: t.estimated_rows,
                chunks: 0,
            };
            checkpoint::save_copy_state(&mut tx, &name, &key, &p, boundary).await.map_err(ApplyError::Sql)?;
            progress.push((key, p));
        }
        checkpoint::save(&mut tx, &name, boundary, "", "", 0).await.map_err(ApplyError::Sql)?;
        tx.commit().await.map_err(ApplyError::Sql)?;
        self.applied = boundary;
        self.applied_tx.send_replace(boundary);
        self.quarantined.clear();
        self.shared.quarantined.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.metrics.quarantined(0);
        let estimated: u64 = progress.iter().map(|(_, p)| p.rows_estimated).sum();
        for (key, p) in progress {
            self.set_progress(&key, p);
            self.shared.enqueue(key);
        }
        self.needs_copy = false;
        info!(consumer = %name, tables = tables.len(), rows_estimated = estimated, boundary_offset = boundary,
              "initial copy begins: tables created, streaming from the definitions' boundary");
        Ok(())
    }

    /// Runs one copy item; its boundary equals the checkpoint. Only a permanent error that stops the applier
    /// is returned; the worker hears of every other outcome.
    pub async fn place(&mut self, item: CopyItem) -> Result<(), ApplyError> {
        match item {
            CopyItem::Gone { table } => {
                let mut p = self.progress(&table);
                p.state = "gone".into();
                warn!(consumer = %self.config.name, schema = %table.0, table = %table.1,
                      "table no longer exists on the primary: its copy ended (if it was renamed, resync the new name)");
                let name = self.config.name.clone();
                let conn = self.conn().await.map_err(ApplyError::Sql)?;
                checkpoint::save_copy_state(conn, &name, &table, &p, 0).await.map_err(ApplyError::Sql)?;
                self.set_progress(&table, p);
                Ok(())
            }
            CopyItem::Create { boundary, table, statement, key_kind, rows_estimated, done, .. } => {
                let result = self.create_table(boundary, &table, &statement, &key_kind, rows_estimated).await;
                if let Err(e) = &result {
                    if needs_reconnect(e) {
                        self.conn = None;
                    }
                }
                let _ = done.send(result.map_err(|e| format!("re-creating {}.{} failed: {e}", table.0, table.1)));
                Ok(())
            }
            CopyItem::Chunk { id, boundary, after_key, shape, key_kind, limit, parts, done } => {
                // Written on its own connection, concurrently with other chunks at the same boundary; the
                // apply loop stays at the boundary (the chunk's floor) until `chunk_done`.
                let key = (shape.schema.clone(), shape.table.clone());
                let before = self.progress(&key);
                if before.state != "copying" || before.last_key != after_key {
                    // An earlier chunk of the table was not written (or the table was re-synced): fetch again.
                    let _ = done.send(Err("the chunk does not follow what is written; fetching again".into()));
                    self.shared.clear_floor(id);
                    return Ok(());
                }
                self.writing.insert(key.clone());
                let (pool, name, shared, results) =
                    (self.writers.clone(), self.config.name.clone(), self.shared.clone(), self.chunk_results.clone());
                tokio::spawn(async move {
                    let result = write_chunk(&pool, &name, boundary, &shape, &key_kind, limit, parts, before).await;
                    if let Ok((p, _)) = &result {
                        // Before the worker hears of it, so its next chunk starts after this one.
                        shared.update(&key, |x| *x = p.clone());
                    }
                    let _ = results.send(ChunkDone { id, key, boundary, result, done }).await;
                });
                Ok(())
            }
        }
    }

    /// Takes the result of a chunk written by [`Applier::place`]. Only a permanent error that stops the
    /// applier is returned.
    pub async fn chunk_done(&mut self, d: ChunkDone) -> Result<(), ApplyError> {
        let ChunkDone { key, boundary, result, done, .. } = d;
        self.writing.remove(&key);
        match result {
            Ok((p, outcome)) => {
                if outcome.end {
                    info!(consumer = %self.config.name, schema = %key.0, table = %key.1, rows = p.rows_copied,
                          chunks = p.chunks, "table copied; its changes are applied strictly from now on");
                }
                self.set_progress(&key, p);
                self.metrics.copied(outcome.rows);
                let _ = done.send(Ok(outcome));
                Ok(())
            }
            Err(ChunkFailure::Retry(reason)) => {
                self.metrics.retried();
                let _ = done.send(Err(reason));
                Ok(())
            }
            Err(ChunkFailure::Permanent { statement, reason }) => {
                self.metrics.failed();
                error!(consumer = %self.config.name, schema = %key.0, table = %key.1, error = %reason,
                       statement = %statement, "copying a chunk failed");
                if self.config.skip_failing_tables {
                    self.quarantine(key.clone(), boundary, &reason).await?;
                    let mut p = self.progress(&key);
                    p.state = "done".into();
                    self.set_progress(&key, p);
                    let _ = done.send(Ok(ChunkOutcome { last_key: None, rows: 0, end: true }));
                    return Ok(());
                }
                let _ = done.send(Err(reason.clone()));
                Err(ApplyError::Permanent {
                    offset: boundary,
                    table: format!("{}.{}", key.0, key.1),
                    statement,
                    reason: format!("copying a chunk: {reason}"),
                })
            }
        }
    }

    async fn create_table(
        &mut self,
        boundary: u64,
        table: &TableKey,
        statement: &str,
        key_kind: &str,
        rows_estimated: u64,
    ) -> Result<(), mysql_async::Error> {
        let name = self.config.name.clone();
        let conn = self.conn().await?;
        conn.query_drop(format!("CREATE DATABASE IF NOT EXISTS {}", sql::ident(&table.0))).await?;
        conn.query_drop(format!("DROP TABLE IF EXISTS {}.{}", sql::ident(&table.0), sql::ident(&table.1))).await?;
        conn.query_drop(format!("USE {}", sql::ident(&table.0))).await?;
        conn.query_drop(statement).await?;
        let p = Progress {
            state: "copying".into(),
            key_kind: key_kind.to_owned(),
            last_key: None,
            rows_copied: 0,
            rows_estimated,
            chunks: 0,
        };
        checkpoint::save_copy_state(conn, &name, table, &p, boundary).await?;
        self.verified.remove(table);
        info!(consumer = %name, schema = %table.0, table = %table.1, boundary_offset = boundary,
              "table re-created from the primary's definition; copying it");
        self.set_progress(table, p);
        Ok(())
    }

    /// Marks a table for a re-copy: its changes are skipped until it is re-created from the primary's
    /// definition and copied again. Also lifts a quarantine.
    pub async fn resync_table(&mut self, schema: &str, table: &str) -> Result<String, String> {
        let key = (schema.to_owned(), table.to_owned());
        let current = self.progress(&key);
        if current.state == "pending" || current.state == "copying" {
            return Ok(format!("{schema}.{table} is already being copied"));
        }
        let name = self.config.name.clone();
        let p = Progress { state: "pending".into(), ..Progress::default() };
        let result: Result<(), mysql_async::Error> = async {
            let conn = self.conn().await?;
            let mut tx = conn.start_transaction(TxOpts::default()).await?;
            checkpoint::save_copy_state(&mut tx, &name, &key, &p, 0).await?;
            checkpoint::unquarantine(&mut tx, &name, schema, table).await?;
            tx.commit().await
        }
        .await;
        if let Err(e) = result {
            if needs_reconnect(&e) {
                self.conn = None;
            }
            return Err(format!("cannot mark {schema}.{table} for a re-copy: {e}"));
        }
        self.quarantined.remove(&key);
        self.shared.quarantined.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        self.failures.remove(&key);
        self.metrics.quarantined(self.quarantined.len());
        self.set_progress(&key, p);
        self.shared.enqueue(key);
        info!(consumer = %name, schema, table, "table marked for a re-copy");
        Ok(format!("{schema}.{table} will be re-created from the primary's definition and copied again"))
    }
}

/// Replies to a request whose item could not run.
pub fn reply_stale(item: CopyItem, why: &str) {
    match item {
        CopyItem::Create { done, .. } => {
            let _ = done.send(Err(why.to_owned()));
        }
        CopyItem::Chunk { done, .. } => {
            let _ = done.send(Err(why.to_owned()));
        }
        CopyItem::Gone { .. } => {}
    }
}

/// A chunk written by its task, back to the apply loop.
pub struct ChunkDone {
    pub id: u64,
    key: TableKey,
    boundary: u64,
    result: Result<(Progress, ChunkOutcome), ChunkFailure>,
    done: tokio::sync::oneshot::Sender<Result<ChunkOutcome, String>>,
}

/// Writes one chunk and its table's progress in one transaction on a connection of its own. The transaction
/// first takes a shared lock on the checkpoint row and checks it still equals the boundary: the apply loop
/// cannot move it meanwhile, and a restarted applier's exclusive lock waits for a dead predecessor's chunks.
#[allow(clippy::too_many_arguments)]
async fn write_chunk(
    pool: &mysql_async::Pool,
    name: &str,
    boundary: u64,
    shape: &TableChange,
    key_kind: &str,
    limit: u32,
    mut parts: mpsc::Receiver<Result<TableChange, String>>,
    before: Progress,
) -> Result<(Progress, ChunkOutcome), ChunkFailure> {
    let key = (shape.schema.clone(), shape.table.clone());
    let one_read = key_kind == "none" || shape.primary_key.is_empty();
    let mut conn = pool.get_conn().await?;
    let mut tx = conn.start_transaction(TxOpts::default()).await?;
    let at: Option<u64> = tx
        .exec_first("SELECT applied_offset FROM replica_meta.checkpoint WHERE consumer = ? LOCK IN SHARE MODE", (name,))
        .await?;
    if at != Some(boundary) {
        return Err(ChunkFailure::Retry(format!(
            "the checkpoint is at {at:?}, not at the chunk's boundary {boundary}"
        )));
    }
    let mut rows = 0u64;
    let mut last: Option<Vec<Value>> = None;
    loop {
        let part = match tokio::time::timeout(PART_WAIT, parts.recv()).await {
            Err(_) => return Err(ChunkFailure::Retry(format!("the reader sent no rows for {PART_WAIT:?}"))),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(ChunkFailure::Retry(e)),
            Ok(Some(Ok(part))) => part,
        };
        let images: Vec<&Vec<Value>> = part
            .rows
            .iter()
            .filter_map(|r| match r {
                RowChange::Insert { after } => Some(after),
                _ => None,
            })
            .collect();
        let mut done = 0;
        while done < images.len() {
            let n = sql::copy_chunk(images.len() - done, shape.columns.len());
            // REPLACE: a row already written by a record since the copy began equals this one (see copy.rs).
            let stmt = if one_read { sql::insert(shape, n) } else { sql::replace(shape, n) };
            let params: Vec<_> = images[done..done + n].iter().flat_map(|r| r.iter().map(sql::to_mysql)).collect();
            if let Err(e) = tx.exec_drop(&stmt, params).await {
                return Err(match ChunkFailure::from(e) {
                    ChunkFailure::Permanent { reason, .. } => ChunkFailure::Permanent { statement: stmt, reason },
                    retry => retry,
                });
            }
            done += n;
        }
        rows += images.len() as u64;
        if let Some(row) = images.last() {
            last = Some(shape.primary_key.iter().map(|&i| row[i as usize].clone()).collect());
        }
    }
    let end = one_read || rows < u64::from(limit);
    let p = Progress {
        state: if end { "done" } else { "copying" }.into(),
        key_kind: key_kind.to_owned(),
        last_key: last.clone().or(before.last_key),
        rows_copied: before.rows_copied + rows,
        rows_estimated: before.rows_estimated,
        chunks: before.chunks + 1,
    };
    checkpoint::save_copy_state(&mut tx, name, &key, &p, boundary).await?;
    tx.commit().await?;
    Ok((p, ChunkOutcome { last_key: last, rows, end }))
}
