//! Row changes executed inside a secondary transaction: net changes of keyed tables as multi-row DELETE and
//! INSERT; keyless tables, and tables in foreign keys, row by row in source order (consecutive inserts in
//! one statement), located by primary key or, without one, by every column. An UPDATE or DELETE that does not find the row the primary
//! changed is drift, except for a table being copied (`lenient`), whose row may not be copied yet.

use common::event::{RowChange, TableChange, Value};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use crate::conflict::{self, Conflict, ConflictMode, Kind};
use crate::error::{statement, ApplyError};
use crate::long;
use crate::net::{InPlace, NetTable};
use crate::sql;
use crate::table::TableKey;

fn key_of(c: &TableChange) -> TableKey {
    (c.schema.clone(), c.table.clone())
}

/// Applies one keyed table's net changes: every key that existed is deleted, then (for a table whose
/// AUTO_INCREMENT column is `counter`) the highest row inserted and deleted within the group is written and
/// deleted again, then every final image is inserted. With `in_place` (the table's only unique key is its
/// primary key) keys that existed and still exist are updated in place instead of deleted and inserted.
pub async fn apply_net(
    tx: &mut Conn,
    net: &NetTable<'_>,
    lenient: bool,
    counter: Option<usize>,
    in_place: bool,
) -> Result<(), ApplyError> {
    let changes = if in_place && !lenient && net.shape.columns.len() > net.shape.primary_key.len() {
        net.in_place()
    } else {
        InPlace { deletes: net.deletes(), updates: Vec::new(), inserts: net.inserts() }
    };
    delete_keys(tx, net, &changes.deletes, lenient).await?;
    update_rows(tx, net, &changes.updates).await?;
    if let Some((image, key)) = counter.and_then(|c| net.highest_transient(c)) {
        insert_images(tx, net, &[image]).await?;
        delete_keys(tx, net, &[key], lenient).await?;
    }
    insert_images(tx, net, &changes.inserts).await
}

/// Deletes the rows with `keys`, which must all exist unless `lenient`.
async fn delete_keys(tx: &mut Conn, net: &NetTable<'_>, keys: &[&[Value]], lenient: bool) -> Result<(), ApplyError> {
    let (shape, offset, table) = (&net.shape, net.first_offset, key_of(&net.shape));
    let mut done = 0;
    while done < keys.len() {
        let n = sql::insert_chunk(keys.len() - done, shape.primary_key.len());
        let stmt = sql::delete_keys(shape, n);
        let params: Vec<_> = keys[done..done + n].iter().flat_map(|k| k.iter().map(sql::to_mysql)).collect();
        execute(tx, offset, &table, &stmt, params).await?;
        if !lenient {
            expect_found(tx, offset, &table, stmt, n, "changed")?;
        }
        done += n;
    }
    Ok(())
}

/// Updates rows in place to their final images, in multi-row statements; every row must exist.
async fn update_rows(tx: &mut Conn, net: &NetTable<'_>, rows: &[(&[Value], &[Value])]) -> Result<(), ApplyError> {
    let (shape, offset, table) = (&net.shape, net.first_offset, key_of(&net.shape));
    let mut done = 0;
    while done < rows.len() {
        let n = sql::update_chunk(rows.len() - done, shape);
        let chunk = &rows[done..done + n];
        let relax = sql::needs_relaxed(&shape.columns, chunk.iter().map(|(_, image)| *image));
        let stmt = sql::relaxed_if(relax, sql::update_keys(shape, n));
        execute(tx, offset, &table, &stmt, sql::update_params(shape, chunk)).await?;
        // Rows found, not rows changed (the session sets CLIENT_FOUND_ROWS): each must exist.
        expect_found(tx, offset, &table, stmt, n, "updated")?;
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
        execute(tx, offset, &table, &stmt, params).await?;
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
                execute(tx, offset, &table, &stmt, sql::key_params(c, before)).await?;
            }
            if let RowChange::Insert { after } | RowChange::Update { after, .. } = row {
                let stmt = sql::relaxed_if(sql::needs_relaxed(&c.columns, [after.as_slice()]), sql::replace(c, 1));
                let params: Vec<_> = after.iter().map(sql::to_mysql).collect();
                execute(tx, offset, &table, &stmt, params).await?;
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
                    execute(tx, offset, &table, &stmt, params).await?;
                    done += n;
                }
                i += run;
            }
            RowChange::Update { before, after } => {
                let stmt = sql::relaxed_if(sql::needs_relaxed(&c.columns, [after.as_slice()]), sql::update(c));
                let mut params: Vec<_> = after.iter().map(sql::to_mysql).collect();
                params.extend(sql::key_params(c, before));
                execute(tx, offset, &table, &stmt, params).await?;
                expect_one(tx, offset, &table, stmt, "UPDATE")?;
                i += 1;
            }
            RowChange::Delete { before } => {
                let stmt = sql::delete(c);
                execute(tx, offset, &table, &stmt, sql::key_params(c, before)).await?;
                expect_one(tx, offset, &table, stmt, "DELETE")?;
                i += 1;
            }
        }
    }
    Ok(())
}

