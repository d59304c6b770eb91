//! System-versioned tables: the primary logs their physical rows, history included, and a client session
//! cannot write those directly; this turns each row event into the statement that makes the secondary's own
//! server write exactly the primary's rows.
//!
//! What the primary logs (MariaDB 10.11, timestamp-based versioning): an INSERT is a new current row (row end
//! at the maximum, 2038-01-19 03:14:07.999999); an UPDATE is the current row updated (its row start becomes
//! the statement's time) followed by a new history row (the old values, row end = that time); a DELETE is the
//! current row "updated" to end at the statement's time; `DELETE HISTORY` physically deletes history rows.
//! A native replica writes these rows as logged. Here, each one is applied under `SET timestamp` = the time
//! the primary used, so the secondary generates the same row start, row end and history row itself:
//!
//! | logged | applied |
//! | --- | --- |
//! | insert of a current row | `SET timestamp = its row start`, INSERT (period columns left to the server) |
//! | update of a current row | `SET timestamp = its new row start`, UPDATE by key: the server writes the history row, so the logged history row that follows is recognised (same key and row end) and not written again |
//! | current row ending | `SET timestamp = its row end`, DELETE by key (the server keeps it as history) |
//! | insert of a history row on its own (the primary's `system_versioning_insert_history`) | INSERT with its period columns under `system_versioning_insert_history = 1` |
//! | delete of history rows (`DELETE HISTORY`) | `DELETE HISTORY … BEFORE SYSTEM_TIME` just after the latest of them, which must delete exactly as many rows |
//!
//! Anything else (a history row updated, a current row physically deleted) stops the applier as drift
//! naming the table: it does not happen without `system_versioning_alter_history` on the primary.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use common::event::{RowChange, TableChange, Value};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use crate::error::{statement, ApplyError};
use crate::rows;
use crate::sql;
use crate::table::TableKey;

/// Where a versioned table's period columns are among the logged columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub start: usize,
    pub end: usize,
}

/// One statement (or run of rows applied together) for a versioned table.
#[derive(Debug, PartialEq)]
enum Step {
    /// Rows applied as ordinary changes under `SET timestamp = at`.
    AtTime { at: Value, rows: Vec<RowChange> },
    /// History rows written as logged.
    InsertHistory { rows: Vec<RowChange> },
    /// `count` history rows deleted, the latest ending at `latest`.
    DeleteHistory { latest: Value, count: u64 },
}

fn is_current(end: &Value) -> bool {
    matches!(end, Value::Timestamp { seconds: 2_147_483_647, micros: 999_999 })
}

/// A history row's identity: every value, with the row end it has as history.
fn history_key(c: &TableChange, period: Period, image: &[Value], end: &Value) -> String {
    let values: Vec<String> = image
        .iter()
        .enumerate()
        .map(|(i, v)| if i == period.end { format!("{end:?}") } else { format!("{v:?}") })
        .collect();
    format!("{}.{}|{}", c.schema, c.table, values.join("|"))
}

/// The steps for one logged change of a versioned table. `written` holds the history rows the secondary's
/// server has written by itself in this transaction so far, with how many of each (added by updates, taken
/// by the logged history rows they match; identical rows of a keyless table count separately).
fn steps(c: &TableChange, period: Period, written: &mut HashMap<String, usize>) -> Result<Vec<Step>, String> {
    let mut steps: Vec<Step> = Vec::new();
    let push_at = |steps: &mut Vec<Step>, at: &Value, row: RowChange| match steps.last_mut() {
        Some(Step::AtTime { at: last, rows }) if last == at => rows.push(row),
        _ => steps.push(Step::AtTime { at: at.clone(), rows: vec![row] }),
    };
    for row in &c.rows {
        match row {
            RowChange::Insert { after } if is_current(&after[period.end]) => {
                push_at(&mut steps, &after[period.start], row.clone());
            }
            RowChange::Insert { after } => {
                if let Entry::Occupied(mut e) = written.entry(history_key(c, period, after, &after[period.end])) {
                    *e.get_mut() -= 1;
                    if *e.get() == 0 {
                        e.remove();
                    }
                    continue;
                }
                match steps.last_mut() {
                    Some(Step::InsertHistory { rows }) => rows.push(row.clone()),
                    _ => steps.push(Step::InsertHistory { rows: vec![row.clone()] }),
                }
            }
            RowChange::Update { before, after }
                if is_current(&before[period.end]) && is_current(&after[period.end]) =>
            {
                let at = &after[period.start];
                *written.entry(history_key(c, period, before, at)).or_default() += 1;
                push_at(&mut steps, at, row.clone());
            }
            RowChange::Update { before, after } if is_current(&before[period.end]) => {
                push_at(&mut steps, &after[period.end], RowChange::Delete { before: before.clone() });
            }
            RowChange::Delete { before } if !is_current(&before[period.end]) => {
                let end = before[period.end].clone();
                match steps.last_mut() {
                    Some(Step::DeleteHistory { latest, count }) => {
                        *count += 1;
                        if timestamp_after(&end, latest) {
                            *latest = end;
                        }
                    }
                    _ => steps.push(Step::DeleteHistory { latest: end, count: 1 }),
                }
            }
            RowChange::Update { .. } => {
                return Err("the primary changed a history row of this system-versioned table (possible only with \
                            system_versioning_alter_history); the secondary cannot follow: re-copy the table"
                    .into())
            }
            RowChange::Delete { .. } => {
                return Err("the primary removed a current row of this system-versioned table without keeping it \
                            as history; the secondary cannot follow: re-copy the table"
                    .into())
            }
        }
    }
    Ok(steps)
}

