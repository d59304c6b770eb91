//! SQL for row changes: quoted identifiers, prepared statements with bound parameters, and journal values
//! turned back into exactly what the primary stored.

use common::event::{Column, ColumnType, TableChange, Value};
use mysql_async::Value as My;

/// The secondary session's sql_mode: strict (errors, not warnings, so a value the secondary cannot hold is
/// never changed silently), zero dates allowed, explicit 0 ids kept.
pub const STRICT_MODE: &str = "STRICT_ALL_TABLES,NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION";

/// The same without strictness, for the rare statement that writes a value only a non-strict primary can store:
/// an ENUM's empty error value (index 0). A native replica applies row events whatever the sql_mode; this
/// applies just those statements so, and every other one strictly.
const RELAXED: &str = "SET STATEMENT sql_mode = 'NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION' FOR ";

/// Whether writing `rows` with `columns` needs [`relaxed`]: an ENUM column holds its empty error value.
pub fn needs_relaxed<'a>(columns: &[Column], rows: impl IntoIterator<Item = &'a [Value]>) -> bool {
    let enums: Vec<usize> =
        columns.iter().enumerate().filter(|(_, c)| c.ty == ColumnType::Enum).map(|(i, _)| i).collect();
    if enums.is_empty() {
        return false;
    }
    rows.into_iter().any(|row| enums.iter().any(|&i| matches!(row.get(i), Some(Value::Text(s)) if s.is_empty())))
}

/// `stmt`, run without strictness when `relax` (see [`needs_relaxed`]).
pub fn relaxed_if(relax: bool, stmt: String) -> String {
    if relax {
        format!("{RELAXED}{stmt}")
    } else {
        stmt
    }
}

/// Most rows in one multi-row INSERT; inserts are cut into power-of-two chunks so a table needs at most a
/// handful of distinct prepared statements.
pub const MAX_INSERT_ROWS: usize = 128;
/// MariaDB's limit on placeholders in one statement.
const MAX_PLACEHOLDERS: usize = 65_535;

pub use common::sql_value::ident;

pub fn table_name(c: &TableChange) -> String {
    format!("{}.{}", ident(&c.schema), ident(&c.table))
}

/// `c` without the columns at `drop` (generated columns, which the secondary computes itself).
pub fn without_columns(c: &TableChange, drop: &[usize]) -> TableChange {
    let keep = |i: &usize| !drop.contains(i);
    let pick = |values: &[Value]| -> Vec<Value> {
        values.iter().enumerate().filter(|(i, _)| keep(i)).map(|(_, v)| v.clone()).collect()
    };
    let new_index = |old: usize| old - drop.iter().filter(|&&d| d < old).count();
    TableChange {
        schema: c.schema.clone(),
        table: c.table.clone(),
        columns: pick_columns(&c.columns, drop),
        primary_key: c
            .primary_key
            .iter()
            .filter(|&&i| keep(&(i as usize)))
            .map(|&i| new_index(i as usize) as u32)
            .collect(),
        rows: c
            .rows
            .iter()
            .map(|r| match r {
                common::event::RowChange::Insert { after } => common::event::RowChange::Insert { after: pick(after) },
                common::event::RowChange::Update { before, after } => {
                    common::event::RowChange::Update { before: pick(before), after: pick(after) }
                }
                common::event::RowChange::Delete { before } => {
                    common::event::RowChange::Delete { before: pick(before) }
                }
            })
            .collect(),
        foreign_key_checks: c.foreign_key_checks,
    }
}

fn pick_columns(columns: &[Column], drop: &[usize]) -> Vec<Column> {
    columns.iter().enumerate().filter(|(i, _)| !drop.contains(i)).map(|(_, c)| c.clone()).collect()
}

/// Most rows in one statement of an initial copy's chunk: larger than for streaming, since a chunk arrives whole.
pub const MAX_COPY_ROWS: usize = 2048;

/// Rows per statement for `remaining` rows of a copy chunk.
pub fn copy_chunk(remaining: usize, columns: usize) -> usize {
    rows_per_statement(remaining, columns, MAX_COPY_ROWS)
}

/// Rows per INSERT chunk for `remaining` rows of a table with `columns` columns.
pub fn insert_chunk(remaining: usize, columns: usize) -> usize {
    rows_per_statement(remaining, columns, MAX_INSERT_ROWS)
}

/// The largest power of two of rows not above `remaining`, `most`, or the placeholder limit (so a table
/// needs only a handful of distinct prepared statements).
fn rows_per_statement(remaining: usize, columns: usize, most: usize) -> usize {
    let cap = (MAX_PLACEHOLDERS / columns.max(1)).clamp(1, most);
    let n = remaining.min(cap);
    1 << (usize::BITS - 1 - n.leading_zeros())
}

