//! The secondary's side of a verification: its columns selected as the primary's are, checksums of key ranges,
//! rows matched by key with the primary's, and the repair of those that differ.

use std::collections::HashMap;

use common::chunk::{self, Range, RowSum, SelectColumn};
use common::event::{RowChange, TableChange, Value};
use mysql_async::prelude::Queryable;
use mysql_async::Value as My;

use crate::conflict::text;
use crate::error::{statement, ApplyError};
use crate::sql;
use crate::verify::board::Difference;

/// The primary's columns as the secondary selects them: by name, UUID and INET types by their stored bytes,
/// every version of a system-versioned table.
/// Err with what is wrong when the secondary lacks one of them (columns only the secondary has are not compared).
pub async fn columns(
    conn: &mut impl Queryable,
    shape: &TableChange,
) -> Result<Result<Vec<SelectColumn>, String>, ApplyError> {
    let (found, period) = common::mariadb::columns_with_period(conn, &shape.schema, &shape.table)
        .await
        .map_err(crate::error::meta("reading the secondary's columns to verify"))?;
    let is_period = |name: &str| period.as_ref().is_some_and(|(s, e)| name == s || name == e);
    if found.is_empty() {
        return Ok(Err(format!("table {}.{} does not exist on the secondary", shape.schema, shape.table)));
    }
    let mut out = Vec::with_capacity(shape.columns.len());
    for c in &shape.columns {
        let Some(mine) = found.iter().find(|f| f.name == c.name && (!f.generated || is_period(&f.name))) else {
            return Ok(Err(format!("column {} is missing on the secondary", c.name)));
        };
        out.push(SelectColumn {
            column: c.clone(),
            as_binary: SelectColumn::is_stored_as_bytes(&mine.data_type),
            period: is_period(&mine.name),
        });
    }
    Ok(Ok(out))
}

fn select(shape: &TableChange, columns: &[SelectColumn], range: Range<'_>) -> (String, Vec<My>) {
    chunk::select(&shape.schema, &shape.table, columns, &shape.primary_key, range)
}

/// The checksum of the secondary's rows in `range`.
pub async fn range_sum(
    conn: &mut impl Queryable,
    shape: &TableChange,
    columns: &[SelectColumn],
    range: Range<'_>,
) -> Result<RowSum, ApplyError> {
    let (stmt, params) = select(shape, columns, range);
    let table = (shape.schema.clone(), shape.table.clone());
    let mut result = conn.exec_iter(&stmt, params).await.map_err(statement(0, Some(&table), &stmt))?;
    let mut sum = RowSum::default();
    let mut buf = Vec::new();
    while let Some(row) = result.next().await.map_err(statement(0, Some(&table), &stmt))? {
        sum.add(chunk::row_hash(&row.unwrap(), &mut buf));
    }
    Ok(sum)
}

/// One row that differs, by key.
#[derive(Debug, Clone, PartialEq)]
pub struct RowDiff {
    pub key: Vec<Value>,
    pub primary: Option<Vec<Value>>,
    pub secondary: Option<Vec<Value>>,
}

impl RowDiff {
    pub fn kind(&self) -> &'static str {
        match (&self.primary, &self.secondary) {
            (Some(_), None) => "missing",
            (None, Some(_)) => "extra",
            _ => "differs",
        }
    }

    pub fn difference(&self) -> Difference {
        let show = |row: &Option<Vec<Value>>| row.as_deref().map(text).unwrap_or_default();
        Difference {
            key: text(&self.key),
            kind: self.kind(),
            primary: show(&self.primary),
            secondary: show(&self.secondary),
        }
    }
}

/// The primary's rows of a range (with their row hashes) matched by key with the secondary's rows of the same
/// range: the rows missing on the secondary, only on the secondary, or different.
pub async fn diff(
    conn: &mut impl Queryable,
    shape: &TableChange,
    columns: &[SelectColumn],
    range: Range<'_>,
    primary: Vec<(Vec<Value>, u128)>,
) -> Result<Vec<RowDiff>, ApplyError> {
    let key_of = |row: &[Value]| -> Vec<Value> { shape.primary_key.iter().map(|&k| row[k as usize].clone()).collect() };
    // Keys matched by their SQL text: byte-exact, so 'a' and 'A' are different keys here.
    let mut theirs: HashMap<String, (Vec<Value>, u128)> =
        primary.into_iter().map(|(row, hash)| (text(&key_of(&row)), (row, hash))).collect();
    let (stmt, params) = select(shape, columns, range);
    let table = (shape.schema.clone(), shape.table.clone());
    let rows: Vec<mysql_async::Row> = conn.exec(&stmt, params).await.map_err(statement(0, Some(&table), &stmt))?;
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for row in rows {
        let raw = row.unwrap();
        let hash = chunk::row_hash(&raw, &mut buf);
        let mine: Vec<Value> = raw
            .into_iter()
            .zip(columns)
            .map(|(v, c)| chunk::value(v, &c.column))
            .collect::<Result<_, _>>()
            .map_err(|reason| ApplyError::VerifyMissed { table: table.clone(), why: reason })?;
        let key = key_of(&mine);
        match theirs.remove(&text(&key)) {
            Some((_, h)) if h == hash => {}
            Some((p, _)) => out.push(RowDiff { key, primary: Some(p), secondary: Some(mine) }),
            None => out.push(RowDiff { key, primary: None, secondary: Some(mine) }),
        }
    }
    for (_, (row, _)) in theirs {
        out.push(RowDiff { key: key_of(&row), primary: Some(row), secondary: None });
    }
    Ok(out)
}

/// Makes the secondary's rows of `diffs` equal to the primary's, in the open transaction: deletes the rows the
/// primary does not have or has otherwise (by key), then writes the primary's rows. Returns the rows changed.
pub async fn repair(conn: &mut impl Queryable, shape: &TableChange, diffs: &[RowDiff]) -> Result<u64, ApplyError> {
    let table = (shape.schema.clone(), shape.table.clone());
    let gone: Vec<&RowDiff> = diffs.iter().filter(|d| d.secondary.is_some()).collect();
    for batch in gone.chunks(500) {
        let stmt = sql::delete_keys(shape, batch.len());
        let params: Vec<My> = batch.iter().flat_map(|d| d.key.iter().map(sql::to_mysql)).collect();
        conn.exec_drop(&stmt, params).await.map_err(statement(0, Some(&table), &stmt))?;
    }
    let rows: Vec<&Vec<Value>> = diffs.iter().filter_map(|d| d.primary.as_ref()).collect();
    for batch in rows.chunks(100) {
        let stmt = sql::replace(shape, batch.len());
        let stmt = sql::relaxed_if(sql::needs_relaxed(&shape.columns, batch.iter().map(|r| r.as_slice())), stmt);
        let params: Vec<My> = batch.iter().flat_map(|r| r.iter().map(sql::to_mysql)).collect();
        conn.exec_drop(&stmt, params).await.map_err(statement(0, Some(&table), &stmt))?;
    }
    Ok(diffs.len() as u64)
}

/// The primary's rows of a narrowing response with their hashes.
pub fn primary_rows(rows: Vec<RowChange>, hashes: &[Vec<u8>]) -> Vec<(Vec<Value>, u128)> {
    rows.into_iter()
        .zip(hashes)
        .filter_map(|(r, h)| match r {
            RowChange::Insert { after } => Some((after, u128::from_le_bytes(h.as_slice().try_into().ok()?))),
            _ => None,
        })
        .collect()
}