fn timestamp_after(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Timestamp { seconds: s1, micros: m1 }, Value::Timestamp { seconds: s2, micros: m2 }) => {
            (s1, m1) > (s2, m2)
        }
        _ => false,
    }
}

/// `seconds.micros` for `SET timestamp` and `FROM_UNIXTIME`; None for anything but a timestamp.
fn unix_time(v: &Value, plus_micros: u32) -> Option<String> {
    match v {
        Value::Timestamp { seconds, micros } => {
            let total = i128::from(*seconds) * 1_000_000 + i128::from(*micros) + i128::from(plus_micros);
            Some(format!("{}.{:06}", total / 1_000_000, total % 1_000_000))
        }
        _ => None,
    }
}

/// The secondary cannot follow the primary here: drift at `offset` on `c`'s table.
fn drift(offset: u64, c: &TableChange, statement: &str, reason: String) -> ApplyError {
    ApplyError::Drift {
        offset,
        table: Some((c.schema.clone(), c.table.clone())),
        statement: statement.to_owned(),
        reason,
    }
}

/// Applies one logged change of a versioned table in source order (see the module docs). `generated` are the
/// indexes of every column the secondary generates, the period columns included.
pub async fn apply(
    tx: &mut Conn,
    offset: u64,
    c: &TableChange,
    period: Period,
    generated: &[usize],
    written: &mut HashMap<String, usize>,
) -> Result<(), ApplyError> {
    let table: TableKey = (c.schema.clone(), c.table.clone());
    let steps = steps(c, period, written).map_err(|reason| drift(offset, c, "(system-versioned table)", reason))?;
    let mut timestamp_set = false;
    let result = apply_steps(tx, offset, c, period, generated, steps, &mut timestamp_set).await;
    if timestamp_set {
        // Also after a failure: the session's clock must not stay in the past for whatever runs next.
        let reset = "SET timestamp = DEFAULT";
        let reset_result = tx.query_drop(reset).await.map_err(statement(offset, Some(&table), reset));
        result?;
        return reset_result;
    }
    result
}