/// The placeholder for a column's value. Binary-collation columns get `CAST(? AS BINARY)`: a bound string
/// otherwise arrives in the connection's charset, and types such as UUID and INET6 (which the binlog shows as
/// BINARY(n)) would parse it as text instead of taking the stored bytes.
pub(crate) fn placeholder(col: &Column) -> &'static str {
    let binary = col.collation == 63 && matches!(col.ty, ColumnType::Char | ColumnType::VarChar | ColumnType::Blob);
    if binary {
        "CAST(? AS BINARY)"
    } else {
        "?"
    }
}

pub fn insert(c: &TableChange, rows: usize) -> String {
    write_rows("INSERT", c, rows)
}

/// `REPLACE`: like [`insert`], but a row with the same primary or unique key is replaced.
pub fn replace(c: &TableChange, rows: usize) -> String {
    write_rows("REPLACE", c, rows)
}

fn write_rows(verb: &str, c: &TableChange, rows: usize) -> String {
    let cols: Vec<String> = c.columns.iter().map(|col| ident(&col.name)).collect();
    let one = format!("({})", c.columns.iter().map(placeholder).collect::<Vec<_>>().join(","));
    format!("{verb} INTO {} ({}) VALUES {}", table_name(c), cols.join(","), vec![one; rows].join(","))
}

/// The columns that locate a row: the primary key, or every column when the table has none.
pub fn key_columns(c: &TableChange) -> Vec<usize> {
    if c.primary_key.is_empty() {
        (0..c.columns.len()).collect()
    } else {
        c.primary_key.iter().map(|&i| i as usize).collect()
    }
}

fn where_clause(c: &TableChange) -> String {
    let parts: Vec<String> = key_columns(c)
        .into_iter()
        .map(|i| format!("{} <=> {}", ident(&c.columns[i].name), placeholder(&c.columns[i])))
        .collect();
    // Without a key, several identical rows may match: change exactly one, as the source did.
    let limit = if c.primary_key.is_empty() { " LIMIT 1" } else { "" };
    format!("WHERE {}{}", parts.join(" AND "), limit)
}

pub fn update(c: &TableChange) -> String {
    let set: Vec<String> = c.columns.iter().map(|col| format!("{} = {}", ident(&col.name), placeholder(col))).collect();
    format!("UPDATE {} SET {} {}", table_name(c), set.join(", "), where_clause(c))
}

/// Most rows in one multi-row UPDATE: each column's CASE has a branch per row, so the server's work grows with
/// the square of this.
pub const MAX_UPDATE_ROWS: usize = 64;

/// Rows per UPDATE chunk for `remaining` rows of `c` (see [`update_keys`]).
pub fn update_chunk(remaining: usize, c: &TableChange) -> usize {
    let k = c.primary_key.len();
    let per_row = (c.columns.len() - k) * (k + 1) + k;
    rows_per_statement(remaining, per_row, MAX_UPDATE_ROWS)
}

/// `UPDATE ... SET col = CASE WHEN key = ? THEN ? ... END, ... WHERE (key) IN ((?..), ...)` for `rows` rows
/// whose primary key stays: every other column takes its row's value, in one statement that updates the rows
/// in place. Parameters: for each non-key column, for each row its key values and the column's value; then
/// each row's key values (see [`update_params`]).
pub fn update_keys(c: &TableChange, rows: usize) -> String {
    let key: Vec<&Column> = c.primary_key.iter().map(|&i| &c.columns[i as usize]).collect();
    let names: Vec<String> = key.iter().map(|col| ident(&col.name)).collect();
    let when: Vec<String> = key.iter().map(|col| format!("{} = {}", ident(&col.name), placeholder(col))).collect();
    let when = when.join(" AND ");
    let set: Vec<String> = c
        .columns
        .iter()
        .enumerate()
        .filter(|(i, _)| !c.primary_key.contains(&(*i as u32)))
        .map(|(_, col)| {
            let branch = format!("WHEN {when} THEN {}", placeholder(col));
            format!("{} = CASE {} END", ident(&col.name), vec![branch; rows].join(" "))
        })
        .collect();
    let one = format!("({})", key.iter().map(|col| placeholder(col)).collect::<Vec<_>>().join(","));
    format!(
        "UPDATE {} SET {} WHERE ({}) IN ({})",
        table_name(c),
        set.join(", "),
        names.join(","),
        vec![one; rows].join(",")
    )
}

/// The parameters of [`update_keys`] for `rows` (key values, final image).
pub fn update_params(c: &TableChange, rows: &[(&[Value], &[Value])]) -> Vec<My> {
    let mut params = Vec::new();
    for (i, _) in c.columns.iter().enumerate().filter(|(i, _)| !c.primary_key.contains(&(*i as u32))) {
        for (key, image) in rows {
            params.extend(key.iter().map(to_mysql));
            params.push(to_mysql(&image[i]));
        }
    }
    for (key, _) in rows {
        params.extend(key.iter().map(to_mysql));
    }
    params
}

