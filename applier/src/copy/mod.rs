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

//!
//! # Files
//!
//! - [`state`]: the typed state of a table's copy ([`state::CopyState`], [`state::KeyKind`], [`state::Progress`])
//! - [`board`]: what the workers, the apply loop and the admin service share: progress, the queue of tables,
//!   pause, and the [`board::Floors`]
//! - [`worker`]: workers that fetch definitions and chunks from the reader and hand them to the apply loop
//! - [`place`]: what the apply loop does with them at their boundary (begin, re-create, place, re-copy)
//! - [`chunk`]: writing one chunk on a connection of its own
//! - [`order`]: which tables wait for which: parents before children across foreign keys
//! - [`report`]: progress bars, progress lines and the transfer statistics

pub mod board;
pub mod chunk;
pub mod order;
pub mod place;
pub mod report;
pub mod state;
pub mod worker;

use common::event::{TableChange, Value};
use tokio::sync::{mpsc, oneshot};

use crate::copy::state::{ChunkOutcome, KeyKind};
use crate::error::ApplyError;
use crate::table::TableKey;

/// Work for the apply loop, placed when its checkpoint equals `boundary`.
#[derive(Debug)]
pub enum CopyItem {
    /// (Re-)create a table from the primary's definition, then copy it from the start.
    Create {
        id: u64,
        boundary: u64,
        table: TableKey,
        statement: String,
        key_kind: KeyKind,
        rows_estimated: u64,
        done: oneshot::Sender<Result<(), ApplyError>>,
    },
    /// Rows of one chunk; `parts` streams them (the first part already received is `shape` without rows).
    Chunk {
        id: u64,
        boundary: u64,
        /// The key the chunk starts after; it is written only if the table's copy is still there.
        after_key: Option<Vec<Value>>,
        shape: TableChange,
        key_kind: KeyKind,
        limit: u32,
        parts: mpsc::Receiver<Result<TableChange, ApplyError>>,
        done: oneshot::Sender<Result<ChunkOutcome, ApplyError>>,
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

    /// Tells whoever waits for this item that it came too late and must be fetched again.
    pub fn refuse_stale(self, why: &str) {
        let stale = |table| ApplyError::StaleChunk { table, why: why.to_owned() };
        match self {
            CopyItem::Create { done, table, .. } => {
                let _ = done.send(Err(stale(table)));
            }
            CopyItem::Chunk { done, shape, .. } => {
                let _ = done.send(Err(stale((shape.schema, shape.table))));
            }
            CopyItem::Gone { .. } => {}
        }
    }
}
