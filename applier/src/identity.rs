//! How parallel apply tells a table's rows apart: the unique keys the secondary has (the primary key first), as
//! column indexes of the table's changes, and whether their values compare exactly (else its rows count as one).

use common::event::Column;
use common::mariadb::UniqueKey;
use mysql_async::prelude::Queryable;

/// The name `information_schema` gives the primary key.
pub const PRIMARY: &str = "PRIMARY";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The unique keys, the primary key first, each as column indexes of the table's changes in the key's order.
    pub keys: Vec<(String, Vec<usize>)>,
    /// The table has a primary key and every key's values compare exactly: rows are told apart by them.
    pub exact: bool,
}

impl Identity {
    /// Whether the table has a unique key besides its primary key.
    pub fn unique_besides_primary(&self) -> bool {
        self.keys.iter().any(|(name, _)| name != PRIMARY)
    }
}

/// Whether equal values of a column of this `DATA_TYPE` have one representation in a row image (not strings,
/// which compare by collation, nor floats).
pub fn exact_data_type(data_type: &str) -> bool {
    matches!(
        data_type,
        "tinyint"
            | "smallint"
            | "mediumint"
            | "int"
            | "bigint"
            | "decimal"
            | "date"
            | "datetime"
            | "time"
            | "timestamp"
            | "year"
            | "enum"
            | "set"
            | "bit"
    )
}

/// Whether rows are told apart by `keys` (as [`unique_keys`](common::mariadb::unique_keys) lists them): there is
/// a primary key, and every key is on whole columns whose values compare exactly.
pub fn exact(keys: &[UniqueKey]) -> bool {
    keys.first().is_some_and(|k| k.name == PRIMARY)
        && keys.iter().flat_map(|k| &k.columns).all(|(_, data_type, prefix)| exact_data_type(data_type) && !prefix)
}

/// The identity of `schema.table`, whose changes have `columns`.
pub async fn identity(
    conn: &mut impl Queryable,
    schema: &str,
    table: &str,
    columns: &[Column],
) -> Result<Identity, mysql_async::Error> {
    let keys = common::mariadb::unique_keys(conn, schema, table).await?;
    let mut exact = exact(&keys);
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        let mut indexes = Vec::with_capacity(key.columns.len());
        for (name, _, _) in &key.columns {
            match columns.iter().position(|c| c.name.eq_ignore_ascii_case(name)) {
                Some(i) => indexes.push(i),
                // (Drift checks catch this first.)
                None => exact = false,
            }
        }
        out.push((key.name, indexes));
    }
    Ok(Identity { keys: out, exact })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, columns: &[(&str, &str, bool)]) -> UniqueKey {
        UniqueKey {
            name: name.into(),
            columns: columns.iter().map(|(c, t, p)| ((*c).into(), (*t).into(), *p)).collect(),
        }
    }

    #[test]
    fn rows_are_told_apart_only_by_a_primary_key_and_unique_keys_on_exactly_compared_whole_columns() {
        let pk = key(PRIMARY, &[("id", "bigint", false)]);
        assert!(exact(std::slice::from_ref(&pk)));
        assert!(exact(&[pk.clone(), key("code", &[("a", "int", false), ("b", "date", false)])]));
        assert!(!exact(&[pk.clone(), key("name", &[("name", "varchar", false)])]), "collations");
        assert!(!exact(&[pk.clone(), key("code", &[("c", "int", true)])]), "a prefix");
        assert!(!exact(&[key(PRIMARY, &[("x", "double", false)])]), "floats");
        assert!(!exact(&[key("code", &[("c", "int", false)])]), "no primary key");
        assert!(!exact(&[]));
    }
}
