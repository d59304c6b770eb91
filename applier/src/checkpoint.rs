//! The applier's state on the secondary itself (schema `replica_meta`): the checkpoint, written in the same
//! transaction as the data it covers, and quarantined tables.

use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use crate::copy::state::{CopyState, KeyKind, Progress};
use crate::error::{meta, ApplyError};
use crate::table::TableKey;

pub const SCHEMA_SQL: &str = "CREATE DATABASE IF NOT EXISTS replica_meta;
CREATE TABLE IF NOT EXISTS replica_meta.checkpoint (
  consumer VARCHAR(128) NOT NULL PRIMARY KEY,
  applied_offset BIGINT UNSIGNED NOT NULL,
  gtid VARCHAR(1024) NOT NULL DEFAULT '' COMMENT 'GTID state applied: the last GTID per domain',
  source_file VARCHAR(512) NOT NULL DEFAULT '',
  source_position BIGINT UNSIGNED NOT NULL DEFAULT 0,
  ddl_pending BIGINT UNSIGNED NULL COMMENT 'offset of a DDL that may have run without its checkpoint',
  updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
  journal_id VARCHAR(64) NOT NULL DEFAULT '' COMMENT 'the reader journal applied_offset is in'
) ENGINE=InnoDB;
ALTER TABLE replica_meta.checkpoint ADD COLUMN IF NOT EXISTS
  journal_id VARCHAR(64) NOT NULL DEFAULT '' COMMENT 'the reader journal applied_offset is in';
CREATE TABLE IF NOT EXISTS replica_meta.applied (
  consumer VARCHAR(128) NOT NULL,
  first_offset BIGINT UNSIGNED NOT NULL,
  last_offset BIGINT UNSIGNED NOT NULL,
  offsets MEDIUMTEXT NOT NULL COMMENT 'journal offsets a parallel worker committed in one transaction: 11-14,17',
  PRIMARY KEY (consumer, first_offset)
) ENGINE=InnoDB;
CREATE TABLE IF NOT EXISTS replica_meta.quarantine (
  consumer VARCHAR(128) NOT NULL,
  schema_name VARCHAR(64) NOT NULL,
  table_name VARCHAR(64) NOT NULL,
  since_offset BIGINT UNSIGNED NOT NULL,
  error TEXT NOT NULL,
  quarantined_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  PRIMARY KEY (consumer, schema_name, table_name)
) ENGINE=InnoDB;
CREATE TABLE IF NOT EXISTS replica_meta.copy_state (
  consumer VARCHAR(128) NOT NULL,
  schema_name VARCHAR(64) NOT NULL,
  table_name VARCHAR(64) NOT NULL,
  state VARCHAR(16) NOT NULL COMMENT 'pending, copying, done or gone',
  key_kind VARCHAR(16) NOT NULL DEFAULT '' COMMENT 'primary, unique or none',
  last_key LONGTEXT NULL COMMENT 'JSON key of the last row copied; NULL before the first chunk',
  rows_copied BIGINT UNSIGNED NOT NULL DEFAULT 0,
  rows_estimated BIGINT UNSIGNED NOT NULL DEFAULT 0,
  chunks BIGINT UNSIGNED NOT NULL DEFAULT 0,
  boundary_offset BIGINT UNSIGNED NOT NULL DEFAULT 0 COMMENT 'journal offset the last chunk reflects',
  updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
  PRIMARY KEY (consumer, schema_name, table_name)
) ENGINE=InnoDB;
CREATE TABLE IF NOT EXISTS replica_meta.conflicts (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  consumer VARCHAR(128) NOT NULL,
  journal_offset BIGINT UNSIGNED NOT NULL,
  schema_name VARCHAR(64) NOT NULL,
  table_name VARCHAR(64) NOT NULL,
  row_key TEXT NOT NULL COMMENT 'primary key values, or every value without a primary key, as SQL literals',
  kind VARCHAR(16) NOT NULL COMMENT 'exists, missing or differs',
  primary_row LONGTEXT NOT NULL COMMENT 'the primary''s before image (missing, differs) or inserted row (exists)',
  secondary_row LONGTEXT NULL COMMENT 'the secondary''s row, when it had one',
  action VARCHAR(16) NOT NULL COMMENT 'overwritten or kept',
  recorded_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  KEY (consumer, journal_offset)
) ENGINE=InnoDB;
CREATE TABLE IF NOT EXISTS replica_meta.verify (
  consumer VARCHAR(128) NOT NULL,
  schema_name VARCHAR(64) NOT NULL,
  table_name VARCHAR(64) NOT NULL,
  state VARCHAR(16) NOT NULL COMMENT 'pending, verifying, equal, differs, repaired, skipped, failed or stopped',
  repair TINYINT NOT NULL DEFAULT 0,
  key_kind VARCHAR(16) NOT NULL DEFAULT '',
  last_key LONGTEXT NULL COMMENT 'JSON key of the last row compared; NULL before the first chunk',
  chunks_compared BIGINT UNSIGNED NOT NULL DEFAULT 0,
  rows_compared BIGINT UNSIGNED NOT NULL DEFAULT 0,
  chunks_differing BIGINT UNSIGNED NOT NULL DEFAULT 0,
  rows_differing BIGINT UNSIGNED NOT NULL DEFAULT 0,
  rows_repaired BIGINT UNSIGNED NOT NULL DEFAULT 0,
  message TEXT NULL,
  updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
  PRIMARY KEY (consumer, schema_name, table_name)
) ENGINE=InnoDB";

