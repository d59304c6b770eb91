//! Schema drift: a journal record's columns compared with the secondary's table (as `information_schema`
//! describes it), before the first change to the table and again after every DDL; and the secondary's
//! generated columns, which MariaDB logs but a write must leave out.

use common::event::{Column, ColumnType};
use common::mariadb::ColumnInfo;

/// `None` if the secondary's table matches the record's columns, else a message showing both column lists.
pub fn check(schema: &str, table: &str, secondary: &[ColumnInfo], columns: &[Column]) -> Option<String> {
    if secondary.is_empty() {
        return Some(format!("table {schema}.{table} does not exist on the secondary"));
    }
    let integer = |ty: &ColumnType| {
        matches!(
            ty,
            ColumnType::TinyInt | ColumnType::SmallInt | ColumnType::MediumInt | ColumnType::Int | ColumnType::BigInt
        )
    };
    let matches = secondary.len() == columns.len()
        && secondary.iter().zip(columns).all(|(s, c)| {
            let ty = ColumnType::from_data_type(&s.data_type);
            let unsigned = s.column_type.contains("unsigned");
            s.name.eq_ignore_ascii_case(&c.name) && ty == c.ty && (unsigned == c.unsigned || !integer(&ty))
        });
    if matches {
        return None;
    }
    let primary: Vec<String> =
        columns.iter().map(|c| format!("{} {}{}", c.name, c.ty, if c.unsigned { " unsigned" } else { "" })).collect();
    let secondary: Vec<String> = secondary.iter().map(|s| format!("{} {}", s.name, s.column_type)).collect();
    Some(format!(
        "schema drift on {schema}.{table}: the primary logged ({}) but the secondary has ({})",
        primary.join(", "),
        secondary.join(", ")
    ))
}

/// Indexes (into `columns`) of the secondary's generated columns.
pub fn generated(secondary: &[ColumnInfo], columns: &[Column]) -> Vec<usize> {
    columns
        .iter()
        .enumerate()
        .filter(|(_, c)| secondary.iter().any(|s| s.generated && s.name.eq_ignore_ascii_case(&c.name)))
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, data_type: &str, column_type: &str, generated: bool) -> ColumnInfo {
        ColumnInfo {
            name: name.into(),
            data_type: data_type.into(),
            column_type: column_type.into(),
            nullable: true,
            collation: 0,
            generated,
            auto_increment: false,
        }
    }

    fn logged(name: &str, ty: ColumnType, unsigned: bool) -> Column {
        Column { name: name.into(), ty, unsigned, nullable: true, binlog_type: 3, binlog_meta: 0, collation: 0 }
    }

    #[test]
    fn matching_columns_pass_and_an_extra_column_is_drift_showing_both_lists() {
        let primary = [logged("id", ColumnType::Int, false), logged("v", ColumnType::Int, false)];
        let same = [info("id", "int", "int(11)", false), info("V", "int", "int(11)", false)];
        assert_eq!(check("d", "t", &same, &primary), None);
        let wider = [
            info("id", "int", "int(11)", false),
            info("v", "int", "int(11)", false),
            info("extra", "varchar", "varchar(5)", false),
        ];
        assert_eq!(
            check("d", "t", &wider, &primary).as_deref(),
            Some("schema drift on d.t: the primary logged (id int, v int) but the secondary has (id int(11), v int(11), extra varchar(5))")
        );
        assert!(check("d", "t", &[], &primary).is_some_and(|m| m.contains("does not exist on the secondary")));
    }

    #[test]
    fn signedness_counts_for_integers_only_and_generated_columns_are_found_by_name() {
        let primary = [logged("id", ColumnType::Int, true), logged("g", ColumnType::Int, false)];
        let signed = [info("id", "int", "int(11)", false), info("g", "int", "int(11)", true)];
        assert!(check("d", "t", &signed, &primary).is_some());
        let unsigned = [info("id", "int", "int(10) unsigned", false), info("G", "int", "int(11)", true)];
        assert_eq!(check("d", "t", &unsigned, &primary), None);
        assert_eq!(generated(&unsigned, &primary), vec![1]);
    }
}
