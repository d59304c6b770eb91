//! Schema drift: a journal record's columns compared with the secondary's table, before the first change to
//! the table and again after every DDL.

use common::event::{Column, ColumnType};
use mysql_async::prelude::Queryable;

/// The type family MariaDB's `information_schema.COLUMNS.DATA_TYPE` belongs to, as the binlog describes it.
fn family(data_type: &str) -> ColumnType {
    use ColumnType::*;
    match data_type {
        "tinyint" => TinyInt,
        "smallint" => SmallInt,
        "mediumint" => MediumInt,
        "int" | "integer" => Int,
        "bigint" => BigInt,
        "float" => Float,
        "double" | "real" => Double,
        "decimal" | "numeric" => Decimal,
        "date" => Date,
        "time" => Time,
        "datetime" => DateTime,
        "timestamp" => Timestamp,
        "year" => Year,
        "char" | "binary" | "uuid" | "inet4" | "inet6" => Char,
        "varchar" | "varbinary" => VarChar,
        "tinytext" | "text" | "mediumtext" | "longtext" | "tinyblob" | "blob" | "mediumblob" | "longblob" | "json" => {
            Blob
        }
        "enum" => Enum,
        "set" => Set,
        "bit" => Bit,
        "geometry" | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring" | "multipolygon"
        | "geometrycollection" => Geometry,
        _ => Other,
    }
}

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
            (name.clone(), family(&data_type.to_ascii_lowercase()), column_type.contains("unsigned"))
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