/// This secondary's checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Checkpoint {
    pub applied_offset: u64,
    pub ddl_pending: Option<u64>,
    /// The GTID state applied, as text (empty after an initial copy until a transaction is applied).
    pub gtid: String,
    /// The reader journal `applied_offset` is in (empty until the applier first subscribes).
    pub journal_id: String,
}

pub async fn ensure_schema(conn: &mut Conn) -> Result<(), ApplyError> {
    conn.query_drop(SCHEMA_SQL).await.map_err(meta("creating replica_meta"))
}

/// Reads the checkpoint with a locking read, which waits until any chunk a killed predecessor was still
/// writing (they hold a shared lock on the row) has committed or rolled back.
pub async fn load(conn: &mut Conn, consumer: &str) -> Result<Option<Checkpoint>, ApplyError> {
    let mut tx =
        conn.start_transaction(mysql_async::TxOpts::default()).await.map_err(meta("reading the checkpoint"))?;
    let row: Option<(u64, Option<u64>, String, String)> = tx
        .exec_first(
            "SELECT applied_offset, ddl_pending, gtid, journal_id FROM replica_meta.checkpoint WHERE consumer = ? \
             FOR UPDATE",
            (consumer,),
        )
        .await
        .map_err(meta("reading the checkpoint"))?;
    tx.commit().await.map_err(meta("reading the checkpoint"))?;
    Ok(row.map(|(applied_offset, ddl_pending, gtid, journal_id)| Checkpoint {
        applied_offset,
        ddl_pending,
        gtid,
        journal_id,
    }))
}

/// Records that everything up to `offset` is applied; part of the caller's transaction.
pub async fn save(
    conn: &mut impl Queryable,
    consumer: &str,
    offset: u64,
    gtid: &str,
    file: &str,
    position: u64,
) -> Result<(), ApplyError> {
    conn.exec_drop(upsert("?, ?, ?, ?, ?"), (consumer, offset, gtid, file, position))
        .await
        .map_err(meta("saving the checkpoint"))
}

/// The statement that writes a checkpoint row with `values` (consumer, offset, GTID state, file, position).
fn upsert(values: &str) -> String {
    format!(
        "INSERT INTO replica_meta.checkpoint (consumer, applied_offset, gtid, source_file, source_position, ddl_pending)
         VALUES ({values}, NULL)
         ON DUPLICATE KEY UPDATE applied_offset = VALUES(applied_offset), gtid = VALUES(gtid),
           source_file = VALUES(source_file), source_position = VALUES(source_position), ddl_pending = NULL"
    )
}

