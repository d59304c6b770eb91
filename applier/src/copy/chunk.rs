//! Writing one chunk of a copy on a connection of its own, concurrently with other chunks at the same
//! boundary, while the apply loop waits at that boundary.

use std::time::Duration;

use common::event::{RowChange, TableChange, Value};
use mysql_async::prelude::Queryable;
use mysql_async::TxOpts;
use tokio::sync::{mpsc, oneshot};

use crate::checkpoint;
use crate::copy::state::{ChunkOutcome, CopyState, KeyKind, Progress};
use crate::error::{meta, statement, ApplyError};
use crate::sql;
use crate::table::TableKey;

/// Longest wait for the next part of a chunk being written.
const PART_WAIT: Duration = Duration::from_secs(60);

/// A chunk written by its task, back to the apply loop.
#[derive(Debug)]
pub struct ChunkDone {
    pub id: u64,
    pub key: TableKey,
    pub boundary: u64,
    pub result: Result<(Progress, ChunkOutcome), ApplyError>,
    pub done: oneshot::Sender<Result<ChunkOutcome, ApplyError>>,
}

/// One chunk to write.
pub struct Chunk {
    pub boundary: u64,
    pub shape: TableChange,
    pub key_kind: KeyKind,
    pub limit: u32,
    pub parts: mpsc::Receiver<Result<TableChange, ApplyError>>,
    /// The table's progress before this chunk.
    pub before: Progress,
}

/// Writes one chunk and its table's progress in one transaction on a connection of its own. The transaction
/// first takes a shared lock on the checkpoint row and checks it still equals the boundary: the apply loop
/// cannot move it meanwhile, and a restarted applier's exclusive lock waits for a dead predecessor's chunks.
pub async fn write(
    pool: &mysql_async::Pool,
    consumer: &str,
    chunk: Chunk,
) -> Result<(Progress, ChunkOutcome), ApplyError> {
    let Chunk { boundary, shape, key_kind, limit, mut parts, before } = chunk;
    let key = (shape.schema.clone(), shape.table.clone());
    let one_read = key_kind == KeyKind::None || shape.primary_key.is_empty();
    let mut conn = pool.get_conn().await.map_err(meta("connecting to write a chunk"))?;
    let mut tx = conn.start_transaction(TxOpts::default()).await.map_err(meta("starting a chunk"))?;
    let at: Option<u64> = tx
        .exec_first(
            "SELECT applied_offset FROM replica_meta.checkpoint WHERE consumer = ? LOCK IN SHARE MODE",
            (consumer,),
        )
        .await
        .map_err(meta("locking the checkpoint for a chunk"))?;
    if at != Some(boundary) {
        let why = format!("the checkpoint is at {at:?}, not at the chunk's boundary {boundary}");
        return Err(ApplyError::StaleChunk { table: key, why });
    }
    // A system-versioned table's chunk holds every version with its period columns, written as they are.
    let history = one_read
        && common::mariadb::system_period(&mut tx, &key.0, &key.1)
            .await
            .map_err(meta("reading whether the table is system-versioned"))?
            .is_some();
    if history {
        tx.query_drop("SET system_versioning_insert_history = 1")
            .await
            .map_err(meta("allowing history rows to be written"))?;
    }
    let mut rows = 0u64;
    let mut last: Option<Vec<Value>> = None;
    loop {
        let part = match tokio::time::timeout(PART_WAIT, parts.recv()).await {
            Err(_) => return Err(ApplyError::ChunkStalled { table: key, waited: PART_WAIT }),
            Ok(None) => break,
            Ok(Some(part)) => part.map_err(|e| ApplyError::ChunkFetch { table: key.clone(), source: Box::new(e) })?,
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
            // REPLACE: a row already written by a record since the copy began equals this one (see copy/mod.rs).
            let rows = &images[done..done + n];
            let stmt = if one_read { sql::insert(&shape, n) } else { sql::replace(&shape, n) };
            let stmt = sql::relaxed_if(sql::needs_relaxed(&shape.columns, rows.iter().map(|r| r.as_slice())), stmt);
            let params: Vec<_> = rows.iter().flat_map(|r| r.iter().map(sql::to_mysql)).collect();
            tx.exec_drop(&stmt, params).await.map_err(statement(boundary, Some(&key), &stmt))?;
            done += n;
        }
        rows += images.len() as u64;
        if let Some(row) = images.last() {
            last = Some(shape.primary_key.iter().map(|&i| row[i as usize].clone()).collect());
        }
    }
    let end = one_read || rows < u64::from(limit);
    let p = Progress {
        state: if end { CopyState::Done } else { CopyState::Copying },
        key_kind,
        last_key: last.clone().or(before.last_key),
        rows_copied: before.rows_copied + rows,
        rows_estimated: before.rows_estimated,
        chunks: before.chunks + 1,
    };
    checkpoint::save_copy_state(&mut tx, consumer, &key, &p, boundary).await?;
    if history {
        // The connection goes back to the pool.
        tx.query_drop("SET system_versioning_insert_history = 0")
            .await
            .map_err(meta("allowing history rows to be written"))?;
    }
    tx.commit().await.map_err(meta("committing a chunk"))?;
    Ok((p, ChunkOutcome { last_key: last, rows, end }))
}