async fn apply_steps(
    tx: &mut Conn,
    offset: u64,
    c: &TableChange,
    period: Period,
    generated: &[usize],
    steps: Vec<Step>,
    timestamp_set: &mut bool,
) -> Result<(), ApplyError> {
    let table: TableKey = (c.schema.clone(), c.table.clone());
    let drift = |statement: &str, reason: String| drift(offset, c, statement, reason);
    let with_rows = |rows: Vec<RowChange>| TableChange { rows, ..c.clone() };
    for step in steps {
        match step {
            Step::AtTime { at, rows } => {
                let at = unix_time(&at, 0).ok_or_else(|| {
                    drift("(system-versioned table)", "its row start or end is not a TIMESTAMP".into())
                })?;
                let set = format!("SET timestamp = {at}");
                *timestamp_set = true;
                tx.query_drop(&set).await.map_err(statement(offset, Some(&table), &set))?;
                rows::apply_in_order(tx, offset, &sql::without_columns(&with_rows(rows), generated), false).await?;
            }
            Step::InsertHistory { rows } => {
                let others: Vec<usize> =
                    generated.iter().copied().filter(|&i| i != period.start && i != period.end).collect();
                let on = "SET system_versioning_insert_history = 1";
                tx.query_drop(on).await.map_err(statement(offset, Some(&table), on))?;
                rows::apply_in_order(tx, offset, &sql::without_columns(&with_rows(rows), &others), false).await?;
                let off = "SET system_versioning_insert_history = 0";
                tx.query_drop(off).await.map_err(statement(offset, Some(&table), off))?;
            }
            Step::DeleteHistory { latest, count } => {
                let before = unix_time(&latest, 1)
                    .ok_or_else(|| drift("(system-versioned table)", "its row end is not a TIMESTAMP".into()))?;
                let delete =
                    format!("DELETE HISTORY FROM {} BEFORE SYSTEM_TIME FROM_UNIXTIME({before})", sql::table_name(c));
                tx.query_drop(&delete).await.map_err(statement(offset, Some(&table), &delete))?;
                if tx.affected_rows() != count {
                    let found = tx.affected_rows();
                    return Err(drift(
                        &delete,
                        format!("DELETE HISTORY removed {found} history rows where the primary removed {count}"),
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::event::{Column, ColumnType};

    fn ts(seconds: i64, micros: u32) -> Value {
        Value::Timestamp { seconds, micros }
    }

    const MAX: Value = Value::Timestamp { seconds: 2_147_483_647, micros: 999_999 };

    fn change(rows: Vec<RowChange>) -> TableChange {
        let col = |name: &str, ty| Column {
            name: name.into(),
            ty,
            unsigned: false,
            nullable: false,
            binlog_type: 0,
            binlog_meta: 0,
            collation: 0,
        };
        TableChange {
            schema: "v".into(),
            table: "t".into(),
            columns: vec![
                col("id", ColumnType::Int),
                col("x", ColumnType::Int),
                col("row_start", ColumnType::Timestamp),
                col("row_end", ColumnType::Timestamp),
            ],
            primary_key: vec![0, 3],
            rows,
            foreign_key_checks: true,
        }
    }

    const PERIOD: Period = Period { start: 2, end: 3 };

    fn row(id: i64, x: i64, start: Value, end: Value) -> Vec<Value> {
        vec![Value::Int(id), Value::Int(x), start, end]
    }

    #[test]
    fn an_update_is_applied_at_its_time_and_the_history_row_it_makes_is_not_written_twice() {
        let mut written = HashMap::new();
        let update = RowChange::Update { before: row(1, 1, ts(10, 5), MAX), after: row(1, 2, ts(20, 7), MAX) };
        let history = RowChange::Insert { after: row(1, 1, ts(10, 5), ts(20, 7)) };
        let s = steps(&change(vec![update.clone()]), PERIOD, &mut written).expect("steps");
        assert_eq!(s, vec![Step::AtTime { at: ts(20, 7), rows: vec![update] }]);
        let s = steps(&change(vec![history.clone()]), PERIOD, &mut written).expect("steps");
        assert_eq!(s, vec![], "the server wrote it already");
        assert!(written.is_empty());
        let s = steps(&change(vec![history.clone()]), PERIOD, &mut written).expect("steps");
        assert_eq!(s, vec![Step::InsertHistory { rows: vec![history] }], "a history row of its own is written");
    }

    #[test]
    fn inserts_deletes_and_history_deletes_take_their_times_from_the_images() {
        let mut written = HashMap::new();
        let a = RowChange::Insert { after: row(1, 1, ts(10, 5), MAX) };
        let b = RowChange::Insert { after: row(2, 1, ts(10, 5), MAX) };
        let ending = RowChange::Update { before: row(3, 1, ts(9, 0), MAX), after: row(3, 1, ts(9, 0), ts(11, 0)) };
        let purge = |id, end| RowChange::Delete { before: row(id, 0, ts(1, 0), end) };
        let c = change(vec![a.clone(), b.clone(), ending, purge(4, ts(5, 2)), purge(5, ts(6, 1)), purge(6, ts(2, 0))]);
        let s = steps(&c, PERIOD, &mut written).expect("steps");
        assert_eq!(
            s,
            vec![
                Step::AtTime { at: ts(10, 5), rows: vec![a, b] },
                Step::AtTime { at: ts(11, 0), rows: vec![RowChange::Delete { before: row(3, 1, ts(9, 0), MAX) }] },
                Step::DeleteHistory { latest: ts(6, 1), count: 3 },
            ]
        );
        assert_eq!(unix_time(&ts(6, 999_999), 1).as_deref(), Some("7.000000"));
        assert_eq!(unix_time(&ts(1_796_567_860, 751_649), 0).as_deref(), Some("1796567860.751649"));
    }

    #[test]
    fn a_changed_history_row_or_a_vanished_current_row_is_refused() {
        let mut written = HashMap::new();
        let changed = RowChange::Update { before: row(1, 1, ts(1, 0), ts(2, 0)), after: row(1, 2, ts(1, 0), ts(2, 0)) };
        assert!(steps(&change(vec![changed]), PERIOD, &mut written).is_err_and(|e| e.contains("history row")));
        let vanished = RowChange::Delete { before: row(1, 1, ts(1, 0), MAX) };
        assert!(steps(&change(vec![vanished]), PERIOD, &mut written).is_err_and(|e| e.contains("current row")));
    }
}