/// [`save`] and `COMMIT` in one round trip (one text query of two statements, values as escaped literals): the
/// server stops at the first statement that fails, so the transaction commits only with its checkpoint.
pub async fn save_and_commit(
    conn: &mut impl Queryable,
    consumer: &str,
    offset: u64,
    gtid: &str,
    file: &str,
    position: u64,
) -> Result<(), ApplyError> {
    use mysql_async::Value as My;
    // The applier's sessions never set NO_BACKSLASH_ESCAPES (see crate::sql::STRICT_MODE).
    let text = |s: &str| My::from(s).as_sql(false);
    let values = format!("{}, {offset}, {}, {}, {position}", text(consumer), text(gtid), text(file));
    let sql = format!("{};\nCOMMIT", upsert(&values));
    conn.query_drop(sql).await.map_err(meta("saving the checkpoint and committing"))
}

/// Records, in a parallel worker's transaction, the journal offsets it applies, and commits (one round trip,
/// as [`save_and_commit`]): the offsets are committed exactly when their changes are (see [`crate::parallel`]).
pub async fn record_applied_and_commit(
    conn: &mut impl Queryable,
    consumer: &str,
    offsets: &[u64],
) -> Result<(), ApplyError> {
    use mysql_async::Value as My;
    let (Some(first), Some(last)) = (offsets.first(), offsets.last()) else { return Ok(()) };
    let sql = format!(
        "INSERT INTO replica_meta.applied (consumer, first_offset, last_offset, offsets) VALUES ({}, {first}, {last}, '{}');\nCOMMIT",
        My::from(consumer).as_sql(false),
        ranges(offsets)
    );
    conn.query_drop(sql).await.map_err(meta("recording the offsets applied and committing"))
}

/// Offsets committed by parallel workers above the checkpoint, as `(first offset, offsets)` per worker
/// transaction.
pub async fn applied_rows(conn: &mut Conn, consumer: &str) -> Result<Vec<(u64, Vec<u64>)>, ApplyError> {
    let rows: Vec<(u64, String)> = conn
        .exec(
            "SELECT first_offset, offsets FROM replica_meta.applied WHERE consumer = ? ORDER BY first_offset",
            (consumer,),
        )
        .await
        .map_err(meta("reading the offsets applied in parallel"))?;
    rows.into_iter()
        .map(|(first, text)| {
            parse_ranges(&text).map(|offsets| (first, offsets)).ok_or_else(|| ApplyError::State {
                what: format!("replica_meta.applied offsets of {consumer} from {first}"),
                reason: format!("unreadable offset list {text:?}"),
            })
        })
        .collect()
}

/// Moves the checkpoint to `offset` (with the source position there, when known) and forgets the worker
/// transactions (by first offset) it now covers, in one transaction.
pub async fn advance(
    conn: &mut Conn,
    consumer: &str,
    offset: u64,
    gtid: &str,
    source: Option<(&str, u64)>,
    covered: &[u64],
) -> Result<(), ApplyError> {
    use mysql_async::Value as My;
    let text = |s: &str| My::from(s).as_sql(false);
    let mut sql = String::from("START TRANSACTION;\n");
    match source {
        Some((file, position)) => {
            sql.push_str(&upsert(&format!("{}, {offset}, {}, {}, {position}", text(consumer), text(gtid), text(file))))
        }
        None => sql.push_str(&format!(
            "UPDATE replica_meta.checkpoint SET applied_offset = {offset}, gtid = {} WHERE consumer = {}",
            text(gtid),
            text(consumer)
        )),
    }
    for firsts in covered.chunks(1000) {
        let list: Vec<String> = firsts.iter().map(u64::to_string).collect();
        sql.push_str(&format!(
            ";\nDELETE FROM replica_meta.applied WHERE consumer = {} AND first_offset IN ({})",
            text(consumer),
            list.join(",")
        ));
    }
    sql.push_str(";\nCOMMIT");
    conn.query_drop(sql).await.map_err(meta("moving the checkpoint over offsets applied in parallel"))
}

