//! Conflicts: the secondary's row is not what the primary changed, on a secondary that also takes local writes.
//!
//! `REPLICA_CONFLICTS`: `stop` (the default: drift, the applier stops, as before), `overwrite` (the primary's
//! change wins: the row ends as on the primary) or `keep` (the secondary's row wins: that change is skipped).
//! Kinds: `exists` (the primary inserted a key the secondary has), `missing` (the primary updated or deleted a
//! row the secondary lacks) and `differs` (the secondary's row is not the primary's before image; compared
//! column by column with `<=>`, so strings equal under the column's collation count as equal). Each conflict is
//! written to `replica_meta.conflicts` in the secondary transaction that resolves it, and logged and counted
//! once that transaction commits. Detection runs only when the mode is not `stop`: it costs one lookup query
//! per table per secondary transaction for keyed tables, and row-by-row statements for keyless tables and
//! tables in foreign keys.

use common::event::{TableChange, Value};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};
use tracing::warn;

use crate::error::{meta, statement, ApplyError};
use crate::net::Touched;
use crate::sql;
use crate::table::TableKey;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ConflictMode {
    /// Stop at the first conflict: the secondary has drifted
    #[default]
    Stop,
    /// The primary's change wins: the row ends as on the primary
    Overwrite,
    /// The secondary's row wins: the primary's change to it is skipped
    Keep,
}

impl ConflictMode {
    pub fn action(self) -> &'static str {
        match self {
            ConflictMode::Stop => "stopped",
            ConflictMode::Overwrite => "overwritten",
            ConflictMode::Keep => "kept",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Exists,
    Missing,
    Differs,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Exists => "exists",
            Kind::Missing => "missing",
            Kind::Differs => "differs",
        }
    }
}

/// One conflict, as recorded.
#[derive(Debug, Clone)]
pub struct Conflict {
    pub offset: u64,
    pub table: TableKey,
    /// The row's key values (every column for a table without a primary key).
    pub key: String,
    pub kind: Kind,
    /// The primary's row: its before image (`missing`, `differs`) or the image it inserted (`exists`).
    pub primary: String,
    /// The secondary's row, when it has one.
    pub secondary: Option<String>,
    pub action: &'static str,
}

/// Values as SQL literals: `(1, 'abc', NULL)`.
pub fn text(values: &[Value]) -> String {
    let parts: Vec<String> = values.iter().map(|v| sql::to_mysql(v).as_sql(false)).collect();
    format!("({})", parts.join(", "))
}

fn row_text(row: &Row, from: usize) -> String {
    let parts: Vec<String> =
        (from..row.len()).map(|i| row.as_ref(i).map_or_else(|| "NULL".to_owned(), |v| v.as_sql(false))).collect();
    format!("({})", parts.join(", "))
}

fn columns(c: &TableChange) -> String {
    c.columns.iter().map(|col| sql::ident(&col.name)).collect::<Vec<_>>().join(", ")
}

fn key_match(c: &TableChange) -> String {
    let parts: Vec<String> = c
        .primary_key
        .iter()
        .map(|&i| {
            let col = &c.columns[i as usize];
            format!("{} <=> {}", sql::ident(&col.name), sql::placeholder(col))
        })
        .collect();
    parts.join(" AND ")
}

