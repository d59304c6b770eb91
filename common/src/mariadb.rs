//! MariaDB pieces both binaries use: connection options built one way, and a table's columns as
//! `information_schema` describes them.

use mysql_async::prelude::Queryable;
use mysql_async::OptsBuilder;

use crate::config::{MariaTlsArgs, Secret};

/// Where and as whom to connect.
pub struct Server<'a> {
    pub host: &'a str,
    pub port: u16,
    pub user: &'a str,
    pub password: &'a Secret,
    pub tls: &'a MariaTlsArgs,
}

/// TCP (never the local socket), TLS as configured, and packets as large as MariaDB allows (a journal record
/// or a chunk row may be that large). Callers add their session setup.
pub fn opts(server: &Server<'_>) -> OptsBuilder {
    OptsBuilder::default()
        .ip_or_hostname(server.host.to_owned())
        .tcp_port(server.port)
        .user(Some(server.user.to_owned()))
        .pass(Some(server.password.expose().to_owned()))
        .prefer_socket(false)
        .ssl_opts(server.tls.ssl_opts())
        .max_allowed_packet(Some(1 << 30))
}

/// One column of a table, as `information_schema.COLUMNS` has it (types in lower case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    pub name: String,
    /// `DATA_TYPE`, e.g. `int`, `varchar`, `uuid`.
    pub data_type: String,
    /// `COLUMN_TYPE`, e.g. `int(10) unsigned`.
    pub column_type: String,
    pub nullable: bool,
    /// The collation's id (0 for columns without one).
    pub collation: u16,
    /// A generated (VIRTUAL or STORED) column, whose value the server computes.
    pub generated: bool,
    /// The table's AUTO_INCREMENT column.
    pub auto_increment: bool,
}

/// The columns of `schema.table` in their order; empty when the table does not exist.
pub async fn columns(
    conn: &mut impl Queryable,
    schema: &str,
    table: &str,
) -> Result<Vec<ColumnInfo>, mysql_async::Error> {
    type Row = (String, String, String, String, Option<u64>, String, String);
    let rows: Vec<Row> = conn
        .exec(
            "SELECT c.COLUMN_NAME, LOWER(c.DATA_TYPE), LOWER(c.COLUMN_TYPE), c.IS_NULLABLE, co.ID, c.IS_GENERATED, \
             LOWER(c.EXTRA) \
             FROM information_schema.COLUMNS c \
             LEFT JOIN information_schema.COLLATIONS co ON co.COLLATION_NAME = c.COLLATION_NAME \
             WHERE c.TABLE_SCHEMA = ? AND c.TABLE_NAME = ? ORDER BY c.ORDINAL_POSITION",
            (schema, table),
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|(name, data_type, column_type, nullable, collation, generated, extra)| ColumnInfo {
            name,
            data_type,
            column_type,
            nullable: nullable == "YES",
            collation: collation.unwrap_or(0) as u16,
            generated: generated == "ALWAYS",
            auto_increment: extra.contains("auto_increment"),
        })
        .collect())
}

/// Whether `schema.table` has a foreign key or is referenced by one (so changes to it may check or cascade).
pub async fn in_foreign_keys(conn: &mut impl Queryable, schema: &str, table: &str) -> Result<bool, mysql_async::Error> {
    let found: Option<u8> = conn
        .exec_first(
            "SELECT 1 FROM information_schema.REFERENTIAL_CONSTRAINTS \
             WHERE (CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ?) OR (UNIQUE_CONSTRAINT_SCHEMA = ? AND REFERENCED_TABLE_NAME = ?) \
             LIMIT 1",
            (schema, table, schema, table),
        )
        .await?;
    Ok(found.is_some())
}

/// Every foreign key on the server as `((child schema, child table), (parent schema, parent table))`.
pub async fn foreign_key_edges(
    conn: &mut impl Queryable,
) -> Result<Vec<((String, String), (String, String))>, mysql_async::Error> {
    let rows: Vec<(String, String, String, String)> = conn
        .query(
            "SELECT DISTINCT CONSTRAINT_SCHEMA, TABLE_NAME, UNIQUE_CONSTRAINT_SCHEMA, REFERENCED_TABLE_NAME \
             FROM information_schema.REFERENTIAL_CONSTRAINTS",
        )
        .await?;
    Ok(rows.into_iter().map(|(cs, ct, ps, pt)| ((cs, ct), (ps, pt))).collect())
}