/// Forgets every offset recorded by parallel workers (a copy starts over, so they mean nothing now).
pub async fn forget_applied(conn: &mut impl Queryable, consumer: &str) -> Result<(), ApplyError> {
    conn.exec_drop("DELETE FROM replica_meta.applied WHERE consumer = ?", (consumer,))
        .await
        .map_err(meta("forgetting the offsets applied in parallel"))
}

/// Ascending offsets as ranges: `11-14,17`.
pub fn ranges(offsets: &[u64]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < offsets.len() {
        let start = offsets[i];
        let mut end = start;
        while i + 1 < offsets.len() && offsets[i + 1] == end + 1 {
            end += 1;
            i += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(&start.to_string());
        if end > start {
            out.push('-');
            out.push_str(&end.to_string());
        }
        i += 1;
    }
    out
}

/// The offsets of [`ranges`]' text; None if it is not such text.
pub fn parse_ranges(text: &str) -> Option<Vec<u64>> {
    let mut out: Vec<u64> = Vec::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (a, b): (u64, u64) = match part.split_once('-') {
            Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
            None => {
                let a = part.parse().ok()?;
                (a, a)
            }
        };
        if b < a || b - a > 100_000_000 {
            return None;
        }
        out.extend(a..=b);
    }
    Some(out)
}

/// Names the journal the checkpoint's offset is in (the first journal an applier subscribes to).
pub async fn set_journal(conn: &mut impl Queryable, consumer: &str, journal_id: &str) -> Result<(), ApplyError> {
    conn.exec_drop("UPDATE replica_meta.checkpoint SET journal_id = ? WHERE consumer = ?", (journal_id, consumer))
        .await
        .map_err(meta("naming the checkpoint's journal"))
}

/// Moves the checkpoint into another journal: the same transactions applied, at that journal's `offset`.
pub async fn relocate(conn: &mut Conn, consumer: &str, journal_id: &str, offset: u64) -> Result<(), ApplyError> {
    conn.exec_drop(
        "UPDATE replica_meta.checkpoint SET journal_id = ?, applied_offset = ?, ddl_pending = NULL WHERE consumer = ?",
        (journal_id, offset, consumer),
    )
    .await
    .map_err(meta("moving the checkpoint to the new journal"))
}

/// Marks a DDL as possibly applied before it runs (DDL commits by itself, so it cannot share a transaction).
pub async fn mark_ddl(conn: &mut Conn, consumer: &str, offset: u64) -> Result<(), ApplyError> {
    conn.exec_drop("UPDATE replica_meta.checkpoint SET ddl_pending = ? WHERE consumer = ?", (offset, consumer))
        .await
        .map_err(meta("marking a DDL"))
}

pub async fn quarantined(conn: &mut Conn, consumer: &str) -> Result<Vec<(String, String, u64, String)>, ApplyError> {
    conn.exec(
        "SELECT schema_name, table_name, since_offset, error FROM replica_meta.quarantine WHERE consumer = ?",
        (consumer,),
    )
    .await
    .map_err(meta("reading quarantined tables"))
}

pub async fn quarantine(
    conn: &mut impl Queryable,
    consumer: &str,
    schema: &str,
    table: &str,
    offset: u64,
    error: &str,
) -> Result<(), ApplyError> {
    conn.exec_drop(
        "INSERT INTO replica_meta.quarantine (consumer, schema_name, table_name, since_offset, error) VALUES (?, ?, ?, ?, ?)
         ON DUPLICATE KEY UPDATE since_offset = VALUES(since_offset), error = VALUES(error)",
        (consumer, schema, table, offset, error),
    )
    .await
    .map_err(meta("quarantining a table"))
}

