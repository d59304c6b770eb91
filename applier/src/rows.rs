//! Row changes executed inside a secondary transaction: net changes of keyed tables as multi-row DELETE and
//! INSERT; keyless tables, and tables in foreign keys, row by row in source order (consecutive inserts in
//! one statement), located by primary key or, without one, by every column. An UPDATE or DELETE that does not find the row the primary
//! changed is drift, except for a table being copied (`lenient`), whose row may not be copied yet.

use common::event::{RowChange, TableChange, Value};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use crate::error::{statement, ApplyError};
use crate::net::NetTable;
use crate::sql;
use crate::table::TableKey;

fn key_of(c: &TableChange) -> TableKey {
    (c.schema.clone(), c.table.clone())
}

/// Applies one keyed table's net changes: every key that existed is deleted, then (for a table whose
/// AUTO_INCREMENT column is `counter`) the highest row inserted and deleted within the group is written and
/// deleted again, then every final image is inserted.
pub async fn apply_net(
    tx: &mut Conn,
    net: &NetTable<'_>,
    lenient: bool,
    counter: Option<usize>,
) -> Result<(), ApplyError> {
    delete_keys(tx, net, &net.deletes(), lenient).await?;
    if let Some((image, key)) = counter.and_then(|c| net.highest_transient(c)) {
        insert_images(tx, net, &[image]).await?;
        delete_keys(tx, net, &[key], lenient).await?;
    }
    insert_images(tx, net, &net.inserts()).await
}

/// Deletes the rows with `keys`, which must all exist unless `lenient`.
async fn delete_keys(tx: &mut Conn, net: &NetTable<'_>, keys: &[&[Value]], lenient: bool) -> Result<(), ApplyError> {
    let (shape, offset, table) = (&net.shape, net.first_offset, key_of(&net.shape));
    let mut done = 0;
    while done < keys.len() {
        let n = sql::insert_chunk(keys.len() - done, shape.primary_key.len());
        let stmt = sql::delete_keys(shape, n);
        let params: Vec<_> = keys[done..done + n].iter().flat_map(|k| k.iter().map(sql::to_mysql)).collect();
        tx.exec_drop(&stmt, params).await.map_err(statement(offset, Some(&table), &stmt))?;
        if tx.affected_rows() != n as u64 && !lenient {
            return Err(ApplyError::Drift {
                offset,
                table: Some(table),
                reason: format!("{} of {n} rows the primary changed were found", tx.affected_rows()),
                statement: stmt,
            });
        }
        done += n;
    }
    Ok(())
}

/// Inserts whole-row `images` in multi-row statements.
async fn insert_images(tx: &mut Conn, net: &NetTable<'_>, images: &[&[Value]]) -> Result<(), ApplyError> {
    let (shape, offset, table) = (&net.shape, net.first_offset, key_of(&net.shape));
    let mut done = 0;
    while done < images.len() {
        let n = sql::insert_chunk(images.len() - done, shape.columns.len());
        let rows = &images[done..done + n];
        let stmt = sql::relaxed_if(sql::needs_relaxed(&shape.columns, rows.iter().copied()), sql::insert(shape, n));
        let params: Vec<_> = rows.iter().flat_map(|r| r.iter().map(sql::to_mysql)).collect();
        tx.exec_drop(&stmt, params).await.map_err(statement(offset, Some(&table), &stmt))?;
        done += n;
    }
    Ok(())
}

/// Row by row in source order, for tables without a primary key or in foreign keys. `lenient` (the table is
/// being copied): a row may be missing, and the after image replaces any row with the same key.
pub async fn apply_in_order(tx: &mut Conn, offset: u64, c: &TableChange, lenient: bool) -> Result<(), ApplyError> {
    let table = key_of(c);
    if lenient {
        for row in &c.rows {
            if let RowChange::Update { before, .. } | RowChange::Delete { before } = row {
                let stmt = sql::delete(c);
                tx.exec_drop(&stmt, sql::key_params(c, before)).await.map_err(statement(
                    offset,
                    Some(&table),
                    &stmt,
                ))?;
            }
            if let RowChange::Insert { after } | RowChange::Update { after, .. } = row {
                let stmt = sql::relaxed_if(sql::needs_relaxed(&c.columns, [after.as_slice()]), sql::replace(c, 1));
                let params: Vec<_> = after.iter().map(sql::to_mysql).collect();
                tx.exec_drop(&stmt, params).await.map_err(statement(offset, Some(&table), &stmt))?;
            }
        }
        return Ok(());
    }
    let mut i = 0;
    while i < c.rows.len() {
        match &c.rows[i] {
            RowChange::Insert { .. } => {
                let run = c.rows[i..].iter().take_while(|r| matches!(r, RowChange::Insert { .. })).count();
                let mut done = 0;
                while done < run {
                    let n = sql::insert_chunk(run - done, c.columns.len());
                    let images: Vec<&[common::event::Value]> = c.rows[i + done..i + done + n]
                        .iter()
                        .filter_map(|row| match row {
                            RowChange::Insert { after } => Some(after.as_slice()),
                            _ => None,
                        })
                        .collect();
                    let stmt =
                        sql::relaxed_if(sql::needs_relaxed(&c.columns, images.iter().copied()), sql::insert(c, n));
                    let params: Vec<_> = images.iter().flat_map(|r| r.iter().map(sql::to_mysql)).collect();
                    tx.exec_drop(&stmt, params).await.map_err(statement(offset, Some(&table), &stmt))?;
                    done += n;
                }
                i += run;
            }
            RowChange::Update { before, after } => {
                let stmt = sql::relaxed_if(sql::needs_relaxed(&c.columns, [after.as_slice()]), sql::update(c));
                let mut params: Vec<_> = after.iter().map(sql::to_mysql).collect();
                params.extend(sql::key_params(c, before));
                tx.exec_drop(&stmt, params).await.map_err(statement(offset, Some(&table), &stmt))?;
                expect_one(tx, offset, &table, stmt, "UPDATE")?;
                i += 1;
            }
            RowChange::Delete { before } => {
                let stmt = sql::delete(c);
                tx.exec_drop(&stmt, sql::key_params(c, before)).await.map_err(statement(
                    offset,
                    Some(&table),
                    &stmt,
                ))?;
                expect_one(tx, offset, &table, stmt, "DELETE")?;
                i += 1;
            }
        }
    }
    Ok(())
}

/// An UPDATE or DELETE that finds no row means the secondary has drifted from the primary.
fn expect_one(tx: &Conn, offset: u64, table: &TableKey, stmt: String, what: &str) -> Result<(), ApplyError> {
    if tx.affected_rows() == 1 {
        return Ok(());
    }
    Err(ApplyError::Drift {
        offset,
        table: Some(table.clone()),
        statement: stmt,
        reason: format!("{what} found {} rows where the primary changed one", tx.affected_rows()),
    })
}