/// A foreign key as `information_schema` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignKey {
    /// The referencing (child) table, as (schema, table).
    pub child: (String, String),
    /// Its columns, in the key's order (see [`foreign_keys`]).
    pub columns: Vec<String>,
    /// The referenced (parent) table.
    pub parent: (String, String),
    /// The parent's columns, matching `columns` one for one.
    pub parent_columns: Vec<String>,
    /// `ON UPDATE` and `ON DELETE` (`RESTRICT`, `NO ACTION`, `CASCADE`, `SET NULL`, `SET DEFAULT`).
    pub on_update: String,
    pub on_delete: String,
}

impl ForeignKey {
    /// Whether a change of a parent row changes child rows (below the binlog).
    pub fn acts(&self) -> bool {
        let acts = |rule: &str| !matches!(rule, "RESTRICT" | "NO ACTION");
        acts(&self.on_update) || acts(&self.on_delete)
    }

    /// Whether a change of a parent row can set child columns to NULL or their default.
    pub fn sets_values(&self) -> bool {
        let sets = |rule: &str| matches!(rule, "SET NULL" | "SET DEFAULT");
        sets(&self.on_update) || sets(&self.on_delete)
    }
}

/// Every foreign key on the server with its rules, and the columns of those whose child is `schema.table` (the
/// others' are left empty: reading every table's key columns from `information_schema` opens every table).
pub async fn foreign_keys(
    conn: &mut impl Queryable,
    schema: &str,
    table: &str,
) -> Result<Vec<ForeignKey>, mysql_async::Error> {
    type Rule = (String, String, String, String, String, String, String);
    let rules: Vec<Rule> = conn
        .query(
            "SELECT CONSTRAINT_SCHEMA, TABLE_NAME, CONSTRAINT_NAME, UNIQUE_CONSTRAINT_SCHEMA, REFERENCED_TABLE_NAME, \
                    UPDATE_RULE, DELETE_RULE \
             FROM information_schema.REFERENTIAL_CONSTRAINTS",
        )
        .await?;
    let columns: Vec<(String, String, String)> = conn
        .exec(
            "SELECT CONSTRAINT_NAME, COLUMN_NAME, REFERENCED_COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND REFERENCED_TABLE_NAME IS NOT NULL \
             ORDER BY CONSTRAINT_NAME, ORDINAL_POSITION",
            (schema, table),
        )
        .await?;
    Ok(rules
        .into_iter()
        .map(|(cs, ct, name, ps, pt, on_update, on_delete)| {
            let own = cs == schema && ct == table;
            let (columns, parent_columns) = columns
                .iter()
                .filter(|(constraint, _, _)| own && *constraint == name)
                .map(|(_, column, parent_column)| (column.clone(), parent_column.clone()))
                .unzip();
            ForeignKey { child: (cs, ct), columns, parent: (ps, pt), parent_columns, on_update, on_delete }
        })
        .collect())
}

/// A unique key (the primary key is named `PRIMARY`) and its columns in the key's order, with the data type of
/// each (lower case) and whether the key indexes only a prefix of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UniqueKey {
    pub name: String,
    pub columns: Vec<(String, String, bool)>,
}

