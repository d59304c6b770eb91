//! Which tables in foreign keys parallel workers may apply, and the parent rows a child row's changes depend on
//! (added to its transaction's write set, so a parent's change and its children's are applied in source order).
//!
//! A parent's change can change child rows below the binlog (cascades): the secondary's own foreign keys do it
//! again, as on the primary. Two transactions are ordered when one changes parent row `k` and the other a child
//! row that references `k` before or after: the child's change carries the parent's key. That covers one level
//! of cascades. A parent whose change reaches further (a cascade into a table that cascades again, or a rule
//! that sets child columns, which erases the reference the later child changes would carry) is a barrier, as is
//! a child whose key names other columns than the parent's primary key.

use common::event::{Column, ColumnType};
use common::mariadb::ForeignKey;
use mysql_async::prelude::Queryable;

use crate::table::TableKey;

/// A parent a child table's rows depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentRef {
    pub parent: TableKey,
    /// The child's columns (indexes in its changes) holding the parent's primary key values, in the key's
    /// order; empty when the parent's rows are not told apart (its changes all count as one key).
    pub columns: Vec<usize>,
}

/// Whether values of a key column of type `ty` compare exactly (not by collation, not as floats).
pub fn exact_key_type(ty: ColumnType) -> bool {
    matches!(
        ty,
        ColumnType::TinyInt
            | ColumnType::SmallInt
            | ColumnType::MediumInt
            | ColumnType::Int
            | ColumnType::BigInt
            | ColumnType::Decimal
            | ColumnType::Date
            | ColumnType::DateTime
            | ColumnType::Time
            | ColumnType::Timestamp
            | ColumnType::Year
            | ColumnType::Enum
            | ColumnType::Set
            | ColumnType::Bit
    )
}

/// The parents of `table` (whose changes have `columns`) for parallel apply, from the secondary's foreign keys;
/// None when the table must be a barrier.
pub async fn plan(
    conn: &mut impl Queryable,
    table: &TableKey,
    columns: &[Column],
) -> Result<Option<Vec<ParentRef>>, mysql_async::Error> {
    let all = common::mariadb::foreign_keys(conn).await?;
    if reaches_beyond_children(&all, table) {
        return Ok(None);
    }
    let mut parents = Vec::new();
    for fk in all.iter().filter(|fk| &fk.child == table) {
        let (schema, name) = &fk.parent;
        let primary = common::mariadb::primary_key_columns(conn, schema, name).await?;
        let mut refs = Vec::with_capacity(primary.len());
        for key_column in &primary {
            let Some(j) = fk.parent_columns.iter().position(|c| c.eq_ignore_ascii_case(key_column)) else {
                return Ok(None);
            };
            let Some(i) = columns.iter().position(|c| c.name.eq_ignore_ascii_case(&fk.columns[j])) else {
                return Ok(None);
            };
            refs.push(i);
        }
        if primary.is_empty() || refs.len() != fk.columns.len() {
            // The key names columns besides (or other than) the parent's primary key.
            return Ok(None);
        }
        let exact = refs.iter().all(|&i| exact_key_type(columns[i].ty))
            && !common::mariadb::has_unique_besides_primary(conn, schema, name).await?;
        parents.push(ParentRef { parent: fk.parent.clone(), columns: if exact { refs } else { Vec::new() } });
    }
    Ok(Some(parents))
}

/// Whether a change of a row of `table` can change rows other than its direct children's references: a rule
/// that sets child columns, or a cascade into a table whose own rules act again.
fn reaches_beyond_children(all: &[ForeignKey], table: &TableKey) -> bool {
    all.iter()
        .filter(|fk| &fk.parent == table)
        .any(|fk| fk.sets_values() || (fk.acts() && all.iter().any(|next| next.parent == fk.child && next.acts())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fk(child: &str, parent: &str, on_delete: &str) -> ForeignKey {
        ForeignKey {
            child: ("d".into(), child.into()),
            columns: vec!["p".into()],
            parent: ("d".into(), parent.into()),
            parent_columns: vec!["id".into()],
            on_update: "RESTRICT".into(),
            on_delete: on_delete.into(),
        }
    }

    #[test]
    fn a_parent_is_a_barrier_when_its_changes_reach_past_its_children_or_set_their_columns() {
        let t = |name: &str| ("d".to_owned(), name.to_owned());
        let one_level = [fk("c", "p", "CASCADE"), fk("g", "c", "RESTRICT")];
        assert!(!reaches_beyond_children(&one_level, &t("p")));
        assert!(!reaches_beyond_children(&one_level, &t("c")));
        let two_levels = [fk("c", "p", "CASCADE"), fk("g", "c", "CASCADE")];
        assert!(reaches_beyond_children(&two_levels, &t("p")));
        assert!(!reaches_beyond_children(&two_levels, &t("c")));
        assert!(reaches_beyond_children(&[fk("c", "p", "SET NULL")], &t("p")));
        assert!(reaches_beyond_children(&[fk("p", "p", "CASCADE")], &t("p")), "a self-reference cascades on");
        assert!(!reaches_beyond_children(&[fk("p", "p", "RESTRICT")], &t("p")));
    }
}