/// `DELETE ... WHERE (key) IN ((?..), ...)` for `rows` primary keys.
pub fn delete_keys(c: &TableChange, rows: usize) -> String {
    let cols: Vec<&Column> = c.primary_key.iter().map(|&i| &c.columns[i as usize]).collect();
    let names: Vec<String> = cols.iter().map(|col| ident(&col.name)).collect();
    let one = format!("({})", cols.iter().map(|col| placeholder(col)).collect::<Vec<_>>().join(","));
    format!("DELETE FROM {} WHERE ({}) IN ({})", table_name(c), names.join(","), vec![one; rows].join(","))
}

pub fn delete(c: &TableChange) -> String {
    format!("DELETE FROM {} {}", table_name(c), where_clause(c))
}

/// Parameters locating a row: its key values from the before image.
pub fn key_params(c: &TableChange, before: &[Value]) -> Vec<My> {
    key_columns(c).into_iter().map(|i| to_mysql(&before[i])).collect()
}

pub use common::sql_value::to_mysql;

#[cfg(test)]
mod tests {
    use super::*;

    fn table(pk: Vec<u32>) -> TableChange {
        let col = |name: &str| Column {
            name: name.into(),
            ty: ColumnType::Int,
            unsigned: false,
            nullable: true,
            binlog_type: 3,
            binlog_meta: 0,
            collation: 0,
        };
        TableChange {
            schema: "s".into(),
            table: "t`x".into(),
            columns: vec![col("id"), col("v")],
            primary_key: pk,
            rows: vec![],
            foreign_key_checks: true,
        }
    }

    #[test]
    fn statements_quote_identifiers_and_locate_rows_by_key() {
        assert_eq!(insert(&table(vec![0]), 2), "INSERT INTO `s`.`t``x` (`id`,`v`) VALUES (?,?),(?,?)");
        assert_eq!(update(&table(vec![0])), "UPDATE `s`.`t``x` SET `id` = ?, `v` = ? WHERE `id` <=> ?");
        assert_eq!(delete(&table(vec![])), "DELETE FROM `s`.`t``x` WHERE `id` <=> ? AND `v` <=> ? LIMIT 1");
        assert_eq!(delete_keys(&table(vec![1, 0]), 2), "DELETE FROM `s`.`t``x` WHERE (`v`,`id`) IN ((?,?),(?,?))");
    }

    #[test]
    fn only_rows_with_an_empty_enum_value_are_written_without_strictness() {
        let mut c = table(vec![0]);
        let rows = [vec![Value::Int(1), Value::Text(String::new())]];
        assert!(!needs_relaxed(&c.columns, rows.iter().map(Vec::as_slice)), "not an ENUM column");
        c.columns[1].ty = ColumnType::Enum;
        assert!(needs_relaxed(&c.columns, rows.iter().map(Vec::as_slice)));
        let named = [vec![Value::Int(1), Value::Text("a".into())]];
        assert!(!needs_relaxed(&c.columns, named.iter().map(Vec::as_slice)));
        assert_eq!(relaxed_if(false, "INSERT".into()), "INSERT");
        assert!(relaxed_if(true, "INSERT".into()).starts_with("SET STATEMENT sql_mode = 'NO_AUTO_VALUE_ON_ZERO"));
    }

    #[test]
    fn rows_keeping_their_key_are_updated_in_place_in_one_statement() {
        let c = table(vec![0]);
        assert_eq!(
            update_keys(&c, 2),
            "UPDATE `s`.`t``x` SET `v` = CASE WHEN `id` = ? THEN ? WHEN `id` = ? THEN ? END WHERE (`id`) IN ((?),(?))"
        );
        let (k1, r1) = ([Value::Int(1)], [Value::Int(1), Value::Int(10)]);
        let (k2, r2) = ([Value::Int(2)], [Value::Int(2), Value::Int(20)]);
        let params = update_params(&c, &[(&k1, &r1), (&k2, &r2)]);
        assert_eq!(params, vec![My::Int(1), My::Int(10), My::Int(2), My::Int(20), My::Int(1), My::Int(2)]);
        assert_eq!(update_chunk(1000, &c), MAX_UPDATE_ROWS);
        assert_eq!(update_chunk(5, &c), 4);
    }

    #[test]
    fn inserts_are_cut_into_power_of_two_chunks() {
        assert_eq!(insert_chunk(100, 2), 64);
        assert_eq!(insert_chunk(3, 2), 2);
        assert_eq!(insert_chunk(1, 2), 1);
        assert_eq!(insert_chunk(1000, 1000), 64);
    }

    #[test]
    fn timestamps_and_times_bind_as_the_primary_stored_them() {
        assert_eq!(
            to_mysql(&Value::Timestamp { seconds: 946_684_800, micros: 500_000 }),
            My::Date(2000, 1, 1, 0, 0, 0, 500_000)
        );
        assert_eq!(
            to_mysql(&Value::Time { negative: true, hours: 838, minutes: 59, seconds: 59, micros: 0 }),
            My::Time(true, 34, 22, 59, 59, 0)
        );
    }
}