/// The unique keys of `schema.table`, its primary key first.
pub async fn unique_keys(
    conn: &mut impl Queryable,
    schema: &str,
    table: &str,
) -> Result<Vec<UniqueKey>, mysql_async::Error> {
    let rows: Vec<(String, String, String, Option<u64>)> = conn
        .exec(
            "SELECT s.INDEX_NAME, s.COLUMN_NAME, LOWER(c.DATA_TYPE), s.SUB_PART \
             FROM information_schema.STATISTICS s \
             JOIN information_schema.COLUMNS c ON c.TABLE_SCHEMA = s.TABLE_SCHEMA AND c.TABLE_NAME = s.TABLE_NAME \
               AND c.COLUMN_NAME = s.COLUMN_NAME \
             WHERE s.TABLE_SCHEMA = ? AND s.TABLE_NAME = ? AND s.NON_UNIQUE = 0 \
             ORDER BY s.INDEX_NAME <> 'PRIMARY', s.INDEX_NAME, s.SEQ_IN_INDEX",
            (schema, table),
        )
        .await?;
    let mut keys: Vec<UniqueKey> = Vec::new();
    for (name, column, data_type, sub_part) in rows {
        let entry = (column, data_type, sub_part.is_some());
        match keys.last_mut() {
            Some(k) if k.name == name => k.columns.push(entry),
            _ => keys.push(UniqueKey { name, columns: vec![entry] }),
        }
    }
    Ok(keys)
}

/// [`columns`], and for a system-versioned table its period columns' names; implicit period columns, which
/// `information_schema` hides but the binlog logs last, are added at the end (TIMESTAMP(6), generated).
pub async fn columns_with_period(
    conn: &mut impl Queryable,
    schema: &str,
    table: &str,
) -> Result<(Vec<ColumnInfo>, Option<(String, String)>), mysql_async::Error> {
    let mut found = columns(conn, schema, table).await?;
    let period = if found.is_empty() { None } else { system_period(conn, schema, table).await? };
    if let Some((start, end)) = &period {
        for name in [start, end] {
            if !found.iter().any(|f| f.name.eq_ignore_ascii_case(name)) {
                found.push(ColumnInfo {
                    name: name.clone(),
                    data_type: "timestamp".into(),
                    column_type: "timestamp(6)".into(),
                    nullable: false,
                    collation: 0,
                    generated: true,
                    auto_increment: false,
                });
            }
        }
    }
    Ok((found, period))
}

/// The row start and row end columns of a system-versioned table (`row_start`, `row_end` when they are
/// implicit), or None for any other table.
pub async fn system_period(
    conn: &mut impl Queryable,
    schema: &str,
    table: &str,
) -> Result<Option<(String, String)>, mysql_async::Error> {
    let kind: Option<String> = conn
        .exec_first(
            "SELECT TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
            (schema, table),
        )
        .await?;
    if kind.as_deref() != Some("SYSTEM VERSIONED") {
        return Ok(None);
    }
    let create: Option<(String, String)> = conn
        .query_first(format!("SHOW CREATE TABLE `{}`.`{}`", schema.replace('`', "``"), table.replace('`', "``")))
        .await?;
    Ok(Some(create.and_then(|(_, c)| period_columns(&c)).unwrap_or_else(|| ("row_start".into(), "row_end".into()))))
}

/// The columns of an explicit `PERIOD FOR SYSTEM_TIME (`start`, `end`)` in a `SHOW CREATE TABLE` statement.
pub fn period_columns(create: &str) -> Option<(String, String)> {
    let rest = &create[create.find("PERIOD FOR SYSTEM_TIME (")? + "PERIOD FOR SYSTEM_TIME (".len()..];
    let mut names = rest.split(')').next()?.split(',').map(|n| n.trim().trim_matches('`').replace("``", "`"));
    Some((names.next()?, names.next()?))
}

#[cfg(test)]
mod period_tests {
    use super::period_columns;

    #[test]
    fn explicit_period_columns_are_read_from_the_definition_and_implicit_ones_are_not_there() {
        let explicit = "CREATE TABLE `e` (\n  `id` int(11) NOT NULL,\n  `rs` timestamp(6) GENERATED ALWAYS AS ROW START \
                        INVISIBLE,\n  `r``e` timestamp(6) GENERATED ALWAYS AS ROW END INVISIBLE,\n  PRIMARY KEY (`id`,`r``e`),\n  \
                        PERIOD FOR SYSTEM_TIME (`rs`, `r``e`)\n) ENGINE=InnoDB WITH SYSTEM VERSIONING";
        assert_eq!(period_columns(explicit), Some(("rs".into(), "r`e".into())));
        assert_eq!(period_columns("CREATE TABLE `t` (`id` int) WITH SYSTEM VERSIONING"), None);
    }
}
