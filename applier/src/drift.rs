//! Schema drift: a journal record's columns compared with the secondary's table, before the first change to
//! the table and again after every DDL.

use common::event::{Column, ColumnType};
use mysql_async::prelude::Queryable;

/// `None` if the secondary's table matches the record's columns, else a message showing both column lists.
pub async fn check(
    conn: &mut impl Queryable,
    schema: &str,
    table: &str,
    columns: &[Column],
) -> Result<Option<String>, mysql_async::Error> {
    let rows: Vec<(String, String, String)> = conn
        .exec(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE FROM information_schema.COLUMNS
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
            (schema, table),
        )
        .await?;
    if rows.is_empty() {
        return Ok(Some(format!("table {schema}.{table} does not exist on the secondary")));
    }
    let secondary: Vec<(String, ColumnType, bool)> = rows
        .iter()
        .map(|(name, data_type, column_type)| {
            (
                name.clone(),
                ColumnType::from_data_type(&data_type.to_ascii_lowercase()),
                column_type.contains("unsigned"),
            )
        })
        .collect();
    let matches = secondary.len() == columns.len()
        && secondary.iter().zip(columns).all(|((name, ty, unsigned), c)| {
            name.eq_ignore_ascii_case(&c.name)
                && *ty == c.ty
                && (*unsigned == c.unsigned
                    || !matches!(
                        ty,
                        ColumnType::TinyInt
                            | ColumnType::SmallInt
                            | ColumnType::MediumInt
                            | ColumnType::Int
                            | ColumnType::BigInt
                    ))
        });
    if matches {
        return Ok(None);
    }
    let show = |cols: Vec<String>| cols.join(", ");
    Ok(Some(format!(
        "schema drift on {schema}.{table}: the primary logged ({}) but the secondary has ({})",
        show(
            columns
                .iter()
                .map(|c| format!("{} {}{}", c.name, c.ty, if c.unsigned { " unsigned" } else { "" }))
                .collect()
        ),
        show(rows.iter().map(|(n, _, t)| format!("{n} {t}")).collect()),
    )))
}

/// Indexes (into `columns`) of the secondary's generated columns: MariaDB logs their values, but a write
/// must leave them out.
pub async fn generated(
    conn: &mut impl Queryable,
    schema: &str,
    table: &str,
    columns: &[Column],
) -> Result<Vec<usize>, mysql_async::Error> {
    let names: Vec<String> = conn
        .exec(
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND IS_GENERATED = 'ALWAYS'",
            (schema, table),
        )
        .await?;
    Ok(columns
        .iter()
        .enumerate()
        .filter(|(_, c)| names.iter().any(|n| n.eq_ignore_ascii_case(&c.name)))
        .map(|(i, _)| i)
        .collect())
}