/// Every table's copy progress of `consumer`, as kept in `replica_meta.copy_state`.
pub async fn copy_states(conn: &mut Conn, consumer: &str) -> Result<Vec<(TableKey, Progress)>, ApplyError> {
    type Row = (String, String, String, String, Option<String>, u64, u64, u64);
    let rows: Vec<Row> = conn
        .exec(
            "SELECT schema_name, table_name, state, key_kind, last_key, rows_copied, rows_estimated, chunks
             FROM replica_meta.copy_state WHERE consumer = ? ORDER BY schema_name, table_name",
            (consumer,),
        )
        .await
        .map_err(meta("reading copy states"))?;
    rows.into_iter()
        .map(|(schema, table, state, key_kind, last_key, rows_copied, rows_estimated, chunks)| {
            let bad = |what: &str, reason: String| ApplyError::State {
                what: format!("replica_meta.copy_state {what} of {schema}.{table}"),
                reason,
            };
            let last_key = match last_key {
                Some(k) => Some(serde_json::from_str(&k).map_err(|e| bad("last_key", e.to_string()))?),
                None => None,
            };
            let state = CopyState::parse(&state).ok_or_else(|| bad("state", format!("unknown state {state:?}")))?;
            let key_kind = KeyKind::parse(&key_kind);
            Ok(((schema, table), Progress { state, key_kind, last_key, rows_copied, rows_estimated, chunks }))
        })
        .collect()
}

/// Writes one table's copy progress; part of the caller's transaction.
pub async fn save_copy_state(
    conn: &mut impl Queryable,
    consumer: &str,
    table: &TableKey,
    p: &Progress,
    boundary: u64,
) -> Result<(), ApplyError> {
    let last_key = match &p.last_key {
        Some(k) => Some(serde_json::to_string(k).map_err(|e| ApplyError::State {
            what: format!("the last key copied of {}.{}", table.0, table.1),
            reason: e.to_string(),
        })?),
        None => None,
    };
    conn.exec_drop(
        "REPLACE INTO replica_meta.copy_state
           (consumer, schema_name, table_name, state, key_kind, last_key, rows_copied, rows_estimated, chunks, boundary_offset)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            consumer,
            &table.0,
            &table.1,
            p.state.as_str(),
            p.key_kind.as_str(),
            last_key,
            p.rows_copied,
            p.rows_estimated,
            p.chunks,
            boundary,
        ),
    )
    .await
    .map_err(meta("saving a copy state"))
}

/// Forgets every copy state, quarantine and the checkpoint of `consumer` (a full re-copy starts).
pub async fn reset(conn: &mut impl Queryable, consumer: &str) -> Result<(), ApplyError> {
    for table in ["copy_state", "quarantine", "checkpoint", "applied"] {
        conn.exec_drop(format!("DELETE FROM replica_meta.{table} WHERE consumer = ?"), (consumer,))
            .await
            .map_err(meta("resetting the applier's state"))?;
    }
    Ok(())
}

pub async fn unquarantine(
    conn: &mut impl Queryable,
    consumer: &str,
    schema: &str,
    table: &str,
) -> Result<(), ApplyError> {
    conn.exec_drop(
        "DELETE FROM replica_meta.quarantine WHERE consumer = ? AND schema_name = ? AND table_name = ?",
        (consumer, schema, table),
    )
    .await
    .map_err(meta("lifting a quarantine"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_lists_are_written_as_ranges_and_read_back() {
        for offsets in [vec![], vec![7], vec![11, 12, 13, 14, 17], vec![1, 3, 5, 6]] {
            let text = ranges(&offsets);
            assert_eq!(parse_ranges(&text), Some(offsets.clone()), "{text}");
        }
        assert_eq!(ranges(&[11, 12, 13, 14, 17]), "11-14,17");
        assert_eq!(parse_ranges("5-3"), None);
        assert_eq!(parse_ranges("x"), None);
    }
}