/// What the secondary holds for each touched key of a keyed table: None when it has no such row, else whether
/// the row equals the primary's before image (false when the primary had no row). One query per chunk of keys:
/// the keys and before images as a derived table of bound values, joined to the table by primary key.
pub async fn look_up(
    tx: &mut Conn,
    shape: &TableChange,
    touched: &[Touched<'_>],
    offset: u64,
) -> Result<Vec<Option<bool>>, ApplyError> {
    let table = (shape.schema.clone(), shape.table.clone());
    let keys: Vec<&common::event::Column> = shape.primary_key.iter().map(|&i| &shape.columns[i as usize]).collect();
    let mut first = vec!["? AS i".to_owned(), "? AS hb".to_owned()];
    first.extend(keys.iter().enumerate().map(|(j, col)| format!("{} AS k{j}", sql::placeholder(col))));
    first.extend(shape.columns.iter().enumerate().map(|(j, col)| format!("{} AS b{j}", sql::placeholder(col))));
    let first = format!("SELECT {}", first.join(", "));
    let mut other = vec!["?", "?"];
    other.extend(keys.iter().map(|col| sql::placeholder(col)));
    other.extend(shape.columns.iter().map(sql::placeholder));
    let other = format!("SELECT {}", other.join(", "));
    let same: Vec<String> =
        shape.columns.iter().enumerate().map(|(j, col)| format!("t.{} <=> k.b{j}", sql::ident(&col.name))).collect();
    let on: Vec<String> =
        keys.iter().enumerate().map(|(j, col)| format!("t.{} = k.k{j}", sql::ident(&col.name))).collect();
    let mut out: Vec<Option<bool>> = vec![None; touched.len()];
    let mut done = 0;
    while done < touched.len() {
        let n = sql::insert_chunk(touched.len() - done, 2 + keys.len() + shape.columns.len());
        let mut params: Vec<mysql_async::Value> = Vec::new();
        for (i, t) in touched[done..done + n].iter().enumerate() {
            params.push(((done + i) as u64).into());
            params.push(u8::from(t.before.is_some()).into());
            params.extend(t.key.iter().map(sql::to_mysql));
            match t.before {
                Some(before) => params.extend(before.iter().map(sql::to_mysql)),
                None => params.extend(shape.columns.iter().map(|_| mysql_async::Value::NULL)),
            }
        }
        let mut branches = vec![first.clone()];
        branches.extend(std::iter::repeat_n(other.clone(), n - 1));
        let stmt = format!(
            "SELECT k.i, (k.hb = 1 AND {}) FROM ({}) AS k JOIN {} AS t ON {}",
            same.join(" AND "),
            branches.join(" UNION ALL "),
            sql::table_name(shape),
            on.join(" AND ")
        );
        let (stmt, params) = crate::long::bind(tx, offset, &table, &stmt, params).await?;
        let rows: Vec<(u64, Option<i64>)> =
            tx.exec(stmt.as_ref(), params).await.map_err(statement(offset, Some(&table), &stmt))?;
        for (i, same) in rows {
            if let Some(slot) = out.get_mut(i as usize) {
                *slot = Some(same == Some(1));
            }
        }
        done += n;
    }
    Ok(out)
}

/// The secondary's row with the primary key of `image`, as text (keyed tables only).
pub async fn secondary_row(
    tx: &mut Conn,
    c: &TableChange,
    image: &[Value],
    offset: u64,
) -> Result<Option<String>, ApplyError> {
    if c.primary_key.is_empty() {
        return Ok(None);
    }
    let key: Vec<Value> = c.primary_key.iter().map(|&i| image[i as usize].clone()).collect();
    secondary_row_by_key(tx, c, &key, offset).await
}

/// The secondary's row with primary key values `key`, as text.
pub async fn secondary_row_by_key(
    tx: &mut Conn,
    c: &TableChange,
    key: &[Value],
    offset: u64,
) -> Result<Option<String>, ApplyError> {
    let stmt = format!("SELECT {} FROM {} WHERE {} LIMIT 1", columns(c), sql::table_name(c), key_match(c));
    let params: Vec<_> = key.iter().map(sql::to_mysql).collect();
    let table = (c.schema.clone(), c.table.clone());
    let (stmt, params) = crate::long::bind(tx, offset, &table, &stmt, params).await?;
    let row: Option<Row> =
        tx.exec_first(stmt.as_ref(), params).await.map_err(statement(offset, Some(&table), &stmt))?;
    Ok(row.map(|r| row_text(&r, 0)))
}

/// The key of `image` as text: its primary key values, or every value without one.
pub fn key_text(c: &TableChange, image: &[Value]) -> String {
    let key: Vec<Value> = sql::key_columns(c).into_iter().map(|i| image[i].clone()).collect();
    text(&key)
}

/// Writes `conflicts` to `replica_meta.conflicts` inside the open transaction.
pub async fn record(tx: &mut Conn, consumer: &str, conflicts: &[Conflict]) -> Result<(), ApplyError> {
    for chunk in conflicts.chunks(100) {
        let one = "(?, ?, ?, ?, ?, ?, ?, ?, ?)";
        let stmt = format!(
            "INSERT INTO replica_meta.conflicts (consumer, journal_offset, schema_name, table_name, row_key, kind, \
             primary_row, secondary_row, action) VALUES {}",
            vec![one; chunk.len()].join(", ")
        );
        let mut params: Vec<mysql_async::Value> = Vec::with_capacity(chunk.len() * 9);
        for c in chunk {
            params.extend([
                consumer.into(),
                c.offset.into(),
                c.table.0.as_str().into(),
                c.table.1.as_str().into(),
                c.key.as_str().into(),
                c.kind.as_str().into(),
                c.primary.as_str().into(),
                c.secondary.as_deref().into(),
                c.action.into(),
            ]);
        }
        tx.exec_drop(&stmt, params).await.map_err(meta("recording conflicts"))?;
    }
    Ok(())
}

/// Logs each committed conflict.
pub fn report(consumer: &str, conflicts: &[Conflict]) {
    for c in conflicts {
        warn!(consumer, offset = c.offset, schema = %c.table.0, table = %c.table.1, key = %c.key, kind = c.kind.as_str(),
              action = c.action, primary = %c.primary, secondary = c.secondary.as_deref().unwrap_or(""),
              "conflict: the secondary's row was not what the primary changed");
    }
}