/// Runs one statement of a row change, naming offset, table and statement in its error.
async fn execute(
    tx: &mut Conn,
    offset: u64,
    table: &TableKey,
    stmt: &str,
    params: Vec<mysql_async::Value>,
) -> Result<(), ApplyError> {
    let (stmt, params) = long::bind(tx, offset, table, stmt, params).await?;
    tx.exec_drop(stmt.as_ref(), params).await.map_err(statement(offset, Some(table), &stmt))
}

/// A multi-row statement that found other than the `n` rows the primary `did` (changed, updated) means the
/// secondary has drifted from the primary.
fn expect_found(tx: &Conn, offset: u64, table: &TableKey, stmt: String, n: usize, did: &str) -> Result<(), ApplyError> {
    if tx.affected_rows() == n as u64 {
        return Ok(());
    }
    Err(ApplyError::Drift {
        offset,
        table: Some(table.clone()),
        statement: stmt,
        reason: format!("{} of {n} rows the primary {did} were found", tx.affected_rows()),
    })
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

/// [`apply_net`] on a secondary that also takes local writes (`mode` overwrite or keep): the touched keys are
/// looked up first, conflicts resolved and appended to `conflicts` (see [`crate::conflict`]).
pub async fn apply_net_resolving(
    tx: &mut Conn,
    net: &NetTable<'_>,
    counter: Option<usize>,
    mode: ConflictMode,
    conflicts: &mut Vec<Conflict>,
) -> Result<(), ApplyError> {
    let touched = net.touched();
    let found = conflict::look_up(tx, &net.shape, &touched, net.first_offset).await?;
    let table = key_of(&net.shape);
    let mut skip = vec![false; touched.len()];
    for (i, (t, f)) in touched.iter().zip(&found).enumerate() {
        let kind = match (t.before, f) {
            (Some(_), None) => Kind::Missing,
            (Some(_), Some(false)) => Kind::Differs,
            (None, Some(_)) => Kind::Exists,
            _ => continue,
        };
        skip[i] = mode == ConflictMode::Keep;
        // The secondary's row, fetched for conflicts only (they are rare; the lookup returns no rows).
        let secondary = match f {
            Some(_) => conflict::secondary_row_by_key(tx, &net.shape, t.key, net.first_offset).await?,
            None => None,
        };
        conflicts.push(Conflict {
            offset: net.first_offset,
            table: table.clone(),
            key: conflict::text(t.key),
            kind,
            primary: t.before.or(t.final_image).map(conflict::text).unwrap_or_default(),
            secondary,
            action: mode.action(),
        });
    }
    let present: Vec<&[Value]> = touched.iter().zip(&found).filter(|(_, f)| f.is_some()).map(|(t, _)| t.key).collect();
    let kept = |i: &usize| !skip[*i];
    let deletes: Vec<&[Value]> = match mode {
        // Whatever the secondary has for a touched key goes; the primary's final rows are written.
        ConflictMode::Overwrite => present.clone(),
        _ => (0..touched.len()).filter(kept).filter(|&i| touched[i].before.is_some()).map(|i| touched[i].key).collect(),
    };
    delete_keys(tx, net, &deletes, false).await?;
    if let Some((image, key)) = counter.and_then(|c| net.highest_transient(c)) {
        let taken = mode == ConflictMode::Keep && present.contains(&key);
        if !taken {
            insert_images(tx, net, &[image]).await?;
            delete_keys(tx, net, &[key], false).await?;
        }
    }
    let inserts: Vec<&[Value]> = (0..touched.len()).filter(kept).filter_map(|i| touched[i].final_image).collect();
    insert_images(tx, net, &inserts).await
}

/// [`apply_in_order`] on a secondary that also takes local writes: each row is located by its whole before
/// image; a row not found is a conflict (`differs` when a row with its primary key exists, else `missing`), as
/// is an insert of a primary key the secondary has (`exists`). Row by row: updates of a row that other rows
/// reference stay updates (never delete and insert).
pub async fn apply_in_order_resolving(
    tx: &mut Conn,
    offset: u64,
    c: &TableChange,
    mode: ConflictMode,
    conflicts: &mut Vec<Conflict>,
) -> Result<(), ApplyError> {
    let table = key_of(c);
    let exact = TableChange { primary_key: Vec::new(), ..c.shape() };
    let keyed = !c.primary_key.is_empty();
    let overwrite = mode == ConflictMode::Overwrite;
    for row in &c.rows {
        let found = |kind, primary: &[Value], secondary: Option<String>| Conflict {
            offset,
            table: table.clone(),
            key: conflict::key_text(c, primary),
            kind,
            primary: conflict::text(primary),
            secondary,
            action: mode.action(),
        };
        match row {
            RowChange::Insert { after } => {
                let existing = conflict::secondary_row(tx, c, after, offset).await?;
                if existing.is_some() {
                    conflicts.push(found(Kind::Exists, after, existing));
                    if overwrite {
                        let stmt = sql::relaxed_if(sql::needs_relaxed(&c.columns, [after.as_slice()]), sql::update(c));
                        let mut params: Vec<_> = after.iter().map(sql::to_mysql).collect();
                        params.extend(sql::key_params(c, after));
                        execute(tx, offset, &table, &stmt, params).await?;
                    }
                    continue;
                }
                let stmt = sql::relaxed_if(sql::needs_relaxed(&c.columns, [after.as_slice()]), sql::insert(c, 1));
                let params: Vec<_> = after.iter().map(sql::to_mysql).collect();
                execute(tx, offset, &table, &stmt, params).await?;
            }
            RowChange::Update { before, after } => {
                let stmt = sql::relaxed_if(sql::needs_relaxed(&c.columns, [after.as_slice()]), sql::update(&exact));
                let mut params: Vec<_> = after.iter().map(sql::to_mysql).collect();
                params.extend(sql::key_params(&exact, before));
                execute(tx, offset, &table, &stmt, params).await?;
                if tx.affected_rows() == 1 {
                    continue;
                }
                let existing = if keyed { conflict::secondary_row(tx, c, before, offset).await? } else { None };
                let had = existing.is_some();
                conflicts.push(found(if had { Kind::Differs } else { Kind::Missing }, before, existing));
                if overwrite {
                    let (stmt, mut params) = if had {
                        let stmt = sql::relaxed_if(sql::needs_relaxed(&c.columns, [after.as_slice()]), sql::update(c));
                        (stmt, after.iter().map(sql::to_mysql).collect::<Vec<_>>())
                    } else {
                        let stmt =
                            sql::relaxed_if(sql::needs_relaxed(&c.columns, [after.as_slice()]), sql::insert(c, 1));
                        (stmt, after.iter().map(sql::to_mysql).collect::<Vec<_>>())
                    };
                    if had {
                        params.extend(sql::key_params(c, before));
                    }
                    execute(tx, offset, &table, &stmt, params).await?;
                }
            }
            RowChange::Delete { before } => {
                let stmt = sql::delete(&exact);
                execute(tx, offset, &table, &stmt, sql::key_params(&exact, before)).await?;
                if tx.affected_rows() == 1 {
                    continue;
                }
                let existing = if keyed { conflict::secondary_row(tx, c, before, offset).await? } else { None };
                let had = existing.is_some();
                conflicts.push(found(if had { Kind::Differs } else { Kind::Missing }, before, existing));
                if overwrite && had {
                    let stmt = sql::delete(c);
                    execute(tx, offset, &table, &stmt, sql::key_params(c, before)).await?;
                }
            }
        }
    }
    Ok(())
}
